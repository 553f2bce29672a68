//! Identifying a caller (its mTLS binding, or a name the transport
//! vouches for), its standing while a call lasts (active agency, live
//! binding), and what it may read of a message.

use crate::error::{Error, Reason, Result};
use crate::rows::MessageRow;
use crate::text::truncate;

use super::Gateway;
use super::checks::MAX_MESSAGE_ID;
use crate::caller::{Caller, Role, Transport};

/// What a caller asks to read of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Its envelope or attachments.
    Content,
    /// Its transfer log.
    Trail,
}

impl Gateway {
    pub(super) async fn authorised_message(
        &self,
        caller: &Caller,
        from: &str,
        message_id: &str,
        access: Access,
    ) -> Result<MessageRow> {
        let not_found = || {
            Error::new(
                Reason::NotFound,
                format!(
                    "no message {} from {} is known here",
                    truncate(message_id, MAX_MESSAGE_ID),
                    truncate(from, 64)
                ),
            )
        };
        let Some(m) = self.inner.store.message(from, message_id).await? else {
            return Err(not_found());
        };
        let archived = |m: MessageRow| -> Result<MessageRow> {
            match (&m.archived, access) {
                (Some(a), Access::Content) if a.purged_at.is_some() => Err(Error::new(
                    Reason::NotFound,
                    format!(
                        "message {} of {} was archived in package {} and its content has left the \
                         gateway's database; its trail (`Trace`, `DocumentStatus`) is still here, and \
                         the gateway's operators can give its content back from the package",
                        truncate(message_id, MAX_MESSAGE_ID),
                        m.sender,
                        a.package
                    ),
                )),
                _ => Ok(m),
            }
        };
        if caller.is_operator() {
            // The IT office follows a document's trail; its content is for
            // the agencies that sent and received it.
            if access == Access::Trail {
                return Ok(m);
            }
            return Err(Error::new(
                Reason::PermissionDenied,
                "an operator sees a document's trail (Trace, DocumentStatus), not its content: the envelope and attachments are for its sender and recipients",
            ));
        }
        if m.sender == caller.organ_id {
            return archived(m);
        }
        let deliveries = self.inner.store.deliveries_of(m.id).await?;
        if let Some(d) = deliveries.iter().find(|d| d.recipient == caller.organ_id) {
            if access == Access::Content && d.state == "withdrawn" {
                // Recalled before it reached the recipient: its copy no
                // longer exists (the sender keeps its frozen copy). The
                // trail stays visible, so it can see why.
                return Err(Error::new(
                    Reason::NotFound,
                    format!(
                        "message {} of {} was recalled by its sender before it was delivered to {}: \
                         your copy was withdrawn and its content is no longer available to you; \
                         `Trace` and `DocumentStatus` show the recall",
                        truncate(message_id, MAX_MESSAGE_ID),
                        m.sender,
                        caller.organ_id
                    ),
                ));
            }
            return archived(m);
        }
        Err(Error::new(
            Reason::PermissionDenied,
            format!(
                "message {message_id} was neither sent by nor addressed to {}; an agency sees only its own messages",
                caller.organ_id
            ),
        ))
    }

    /// The caller a verified client certificate speaks for: the directory's
    /// binding of its key is the only source of identity under mutual TLS,
    /// and an agency's software is identified only while the agency is
    /// active.
    pub async fn identify_client(
        &self,
        spki_sha256: &[u8; 32],
        transport: Transport,
    ) -> Result<Caller> {
        let hex = hex::encode(spki_sha256);
        // Every look-up of this call sees the directory as it is now.
        self.inner.store.confirm_directory().await?;
        // Not logged here: a caller that cannot be identified is answered
        // and summed per peer by the transport ([`Gateway::refuse_unauthenticated`]),
        // never written to the transfer log call by call.
        let Some(binding) = self.inner.store.client_cert(&hex).await? else {
            return Err(Error::new(
                Reason::PermissionDenied,
                format!(
                    "this client certificate (key sha256 {hex}) is not bound to any agency; ask the operators to run `lienthong directory bind-client-cert ORGAN_ID CERT.pem`"
                ),
            ));
        };
        let role = if binding.role == "operator" {
            // The account the certificate is bound to gives the role; a
            // removed or disabled account's certificate opens nothing.
            match crate::operators::active_role(&self.inner.store, &binding.organ_id).await? {
                Some(crate::operators::OperatorRole::Admin) => Role::Operator,
                Some(crate::operators::OperatorRole::Viewer) => Role::Viewer,
                None => {
                    return Err(Error::new(
                        Reason::PermissionDenied,
                        format!(
                            "this client certificate (key sha256 {hex}) is bound to operator {:?}, which is not an active operator account; ask an admin (`lienthong operator list`)",
                            truncate(&binding.organ_id, 100)
                        ),
                    ));
                }
            }
        } else {
            Role::Agency
        };
        let caller = Caller {
            organ_id: binding.organ_id,
            transport,
            role,
            client_key: Some(hex),
        };
        self.standing_as_confirmed(&caller).await?;
        Ok(caller)
    }

    /// The caller a `dev-header` request names: believed, except that an
    /// agency the directory lists as inactive is refused as under mutual
    /// TLS. (A name the directory does not know passes: the mode is for
    /// trying the gateway out.)
    pub async fn identify_named(&self, organ_id: &str, transport: Transport) -> Result<Caller> {
        let caller = Caller::new(organ_id, transport);
        self.standing(&caller).await?;
        Ok(caller)
    }

    /// Whether an identified caller still stands: its client certificate's
    /// binding is still there and unchanged, and an agency is not
    /// deactivated. Checked when a call is identified, and again by a call
    /// that lasts (a following `Receive` stream, at least every
    /// [`STANDING_CHECK`]), so that taking trust back reaches calls already
    /// under way. A refusal is `PERMISSION_DENIED`, not logged here: at
    /// identification the transport sums it per peer
    /// ([`Gateway::refuse_unauthenticated`]); a call under way that it ends
    /// logs it once.
    pub async fn standing(&self, caller: &Caller) -> Result<()> {
        self.inner.store.confirm_directory().await?;
        self.standing_as_confirmed(caller).await
    }

    /// [`Gateway::standing`] with the directory this call confirmed.
    async fn standing_as_confirmed(&self, caller: &Caller) -> Result<()> {
        let store = &self.inner.store;
        if let Some(key) = &caller.client_key {
            let role = match caller.role {
                Role::Operator | Role::Viewer => "operator",
                _ => "agency",
            };
            let still = store
                .client_cert(key)
                .await?
                .is_some_and(|b| b.organ_id == caller.organ_id && b.role == role);
            if !still {
                let err = Error::new(
                    Reason::PermissionDenied,
                    format!(
                        "this client certificate (key sha256 {key}) is no longer bound to {}: the operators took it back; ask them which certificate to use",
                        caller.organ_id
                    ),
                );
                return Err(err);
            }
        }
        if caller.role == Role::Agency
            && let Some(a) = store.agency(&caller.organ_id).await?
            && !a.active
        {
            let err = Error::new(
                Reason::PermissionDenied,
                format!(
                    "{} is deactivated in this gateway's directory: its software can neither send nor receive until the operators activate it again (`lienthong directory activate {}`)",
                    caller.organ_id, caller.organ_id
                ),
            );
            return Err(err);
        }
        Ok(())
    }
}
