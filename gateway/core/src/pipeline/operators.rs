//! Operators' sessions and logins through the gateway (the HTTP adapter's
//! way to them); the accounts and their rules are in [`crate::operators`].

use super::Gateway;
use crate::error::Result;
use crate::operators::{
    LoginGuard, LoginLimits, Operator, Session, SessionPolicy, close_session, session,
};

impl Gateway {
    /// The session a browser's token opens (see [`session`]).
    pub async fn operator_session(
        &self,
        token: &str,
        policy: SessionPolicy,
    ) -> Result<Option<Session>> {
        session(self.store(), token, policy).await
    }

    /// Logs a browser out (see [`close_session`]).
    pub async fn close_operator_session(&self, token: &str, op: &Operator) -> Result<()> {
        close_session(self.store(), token, op).await
    }

    /// The guard in front of this gateway's logins.
    pub fn login_guard(&self, limits: LoginLimits) -> LoginGuard {
        LoginGuard::new(self.store().clone(), limits)
    }
}
