//! The gateway's operators: accounts (`lienthong operator …`), passwords
//! hashed with Argon2id, sessions stored in the database, and the guard in
//! front of logins (rate limits, aggregated lines for failures).
//!
//! Knows nothing of HTTP: the HTTP adapter turns a session into a cookie,
//! a [`LoginRefusal`] into a status. Every change to an account is written
//! with its `operator_changed` line in one transaction; every login is an
//! `operator_login` line; failed logins are counted and written at most
//! once a minute per peer (and a bounded number of lines per minute in
//! all), so that guessing cannot fill the transfer log.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use lienthong_store::operators::{AccountChange, OperatorRow};
use ring::rand::SecureRandom;
use serde::Serialize;
use tokio::sync::{OnceCell, Semaphore};

use crate::error::{Error, Reason, Result};
use crate::store::{EventKind, NewEvent, Store, now_micros};

/// What an operator may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorRole {
    /// The dashboard, reports, traces.
    Viewer,
    /// Also maintenance windows and the directory.
    Admin,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Viewer => "viewer",
            OperatorRole::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<OperatorRole> {
        match s.trim() {
            "viewer" => Ok(OperatorRole::Viewer),
            "admin" => Ok(OperatorRole::Admin),
            other => Err(Error::malformed(format!(
                "{:?} is not a role; an operator is a viewer (dashboard and reports) or an admin (also maintenance and the directory)",
                lienthong_types::text::truncate(other, 20)
            ))),
        }
    }
}

/// An account as shown (never its password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Operator {
    pub id: i64,
    pub name: String,
    pub role: OperatorRole,
    /// `active`, `disabled` or `removed`.
    pub state: String,
    /// Whether the account can log in with a password (otherwise only with
    /// a client certificate bound by `directory bind-operator`).
    pub password: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login_at: Option<i64>,
}

impl Operator {
    pub fn is_active(&self) -> bool {
        self.state == ACTIVE
    }
}

const ACTIVE: &str = "active";
const DISABLED: &str = "disabled";
const REMOVED: &str = "removed";

fn view(m: &OperatorRow) -> Operator {
    Operator {
        id: m.id,
        name: m.name.clone(),
        // A role written by hand into the table gives no more than a viewer's.
        role: OperatorRole::parse(&m.role).unwrap_or(OperatorRole::Viewer),
        state: m.state.clone(),
        password: m.password_hash.is_some(),
        created_at: m.created_at,
        updated_at: m.updated_at,
        last_login_at: m.last_login_at,
    }
}

/// Who changes an account, for the transfer log.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `cli:<OS user>`, or the operator's name.
    pub name: String,
    /// `cli` or `http`.
    pub transport: &'static str,
}

impl Actor {
    /// The command line, run by `os_user`.
    pub fn cli(os_user: &str) -> Actor {
        Actor {
            name: format!("cli:{os_user}"),
            transport: "cli",
        }
    }
}

fn line(kind: EventKind, detail: String, reason: Option<&str>, actor: &Actor) -> NewEvent {
    NewEvent {
        kind,
        sender: String::new(),
        message_id: String::new(),
        recipient: None,
        reason: reason.map(str::to_owned),
        detail,
        actor: Some(actor.name.clone()),
        transport: actor.transport.to_owned(),
    }
}

/// Checks an operator's name: 1 to 100 characters, no control characters.
pub fn check_name(name: &str) -> Result<&str> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 100 {
        return Err(Error::malformed(
            "an operator needs a name of 1 to 100 characters",
        ));
    }
    if n.chars().any(char::is_control) {
        return Err(Error::malformed(
            "an operator's name cannot hold control characters",
        ));
    }
    Ok(n)
}

/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 10;
const MAX_PASSWORD_BYTES: usize = 1024;

fn check_password(p: &str) -> Result<()> {
    if p.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Error::malformed(format!(
            "the password is too short: use at least {MIN_PASSWORD_CHARS} characters (a few words are easier to remember than symbols)"
        )));
    }
    if p.len() > MAX_PASSWORD_BYTES {
        return Err(Error::malformed(format!(
            "the password is longer than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Argon2id with the crate's defaults (19 MiB, 2 passes), as a PHC string.
/// Runs on a blocking thread: it takes tens of milliseconds on purpose.
pub async fn hash_password(password: &str) -> Result<String> {
    let p = password.to_owned();
    tokio::task::spawn_blocking(move || {
        argon2::Argon2::default()
            .hash_password(p.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| {
                Error::new(
                    Reason::Unavailable,
                    format!("hashing the password failed: {e}"),
                )
            })
    })
    .await
    .map_err(|e| {
        Error::new(
            Reason::Unavailable,
            format!("hashing the password failed: {e}"),
        )
    })?
}

/// Whether `password` matches the PHC string `phc`.
async fn verify_password(password: &str, phc: &str) -> bool {
    let (p, h) = (password.to_owned(), phc.to_owned());
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&h)
            .map(|parsed| {
                argon2::Argon2::default()
                    .verify_password(p.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

async fn by_name(store: &Store, name: &str) -> Result<Option<OperatorRow>> {
    store.operator_by_name(name).await
}

fn no_such(name: &str) -> Error {
    Error::new(
        Reason::NotFound,
        format!("there is no operator {name:?}; `lienthong operator list` shows them"),
    )
}

/// The account named `name`, whatever its state.
pub async fn find(store: &Store, name: &str) -> Result<Option<Operator>> {
    Ok(by_name(store, name).await?.as_ref().map(view))
}

/// Every account, removed ones included, by name.
pub async fn list(store: &Store) -> Result<Vec<Operator>> {
    Ok(store.operators().await?.iter().map(view).collect())
}

/// How many client certificates are bound to each operator name.
pub async fn certificate_counts(store: &Store) -> Result<HashMap<String, usize>> {
    store.operator_certificate_counts().await
}

/// Adds an account (or brings a removed one back, with the new role and
/// password). `password` `None`: the account logs in only with a client
/// certificate.
pub async fn add(
    store: &Store,
    name: &str,
    role: OperatorRole,
    password: Option<&str>,
    by: &Actor,
) -> Result<Operator> {
    let name = check_name(name)?;
    if let Some(p) = password {
        check_password(p)?;
    }
    let hash = match password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    let now = now_micros();
    let pw_at = hash.as_ref().map(|_| now);
    let row = store
        .change_operator(name, now, |existing| {
            let what = match existing {
                Some(m) if m.state != REMOVED => {
                    return Err(Error::new(
                        Reason::DuplicateConflict,
                        format!(
                            "there is already an operator {name:?} ({}); use `lienthong operator passwd` to change the password",
                            m.state
                        ),
                    ));
                }
                Some(_) => "added again",
                None => "added",
            };
            let how = if hash.is_some() {
                "with a password"
            } else {
                "without a password (client certificate only)"
            };
            Ok(AccountChange {
                role: Some(role.as_str().to_owned()),
                state: Some(ACTIVE.to_owned()),
                password_hash: Some(hash),
                password_changed_at: Some(pw_at),
                end_sessions: false,
                line: line(
                    EventKind::OperatorChanged,
                    format!("operator {name:?} {what} as {}, {how}", role.as_str()),
                    None,
                    by,
                ),
            })
        })
        .await?;
    Ok(view(&row))
}

/// What [`change`] does to an account.
enum Change {
    Remove,
    Disable,
    Enable,
    Password(Option<String>),
    Role(OperatorRole),
}

/// Removes an account: its sessions end at once, its certificates no
/// longer log it in. The row stays (the transfer log names it).
pub async fn remove(store: &Store, name: &str, by: &Actor) -> Result<Operator> {
    change(store, name, Change::Remove, by).await
}

/// Disables an account (its sessions end) until it is enabled again.
pub async fn disable(store: &Store, name: &str, by: &Actor) -> Result<Operator> {
    change(store, name, Change::Disable, by).await
}

/// Enables a disabled account.
pub async fn enable(store: &Store, name: &str, by: &Actor) -> Result<Operator> {
    change(store, name, Change::Enable, by).await
}

/// Gives an account a new role; its sessions end (they were opened with
/// the old one).
pub async fn set_role(
    store: &Store,
    name: &str,
    role: OperatorRole,
    by: &Actor,
) -> Result<Operator> {
    change(store, name, Change::Role(role), by).await
}

/// Sets a new password (`None`: certificate only); every session of the
/// account ends.
pub async fn set_password(
    store: &Store,
    name: &str,
    password: Option<&str>,
    by: &Actor,
) -> Result<Operator> {
    if let Some(p) = password {
        check_password(p)?;
    }
    let hash = match password {
        Some(p) => Some(hash_password(p).await?),
        None => None,
    };
    change(store, name, Change::Password(hash), by).await
}

async fn change(store: &Store, name: &str, what: Change, by: &Actor) -> Result<Operator> {
    let name = check_name(name)?;
    let now = now_micros();
    let row = store
        .change_operator(name, now, |existing| {
            let Some(m) = existing.filter(|m| m.state != REMOVED) else {
                return Err(no_such(name));
            };
            let mut c = AccountChange {
                role: None,
                state: None,
                password_hash: None,
                password_changed_at: None,
                end_sessions: true,
                line: line(EventKind::OperatorChanged, String::new(), None, by),
            };
            c.line.detail = match what {
                Change::Remove => {
                    c.state = Some(REMOVED.to_owned());
                    c.password_hash = Some(None);
                    format!("operator {name:?} removed; their sessions ended")
                }
                Change::Disable => {
                    c.state = Some(DISABLED.to_owned());
                    format!("operator {name:?} disabled; their sessions ended")
                }
                Change::Enable => {
                    if m.state == ACTIVE {
                        return Err(Error::malformed(format!(
                            "operator {name:?} is not disabled"
                        )));
                    }
                    c.state = Some(ACTIVE.to_owned());
                    format!("operator {name:?} enabled")
                }
                Change::Password(hash) => {
                    let d = if hash.is_some() {
                        format!("operator {name:?} has a new password; their sessions ended")
                    } else {
                        format!(
                            "operator {name:?} no longer has a password (client certificate only); their sessions ended"
                        )
                    };
                    c.password_hash = Some(hash);
                    c.password_changed_at = Some(Some(now));
                    d
                }
                Change::Role(role) => {
                    c.role = Some(role.as_str().to_owned());
                    format!(
                        "operator {name:?} is now {}; their sessions ended",
                        role.as_str()
                    )
                }
            };
            Ok(c)
        })
        .await?;
    Ok(view(&row))
}

/// The role of the active account `name`, for a client certificate bound
/// to it; `None` when there is no such active account.
pub async fn active_role(store: &Store, name: &str) -> Result<Option<OperatorRole>> {
    Ok(by_name(store, name)
        .await?
        .filter(|m| m.state == ACTIVE)
        .map(|m| view(&m).role))
}

// ----- sessions --------------------------------------------------------------

/// How long a session lasts.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// Unused this long, it ends.
    pub idle: Duration,
    /// It ends this long after the login, however much it is used.
    pub absolute: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            idle: Duration::from_secs(30 * 60),
            absolute: Duration::from_secs(12 * 3600),
        }
    }
}

/// How a session was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginMethod {
    Password,
    Certificate,
}

impl LoginMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginMethod::Password => "password",
            LoginMethod::Certificate => "certificate",
        }
    }
}

/// A session just opened: the token goes to the browser and nowhere else.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub token: String,
    pub csrf_token: String,
    pub operator: Operator,
    pub expires_at: i64,
}

/// A live session.
#[derive(Debug, Clone)]
pub struct Session {
    pub operator: Operator,
    pub csrf_token: String,
    pub via: String,
    pub expires_at: i64,
}

/// 32 random bytes, base64url: session and CSRF tokens.
pub fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::new(Reason::Unavailable, "the system's random source failed"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

fn token_hash(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.as_bytes(),
    ))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The peer as the transfer log and the rate limits know it: an IPv4
/// address, or an IPv6 address's /64 (one machine usually holds a whole
/// /64).
pub fn peer_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Opens a session for an operator who just proved who they are, and
/// writes the `operator_login` line. Expired sessions are swept here.
pub async fn open_session(
    store: &Store,
    op: &Operator,
    via: LoginMethod,
    peer: &str,
    policy: SessionPolicy,
) -> Result<NewSession> {
    let token = random_token()?;
    let csrf_token = random_token()?;
    let now = now_micros();
    let expires_at = now.saturating_add(micros(policy.absolute));
    store
        .open_session(
            lienthong_store::operators::NewSession {
                token_sha256: token_hash(&token),
                operator_id: op.id,
                csrf_token: csrf_token.clone(),
                via: via.as_str().to_owned(),
                peer: peer.to_owned(),
                expires_at,
            },
            now,
            now - micros(policy.idle),
            line(
                EventKind::OperatorLogin,
                format!(
                    "operator {:?} ({}) logged in with a {} from {peer}",
                    op.name,
                    op.role.as_str(),
                    via.as_str()
                ),
                None,
                &Actor {
                    name: op.name.clone(),
                    transport: "http",
                },
            ),
        )
        .await?;
    Ok(NewSession {
        token,
        csrf_token,
        operator: op.clone(),
        expires_at,
    })
}

/// The session a token opens, if it is live and its operator still active.
/// Its idle clock is moved forward (at most once a minute: a dashboard
/// polling every few seconds is not a write every few seconds).
pub async fn session(store: &Store, token: &str, policy: SessionPolicy) -> Result<Option<Session>> {
    if token.is_empty() || token.len() > 100 {
        return Ok(None);
    }
    let key = token_hash(token);
    let Some(s) = store.session(&key).await? else {
        return Ok(None);
    };
    let now = now_micros();
    if s.expires_at <= now || s.last_seen_at <= now - micros(policy.idle) {
        store.drop_session(&key).await?;
        return Ok(None);
    }
    let Some(op) = store
        .operator_by_id(s.operator_id)
        .await?
        .filter(|m| m.state == ACTIVE)
    else {
        return Ok(None);
    };
    if now - s.last_seen_at > 60_000_000 {
        store.touch_session(&key, now).await?;
    }
    Ok(Some(Session {
        operator: view(&op),
        csrf_token: s.csrf_token,
        via: s.via,
        expires_at: s.expires_at,
    }))
}

/// Ends a session (logging out), with its `operator_logout` line.
pub async fn close_session(store: &Store, token: &str, op: &Operator) -> Result<()> {
    let now = now_micros();
    store
        .close_session(
            &token_hash(token),
            now,
            line(
                EventKind::OperatorLogout,
                format!("operator {:?} logged out", op.name),
                None,
                &Actor {
                    name: op.name.clone(),
                    transport: "http",
                },
            ),
        )
        .await
}

// ----- the login guard -------------------------------------------------------

/// Why a login did not open a session.
#[derive(Debug)]
pub enum LoginRefusal {
    /// Wrong name or password, or an account that may not log in: one
    /// answer for all, so that names cannot be probed.
    Refused,
    /// Too many failures for this account or from this peer.
    Throttled { retry_after: Duration },
    /// The client certificate is bound to no active operator, or its chain
    /// is not trusted: the sentence says which.
    Certificate(String),
    /// The database did not answer.
    Failed(Error),
}

impl From<Error> for LoginRefusal {
    fn from(e: Error) -> Self {
        LoginRefusal::Failed(e)
    }
}

/// Failed logins allowed per account, and per peer, within
/// [`LoginLimits::window`].
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_account: u32,
    pub per_peer: u32,
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            per_account: 5,
            per_peer: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// A failure line per peer at most this often.
const LINE_EVERY: Duration = Duration::from_secs(60);
/// Failure lines in all per [`LINE_EVERY`]; peers beyond share one line.
const LINES_PER_MINUTE: u32 = 20;
/// Counters kept at most (peers and accounts each); the oldest go first.
const MAX_TRACKED: usize = 4096;
/// Passwords checked at once: Argon2 is made to be costly.
const HASHING_AT_ONCE: usize = 2;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

#[derive(Debug, Default)]
struct Pending {
    failures: u32,
    throttled: u32,
    names: BTreeSet<String>,
    more_names: u32,
}

#[derive(Debug, Default)]
struct GuardState {
    accounts: HashMap<String, Window>,
    peers: HashMap<String, Window>,
    pending: HashMap<String, Pending>,
    last_line: HashMap<String, Instant>,
    minute: Option<(Instant, u32)>,
}

struct GuardInner {
    store: Store,
    limits: LoginLimits,
    state: Mutex<GuardState>,
    hashing: Semaphore,
    dummy: OnceCell<String>,
}

/// Logins: the password or certificate check, the rate limits per account
/// and per peer (in this process), and the transfer-log lines.
#[derive(Clone)]
pub struct LoginGuard {
    inner: Arc<GuardInner>,
}

impl std::fmt::Debug for LoginGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginGuard")
            .field("limits", &self.inner.limits)
            .finish()
    }
}

fn over(w: Option<&Window>, limit: u32, window: Duration, now: Instant) -> Option<Duration> {
    let w = w?;
    let end = w.start + window;
    (w.failures >= limit && end > now).then(|| end - now)
}

fn count(map: &mut HashMap<String, Window>, key: &str, window: Duration, now: Instant) {
    if map.len() >= MAX_TRACKED && !map.contains_key(key) {
        map.retain(|_, w| w.start + window > now);
        if map.len() >= MAX_TRACKED
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, w)| w.start)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
    }
    let w = map.entry(key.to_owned()).or_insert(Window {
        start: now,
        failures: 0,
    });
    if w.start + window <= now {
        *w = Window {
            start: now,
            failures: 0,
        };
    }
    w.failures += 1;
}

impl LoginGuard {
    /// A guard writing to `store`'s transfer log. Pending failure lines are
    /// written by a task that ends when the guard is dropped.
    pub fn new(store: Store, limits: LoginLimits) -> LoginGuard {
        let inner = Arc::new(GuardInner {
            store,
            limits,
            state: Mutex::new(GuardState::default()),
            hashing: Semaphore::new(HASHING_AT_ONCE),
            dummy: OnceCell::new(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&inner);
            rt.spawn(flush_loop(weak));
        }
        LoginGuard { inner }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, GuardState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn throttled(&self, name: &str, peer: &str) -> Option<Duration> {
        let now = Instant::now();
        let l = self.inner.limits;
        let st = self.state();
        let a = over(st.accounts.get(name), l.per_account, l.window, now);
        let p = over(st.peers.get(peer), l.per_peer, l.window, now);
        a.max(p)
    }

    /// Checks a name and password and opens a session. Every failure costs
    /// the same (an unknown name is checked against a dummy hash), counts
    /// against the account and the peer, and is logged in aggregate.
    pub async fn password_login(
        &self,
        name: &str,
        password: &str,
        peer: &str,
        policy: SessionPolicy,
    ) -> std::result::Result<NewSession, LoginRefusal> {
        let name = lienthong_types::text::truncate(name.trim(), 200).to_owned();
        if let Some(retry_after) = self.throttled(&name, peer) {
            self.failed(&name, peer, true).await;
            return Err(LoginRefusal::Throttled { retry_after });
        }
        let _permit = tokio::time::timeout(Duration::from_secs(10), self.inner.hashing.acquire())
            .await
            .map_err(|_| {
                LoginRefusal::Failed(Error::new(
                    Reason::Unavailable,
                    "the gateway is checking too many logins at once; try again in a moment",
                ))
            })?
            .map_err(|_| LoginRefusal::Failed(Error::new(Reason::Unavailable, "shutting down")))?;
        let account = by_name(&self.inner.store, &name).await?;
        let phc = match account.as_ref().and_then(|m| m.password_hash.clone()) {
            Some(h) => h,
            None => self.dummy_hash().await?,
        };
        let ok = verify_password(password, &phc).await
            && account.as_ref().is_some_and(|m| m.state == ACTIVE);
        let account = match (ok, account) {
            (true, Some(m)) => m,
            _ => {
                self.failed(&name, peer, false).await;
                return Err(LoginRefusal::Refused);
            }
        };
        self.state().accounts.remove(&name);
        Ok(open_session(
            &self.inner.store,
            &view(&account),
            LoginMethod::Password,
            peer,
            policy,
        )
        .await?)
    }

    /// Opens a session for the operator a verified client certificate
    /// (`spki_sha256`: its key's digest) is bound to.
    pub async fn certificate_login(
        &self,
        spki_sha256: &[u8; 32],
        peer: &str,
        policy: SessionPolicy,
    ) -> std::result::Result<NewSession, LoginRefusal> {
        let op = self.certificate_operator(spki_sha256).await?;
        Ok(open_session(
            &self.inner.store,
            &op,
            LoginMethod::Certificate,
            peer,
            policy,
        )
        .await?)
    }

    /// The active operator a client certificate's key is bound to.
    pub async fn certificate_operator(
        &self,
        spki_sha256: &[u8; 32],
    ) -> std::result::Result<Operator, LoginRefusal> {
        let hex = hex::encode(spki_sha256);
        // A login is a call of its own: it sees the bindings as they are now.
        self.inner.store.confirm_directory().await?;
        let binding = self
            .inner
            .store
            .client_cert(&hex)
            .await?
            .filter(|c| c.role == "operator");
        let Some(binding) = binding else {
            return Err(LoginRefusal::Certificate(format!(
                "this client certificate (key sha256 {hex}) is not bound to an operator; an admin binds it with `lienthong directory bind-operator NAME CERT.pem`"
            )));
        };
        match by_name(&self.inner.store, &binding.organ_id).await? {
            Some(m) if m.state == ACTIVE => Ok(view(&m)),
            _ => Err(LoginRefusal::Certificate(format!(
                "this client certificate is bound to {:?}, which is not an active operator account",
                binding.organ_id
            ))),
        }
    }

    async fn dummy_hash(&self) -> Result<String> {
        self.inner
            .dummy
            .get_or_try_init(|| async { hash_password(&random_token()?).await })
            .await
            .cloned()
    }

    /// A login refused before any password was checked (a client
    /// certificate that is not trusted or not bound), counted and logged
    /// like a wrong password.
    pub async fn record_failure(&self, name: &str, peer: &str) {
        self.failed(name, peer, false).await;
    }

    /// Counts a failure, and writes its line now if the peer had none in
    /// the last minute and the minute's budget allows; otherwise the flush
    /// task writes it later.
    async fn failed(&self, name: &str, peer: &str, throttled: bool) {
        let line = {
            let now = Instant::now();
            let window = self.inner.limits.window;
            let mut st = self.state();
            if !throttled {
                count(&mut st.accounts, name, window, now);
                count(&mut st.peers, peer, window, now);
            }
            let key = if st.pending.len() >= MAX_TRACKED && !st.pending.contains_key(peer) {
                "*".to_owned()
            } else {
                peer.to_owned()
            };
            let p = st.pending.entry(key.clone()).or_default();
            if throttled {
                p.throttled += 1;
            } else {
                p.failures += 1;
            }
            if p.names.len() < 5 {
                p.names
                    .insert(lienthong_types::text::truncate(name, 100).to_owned());
            } else if !p.names.contains(name) {
                p.more_names += 1;
            }
            take_line(&mut st, &key, now)
        };
        if let Some(e) = line {
            self.write(vec![e]).await;
        }
    }

    async fn write(&self, lines: Vec<NewEvent>) {
        write_lines(&self.inner.store, lines).await;
    }
}

async fn write_lines(store: &Store, lines: Vec<NewEvent>) {
    for e in lines {
        if let Err(err) = store.log(e).await {
            tracing::warn!(error = %err.chain(), "the failed logins could not be written to the transfer log");
        }
    }
}

fn failure_line(peer: &str, p: Pending) -> NewEvent {
    let mut names: Vec<String> = p.names.into_iter().map(|n| format!("{n:?}")).collect();
    if p.more_names > 0 {
        names.push(format!("{} more", p.more_names));
    }
    let from = if peer == "*" {
        "from several peers".to_owned()
    } else {
        format!("from {peer}")
    };
    let mut detail = format!(
        "{} failed login{} {from} (names tried: {})",
        p.failures,
        if p.failures == 1 { "" } else { "s" },
        names.join(", ")
    );
    if p.throttled > 0 {
        detail.push_str(&format!(
            "; {} more attempt{} turned away by the rate limit",
            p.throttled,
            if p.throttled == 1 { "" } else { "s" }
        ));
    }
    line(
        EventKind::OperatorLogin,
        detail,
        Some("LOGIN_FAILED"),
        &Actor {
            name: format!("peer:{peer}"),
            transport: "http",
        },
    )
}

/// The line of `key`'s pending failures, if one may be written now.
fn take_line(st: &mut GuardState, key: &str, now: Instant) -> Option<NewEvent> {
    if st
        .last_line
        .get(key)
        .is_some_and(|t| now.duration_since(*t) < LINE_EVERY)
    {
        return None;
    }
    let (start, used) = match st.minute {
        Some((s, n)) if now.duration_since(s) < LINE_EVERY => (s, n),
        _ => (now, 0),
    };
    if used >= LINES_PER_MINUTE && key != "*" {
        // Over the minute's budget: fold into the shared line.
        let p = st.pending.remove(key)?;
        let shared = st.pending.entry("*".to_owned()).or_default();
        shared.failures += p.failures;
        shared.throttled += p.throttled;
        shared.more_names += p.more_names + p.names.len() as u32;
        return None;
    }
    let p = st.pending.remove(key)?;
    st.minute = Some((start, used + 1));
    if st.last_line.len() >= MAX_TRACKED {
        st.last_line
            .retain(|_, t| now.duration_since(*t) < LINE_EVERY);
    }
    st.last_line.insert(key.to_owned(), now);
    Some(failure_line(key, p))
}

async fn flush_loop(weak: Weak<GuardInner>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let lines = {
            let now = Instant::now();
            let mut st = inner.state.lock().unwrap_or_else(|p| p.into_inner());
            let keys: Vec<String> = st.pending.keys().cloned().collect();
            keys.iter()
                .filter_map(|k| take_line(&mut st, k, now))
                .collect::<Vec<_>>()
        };
        write_lines(&inner.store, lines).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn roles_and_names() {
        assert_eq!(OperatorRole::parse("admin").unwrap(), OperatorRole::Admin);
        assert_eq!(
            OperatorRole::parse(" viewer ").unwrap(),
            OperatorRole::Viewer
        );
        assert!(OperatorRole::parse("root").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("a\u{0}b").is_err());
        assert_eq!(check_name(" Trung tâm CNTT ").unwrap(), "Trung tâm CNTT");
        assert!(check_password("short").is_err());
        assert!(check_password("mười ký tự đủ dài").is_ok());
    }

    #[test]
    fn peers_are_keyed_by_address_or_ipv6_prefix() {
        assert_eq!(peer_key("192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(
            peer_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::/64"
        );
        assert_eq!(peer_key("::ffff:10.0.0.1".parse().unwrap()), "10.0.0.1");
    }

    #[tokio::test]
    async fn a_password_hash_is_argon2id_and_verifies() {
        let h = hash_password("một mật khẩu đủ dài").await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(verify_password("một mật khẩu đủ dài", &h).await);
        assert!(!verify_password("một mật khẩu khác", &h).await);
        assert!(!verify_password("x", "not a phc string").await);
    }

    #[test]
    fn failure_lines_are_one_per_peer_and_minute_and_bounded_in_all() {
        let mut st = GuardState::default();
        let now = Instant::now();
        let fail = |st: &mut GuardState, peer: &str| {
            let p = st.pending.entry(peer.to_owned()).or_default();
            p.failures += 1;
            p.names.insert("admin".to_owned());
        };
        fail(&mut st, "192.0.2.1");
        assert!(take_line(&mut st, "192.0.2.1", now).is_some());
        for _ in 0..100 {
            fail(&mut st, "192.0.2.1");
            assert!(take_line(&mut st, "192.0.2.1", now).is_none());
        }
        let later = now + LINE_EVERY;
        let e = take_line(&mut st, "192.0.2.1", later).unwrap();
        assert!(
            e.detail.starts_with("100 failed logins from 192.0.2.1"),
            "{}",
            e.detail
        );
        assert_eq!(e.reason.as_deref(), Some("LOGIN_FAILED"));
        // Many peers in one minute: at most LINES_PER_MINUTE lines, the
        // others folded into one shared line.
        let mut lines = 0;
        for i in 0..200 {
            let peer = format!("198.51.100.{i}");
            fail(&mut st, &peer);
            if take_line(&mut st, &peer, later).is_some() {
                lines += 1;
            }
        }
        assert_eq!(lines, LINES_PER_MINUTE - 1);
        let shared = st.pending.get("*").unwrap();
        assert_eq!(shared.failures, 200 - (LINES_PER_MINUTE - 1));
    }
}
