//! Where a recipient's copy goes: the route table.
//!
//! Routes are AMQP topic patterns over agency codes (`#.H35`, `*.*.31.H35`,
//! `#`), tried most specific first, so a route selects exactly what a queue
//! bound with the same pattern would receive. A route leads either to this
//! gateway's own inboxes (`local`) or to an AMQP exchange
//! (`exchange:<name>`), where the gateway that serves the code picks it up.
//!
//! Loop rule: a message that came from an exchange (or straight into this
//! gateway's queue) is not published back to that same exchange unless its
//! sender is one of this gateway's own agencies: the sender's gateway
//! already published it there for those recipients, so here they get
//! nothing (and the log says so). A route to a *different* exchange is
//! followed — that is how a province passes national traffic on to a
//! district gateway.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::organ_id::TopicPattern;

/// The default exchange of the national exchange (DESIGN.md §4).
pub const DOCUMENTS_EXCHANGE: &str = "lienthong.documents";

/// The queue an agency whose directory channel is `amqp` reads.
pub fn agency_queue(organ_id: &str) -> String {
    format!("{AGENCY_QUEUE_PREFIX}{organ_id}")
}

const AGENCY_QUEUE_PREFIX: &str = "lienthong.agency.";

/// The agency whose queue this is (the inverse of [`agency_queue`]).
pub fn queue_agency(queue: &str) -> Option<&str> {
    queue.strip_prefix(AGENCY_QUEUE_PREFIX)
}

/// Where a route leads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Local,
    Exchange(String),
}

impl Target {
    pub fn parse(s: &str) -> Result<Target> {
        let t = s.trim();
        if t == "local" {
            return Ok(Target::Local);
        }
        if let Some(name) = t.strip_prefix("exchange:") {
            let valid = !name.is_empty()
                && name.len() <= 255
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
            if valid {
                return Ok(Target::Exchange(name.to_owned()));
            }
        }
        Err(Error::malformed(format!(
            "the route target {t:?} is neither \"local\" nor \"exchange:<name>\" (letters, digits, - _ . :)"
        )))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Local => f.write_str("local"),
            Target::Exchange(name) => write!(f, "exchange:{name}"),
        }
    }
}

/// One `[[routes]]` entry of the configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub pattern: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub pattern: TopicPattern,
    pub target: Target,
}

/// The routes, most specific first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: Vec<Route>,
}

impl Default for RouteTable {
    /// Everything local: a gateway without an exchange serves every code in
    /// its directory.
    fn default() -> Self {
        RouteTable {
            routes: vec![Route {
                pattern: TopicPattern::any(),
                target: Target::Local,
            }],
        }
    }
}

impl RouteTable {
    /// Builds the table; an empty list is the default (everything local).
    /// Two routes with the same pattern are refused: which one wins would
    /// depend on the order of the file.
    pub fn new(specs: &[RouteSpec]) -> Result<RouteTable> {
        if specs.is_empty() {
            return Ok(RouteTable::default());
        }
        let mut routes = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let pattern = TopicPattern::parse(&s.pattern)
                .map_err(|e| Error::malformed(format!("routes[{i}].pattern: {}", e.message())))?;
            let target = Target::parse(&s.to)
                .map_err(|e| Error::malformed(format!("routes[{i}].to: {}", e.message())))?;
            if routes.iter().any(|r: &Route| r.pattern == pattern) {
                return Err(Error::malformed(format!(
                    "routes[{i}]: the pattern {pattern} is given twice; keep one route per pattern"
                )));
            }
            routes.push(Route { pattern, target });
        }
        routes.sort_by_key(|r| r.pattern.specificity());
        Ok(RouteTable { routes })
    }

    /// The route of a code: the most specific matching pattern.
    pub fn resolve(&self, organ_id: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.pattern.matches(organ_id))
    }

    /// Whether this gateway serves the code itself.
    pub fn is_local(&self, organ_id: &str) -> bool {
        self.resolve(organ_id)
            .is_some_and(|r| r.target == Target::Local)
    }

    /// The patterns routed here: the inbound queue is bound with them.
    pub fn local_patterns(&self) -> impl Iterator<Item = &TopicPattern> {
        self.routes
            .iter()
            .filter(|r| r.target == Target::Local)
            .map(|r| &r.pattern)
    }

    /// The exchanges the routes publish to.
    pub fn exchanges(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.routes {
            if let Target::Exchange(name) = &r.target
                && !out.contains(&name.as_str())
            {
                out.push(name);
            }
        }
        out
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pattern: &str, to: &str) -> RouteSpec {
        RouteSpec {
            pattern: pattern.to_owned(),
            to: to.to_owned(),
        }
    }

    #[test]
    fn the_most_specific_route_wins_whatever_the_file_order() {
        let t = RouteTable::new(&[
            spec("#", "exchange:lienthong.documents"),
            spec("*.*.31.H35", "exchange:district31"),
            spec("#.H35", "local"),
        ])
        .unwrap();
        let to = |id: &str| t.resolve(id).map(|r| r.target.to_string());
        assert_eq!(to("000.00.01.H35").as_deref(), Some("local"));
        assert_eq!(to("000.01.31.H35").as_deref(), Some("exchange:district31"));
        assert_eq!(
            to("000.00.01.H36").as_deref(),
            Some("exchange:lienthong.documents")
        );
        assert_eq!(to("G01.H35").as_deref(), Some("local"));
        assert!(t.is_local("000.00.02.H35"));
        assert!(!t.is_local("000.00.02.H36"));
        assert_eq!(
            t.local_patterns().map(|p| p.as_str()).collect::<Vec<_>>(),
            ["#.H35"]
        );
        assert_eq!(t.exchanges(), ["district31", "lienthong.documents"]);
    }

    #[test]
    fn no_routes_means_everything_is_local() {
        let t = RouteTable::new(&[]).unwrap();
        assert!(t.is_local("000.00.00.H99"));
        assert!(t.exchanges().is_empty());
    }

    #[test]
    fn bad_routes_are_refused_with_their_position() {
        let e = RouteTable::new(&[spec("#.H35", "local"), spec("#..H35", "local")]).unwrap_err();
        assert!(e.message().contains("routes[1].pattern"), "{}", e.message());
        let e = RouteTable::new(&[spec("#", "national")]).unwrap_err();
        assert!(e.message().contains("routes[0].to"), "{}", e.message());
        let e =
            RouteTable::new(&[spec("#.H35", "local"), spec(" #.H35", "exchange:x")]).unwrap_err();
        assert!(e.message().contains("given twice"), "{}", e.message());
        // Codes outside every pattern have no route.
        let t = RouteTable::new(&[spec("#.H35", "local")]).unwrap();
        assert!(t.resolve("000.00.01.H36").is_none());
    }
}
