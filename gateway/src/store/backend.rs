//! The state a gateway keeps besides its audit log of record, behind one trait so a single
//! gateway keeps it in embedded sled and several replicas of one domain share it in PostgreSQL:
//! the replay cache (first use wins across every replica), revocations (mirrored in memory for
//! the hot path), last-good partner bundles, the outbound revocation-notice queue, rotation
//! state and the crossing-id index.
//!
//! Hot-path reads (is this revoked?) come from [`RevocationCache`], which the backend keeps
//! current; a backend that cannot say its mirror is current says so through [`ready`], and the
//! gateway then fails closed (`state_unavailable`).
//!
//! [`ready`]: StateBackend::ready

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::RwLock;

use crate::chain::{RevocationKind, Revocations};
use crate::time::Instant;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// Saved bundle documents: `(trust domain, document)`.
pub type SavedBundles = Vec<(String, Vec<u8>)>;
/// Queued notices per partner, in issue order.
pub type NoticeQueues = Vec<(String, Vec<QueuedNotice>)>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

pub(crate) fn err(x: impl std::fmt::Display) -> StateError {
    StateError(x.to_string())
}

/// A revocation: who owns the value, what kind, the value, until when (0: for good).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Revocation {
    pub domain: String,
    pub kind: String,
    pub value: String,
    pub until: Instant,
    pub at: Instant,
    /// For a partner's notice: its `iat`, so an older notice for the same value is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice_iat: Option<Instant>,
}

/// Two revocations of one value merged: permanent if either is, else the later `until`. A
/// revocation is never lifted or shortened by another.
pub fn merge_until(a: Instant, b: Instant) -> Instant {
    if a == 0 || b == 0 {
        0
    } else {
        a.max(b)
    }
}

/// What [`StateBackend::revoke`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The value was not revoked before.
    New,
    /// Merged into an existing revocation (its `until` is the merged one).
    Merged(Instant),
    /// A partner notice older than one already applied for this value: nothing changed.
    Stale,
}

/// A revocation notice waiting to be delivered to a partner gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedNotice {
    /// The backend's handle of this entry (its queue position).
    pub id: String,
    /// The partner gateway's SPIFFE ID.
    pub partner: String,
    pub jti: String,
    pub notice: Vec<u8>,
}

/// The in-memory mirror of revocations every verification reads, and how fresh it is.
#[derive(Debug, Default)]
pub struct RevocationCache {
    map: RwLock<HashMap<(String, RevocationKind, String), Instant>>,
    /// Milliseconds (Unix) of the last time the mirror was known to be complete; `i64::MAX`:
    /// always (a backend whose mirror is the store itself).
    synced_ms: AtomicI64,
}

impl RevocationCache {
    /// A mirror that is complete by construction (sled: every write goes through it).
    pub fn always_fresh() -> Self {
        let c = RevocationCache::default();
        c.synced_ms.store(i64::MAX, Ordering::Release);
        c
    }

    /// Records `until` for a value (already merged by the store).
    pub fn set(&self, r: &Revocation) {
        if let Some(kind) = RevocationKind::parse(&r.kind) {
            if let Ok(mut m) = self.map.write() {
                let e = m
                    .entry((r.domain.clone(), kind, r.value.clone()))
                    .or_insert(r.until);
                *e = merge_until(*e, r.until);
            }
        }
    }

    pub fn mark_synced(&self, at_ms: i64) {
        if self.synced_ms.load(Ordering::Acquire) != i64::MAX {
            self.synced_ms.store(at_ms, Ordering::Release);
        }
    }

    /// Milliseconds since the mirror was last known complete.
    pub fn age_ms(&self, now_ms: i64) -> i64 {
        now_ms
            .saturating_sub(self.synced_ms.load(Ordering::Acquire))
            .max(0)
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Revocations for RevocationCache {
    fn is_revoked(&self, domain: &str, kind: RevocationKind, value: &str, now: Instant) -> bool {
        match self.map.read() {
            Ok(c) => match c.get(&(domain.to_string(), kind, value.to_string())) {
                Some(until) => *until == 0 || now < *until,
                None => false,
            },
            // Fail closed: a poisoned cache means we cannot tell.
            Err(_) => true,
        }
    }
}

/// Where a gateway keeps its state. Every method that writes makes the write durable before it
/// returns; reads of revocations go through [`StateBackend::revocations`] (memory).
pub trait StateBackend: Send + Sync + 'static {
    /// `sled` or `postgres`.
    fn kind(&self) -> &'static str;

    /// The in-memory mirror of revocations, kept current by the backend.
    fn revocations(&self) -> &RevocationCache;

    /// Whether the store is reachable and the revocation mirror current: crossings are refused
    /// (`state_unavailable`) while it is not.
    fn ready(&self) -> bool;

    /// First use of `issuer`'s `jti` wins, across every gateway sharing the store: `true` if
    /// it was unseen (and is now recorded until `exp`), `false` if already used.
    fn replay_insert<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
        exp: Instant,
    ) -> BoxFuture<'a, Result<bool, StateError>>;

    /// Forgets a token id (when the crossing it started was not made durable).
    fn replay_remove<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Drops replay entries whose token expired before `now - slack`.
    fn sweep_replay(&self, now: Instant, slack: i64) -> BoxFuture<'_, Result<usize, StateError>>;

    /// Records a revocation durably, merged with any earlier one of the same value; a partner
    /// notice older than the newest applied for the value changes nothing.
    fn revoke<'a>(&'a self, r: &'a Revocation) -> BoxFuture<'a, Result<Revoked, StateError>>;

    /// Keeps `td`'s bundle document as the last good one.
    fn save_bundle<'a>(
        &'a self,
        td: &'a str,
        sequence: u64,
        document: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Every bundle kept by [`save_bundle`](Self::save_bundle): `(trust domain, document)`.
    fn saved_bundles(&self) -> BoxFuture<'_, Result<SavedBundles, StateError>>;

    /// Queues a notice for `partner`, after every notice queued before it.
    fn queue_notice<'a>(
        &'a self,
        partner: &'a str,
        jti: &'a str,
        notice: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StateError>>;

    /// Notices this gateway should deliver now, per partner in issue order. With a shared
    /// store each is leased to this replica for a while, so exactly one replica delivers it
    /// and another takes over if this one dies.
    fn claim_notices(&self) -> BoxFuture<'_, Result<NoticeQueues, StateError>>;

    /// The partner acknowledged `n`: remove it.
    fn notice_delivered<'a>(&'a self, n: &'a QueuedNotice)
        -> BoxFuture<'a, Result<(), StateError>>;

    /// Delivering `n` failed: give it back for a retry (by any replica).
    fn notice_failed<'a>(&'a self, n: &'a QueuedNotice) -> BoxFuture<'a, Result<(), StateError>>;

    /// The rotation state document, if a rotation was ever staged.
    fn rotation(&self) -> BoxFuture<'_, Result<Option<String>, StateError>>;

    /// Replaces the rotation state if it is still `expected` (compare and set): `false` when
    /// another replica changed it first.
    fn save_rotation<'a>(
        &'a self,
        expected: Option<&'a str>,
        state: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>>;

    /// The latest checkpoint note of `origin` (a partner's log) this domain's witness cosigned.
    fn witnessed<'a>(
        &'a self,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StateError>>;

    /// Replaces it, durably, if it is still `expected` (compare and set, so two submissions
    /// racing cannot roll the witness back): `false` when another one changed it first.
    fn save_witnessed<'a>(
        &'a self,
        origin: &'a str,
        expected: Option<&'a str>,
        note: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>>;

    /// Records that this replica's log holds a record of `crossing` at `seq` (a shared index
    /// across replicas; a single gateway's own index is the log's in-memory one).
    fn index_crossing(&self, crossing: &str, seq: u64);

    /// Which replicas' logs hold records of `crossing`: `(replica, seq)`.
    fn crossing_locations<'a>(
        &'a self,
        crossing: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StateError>>;

    /// Makes everything written so far durable (shutdown).
    fn flush(&self) -> Result<(), StateError>;

    /// Starts what keeps the store's mirror and index current (until `stop` flips).
    fn spawn_tasks(
        self: std::sync::Arc<Self>,
        _stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![]
    }

    /// This replica's name, when the store is shared by several.
    fn replica(&self) -> Option<&str> {
        None
    }

    /// The highest seq of this replica's log already in the shared crossing index (`None`:
    /// nothing yet, or no shared index).
    fn index_mark(&self) -> BoxFuture<'_, Result<Option<u64>, StateError>> {
        Box::pin(async { Ok(None) })
    }
}
