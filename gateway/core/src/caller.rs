//! Who is calling: the transport that vouched for a caller and its role.
//! Transports build a `Caller`; the pipeline, the directory and the reports
//! decide what it may do.

/// The transport a request came through, for the transfer log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Amqp,
    Cli,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Amqp => "amqp",
            Transport::Cli => "cli",
        }
    }
}

/// Who a caller is to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agency's software: its own messages, its own inbox.
    Agency,
    /// The gateway's admins: every trace, reports, the directory. A client
    /// certificate bound by `directory bind-operator` to an `admin`
    /// account.
    Operator,
    /// Operators who only look: every trace and reports, not the directory
    /// (a certificate bound to a `viewer` account).
    Viewer,
    /// A publisher on the AMQP exchange (another gateway, or a queue-speaking
    /// agency): the transport vouches for nobody, so only an envelope whose
    /// signature is bound to its `from` is accepted.
    Exchange,
}

/// An authenticated caller: the agency (or operator) the transport vouches
/// for.
#[derive(Debug, Clone)]
pub struct Caller {
    pub organ_id: String,
    pub transport: Transport,
    pub role: Role,
    /// The SHA-256 (hex) of the client certificate's key the caller was
    /// identified by under mutual TLS: a call that lasts (a following
    /// `Receive`) ends once that binding is taken back.
    pub client_key: Option<String>,
}

impl Caller {
    pub fn new(organ_id: impl Into<String>, transport: Transport) -> Self {
        Caller {
            organ_id: organ_id.into(),
            transport,
            role: Role::Agency,
            client_key: None,
        }
    }

    /// One of the gateway's operators.
    pub fn operator(name: impl Into<String>, transport: Transport) -> Self {
        Caller {
            role: Role::Operator,
            ..Caller::new(name, transport)
        }
    }

    /// An operator of either role: may read every trace and the reports.
    pub fn is_operator(&self) -> bool {
        matches!(self.role, Role::Operator | Role::Viewer)
    }

    /// An operator who may change the directory.
    pub fn is_admin(&self) -> bool {
        self.role == Role::Operator
    }

    /// A message taken from an AMQP queue; `publisher` names where it came
    /// from for the transfer log (e.g. `exchange lienthong.documents`).
    pub fn exchange(publisher: impl Into<String>) -> Self {
        Caller {
            role: Role::Exchange,
            ..Caller::new(publisher, Transport::Amqp)
        }
    }
}
