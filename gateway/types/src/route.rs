//! What a message is, and where a recipient's copy of it goes.

use std::fmt;

/// A delivery's route: this gateway's own inbox, another gateway through
/// an AMQP exchange, or an agency that reads its own queue. The database
/// and the transfer log keep it as `local`, `exchange:NAME` or `queue:NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Route {
    /// Delivered from this gateway's inbox (gRPC `Receive`).
    Local,
    /// Published to the named exchange, the recipient's code as routing key.
    Exchange(String),
    /// Published to the named queue of an agency whose channel is AMQP.
    Queue(String),
}

impl Route {
    /// Reads the stored form; `None` for anything else.
    pub fn parse(s: &str) -> Option<Route> {
        if s == "local" {
            return Some(Route::Local);
        }
        if let Some(name) = s.strip_prefix("exchange:") {
            return Some(Route::Exchange(name.to_owned()));
        }
        s.strip_prefix("queue:")
            .map(|name| Route::Queue(name.to_owned()))
    }

    pub fn is_local(&self) -> bool {
        matches!(self, Route::Local)
    }

    /// Where the route publishes over AMQP: `(exchange, routing key)`, or
    /// `None` for the gateway's own inboxes. An exchange takes the
    /// recipient's code as routing key (the receiving gateway binds its
    /// patterns); an agency's queue is reached through the default exchange
    /// by its name.
    pub fn amqp_destination(&self, recipient: &str) -> Option<(String, String)> {
        match self {
            Route::Local => None,
            Route::Exchange(name) => Some((name.clone(), recipient.to_owned())),
            Route::Queue(queue) => Some((String::new(), queue.clone())),
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Local => f.write_str("local"),
            Route::Exchange(name) => write!(f, "exchange:{name}"),
            Route::Queue(name) => write!(f, "queue:{name}"),
        }
    }
}

/// What a message carries: a document, or a status notice answering one.
/// Stored as `document` or `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Document,
    Status,
}

impl MessageKind {
    /// Reads the stored form; `None` for anything else.
    pub fn parse(s: &str) -> Option<MessageKind> {
        match s {
            "document" => Some(MessageKind::Document),
            "status" => Some(MessageKind::Status),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Document => "document",
            MessageKind::Status => "status",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_form_reads_back() {
        for r in [
            Route::Local,
            Route::Exchange("lienthong.documents".into()),
            Route::Queue("lienthong.agency.000.00.01.H35".into()),
        ] {
            assert_eq!(Route::parse(&r.to_string()), Some(r));
        }
        assert_eq!(Route::parse("locale"), None);
        assert_eq!(Route::parse("000.00.01.H35"), None);
        for k in [MessageKind::Document, MessageKind::Status] {
            assert_eq!(MessageKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(MessageKind::parse("Document"), None);
    }

    #[test]
    fn a_queue_is_reached_by_its_name_an_exchange_by_the_code() {
        assert_eq!(Route::Local.amqp_destination("000.00.01.H35"), None);
        assert_eq!(
            Route::Exchange("x".into()).amqp_destination("000.00.01.H35"),
            Some(("x".into(), "000.00.01.H35".into()))
        );
        assert_eq!(
            Route::Queue("q".into()).amqp_destination("000.00.01.H35"),
            Some((String::new(), "q".into()))
        );
    }
}
