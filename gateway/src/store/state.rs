//! Gateway state in sled: the replay cache, revocations, last-good partner bundles and queued
//! revocation notices. Everything here is either rebuilt
//! from the audit log of record at start (replay cache, index) or flushed before anything that
//! depends on it is acknowledged (revocations, bundles). See ../shared/INTEGRATION.md on why
//! sled is not the log of record.

use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use crate::chain::{RevocationKind, Revocations};
use crate::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

fn e(x: impl std::fmt::Display) -> StateError {
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
}

pub struct State {
    db: sled::Db,
    replay: sled::Tree,
    revocations: sled::Tree,
    meta: sled::Tree,
    /// In-memory mirror of revocations, checked on every verification.
    rev_cache: RwLock<HashMap<(String, RevocationKind, String), Instant>>,
}

fn rev_key(domain: &str, kind: RevocationKind, value: &str) -> Vec<u8> {
    format!("{domain}\u{0}{}\u{0}{value}", kind.as_str()).into_bytes()
}

impl State {
    pub fn open(dir: &Path) -> Result<State, StateError> {
        // No periodic flush: what must be durable is flushed explicitly (revocations, bundles,
        // notices), and the replay cache is rebuilt from the audit log of record at start, so
        // sled's background fsyncs would only compete with the audit log's.
        let db = sled::Config::new()
            .path(dir)
            .flush_every_ms(None)
            .open()
            .map_err(e)?;
        let s = State {
            replay: db.open_tree("replay").map_err(e)?,
            revocations: db.open_tree("revocations").map_err(e)?,
            meta: db.open_tree("meta").map_err(e)?,
            rev_cache: RwLock::new(HashMap::new()),
            db,
        };
        let mut cache = HashMap::new();
        for item in s.revocations.iter() {
            let (_, v) = item.map_err(e)?;
            let r: Revocation = serde_json::from_slice(&v).map_err(e)?;
            if let Some(kind) = RevocationKind::parse(&r.kind) {
                cache.insert((r.domain, kind, r.value), r.until);
            }
        }
        if let Ok(mut c) = s.rev_cache.write() {
            *c = cache;
        }
        Ok(s)
    }

    /// First use of a token id wins: returns `true` if `jti` was unseen (and is now recorded
    /// until `exp`), `false` if it was already used. One sled operation: the audit log of
    /// record makes it durable (the cache is rebuilt from it at start).
    pub fn replay_insert(&self, jti: &str, exp: Instant) -> Result<bool, StateError> {
        let r = self
            .replay
            .compare_and_swap(
                jti.as_bytes(),
                None as Option<&[u8]>,
                Some(&exp.to_be_bytes()[..]),
            )
            .map_err(e)?;
        Ok(r.is_ok())
    }

    /// Forgets a token id (when the crossing it started was not made durable).
    pub fn replay_remove(&self, jti: &str) -> Result<(), StateError> {
        self.replay.remove(jti.as_bytes()).map_err(e)?;
        Ok(())
    }

    pub fn replay_seen(&self, jti: &str) -> bool {
        self.replay.contains_key(jti.as_bytes()).unwrap_or(true)
    }

    /// Drops replay entries whose token expired before `now - slack` (a token is refused after
    /// its `exp` anyway). Returns how many were swept.
    pub fn sweep_replay(&self, now: Instant, slack: i64) -> Result<usize, StateError> {
        let cutoff = now - slack;
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

    /// Records a revocation durably (flushed before returning).
    pub fn revoke(&self, r: &Revocation) -> Result<bool, StateError> {
        let kind = RevocationKind::parse(&r.kind)
            .ok_or_else(|| StateError(format!("unknown revocation kind {}", r.kind)))?;
        let key = rev_key(&r.domain, kind, &r.value);
        let fresh = !self.revocations.contains_key(&key).map_err(e)?;
        self.revocations
            .insert(key, serde_json::to_vec(r).map_err(e)?)
            .map_err(e)?;
        self.db.flush().map_err(e)?;
        if let Ok(mut c) = self.rev_cache.write() {
            c.insert((r.domain.clone(), kind, r.value.clone()), r.until);
        }
        Ok(fresh)
    }

    pub fn revocations(&self) -> Vec<Revocation> {
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

impl Revocations for State {
    fn is_revoked(&self, domain: &str, kind: RevocationKind, value: &str, now: Instant) -> bool {
        match self.rev_cache.read() {
            Ok(c) => match c.get(&(domain.to_string(), kind, value.to_string())) {
                Some(until) => *until == 0 || now < *until,
                None => false,
            },
            // Fail closed: a poisoned cache means we cannot tell.
            Err(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_first_use_wins_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let s = State::open(d.path()).unwrap();
            assert!(s.replay_insert("a", 100).unwrap());
            assert!(!s.replay_insert("a", 100).unwrap());
            assert!(s.replay_insert("b", 50).unwrap());
            s.replay_remove("b").unwrap();
            assert!(s.replay_insert("b", 50).unwrap());
            assert_eq!(s.sweep_replay(60, 0).unwrap(), 1);
            assert!(!s.replay_seen("b"));
            s.flush().unwrap();
        }
        let s = State::open(d.path()).unwrap();
        assert!(s.replay_seen("a"));
        assert!(!s.replay_insert("a", 100).unwrap());
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
            };
            assert!(s.revoke(&r).unwrap());
            assert!(!s.revoke(&r).unwrap());
            let t = Revocation {
                domain: "company.com".into(),
                kind: "task".into(),
                value: "t".into(),
                until: 100,
                at: 1,
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
        assert_eq!(s.revocations().len(), 2);
    }
}
