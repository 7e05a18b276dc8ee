//! Gateway state in embedded sled (the default: a single gateway needs nothing but the binary):
//! the replay cache, revocations, last-good partner bundles and queued revocation notices; the
//! rotation state is a file next to it. Everything here is either rebuilt from the audit log of
//! record at start (replay cache) or flushed before anything that depends on it is acknowledged
//! (revocations, bundles, notices). See ../shared/INTEGRATION.md on why sled is not the log of
//! record.

use std::path::{Path, PathBuf};

use super::backend::{
    err as e, BoxFuture, NoticeQueues, QueuedNotice, RevocationCache, SavedBundles, StateBackend,
    StateError,
};
pub use super::backend::{merge_until, Revocation, Revoked};
use crate::chain::RevocationKind;
use crate::time::Instant;

pub struct State {
    rev_write: std::sync::Mutex<()>,
    db: ::sled::Db,
    replay: ::sled::Tree,
    revocations: ::sled::Tree,
    meta: ::sled::Tree,
    /// In-memory mirror of revocations, checked on every verification.
    rev_cache: RevocationCache,
    /// `<data_dir>/rotation.json`, where `fedgate rotate --data-dir` stages a rotation.
    rotation: PathBuf,
}

fn replay_key(issuer: &str, jti: &str) -> Vec<u8> {
    format!("{issuer}\u{0}{jti}").into_bytes()
}

fn rev_key(domain: &str, kind: RevocationKind, value: &str) -> Vec<u8> {
    format!("{domain}\u{0}{}\u{0}{value}", kind.as_str()).into_bytes()
}

/// sled's page cache. Its default is 1 GiB, unbounded for a gateway's purposes; the working set
/// here (live replay entries, revocations, a few bundles and notices) is a few MiB, and a miss
/// only costs a read of sled's own file. (Capping it did not stop the receiving gateway's RSS
/// growth in the 30-minute soak: BENCHMARKS.md.)
pub const SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl State {
    /// Opens (or creates) the store in `dir`; the rotation state lives in `rotation`.
    pub fn open_with(dir: &Path, rotation: PathBuf) -> Result<State, StateError> {
        // No periodic flush: what must be durable is flushed explicitly (revocations, bundles,
        // notices), and the replay cache is rebuilt from the audit log of record at start, so
        // sled's background fsyncs would only compete with the audit log's.
        let db = ::sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(e)?;
        let s = State {
            rev_write: std::sync::Mutex::new(()),
            replay: db.open_tree("replay").map_err(e)?,
            revocations: db.open_tree("revocations").map_err(e)?,
            meta: db.open_tree("meta").map_err(e)?,
            rev_cache: RevocationCache::always_fresh(),
            rotation,
            db,
        };
        for item in s.revocations.iter() {
            let (_, v) = item.map_err(e)?;
            let r: Revocation = serde_json::from_slice(&v).map_err(e)?;
            s.rev_cache.set(&r);
        }
        Ok(s)
    }

    /// Opens the store in `dir` with the rotation state at `dir/../rotation.json`.
    pub fn open(dir: &Path) -> Result<State, StateError> {
        let rotation = dir.parent().unwrap_or(dir).join("rotation.json");
        Self::open_with(dir, rotation)
    }

    /// First use of a token id wins: returns `true` if `issuer`'s `jti` was unseen (and is now
    /// recorded until `exp`), `false` if it was already used. Ids are kept per issuing domain,
    /// so one partner cannot use up another's. One sled operation: the audit log of record
    /// makes it durable (the cache is rebuilt from it at start).
    pub fn replay_insert(&self, issuer: &str, jti: &str, exp: Instant) -> Result<bool, StateError> {
        let r = self
            .replay
            .compare_and_swap(
                replay_key(issuer, jti),
                None as Option<&[u8]>,
                Some(&exp.to_be_bytes()[..]),
            )
            .map_err(e)?;
        Ok(r.is_ok())
    }

    /// Forgets a token id (when the crossing it started was not made durable).
    pub fn replay_remove(&self, issuer: &str, jti: &str) -> Result<(), StateError> {
        self.replay.remove(replay_key(issuer, jti)).map_err(e)?;
        Ok(())
    }

    pub fn replay_seen(&self, issuer: &str, jti: &str) -> bool {
        self.replay
            .contains_key(replay_key(issuer, jti))
            .unwrap_or(true)
    }

    /// Drops replay entries whose token expired before `now - slack` (a token is refused after
    /// its `exp` anyway). Returns how many were swept.
    pub fn sweep_replay(&self, now: Instant, slack: i64) -> Result<usize, StateError> {
        let cutoff = now.saturating_sub(slack);
        let mut n = 0;
        for item in self.replay.iter() {
            let (k, v) = item.map_err(e)?;
            let exp = v
                .as_ref()
                .try_into()
                .map(i64::from_be_bytes)
                .unwrap_or(i64::MIN);
            if exp < cutoff {
                self.replay.remove(&k).map_err(e)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Records a revocation durably (flushed before returning), merged with any earlier one
    /// of the same value ([`merge_until`]); a partner notice older than the newest applied for
    /// the value changes nothing.
    pub fn revoke(&self, r: &Revocation) -> Result<Revoked, StateError> {
        let kind = RevocationKind::parse(&r.kind)
            .ok_or_else(|| StateError(format!("unknown revocation kind {}", r.kind)))?;
        let key = rev_key(&r.domain, kind, &r.value);
        // One writer at a time, so the merge reads what it replaces.
        let _g = self
            .rev_write
            .lock()
            .map_err(|_| StateError("poisoned".into()))?;
        let old: Option<Revocation> = match self.revocations.get(&key).map_err(e)? {
            Some(v) => Some(serde_json::from_slice(&v).map_err(e)?),
            None => None,
        };
        let (merged, outcome) = match old {
            None => (r.clone(), Revoked::New),
            Some(o) => {
                if let (Some(seen), Some(new)) = (o.notice_iat, r.notice_iat) {
                    if new < seen {
                        return Ok(Revoked::Stale);
                    }
                }
                let until = merge_until(o.until, r.until);
                let m = Revocation {
                    until,
                    at: o.at,
                    notice_iat: match (o.notice_iat, r.notice_iat) {
                        (Some(a), Some(b)) => Some(a.max(b)),
                        (a, b) => a.or(b),
                    },
                    ..r.clone()
                };
                (m, Revoked::Merged(until))
            }
        };
        self.revocations
            .insert(key, serde_json::to_vec(&merged).map_err(e)?)
            .map_err(e)?;
        self.db.flush().map_err(e)?;
        self.rev_cache.set(&merged);
        Ok(outcome)
    }

    /// Queues a revocation notice for `partner` (a gateway ID), after every notice queued
    /// before it: notices are delivered in the order they were issued.
    pub fn queue_notice(&self, partner: &str, jti: &str, notice: &[u8]) -> Result<(), StateError> {
        let n = self.db.generate_id().map_err(e)?;
        let key = format!("notice\u{0}{partner}\u{0}{n:020}\u{0}{jti}");
        self.put_meta(&key, notice)
    }

    /// Queued notices per partner, oldest first: `(partner, [(queue key, jti, notice)])`.
    #[allow(clippy::type_complexity)]
    pub fn queued_notices(&self) -> Vec<(String, Vec<(String, String, Vec<u8>)>)> {
        let mut by: std::collections::BTreeMap<String, Vec<(String, String, Vec<u8>)>> =
            Default::default();
        for (key, v) in self.scan_meta("notice\u{0}") {
            let mut parts = key.split('\u{0}');
            if let (_, Some(gid), Some(_n), Some(jti)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            {
                let (gid, jti) = (gid.to_string(), jti.to_string());
                by.entry(gid).or_default().push((key, jti, v));
            } else {
                // A key of an older layout or garbage: not deliverable in order; drop it.
                let _ = self.del_meta(&key);
            }
        }
        by.into_iter().collect()
    }

    pub fn all_revocations(&self) -> Vec<Revocation> {
        self.revocations
            .iter()
            .filter_map(|i| i.ok())
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    pub fn put_meta(&self, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.meta.insert(key.as_bytes(), value).map_err(e)?;
        self.db.flush().map_err(e)?;
        Ok(())
    }

    pub fn del_meta(&self, key: &str) -> Result<(), StateError> {
        self.meta.remove(key.as_bytes()).map_err(e)?;
        self.db.flush().map_err(e)?;
        Ok(())
    }

    /// Every meta entry whose key starts with `prefix`.
    pub fn scan_meta(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.meta
            .scan_prefix(prefix.as_bytes())
            .filter_map(|i| i.ok())
            .map(|(k, v)| (String::from_utf8_lossy(&k).to_string(), v.to_vec()))
            .collect()
    }

    pub fn get_meta(&self, key: &str) -> Option<Vec<u8>> {
        self.meta
            .get(key.as_bytes())
            .ok()
            .flatten()
            .map(|v| v.to_vec())
    }

    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(e)
    }
}

impl crate::chain::Revocations for State {
    fn is_revoked(&self, domain: &str, kind: RevocationKind, value: &str, now: Instant) -> bool {
        self.rev_cache.is_revoked(domain, kind, value, now)
    }
}

/// Rotation state is a file (`fedgate rotate --data-dir` writes it); compare-and-set reads it
/// back first, which is exact for the one gateway that uses it.
fn read_file(p: &Path) -> Result<Option<String>, StateError> {
    match std::fs::read_to_string(p) {
        Ok(t) => Ok(Some(t)),
        Err(x) if x.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(x) => Err(e(x)),
    }
}

impl StateBackend for State {
    fn kind(&self) -> &'static str {
        "sled"
    }

    fn revocations(&self) -> &RevocationCache {
        &self.rev_cache
    }

    fn ready(&self) -> bool {
        true
    }

    fn replay_insert<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
        exp: Instant,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move { State::replay_insert(self, issuer, jti, exp) })
    }

    fn replay_remove<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move { State::replay_remove(self, issuer, jti) })
    }

    fn sweep_replay(&self, now: Instant, slack: i64) -> BoxFuture<'_, Result<usize, StateError>> {
        Box::pin(async move { State::sweep_replay(self, now, slack) })
    }

    fn revoke<'a>(&'a self, r: &'a Revocation) -> BoxFuture<'a, Result<Revoked, StateError>> {
        Box::pin(async move { State::revoke(self, r) })
    }

    fn save_bundle<'a>(
        &'a self,
        td: &'a str,
        _sequence: u64,
        document: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move { self.put_meta(&format!("bundle:{td}"), document) })
    }

    fn saved_bundles(&self) -> BoxFuture<'_, Result<SavedBundles, StateError>> {
        Box::pin(async move {
            Ok(self
                .scan_meta("bundle:")
                .into_iter()
                .filter_map(|(k, v)| k.strip_prefix("bundle:").map(|td| (td.to_string(), v)))
                .collect())
        })
    }

    fn queue_notice<'a>(
        &'a self,
        partner: &'a str,
        jti: &'a str,
        notice: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move { State::queue_notice(self, partner, jti, notice) })
    }

    fn claim_notices(&self) -> BoxFuture<'_, Result<NoticeQueues, StateError>> {
        Box::pin(async move {
            Ok(self
                .queued_notices()
                .into_iter()
                .map(|(partner, q)| {
                    let q = q
                        .into_iter()
                        .map(|(id, jti, notice)| QueuedNotice {
                            id,
                            partner: partner.clone(),
                            jti,
                            notice,
                        })
                        .collect();
                    (partner, q)
                })
                .collect())
        })
    }

    fn notice_delivered<'a>(
        &'a self,
        n: &'a QueuedNotice,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move { self.del_meta(&n.id) })
    }

    fn notice_failed<'a>(&'a self, _n: &'a QueuedNotice) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move { Ok(()) })
    }

    fn rotation(&self) -> BoxFuture<'_, Result<Option<String>, StateError>> {
        Box::pin(async move { read_file(&self.rotation) })
    }

    fn save_rotation<'a>(
        &'a self,
        expected: Option<&'a str>,
        state: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let _g = self
                .rev_write
                .lock()
                .map_err(|_| StateError("poisoned".into()))?;
            if read_file(&self.rotation)?.as_deref() != expected {
                return Ok(false);
            }
            crate::files::write_atomic(&self.rotation, state.as_bytes(), 0o600).map_err(e)?;
            Ok(true)
        })
    }

    fn witnessed<'a>(
        &'a self,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StateError>> {
        Box::pin(async move {
            let k = format!("witness\u{0}{origin}");
            match self.meta.get(k.as_bytes()).map_err(e)? {
                Some(v) => String::from_utf8(v.to_vec()).map(Some).map_err(e),
                None => Ok(None),
            }
        })
    }

    fn save_witnessed<'a>(
        &'a self,
        origin: &'a str,
        expected: Option<&'a str>,
        note: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let k = format!("witness\u{0}{origin}");
            let swapped = self
                .meta
                .compare_and_swap(
                    k.as_bytes(),
                    expected.map(|s| s.as_bytes()),
                    Some(note.as_bytes()),
                )
                .map_err(e)?;
            if swapped.is_err() {
                return Ok(false);
            }
            // The witness must persist what it cosigned before it answers.
            self.db.flush().map_err(e)?;
            Ok(true)
        })
    }

    fn index_crossing(&self, _crossing: &str, _seq: u64) {}

    fn crossing_locations<'a>(
        &'a self,
        _crossing: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StateError>> {
        Box::pin(async move { Ok(vec![]) })
    }

    fn flush(&self) -> Result<(), StateError> {
        State::flush(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Revocations as _;

    #[test]
    fn replay_first_use_wins_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = State::open(d.path()).unwrap();
            assert!(s.replay_insert("p.com", "a", 100).unwrap());
            assert!(!s.replay_insert("p.com", "a", 100).unwrap());
            assert!(
                s.replay_insert("q.com", "a", 100).unwrap(),
                "another issuer's id is its own"
            );
            assert!(s.replay_insert("p.com", "b", 50).unwrap());
            s.replay_remove("p.com", "b").unwrap();
            assert!(s.replay_insert("p.com", "b", 50).unwrap());
            assert_eq!(s.sweep_replay(60, 0).unwrap(), 1);
            assert!(!s.replay_seen("p.com", "b"));
            s.flush().unwrap();
        }
        let s = State::open(d.path()).unwrap();
        assert!(s.replay_seen("p.com", "a"));
        assert!(!s.replay_insert("p.com", "a", 100).unwrap());
    }

    #[test]
    fn revocations_merge_and_are_never_lifted() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(d.path()).unwrap();
        let r = |until: i64, notice_iat: Option<i64>| Revocation {
            domain: "company.com".into(),
            kind: "agent".into(),
            value: "spiffe://company.com/agent/x/1".into(),
            until,
            at: 1,
            notice_iat,
        };
        let a = |s: &State, now| {
            s.is_revoked(
                "company.com",
                RevocationKind::Agent,
                "spiffe://company.com/agent/x/1",
                now,
            )
        };
        assert_eq!(s.revoke(&r(0, None)).unwrap(), Revoked::New);
        // A later revocation with an earlier (or past) until does not lift a permanent one.
        assert_eq!(s.revoke(&r(50, None)).unwrap(), Revoked::Merged(0));
        assert!(a(&s, 1_000_000));
        // Two temporary ones: the later until wins, in either order.
        let v = Revocation {
            value: "t".into(),
            kind: "task".into(),
            ..r(100, None)
        };
        s.revoke(&v).unwrap();
        assert_eq!(
            s.revoke(&Revocation {
                until: 50,
                ..v.clone()
            })
            .unwrap(),
            Revoked::Merged(100)
        );
        assert!(s.is_revoked("company.com", RevocationKind::Task, "t", 99));
        // A notice older than one applied for the value changes nothing.
        let n = Revocation {
            value: "n".into(),
            ..r(200, Some(20))
        };
        s.revoke(&n).unwrap();
        assert_eq!(
            s.revoke(&Revocation {
                until: 0,
                notice_iat: Some(10),
                ..n.clone()
            })
            .unwrap(),
            Revoked::Stale
        );
        assert!(!s.is_revoked("company.com", RevocationKind::Agent, "n", 300));
        assert_eq!(
            s.revoke(&Revocation {
                until: 0,
                notice_iat: Some(30),
                ..n.clone()
            })
            .unwrap(),
            Revoked::Merged(0)
        );
        assert!(s.is_revoked("company.com", RevocationKind::Agent, "n", 300));
    }

    #[test]
    fn notices_queue_in_issue_order_per_partner() {
        let d = tempfile::tempdir().unwrap();
        let s = State::open(d.path()).unwrap();
        for (p, j) in [
            ("g2", "c"),
            ("g1", "z"),
            ("g1", "a"),
            ("g2", "b"),
            ("g1", "m"),
        ] {
            s.queue_notice(p, j, j.as_bytes()).unwrap();
        }
        let q = s.queued_notices();
        let order: Vec<(String, Vec<String>)> = q
            .into_iter()
            .map(|(p, v)| (p, v.into_iter().map(|(_, j, _)| j).collect()))
            .collect();
        assert_eq!(
            order,
            vec![
                (
                    "g1".to_string(),
                    vec!["z".to_string(), "a".into(), "m".into()]
                ),
                ("g2".to_string(), vec!["c".to_string(), "b".into()]),
            ]
        );
    }

    #[test]
    fn revocations_are_durable_scoped_and_expire() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = State::open(d.path()).unwrap();
            let r = Revocation {
                domain: "company.com".into(),
                kind: "agent".into(),
                value: "spiffe://company.com/agent/x/1".into(),
                until: 0,
                at: 1,
                notice_iat: None,
            };
            assert_eq!(s.revoke(&r).unwrap(), Revoked::New);
            assert_eq!(s.revoke(&r).unwrap(), Revoked::Merged(0));
            let t = Revocation {
                domain: "company.com".into(),
                kind: "task".into(),
                value: "t".into(),
                until: 100,
                at: 1,
                notice_iat: None,
            };
            s.revoke(&t).unwrap();
            assert!(s
                .revoke(&Revocation {
                    kind: "bogus".into(),
                    ..t
                })
                .is_err());
        }
        let s = State::open(d.path()).unwrap();
        assert!(s.is_revoked(
            "company.com",
            RevocationKind::Agent,
            "spiffe://company.com/agent/x/1",
            5
        ));
        assert!(!s.is_revoked(
            "vendor.example",
            RevocationKind::Agent,
            "spiffe://company.com/agent/x/1",
            5
        ));
        assert!(s.is_revoked("company.com", RevocationKind::Task, "t", 99));
        assert!(!s.is_revoked("company.com", RevocationKind::Task, "t", 100));
        assert_eq!(s.all_revocations().len(), 2);
    }
}
