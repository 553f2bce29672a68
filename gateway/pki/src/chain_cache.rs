//! Certificate chains already verified, so that a signer's chain is built
//! to the trust anchors and checked against the revocation lists once, not
//! at every document it signs.
//!
//! What is kept is the outcome of path building and revocation only: the
//! signature over each document, the certificate policy's checks of the
//! certificates themselves, the validity at the claimed signing time and
//! the directory's binding of the key to the sender are still judged for
//! every document.
//!
//! An entry is keyed by the SHA-256 of every certificate the signature
//! carries, in order (each DER with its length). Not the key alone: two
//! certificates for one key (a renewal, a reissue after a revocation)
//! differ in serial, validity and issuer, and each must be judged on its
//! own. Not the leaf alone: the path webpki builds depends on the
//! intermediates sent with it, and a leaf sent without them must be refused
//! as it would be without a cache.
//!
//! An entry holds for the verification times at which the uncached check
//! would give the same answer: from the latest notBefore to the earliest
//! notAfter of the path, and, when revocation lists judged it, only before
//! the earliest nextUpdate among them (a stale list changes the answer or
//! the warnings). It holds under the revocation lists it was judged with:
//! a snapshot read again from the files has a new generation, and the
//! first look under it drops every entry. New anchors or another policy
//! are another `TrustAnchors`, with a cache of its own. Refusals are never
//! kept, so a refusal stays accurate as soon as an operator fixes what
//! caused it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::crl::RevocationInfo;

/// How many chains a `TrustAnchors` keeps by default: far more signers
/// than a province has, few enough (a few KB each) to never matter.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// What identifies a verified chain: the SHA-256 of the certificates a
/// signature carries, leaf first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ChainKey([u8; 32]);

impl ChainKey {
    pub(crate) fn of<C: AsRef<[u8]>>(certificates: &[C]) -> ChainKey {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for c in certificates {
            let der = c.as_ref();
            // The length first, so that no two lists of certificates hash
            // the same bytes.
            ctx.update(&(der.len() as u64).to_be_bytes());
            ctx.update(der);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        ChainKey(out)
    }
}

/// The outcome of building and checking one signature's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifiedChain {
    /// Where the path's intermediates are in the signature's certificates,
    /// in path order (the leaf is the first certificate).
    pub(crate) path: Vec<usize>,
    /// `VerifiedSigner::chain`.
    pub(crate) chain: Vec<String>,
    pub(crate) trust_anchor: String,
    pub(crate) revocation: Option<RevocationInfo>,
    pub(crate) warnings: Vec<String>,
    /// The verification times (Unix seconds) it holds for: from
    /// `valid_from`, before `valid_until`.
    pub(crate) valid_from: i64,
    pub(crate) valid_until: i64,
}

impl VerifiedChain {
    fn holds_at(&self, now: i64) -> bool {
        self.valid_from <= now && now < self.valid_until
    }
}

/// How much the cache saved, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChainCacheStats {
    /// Chains built and checked (each cache miss, refusals included).
    pub verified: u64,
    /// Signatures whose chain was taken from the cache.
    pub reused: u64,
    /// Chains kept now.
    pub entries: usize,
}

#[derive(Debug, Default)]
struct State {
    /// The revocation lists' generation the entries were judged under.
    generation: u64,
    entries: HashMap<ChainKey, Arc<VerifiedChain>>,
    /// The keys in the order they came in: the oldest goes first when the
    /// cache is full. Holds exactly the keys of `entries`.
    order: VecDeque<ChainKey>,
}

impl State {
    /// Moves to `generation` if it is newer, dropping everything judged
    /// under older lists; whether the entries are now of `generation`.
    fn at_generation(&mut self, generation: u64) -> bool {
        if generation > self.generation {
            self.entries.clear();
            self.order.clear();
            self.generation = generation;
        }
        generation == self.generation
    }
}

/// The chains verified under one `TrustAnchors`. The lock is held for a
/// map look-up or insert only, never across a verification.
#[derive(Debug)]
pub(crate) struct ChainCache {
    capacity: usize,
    state: Mutex<State>,
    verified: AtomicU64,
    reused: AtomicU64,
}

impl Default for ChainCache {
    fn default() -> Self {
        ChainCache::with_capacity(DEFAULT_CAPACITY)
    }
}

impl ChainCache {
    /// At most `capacity` chains; 0 keeps none.
    pub(crate) fn with_capacity(capacity: usize) -> ChainCache {
        ChainCache {
            capacity,
            state: Mutex::new(State::default()),
            verified: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is consistent after any panic (each change is a single
        // map or queue operation), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The chain verified for `key` under the lists of `generation`, if it
    /// holds at `now` (Unix seconds).
    pub(crate) fn get(
        &self,
        key: &ChainKey,
        generation: u64,
        now: i64,
    ) -> Option<Arc<VerifiedChain>> {
        if self.capacity == 0 {
            return None;
        }
        let found = {
            let mut state = self.state();
            if !state.at_generation(generation) {
                return None;
            }
            state.entries.get(key).filter(|e| e.holds_at(now)).cloned()
        };
        if found.is_some() {
            self.reused.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Counts a chain built and checked (kept or not).
    pub(crate) fn count_verification(&self) {
        self.verified.fetch_add(1, Ordering::Relaxed);
    }

    /// Keeps `chain`, verified under the lists of `generation`; an entry
    /// past its time is replaced in place. Nothing is kept when the lists
    /// were read again meanwhile.
    pub(crate) fn insert(&self, key: ChainKey, generation: u64, chain: Arc<VerifiedChain>) {
        if self.capacity == 0 {
            return;
        }
        let mut state = self.state();
        if !state.at_generation(generation) {
            return;
        }
        if let Some(slot) = state.entries.get_mut(&key) {
            *slot = chain;
            return;
        }
        while state.entries.len() >= self.capacity {
            let Some(oldest) = state.order.pop_front() else {
                break;
            };
            state.entries.remove(&oldest);
        }
        state.entries.insert(key, chain);
        state.order.push_back(key);
    }

    pub(crate) fn stats(&self) -> ChainCacheStats {
        ChainCacheStats {
            verified: self.verified.load(Ordering::Relaxed),
            reused: self.reused.load(Ordering::Relaxed),
            entries: self.state().entries.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(valid_from: i64, valid_until: i64) -> Arc<VerifiedChain> {
        Arc::new(VerifiedChain {
            path: Vec::new(),
            chain: vec!["CN=Root".to_owned()],
            trust_anchor: "CN=Root".to_owned(),
            revocation: None,
            warnings: Vec::new(),
            valid_from,
            valid_until,
        })
    }

    fn key(n: u8) -> ChainKey {
        ChainKey::of(&[[n; 4]])
    }

    #[test]
    fn the_key_covers_every_certificate_and_its_boundaries() {
        let leaf = b"leaf".as_slice();
        assert_eq!(ChainKey::of(&[leaf]), ChainKey::of(&[leaf]));
        assert_ne!(ChainKey::of(&[leaf]), ChainKey::of(&[leaf, b"mid"]));
        assert_ne!(
            ChainKey::of(&[b"ab".as_slice(), b"c"]),
            ChainKey::of(&[b"a".as_slice(), b"bc"])
        );
    }

    #[test]
    fn an_entry_holds_within_its_times_only() {
        let c = ChainCache::default();
        c.insert(key(1), 0, chain(100, 200));
        assert!(c.get(&key(1), 0, 99).is_none());
        assert!(c.get(&key(1), 0, 100).is_some());
        assert!(c.get(&key(1), 0, 199).is_some());
        assert!(c.get(&key(1), 0, 200).is_none());
        assert!(c.get(&key(2), 0, 150).is_none());
        // Verified again later, the entry is replaced in place.
        c.insert(key(1), 0, chain(150, 300));
        assert!(c.get(&key(1), 0, 250).is_some());
        assert_eq!(c.stats().entries, 1);
        assert_eq!(c.stats().reused, 3);
    }

    #[test]
    fn new_lists_drop_everything_and_late_results_of_old_lists_are_not_kept() {
        let c = ChainCache::default();
        c.insert(key(1), 5, chain(0, 100));
        assert!(c.get(&key(1), 5, 10).is_some());
        assert!(c.get(&key(1), 6, 10).is_none());
        assert_eq!(c.stats().entries, 0);
        // A verification that began under generation 5 ends after the
        // reload: its outcome is not kept.
        c.insert(key(2), 5, chain(0, 100));
        assert!(c.get(&key(2), 6, 10).is_none());
        assert!(c.get(&key(2), 5, 10).is_none());
        assert_eq!(c.stats().entries, 0);
    }

    #[test]
    fn the_oldest_entry_goes_when_full() {
        let c = ChainCache::with_capacity(3);
        for n in 0..5 {
            c.insert(key(n), 0, chain(0, 100));
        }
        assert_eq!(c.stats().entries, 3);
        assert!(c.get(&key(0), 0, 1).is_none());
        assert!(c.get(&key(1), 0, 1).is_none());
        for n in 2..5 {
            assert!(c.get(&key(n), 0, 1).is_some(), "{n}");
        }
        let off = ChainCache::with_capacity(0);
        off.insert(key(0), 0, chain(0, 100));
        assert!(off.get(&key(0), 0, 1).is_none());
        assert_eq!(off.stats().entries, 0);
    }
}
