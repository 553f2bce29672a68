//! Picks each recipient's route from the directory and the route table
//! ([`crate::routing`]): a local inbox, another gateway over the exchange,
//! or an agency's own queue.

use crate::error::{Error, Reason, Result};
use crate::organ_id::OrganId;
use crate::routing::{self, Target};
use lienthong_types::Route;

use super::{Arrival, Gateway};

impl Gateway {
    /// Picks each recipient's route (see [`crate::routing`]). Returns the
    /// (recipient, route) pairs that get a delivery here, and the recipients
    /// left to the gateway that serves them (the loop rule).
    pub(super) async fn route(
        &self,
        from: &OrganId,
        recipients: &[OrganId],
        arrival: Option<&Arrival>,
        attachments_size: &u64,
        encoded_len: usize,
    ) -> Result<(Vec<(String, Route)>, Vec<String>)> {
        let inner = &self.inner;
        let from_here = inner.routes.is_local(from.as_str());
        let mut unknown = Vec::new();
        let mut no_exchange = Vec::new();
        let mut no_route = Vec::new();
        let mut routes = Vec::with_capacity(recipients.len());
        let mut elsewhere = Vec::new();
        for r in recipients {
            let id = r.as_str().to_owned();
            match inner.routes.resolve(r.as_str()).map(|r| &r.target) {
                None => no_route.push(id),
                Some(Target::Local) => match inner.store.agency(r.as_str()).await? {
                    Some(a) if a.active => {
                        let route = if a.channel == "amqp" && inner.exchange.is_some() {
                            Route::Queue(routing::agency_queue(r.as_str()))
                        } else {
                            Route::Local
                        };
                        routes.push((id, route));
                    }
                    _ => unknown.push(id),
                },
                Some(Target::Exchange(name)) => {
                    // Straight into our queue (the default exchange) says
                    // nothing of where else it went: treat it like the
                    // exchange itself.
                    let came_from_there =
                        arrival.is_some_and(|a| a.exchange.is_empty() || &a.exchange == name);
                    if came_from_there && !from_here {
                        // Its sender's gateway published it for them already.
                        elsewhere.push(id);
                    } else if inner.exchange.is_none() {
                        no_exchange.push(id);
                    } else {
                        routes.push((id, Route::Exchange(name.clone())));
                    }
                }
            }
        }
        if !unknown.is_empty() {
            return Err(Error::new(
                Reason::UnknownRecipient,
                format!(
                    "no active agency {} in this gateway's directory; check the codes or ask the operators",
                    unknown.join(", ")
                ),
            ));
        }
        if !no_exchange.is_empty() {
            return Err(Error::new(
                Reason::UnknownRecipient,
                format!(
                    "{} is served by another gateway, but the national exchange is not configured here (no amqp.url); ask the operators, or send to agencies of this gateway",
                    no_exchange.join(", ")
                ),
            ));
        }
        if !no_route.is_empty() {
            return Err(Error::new(
                Reason::NotRoutable,
                format!(
                    "no route of this gateway covers {}; check the codes, or ask the operators to add a route",
                    no_route.join(", ")
                ),
            ));
        }
        if routes.is_empty() {
            return Err(Error::new(
                Reason::NotRoutable,
                format!(
                    "none of the recipients ({}) is served by this gateway; the message reached the wrong gateway",
                    elsewhere.join(", ")
                ),
            ));
        }
        if let Some(x) = &inner.exchange
            && routes.iter().any(|(_, route)| !route.is_local())
        {
            // The send stream's framing adds a few bytes per 256 KiB.
            let total = encoded_len as u64 + attachments_size + attachments_size / 16_384 + 1024;
            if total > x.max_message_bytes {
                return Err(Error::new(
                    Reason::SizeLimit,
                    format!(
                        "the message is {total} bytes with its attachments; a message for another gateway or an agency's queue travels whole over AMQP, and the limit is {} bytes (amqp.max_message_bytes)",
                        x.max_message_bytes
                    ),
                ));
            }
        }
        Ok((routes, elsewhere))
    }
}
