//! Operator accounts, their sessions and their client-certificate bindings
//! as rows. The rules (roles, passwords, who may change what, the lines'
//! words) are the core's; each change here is written with its transfer-log
//! line in one transaction.

use std::collections::HashMap;

use lienthong_schema::entity::{client_cert, operator, operator_session};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};

use crate::error::{Error, OrDb, Reason, Result};
use crate::store::{NewEvent, Store, append_events};

/// An operator account as stored (the password as its PHC string).
/// Removed accounts keep their row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRow {
    pub id: i64,
    pub name: String,
    /// `viewer` or `admin`.
    pub role: String,
    /// Argon2id PHC string; `None`: logs in only with a client certificate.
    pub password_hash: Option<String>,
    /// `active`, `disabled` or `removed`.
    pub state: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub password_changed_at: Option<i64>,
    pub last_login_at: Option<i64>,
}

impl From<operator::Model> for OperatorRow {
    fn from(m: operator::Model) -> OperatorRow {
        OperatorRow {
            id: m.id,
            name: m.name,
            role: m.role,
            password_hash: m.password_hash,
            state: m.state,
            created_at: m.created_at,
            updated_at: m.updated_at,
            password_changed_at: m.password_changed_at,
            last_login_at: m.last_login_at,
        }
    }
}

/// A logged-in browser, keyed by the SHA-256 of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub token_sha256: String,
    pub operator_id: i64,
    /// What every state-changing request of the session must carry.
    pub csrf_token: String,
    /// `password` or `certificate`.
    pub via: String,
    /// Where the login came from (IP address).
    pub peer: String,
    pub created_at: i64,
    /// Moves forward as the session is used (at most once a minute).
    pub last_seen_at: i64,
    /// The absolute end, whatever the use.
    pub expires_at: i64,
}

impl From<operator_session::Model> for SessionRow {
    fn from(m: operator_session::Model) -> SessionRow {
        SessionRow {
            token_sha256: m.token_sha256,
            operator_id: m.operator_id,
            csrf_token: m.csrf_token,
            via: m.via,
            peer: m.peer,
            created_at: m.created_at,
            last_seen_at: m.last_seen_at,
            expires_at: m.expires_at,
        }
    }
}

/// What a change writes to an account, with its transfer-log line. A field
/// left `None` keeps its value.
#[derive(Debug)]
pub struct AccountChange {
    pub role: Option<String>,
    pub state: Option<String>,
    /// The new password hash (`Some(None)`: certificate only).
    pub password_hash: Option<Option<String>>,
    pub password_changed_at: Option<Option<i64>>,
    /// Whether the account's sessions end with the change.
    pub end_sessions: bool,
    pub line: NewEvent,
}

/// A session being opened.
#[derive(Debug)]
pub struct NewSession {
    pub token_sha256: String,
    pub operator_id: i64,
    pub csrf_token: String,
    pub via: String,
    pub peer: String,
    pub expires_at: i64,
}

impl Store {
    /// The account named `name`, whatever its state.
    pub async fn operator_by_name(&self, name: &str) -> Result<Option<OperatorRow>> {
        operator::Entity::find()
            .filter(operator::Column::Name.eq(name))
            .one(self.connection())
            .await
            .or_db()
            .map(|o| o.map(OperatorRow::from))
    }

    /// Every account, removed ones included, by name.
    pub async fn operators(&self) -> Result<Vec<OperatorRow>> {
        operator::Entity::find()
            .order_by_asc(operator::Column::Name)
            .all(self.connection())
            .await
            .or_db()
            .map(|rows| rows.into_iter().map(OperatorRow::from).collect())
    }

    /// How many client certificates are bound to each operator name.
    pub async fn operator_certificate_counts(&self) -> Result<HashMap<String, usize>> {
        let mut out = HashMap::new();
        for c in client_cert::Entity::find()
            .filter(client_cert::Column::Role.eq("operator"))
            .all(self.connection())
            .await
            .or_db()?
        {
            *out.entry(c.organ_id).or_insert(0) += 1;
        }
        Ok(out)
    }

    /// Adds or changes the account named `name`: `decide` sees it as it is
    /// (`None`: there is no such row, and the change makes one, with a role
    /// and a state) and says what to write, or refuses. The row, the end of
    /// its sessions and the line are one transaction.
    pub async fn change_operator<F>(&self, name: &str, now: i64, decide: F) -> Result<OperatorRow>
    where
        F: FnOnce(Option<&OperatorRow>) -> Result<AccountChange>,
    {
        let txn = self.connection().begin().await.or_db()?;
        let existing = operator::Entity::find()
            .filter(operator::Column::Name.eq(name))
            .one(&txn)
            .await
            .or_db()?;
        let change = decide(existing.clone().map(OperatorRow::from).as_ref())?;
        let row = match existing {
            Some(m) => {
                let id = m.id;
                let mut a = m.into_active_model();
                if let Some(role) = change.role {
                    a.role = Set(role);
                }
                if let Some(hash) = change.password_hash {
                    a.password_hash = Set(hash);
                }
                if let Some(at) = change.password_changed_at {
                    a.password_changed_at = Set(at);
                }
                if let Some(state) = change.state {
                    a.state = Set(state);
                }
                a.updated_at = Set(now);
                let row = a.update(&txn).await.or_db()?;
                if change.end_sessions {
                    operator_session::Entity::delete_many()
                        .filter(operator_session::Column::OperatorId.eq(id))
                        .exec(&txn)
                        .await
                        .or_db()?;
                }
                row
            }
            None => {
                let (Some(role), Some(state)) = (change.role, change.state) else {
                    return Err(Error::new(
                        Reason::Internal,
                        "a new operator account needs a role and a state",
                    ));
                };
                operator::ActiveModel {
                    name: Set(name.to_owned()),
                    role: Set(role),
                    password_hash: Set(change.password_hash.flatten()),
                    state: Set(state),
                    created_at: Set(now),
                    updated_at: Set(now),
                    password_changed_at: Set(change.password_changed_at.flatten()),
                    last_login_at: Set(None),
                    ..Default::default()
                }
                .insert(&txn)
                .await
                .or_db()?
            }
        };
        append_events(&txn, self.writer(), vec![change.line], now)
            .await
            .or_db()?;
        txn.commit().await.or_db()?;
        Ok(row.into())
    }

    /// Opens a session, sweeping the sessions that expired (past
    /// `expires_at`, or unused since `idle_since`), and notes the login on
    /// the account, with its line.
    pub async fn open_session(
        &self,
        s: NewSession,
        now: i64,
        idle_since: i64,
        line: NewEvent,
    ) -> Result<()> {
        let txn = self.connection().begin().await.or_db()?;
        operator_session::Entity::delete_many()
            .filter(
                operator_session::Column::ExpiresAt
                    .lte(now)
                    .or(operator_session::Column::LastSeenAt.lte(idle_since)),
            )
            .exec(&txn)
            .await
            .or_db()?;
        let operator_id = s.operator_id;
        operator_session::ActiveModel {
            token_sha256: Set(s.token_sha256),
            operator_id: Set(operator_id),
            csrf_token: Set(s.csrf_token),
            via: Set(s.via),
            peer: Set(s.peer),
            created_at: Set(now),
            last_seen_at: Set(now),
            expires_at: Set(s.expires_at),
        }
        .insert(&txn)
        .await
        .or_db()?;
        operator::Entity::update_many()
            .col_expr(operator::Column::LastLoginAt, Expr::value(now))
            .filter(operator::Column::Id.eq(operator_id))
            .exec(&txn)
            .await
            .or_db()?;
        append_events(&txn, self.writer(), vec![line], now)
            .await
            .or_db()?;
        txn.commit().await.or_db()
    }

    /// The session stored under a token's SHA-256, and its account.
    pub async fn session(&self, token_sha256: &str) -> Result<Option<SessionRow>> {
        operator_session::Entity::find_by_id(token_sha256.to_owned())
            .one(self.connection())
            .await
            .or_db()
            .map(|s| s.map(SessionRow::from))
    }

    /// The account with this id.
    pub async fn operator_by_id(&self, id: i64) -> Result<Option<OperatorRow>> {
        operator::Entity::find_by_id(id)
            .one(self.connection())
            .await
            .or_db()
            .map(|o| o.map(OperatorRow::from))
    }

    /// Forgets an expired session.
    pub async fn drop_session(&self, token_sha256: &str) -> Result<()> {
        operator_session::Entity::delete_by_id(token_sha256.to_owned())
            .exec(self.connection())
            .await
            .or_db()
            .map(|_| ())
    }

    /// Moves a session's idle clock to `now`.
    pub async fn touch_session(&self, token_sha256: &str, now: i64) -> Result<()> {
        operator_session::Entity::update_many()
            .col_expr(operator_session::Column::LastSeenAt, Expr::value(now))
            .filter(operator_session::Column::TokenSha256.eq(token_sha256))
            .exec(self.connection())
            .await
            .or_db()
            .map(|_| ())
    }

    /// Ends a session (a logout) with its line.
    pub async fn close_session(&self, token_sha256: &str, now: i64, line: NewEvent) -> Result<()> {
        let txn = self.connection().begin().await.or_db()?;
        operator_session::Entity::delete_by_id(token_sha256.to_owned())
            .exec(&txn)
            .await
            .or_db()?;
        append_events(&txn, self.writer(), vec![line], now)
            .await
            .or_db()?;
        txn.commit().await.or_db()
    }
}
