//! The directory as the pipeline reads it on every call — agencies, the
//! bindings of signing and client keys, representations — kept in memory
//! and checked against the database's directory version.
//!
//! Every change of the directory, by whichever process, moves the version
//! in the transaction that makes the change. A call confirms the version
//! once when it begins ([`Store::confirm_directory`]): one small read
//! instead of a read per look-up, and a change made before the call began
//! (by the command line, another replica, the Admin service) is seen by it,
//! as when every look-up read the database. Look-ups that no call confirmed
//! (background work) confirm it themselves when it is older than
//! [`UNCONFIRMED_FOR_AT_MOST`].
//!
//! Architecture invariant: an entry read from the database is kept only if
//! no confirmation or change emptied the cache while it was being read, so
//! that a read that raced a change cannot put the old row back.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::rows::{AgencyRow, ClientCertRow, SigningCertRow};

/// How long look-ups trust a version nobody confirmed since.
pub(crate) const UNCONFIRMED_FOR_AT_MOST: Duration = Duration::from_secs(1);

/// Entries per kind before the cache starts again: the directory has
/// hundreds of agencies; names nobody knows (kept as "not there") must not
/// grow it without bound.
const MAX_ENTRIES: usize = 20_000;

#[derive(Debug, Default)]
pub(crate) struct DirectoryCache {
    state: RwLock<Cached>,
    /// One confirmation at a time: calls that begin while one is under way
    /// wait for the next and share it.
    confirming: tokio::sync::Mutex<()>,
    /// Confirmations started, the number of the last one that ended, and
    /// of the last one that found the database out.
    started: AtomicU64,
    ended: AtomicU64,
    failed: AtomicU64,
}

/// What a call that begins now does about the directory's version; see
/// [`DirectoryCache::confirmation`].
pub(crate) enum Confirm<'a> {
    /// Read it: this confirmation is the call's own.
    Read(Confirmation<'a>),
    /// One that started after the call began has ended meanwhile: its
    /// answer holds for this call too.
    Confirmed,
    /// One that started after the call began found the database out: so it
    /// is for this call, which does not wait as long again for the same
    /// answer behind the others that waited.
    Unavailable,
}

/// A confirmation under way; see [`DirectoryCache::confirmation`].
pub(crate) struct Confirmation<'a> {
    pub(crate) number: u64,
    _one_at_a_time: tokio::sync::MutexGuard<'a, ()>,
}

#[derive(Debug, Default)]
pub(crate) struct Cached {
    /// The directory version the entries belong to; `None` before the
    /// first confirmation.
    version: Option<i64>,
    confirmed_at: Option<Instant>,
    /// Moves whenever the entries are dropped.
    generation: u64,
    agencies: HashMap<String, Option<AgencyRow>>,
    signing: HashMap<String, Option<SigningCertRow>>,
    client: HashMap<String, Option<ClientCertRow>>,
    represents: HashMap<(String, String), bool>,
}

impl Cached {
    fn clear(&mut self) {
        self.generation += 1;
        self.agencies.clear();
        self.signing.clear();
        self.client.clear();
        self.represents.clear();
    }
}

/// Which map of the cache a look-up reads.
pub(crate) trait Kind {
    type Key: Eq + Hash + Clone;
    type Value: Clone;
    fn map(c: &mut Cached) -> &mut HashMap<Self::Key, Self::Value>;
    fn get(c: &Cached, key: &Self::Key) -> Option<Self::Value>;
}

macro_rules! kind {
    ($name:ident, $field:ident, $key:ty, $value:ty) => {
        pub(crate) struct $name;
        impl Kind for $name {
            type Key = $key;
            type Value = $value;
            fn map(c: &mut Cached) -> &mut HashMap<$key, $value> {
                &mut c.$field
            }
            fn get(c: &Cached, key: &$key) -> Option<$value> {
                c.$field.get(key).cloned()
            }
        }
    };
}

kind!(Agencies, agencies, String, Option<AgencyRow>);
kind!(Signing, signing, String, Option<SigningCertRow>);
kind!(Client, client, String, Option<ClientCertRow>);
kind!(Represents, represents, (String, String), bool);

impl DirectoryCache {
    /// Whether look-ups may use the entries without confirming first.
    pub(crate) fn fresh(&self) -> bool {
        self.read()
            .confirmed_at
            .is_some_and(|t| t.elapsed() < UNCONFIRMED_FOR_AT_MOST)
    }

    /// A confirmation for a call that begins now, or the answer of one
    /// that started after the call began and ended meanwhile.
    pub(crate) async fn confirmation(&self) -> Confirm<'_> {
        let asked = self.started.load(Ordering::SeqCst);
        let guard = self.confirming.lock().await;
        if self.ended.load(Ordering::SeqCst) > asked {
            return Confirm::Confirmed;
        }
        if self.failed.load(Ordering::SeqCst) > asked {
            return Confirm::Unavailable;
        }
        Confirm::Read(Confirmation {
            number: self.started.fetch_add(1, Ordering::SeqCst) + 1,
            _one_at_a_time: guard,
        })
    }

    /// Confirmation `number` found the database out.
    pub(crate) fn unreachable(&self, number: u64) {
        self.failed.fetch_max(number, Ordering::SeqCst);
    }

    /// Confirmation `number` found the directory at `version`.
    pub(crate) fn confirmed_by(&self, number: u64, version: i64) {
        self.confirmed(version);
        self.ended.fetch_max(number, Ordering::SeqCst);
    }

    /// The database says the directory is at `version` now.
    pub(crate) fn confirmed(&self, version: i64) {
        let mut c = self.write();
        if c.version != Some(version) {
            c.clear();
            c.version = Some(version);
        }
        c.confirmed_at = Some(Instant::now());
    }

    /// This process changed the directory: nothing kept is to be trusted.
    pub(crate) fn changed(&self) {
        let mut c = self.write();
        c.clear();
        c.version = None;
        c.confirmed_at = None;
    }

    /// A cached entry, and otherwise the generation to hand back to
    /// [`DirectoryCache::put`] with what the database said.
    pub(crate) fn get<K: Kind>(&self, key: &K::Key) -> Result<K::Value, u64> {
        let c = self.read();
        K::get(&c, key).ok_or(c.generation)
    }

    pub(crate) fn put<K: Kind>(&self, generation: u64, key: K::Key, value: K::Value) {
        let mut c = self.write();
        if c.generation != generation || c.version.is_none() {
            return;
        }
        if K::map(&mut c).len() >= MAX_ENTRIES {
            K::map(&mut c).clear();
        }
        K::map(&mut c).insert(key, value);
    }

    // A poisoned lock only means a panic elsewhere while it was held; the
    // maps are still whole (no method leaves them half-changed).
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cached> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Cached> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agency(id: &str) -> AgencyRow {
        AgencyRow {
            organ_id: id.to_owned(),
            name: id.to_owned(),
            parent: None,
            email: String::new(),
            telephone: String::new(),
            address: String::new(),
            website: String::new(),
            channel: "grpc".to_owned(),
            active: true,
            extra: "{}".to_owned(),
            updated_at: 0,
            source: None,
        }
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let cache = DirectoryCache::default();
        cache.confirmed(1);
        let Err(generation) = cache.get::<Agencies>(&"A".to_owned()) else {
            panic!("an empty cache has nothing");
        };
        // The directory changes while the row is being read.
        cache.changed();
        cache.put::<Agencies>(generation, "A".to_owned(), Some(agency("A")));
        cache.confirmed(2);
        assert!(cache.get::<Agencies>(&"A".to_owned()).is_err());

        let Err(generation) = cache.get::<Agencies>(&"A".to_owned()) else {
            panic!("still empty");
        };
        cache.put::<Agencies>(generation, "A".to_owned(), Some(agency("A")));
        assert_eq!(
            cache.get::<Agencies>(&"A".to_owned()),
            Ok(Some(agency("A")))
        );
        // Another process moved the version: everything goes.
        cache.confirmed(3);
        assert!(cache.get::<Agencies>(&"A".to_owned()).is_err());
    }

    #[tokio::test]
    async fn only_a_confirmation_that_began_after_a_call_answers_for_it() {
        use std::sync::Arc;
        let cache = Arc::new(DirectoryCache::default());
        let waiting = |cache: &Arc<DirectoryCache>| {
            let cache = cache.clone();
            tokio::spawn(async move {
                match cache.confirmation().await {
                    Confirm::Read(c) => {
                        // Under way for a moment, then done.
                        tokio::task::yield_now().await;
                        cache.confirmed_by(c.number, 1);
                        Some(c.number)
                    }
                    Confirm::Confirmed => None,
                    Confirm::Unavailable => panic!("nothing failed"),
                }
            })
        };
        let Confirm::Read(first) = cache.confirmation().await else {
            panic!("nothing was confirmed yet");
        };
        // Two calls begin while the first confirmation is under way: it
        // began before them, so it cannot answer for them. The first to get
        // its turn confirms; the other shares that one.
        let x = waiting(&cache);
        let y = waiting(&cache);
        tokio::task::yield_now().await;
        cache.confirmed_by(first.number, 1);
        drop(first);
        let (x, y) = (x.await.ok().flatten(), y.await.ok().flatten());
        assert_eq!((x, y), (Some(2), None), "x confirms again, y shares it");
        // A call that begins after that has nothing under way: its own.
        assert_eq!(waiting(&cache).await.ok().flatten(), Some(3));
    }

    #[tokio::test]
    async fn a_confirmation_that_found_the_database_out_answers_for_the_calls_that_waited() {
        use std::sync::Arc;
        let cache = Arc::new(DirectoryCache::default());
        let Confirm::Read(first) = cache.confirmation().await else {
            panic!("nothing was confirmed yet");
        };
        // Calls that begin while it is under way wait for the next one.
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    match cache.confirmation().await {
                        Confirm::Read(c) => {
                            tokio::task::yield_now().await;
                            cache.unreachable(c.number);
                            "read"
                        }
                        Confirm::Confirmed => "confirmed",
                        Confirm::Unavailable => "unavailable",
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        cache.unreachable(first.number);
        drop(first);
        let mut got = Vec::new();
        for w in waiting {
            got.push(w.await.expect("a waiting call"));
        }
        // The first began before them: the first to get its turn asks the
        // database itself; the others take its answer, not a turn each.
        got.sort();
        assert_eq!(got, ["read", "unavailable", "unavailable"]);
        // A call that begins after that asks again.
        assert!(matches!(cache.confirmation().await, Confirm::Read(_)));
    }

    #[test]
    fn an_unconfirmed_cache_is_not_fresh_and_keeps_nothing() {
        let cache = DirectoryCache::default();
        assert!(!cache.fresh());
        let Err(generation) = cache.get::<Client>(&"k".to_owned()) else {
            panic!("empty");
        };
        cache.put::<Client>(generation, "k".to_owned(), None);
        assert!(cache.get::<Client>(&"k".to_owned()).is_err());
        cache.confirmed(7);
        assert!(cache.fresh());
    }
}
