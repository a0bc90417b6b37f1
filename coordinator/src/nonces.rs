//! The replay cache of signed requests: every nonce a PDC used while its signature could still be accepted.
//!
//! A signed request is accepted while its timestamp is within the signature window of the coordinator's clock. A
//! request captured on the wire could be sent again within that window; its signature would still verify. Each
//! request therefore carries a fresh random nonce under its signature, and the coordinator refuses a (PDC, nonce)
//! it has already accepted. An entry is kept only while a request with its timestamp could still be accepted, so
//! memory is bounded by the requests of one window, and a hard cap refuses more (`ResourceExhausted`) rather than
//! grow without end. Pure: time is an argument.

use std::collections::{BTreeSet, HashSet};

/// The bytes of a request's nonce.
pub const NONCE_BYTES: usize = 16;

/// Why a request's nonce is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NonceRefusal {
    /// The nonce is not [`NONCE_BYTES`] long.
    Malformed {
        /// Its length.
        len: usize,
    },
    /// This PDC already used this nonce within the window: a replay.
    Replayed,
    /// The cache holds as many nonces as it may; the caller should slow down.
    Full {
        /// The cap.
        capacity: usize,
    },
}

impl std::fmt::Display for NonceRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NonceRefusal::Malformed { len } => write!(f, "the request's nonce has {len} bytes, expected {NONCE_BYTES}"),
            NonceRefusal::Replayed => {
                write!(f, "replayed request: this signed request (its nonce) was already used")
            }
            NonceRefusal::Full { capacity } => {
                write!(f, "too many signed requests within the signature window ({capacity} held): retry later")
            }
        }
    }
}

/// The nonces accepted within the signature window.
#[derive(Debug)]
pub struct NonceCache {
    window_ms: u64,
    capacity: usize,
    seen: HashSet<(String, [u8; NONCE_BYTES])>,
    /// The same entries by timestamp, to forget them once their window has passed.
    by_time: BTreeSet<(u64, String, [u8; NONCE_BYTES])>,
}

impl NonceCache {
    /// A cache for requests accepted within `window_ms` of the clock, holding at most `capacity` nonces.
    pub fn new(window_ms: u64, capacity: usize) -> Self {
        Self { window_ms, capacity, seen: HashSet::new(), by_time: BTreeSet::new() }
    }

    /// Accepts `nonce` of `pdc_id`'s request signed at `timestamp_ms`, at `now_ms`, or says why not. The caller
    /// has verified the signature (so only the PDC's key holder can fill its entries) and the timestamp's window.
    pub fn accept(&mut self, pdc_id: &str, nonce: &[u8], timestamp_ms: u64, now_ms: u64) -> Result<(), NonceRefusal> {
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| NonceRefusal::Malformed { len: nonce.len() })?;
        self.forget_before(now_ms);
        let key = (pdc_id.to_owned(), nonce);
        if self.seen.contains(&key) {
            return Err(NonceRefusal::Replayed);
        }
        if self.seen.len() >= self.capacity {
            return Err(NonceRefusal::Full { capacity: self.capacity });
        }
        self.by_time.insert((timestamp_ms, key.0.clone(), nonce));
        self.seen.insert(key);
        Ok(())
    }

    /// How many nonces are held.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Forgets every nonce whose request could no longer be accepted at `now_ms` (its timestamp is more than the
    /// window behind).
    fn forget_before(&mut self, now_ms: u64) {
        while let Some(first) = self.by_time.first() {
            if first.0.saturating_add(self.window_ms) >= now_ms {
                break;
            }
            let (_, pdc_id, nonce) = self.by_time.pop_first().expect("just looked at it");
            self.seen.remove(&(pdc_id, nonce));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: u64 = 300_000;

    #[test]
    fn a_nonce_is_accepted_once_per_pdc_within_the_window() {
        let mut cache = NonceCache::new(WINDOW, 10);
        assert_eq!(cache.accept("a", &[1; 16], 1_000, 1_000), Ok(()));
        assert_eq!(cache.accept("a", &[1; 16], 1_000, 2_000), Err(NonceRefusal::Replayed));
        // The same nonce of another PDC is another request.
        assert_eq!(cache.accept("b", &[1; 16], 1_000, 2_000), Ok(()));
        assert_eq!(cache.accept("a", &[2; 16], 1_000, 2_000), Ok(()));
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn nonces_are_forgotten_once_their_request_could_no_longer_be_accepted() {
        let mut cache = NonceCache::new(WINDOW, 10);
        cache.accept("a", &[1; 16], 1_000, 1_000).unwrap();
        // Still within the window: remembered.
        assert_eq!(cache.accept("a", &[1; 16], 1_000, 1_000 + WINDOW), Err(NonceRefusal::Replayed));
        // Past it the request itself would be refused for its timestamp; the nonce can go.
        cache.accept("a", &[3; 16], 1_000 + WINDOW + 1, 1_000 + WINDOW + 1).unwrap();
        assert_eq!(cache.len(), 1);
        assert!(!cache.is_empty());
    }

    #[test]
    fn a_malformed_nonce_and_a_full_cache_are_refused() {
        let mut cache = NonceCache::new(WINDOW, 2);
        assert_eq!(cache.accept("a", &[1; 8], 0, 0), Err(NonceRefusal::Malformed { len: 8 }));
        cache.accept("a", &[1; 16], 0, 0).unwrap();
        cache.accept("a", &[2; 16], 0, 0).unwrap();
        assert_eq!(cache.accept("a", &[3; 16], 0, 0), Err(NonceRefusal::Full { capacity: 2 }));
        assert_eq!(
            NonceRefusal::Replayed.to_string(),
            "replayed request: this signed request (its nonce) was already used"
        );
    }
}
