//! Each domain witnesses its partners' audit logs (C2SP `tlog-witness`), and its cosignatures
//! are C2SP `tlog-cosignature` `cosignature/v1` Ed25519 signatures. Pure: the request body,
//! the cosignature itself, and the witness's check of a submitted checkpoint against the last
//! one it cosigned for that log — the fork check. The HTTP endpoint is `server::witness`, the
//! loop that submits our own checkpoints is `server::lifecycle::witness`.
//!
//! The witness key is the domain's audit key (the Ed25519 key of its bundle with role
//! `audit`), named `<trust-domain>/fedgate-witness`: a partner needs nothing but the bundle it
//! already holds. Domain separation: a checkpoint signature covers a note body whose first line
//! is an origin (`<td>/fedgate-audit...`) and uses key id type 0x01; a cosignature covers a
//! message whose first line is `cosignature/v1` and uses key id type 0x04, so neither can be
//! taken for the other (docs/spec-notes.md).

use crate::audit::checkpoint::{self, Checkpoint, CheckpointError, SIG_PREFIX};
use crate::audit::merkle::{verify_consistency, Hash};
use crate::crypto::{b64std, b64std_decode, sha256_parts};
use crate::jose::{Alg, SigningKey, VerifyingKey};

/// The key id type byte of an Ed25519 `cosignature/v1`.
const COSIGNATURE_V1: u8 = 0x04;
/// The most consistency proof lines a request may carry (the spec's limit: a proof of a tree of
/// up to 2^63 leaves).
pub const MAX_PROOF_LINES: usize = 63;
/// Largest request body: the old-size line, 63 proof lines of 45 bytes, a blank line and a
/// note of at most `MAX_NOTE_BYTES`.
pub const MAX_REQUEST_BYTES: usize = 32 + MAX_PROOF_LINES * 45 + 1 + checkpoint::MAX_NOTE_BYTES;
/// A cosignature dated further ahead than this is refused by a verifier (clocks drift; a
/// cosignature from the future is not one a witness made).
pub const MAX_COSIGNATURE_FUTURE_SECS: u64 = 300;

/// The cosigner name of a domain's witness.
pub fn witness_name(trust_domain: &str) -> String {
    format!("{trust_domain}/fedgate-witness")
}

/// `SHA-256(name || "\n" || 0x04 || public key)[:4]`.
pub fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let h = sha256_parts(&[name.as_bytes(), b"\n", &[COSIGNATURE_V1], public]);
    [h[0], h[1], h[2], h[3]]
}

/// The message a `cosignature/v1` signs: the header line, the time line and the note body.
pub fn signed_message(body: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{body}")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("the checkpoint's origin is not a partner's log: {0}")]
    UnknownOrigin(String),
    #[error("no signature verifies with the log's key")]
    BadSignature,
    #[error("old size {old} is not the size {known} last cosigned")]
    Conflict { old: u64, known: u64 },
    #[error("old size {0} is larger than the checkpoint")]
    OldTooLarge(u64),
    /// The checkpoint is validly signed but not shown consistent with the one cosigned before:
    /// a fork (split view), or a log rewritten behind the witness's back.
    #[error("fork: {0}")]
    Fork(String),
    #[error("cosignature: {0}")]
    Cosignature(String),
}

impl WitnessError {
    /// The HTTP status tlog-witness gives this refusal.
    pub fn status(&self) -> u16 {
        match self {
            WitnessError::Malformed(_) | WitnessError::OldTooLarge(_) => 400,
            WitnessError::BadSignature => 403,
            WitnessError::UnknownOrigin(_) => 404,
            WitnessError::Conflict { .. } => 409,
            WitnessError::Fork(m) if m.starts_with("same size") => 409,
            WitnessError::Fork(_) => 422,
            WitnessError::Cosignature(_) => 400,
        }
    }

    /// Our reason code for the audit record.
    pub fn reason(&self) -> &'static str {
        match self {
            WitnessError::Fork(_) => "checkpoint_fork",
            WitnessError::BadSignature => "bad_signature",
            WitnessError::UnknownOrigin(_) => "unknown_domain",
            _ => "malformed",
        }
    }
}

/// An `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    pub old: u64,
    pub proof: Vec<Hash>,
    /// The signed note, as submitted.
    pub checkpoint: String,
}

impl AddCheckpoint {
    pub fn encode(&self) -> String {
        let mut s = format!("old {}\n", self.old);
        for h in &self.proof {
            s.push_str(&b64std(h));
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    pub fn parse(body: &[u8]) -> Result<AddCheckpoint, WitnessError> {
        let bad = |m: &str| WitnessError::Malformed(m.to_string());
        if body.len() > MAX_REQUEST_BYTES {
            return Err(bad("request too large"));
        }
        let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
        let (head, note) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or_else(|| bad("no old size line"))?;
        if old.is_empty()
            || !old.bytes().all(|b| b.is_ascii_digit())
            || (old.len() > 1 && old.starts_with('0'))
        {
            return Err(bad("old size is not a decimal number"));
        }
        let old: u64 = old.parse().map_err(|_| bad("old size out of range"))?;
        let mut proof = Vec::new();
        for l in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(bad("more than 63 proof lines"));
            }
            let h = b64std_decode(l)
                .filter(|h| h.len() == 32)
                .ok_or_else(|| bad("a proof line is not a base64 SHA-256 hash"))?;
            let mut a = [0u8; 32];
            a.copy_from_slice(&h);
            proof.push(a);
        }
        if old == 0 && !proof.is_empty() {
            return Err(bad("a proof from size 0 must be empty"));
        }
        if !note.ends_with('\n') {
            return Err(bad("the checkpoint must end in a newline"));
        }
        Ok(AddCheckpoint {
            old,
            proof,
            checkpoint: note.to_string(),
        })
    }
}

/// The witness's check of a submitted checkpoint (already signature-checked) against the last
/// checkpoint it cosigned for that origin, in the order tlog-witness gives.
pub fn check(
    known: Option<&Checkpoint>,
    req: &AddCheckpoint,
    cp: &Checkpoint,
) -> Result<(), WitnessError> {
    if req.old > cp.size {
        return Err(WitnessError::OldTooLarge(req.old));
    }
    let known_size = known.map(|k| k.size).unwrap_or(0);
    if req.old != known_size {
        return Err(WitnessError::Conflict {
            old: req.old,
            known: known_size,
        });
    }
    let Some(k) = known else {
        return Ok(());
    };
    if k.origin != cp.origin {
        return Err(WitnessError::Malformed("origin changed".into()));
    }
    if k.size == cp.size {
        if k.root != cp.root {
            return Err(WitnessError::Fork(format!(
                "same size {} with another root than the one cosigned",
                cp.size
            )));
        }
        return Ok(());
    }
    if !verify_consistency(k.size, cp.size, &req.proof, &k.root, &cp.root) {
        return Err(WitnessError::Fork(format!(
            "the tree of {} records is not shown consistent with the {} cosigned",
            cp.size, k.size
        )));
    }
    Ok(())
}

/// Cosigns a checkpoint note: returns the signature line (ending in a newline).
pub fn cosign(
    note: &str,
    witness: &str,
    key: &SigningKey,
    time: u64,
) -> Result<String, WitnessError> {
    if key.alg() != Alg::EdDsa {
        return Err(WitnessError::Cosignature(
            "the witness key must be Ed25519".into(),
        ));
    }
    let (body, _) =
        checkpoint::split_note(note).map_err(|e| WitnessError::Malformed(e.to_string()))?;
    let sig = key
        .sign_raw(signed_message(body, time).as_bytes())
        .map_err(|e| WitnessError::Cosignature(e.to_string()))?;
    let mut blob = key_id(witness, key.public().raw()).to_vec();
    blob.extend_from_slice(&time.to_be_bytes());
    blob.extend_from_slice(&sig);
    Ok(format!("{SIG_PREFIX}{witness} {}\n", b64std(&blob)))
}

/// Verifies the cosignature of `witness` (Ed25519 key `public`) on a note; returns its time.
/// Lines of other names or key ids are ignored; `Ok(None)` if there is none of this witness.
pub fn verify_cosignature(
    note: &str,
    witness: &str,
    public: &[u8],
    now: u64,
) -> Result<Option<u64>, WitnessError> {
    let (body, sigs) =
        checkpoint::split_note(note).map_err(|e| WitnessError::Malformed(e.to_string()))?;
    let kid = key_id(witness, public);
    let vk = VerifyingKey::ed25519(public).map_err(|e| WitnessError::Cosignature(e.to_string()))?;
    for (name, id, sig) in &sigs {
        if name != witness || *id != kid {
            continue;
        }
        if sig.len() != 8 + 64 {
            return Err(WitnessError::Cosignature(
                "not a timestamped signature".into(),
            ));
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&sig[..8]);
        let time = u64::from_be_bytes(t);
        if time > i64::MAX as u64 || time > now.saturating_add(MAX_COSIGNATURE_FUTURE_SECS) {
            return Err(WitnessError::Cosignature("dated in the future".into()));
        }
        vk.verify(Alg::EdDsa, signed_message(body, time).as_bytes(), &sig[8..])
            .map_err(|_| WitnessError::Cosignature("does not verify".into()))?;
        return Ok(Some(time));
    }
    Ok(None)
}

/// Adds signature lines to a note (each once).
pub fn add_signatures(note: &str, lines: &str) -> String {
    let mut out = note.to_string();
    for l in lines.split('\n').filter(|l| !l.is_empty()) {
        if !out.split('\n').any(|x| x == l) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// The body of a note (to compare two notes of the same tree head).
pub fn body(note: &str) -> Result<&str, CheckpointError> {
    checkpoint::split_note(note).map(|(b, _)| b)
}

/// What the cosignatures say about one exported log.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Witnessing {
    /// `(witness domain, tree size, cosignature time)`, for every valid cosignature on a
    /// checkpoint the export agrees with.
    pub cosigned_by: Vec<(String, u64, u64)>,
    /// Records after the largest checkpoint a partner cosigned (all of them if none did).
    pub unwitnessed: u64,
    /// Checkpoints signed by the log's key (and cosigned, or witnessed by a partner) that the
    /// exported records do not hash to: the log showed someone another history.
    pub forked: Vec<String>,
    /// Cosigned checkpoints larger than the export (the export is older; not checkable).
    pub beyond: Vec<String>,
}

/// Checks checkpoints of one log (`notes`: the export's own, those a partner cosigned, those a
/// partner's witness holds) against the exported records' leaves. A note counts only if it is
/// of this log (`origin`: a domain with replicas has one log per replica, and another replica's
/// checkpoint is not a fork of this one) and the log's key (from `log_bundle`) signed it;
/// cosignatures are verified with each partner
/// bundle's audit keys under `<td>/fedgate-witness`.
pub fn assess(
    leaves: &[Hash],
    origin: &str,
    notes: &[String],
    log_bundle: &crate::spiffe::Bundle,
    partners: &[&crate::spiffe::Bundle],
    now: u64,
) -> Witnessing {
    let mut tree = crate::audit::merkle::MerkleTree::new();
    for l in leaves {
        tree.push(*l);
    }
    let n = leaves.len() as u64;
    let mut w = Witnessing::default();
    let mut witnessed_to = 0u64;
    for note in notes {
        let Ok(cp) = checkpoint::verify_with_bundle(note, log_bundle) else {
            continue;
        };
        if cp.origin != origin {
            continue;
        }
        let mut by = Vec::new();
        for b in partners {
            let name = witness_name(b.trust_domain.as_str());
            for k in b.keys_with_role(crate::spiffe::KeyRole::Audit) {
                if let Ok(Some(t)) = verify_cosignature(note, &name, k.key.raw(), now) {
                    by.push((b.trust_domain.to_string(), cp.size, t));
                    break;
                }
            }
        }
        if cp.size > n {
            if !by.is_empty() {
                w.beyond.push(format!(
                    "a checkpoint of {} records cosigned by {} is larger than the export ({n})",
                    cp.size,
                    by.iter()
                        .map(|b| b.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            continue;
        }
        if tree.root(cp.size) != Some(cp.root) {
            w.forked.push(format!(
                "the log signed a checkpoint of {} records{} that its exported records do not hash to",
                cp.size,
                if by.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (cosigned by {})",
                        by.iter().map(|b| b.0.as_str()).collect::<Vec<_>>().join(", ")
                    )
                }
            ));
            continue;
        }
        for b in by {
            witnessed_to = witnessed_to.max(b.1);
            if !w.cosigned_by.contains(&b) {
                w.cosigned_by.push(b);
            }
        }
    }
    w.unwitnessed = n - witnessed_to.min(n);
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::{leaf_hash, MerkleTree};

    fn tree(n: u64, salt: u8) -> MerkleTree {
        let mut t = MerkleTree::new();
        for i in 0..n {
            t.push(leaf_hash(&[salt, i as u8]));
        }
        t
    }

    fn cp(t: &MerkleTree, n: u64) -> Checkpoint {
        Checkpoint {
            origin: "company.com/fedgate-audit".into(),
            size: n,
            root: t.root(n).unwrap(),
        }
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let t = tree(10, 0);
        let (k, _) = SigningKey::generate_ed25519().unwrap();
        let note = cp(&t, 10).sign(&k).unwrap();
        let r = AddCheckpoint {
            old: 4,
            proof: t.consistency_proof(4, 10).unwrap(),
            checkpoint: note.clone(),
        };
        assert_eq!(AddCheckpoint::parse(r.encode().as_bytes()).unwrap(), r);
        for bad in [
            "old 01\n\n".to_string() + &note,
            "old x\n\n".to_string() + &note,
            "old 0\nAAAA\n\n".to_string() + &note,
            "old 0\n".to_string() + &note,
            "new 0\n\n".to_string() + &note,
            format!(
                "old 3\n{}\n{note}",
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n".repeat(64)
            ),
        ] {
            assert!(AddCheckpoint::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_fork_check() {
        let t = tree(10, 0);
        let forked = tree(10, 1);
        let known = cp(&t, 6);
        let req = |old: u64, proof: Vec<Hash>| AddCheckpoint {
            old,
            proof,
            checkpoint: String::new(),
        };
        // First submission: old 0.
        assert_eq!(check(None, &req(0, vec![]), &cp(&t, 6)), Ok(()));
        assert!(matches!(
            check(None, &req(3, vec![]), &cp(&t, 6)),
            Err(WitnessError::Conflict { known: 0, .. })
        ));
        // Grows consistently.
        let p = t.consistency_proof(6, 10).unwrap();
        assert_eq!(check(Some(&known), &req(6, p.clone()), &cp(&t, 10)), Ok(()));
        // The same size again: fine; another root at that size: a fork (409).
        assert_eq!(check(Some(&known), &req(6, vec![]), &cp(&t, 6)), Ok(()));
        let e = check(Some(&known), &req(6, vec![]), &cp(&forked, 6)).unwrap_err();
        assert!(matches!(e, WitnessError::Fork(_)));
        assert_eq!(e.status(), 409);
        // A rewritten history with the honest proof: a fork (422).
        let e = check(Some(&known), &req(6, p), &cp(&forked, 10)).unwrap_err();
        assert_eq!(e.status(), 422);
        assert_eq!(e.reason(), "checkpoint_fork");
        // Wrong old size: 409 with the known size; old beyond the checkpoint: 400.
        assert!(matches!(
            check(Some(&known), &req(5, vec![]), &cp(&t, 10)),
            Err(WitnessError::Conflict { known: 6, .. })
        ));
        assert_eq!(
            check(Some(&known), &req(11, vec![]), &cp(&t, 10))
                .unwrap_err()
                .status(),
            400
        );
        // A rollback (smaller tree) cannot be submitted from the known size.
        assert_eq!(
            check(Some(&known), &req(6, vec![]), &cp(&t, 5))
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn an_export_is_assessed_against_every_cosigned_checkpoint() {
        let log = crate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        let ven = crate::devkit::DevDomain::new("vendor.example", 1_800_000_000).unwrap();
        let t = tree(10, 0);
        let leaves: Vec<Hash> = (0..10).map(|i| t.leaf(i).unwrap()).collect();
        let name = witness_name("vendor.example");
        let sign = |tr: &MerkleTree, n: u64| {
            let note = cp(tr, n).sign(&log.audit_key).unwrap();
            let line = cosign(&note, &name, &ven.audit_key, 1_800_000_000).unwrap();
            add_signatures(&note, &line)
        };
        let w = assess(
            &leaves,
            O,
            &[sign(&t, 6)],
            &log.bundle,
            &[&ven.bundle],
            1_800_000_000,
        );
        assert_eq!(
            w.cosigned_by,
            vec![("vendor.example".to_string(), 6, 1_800_000_000)]
        );
        assert_eq!(w.unwitnessed, 4);
        assert!(w.forked.is_empty());
        // Nothing cosigned: all unwitnessed.
        let plain = cp(&t, 10).sign(&log.audit_key).unwrap();
        assert_eq!(
            assess(&leaves, O, &[plain], &log.bundle, &[&ven.bundle], 0).unwrap_witnessed(),
            10
        );
        // The vendor cosigned another history of 6 records: forked.
        let other = tree(10, 9);
        let w = assess(
            &leaves,
            O,
            &[sign(&other, 6)],
            &log.bundle,
            &[&ven.bundle],
            1_800_000_000,
        );
        assert_eq!(w.forked.len(), 1, "{w:?}");
        // A note the log's key did not sign counts for nothing.
        let stranger = crate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        let forged = cp(&other, 6).sign(&stranger.audit_key).unwrap();
        let w = assess(&leaves, O, &[forged], &log.bundle, &[&ven.bundle], 0);
        assert!(w.forked.is_empty() && w.cosigned_by.is_empty());
        // Larger than the export: not checkable, reported.
        let big = tree(12, 0);
        let w = assess(
            &leaves,
            O,
            &[sign(&big, 12)],
            &log.bundle,
            &[&ven.bundle],
            1_800_000_000,
        );
        assert_eq!(w.beyond.len(), 1);
        // Another log of the same domain (a second replica's) is neither a fork nor a witness.
        let replica = crate::audit::checkpoint::Checkpoint {
            origin: format!("{O}/replica-b"),
            ..cp(&other, 6)
        }
        .sign(&log.audit_key)
        .unwrap();
        let line = cosign(&replica, &name, &ven.audit_key, 1_800_000_000).unwrap();
        let w = assess(
            &leaves,
            O,
            &[add_signatures(&replica, &line)],
            &log.bundle,
            &[&ven.bundle],
            1_800_000_000,
        );
        assert!(w.forked.is_empty() && w.cosigned_by.is_empty(), "{w:?}");
        assert_eq!(w.unwitnessed, 10);
    }

    const O: &str = "company.com/fedgate-audit";

    impl Witnessing {
        fn unwrap_witnessed(&self) -> u64 {
            self.unwitnessed
        }
    }

    #[test]
    fn cosignatures_verify_and_are_bound_to_time_name_and_body() {
        let t = tree(3, 0);
        let (log, _) = SigningKey::generate_ed25519().unwrap();
        let (w, _) = SigningKey::generate_ed25519().unwrap();
        let note = cp(&t, 3).sign(&log).unwrap();
        let name = witness_name("vendor.example");
        let line = cosign(&note, &name, &w, 1_800_000_000).unwrap();
        let both = add_signatures(&note, &line);
        assert_eq!(add_signatures(&both, &line), both);
        let pk = w.public().raw();
        assert_eq!(
            verify_cosignature(&both, &name, pk, 1_800_000_000).unwrap(),
            Some(1_800_000_000)
        );
        // The log's own signature still verifies on the cosigned note.
        assert!(checkpoint::verify_with_key(
            &both,
            "company.com/fedgate-audit",
            log.public().raw()
        )
        .is_ok());
        // No cosignature of this witness, another name, a changed body, a future time.
        assert_eq!(verify_cosignature(&note, &name, pk, 0).unwrap(), None);
        assert_eq!(
            verify_cosignature(&both, "other/fedgate-witness", pk, 1_800_000_000).unwrap(),
            None
        );
        let changed = both.replacen("\n3\n", "\n4\n", 1);
        assert!(verify_cosignature(&changed, &name, pk, 1_800_000_000).is_err());
        assert!(verify_cosignature(&both, &name, pk, 1_700_000_000).is_err());
        // The key id follows tlog-cosignature: SHA-256(name \n 0x04 key)[:4].
        let mut data = format!("{name}\n").into_bytes();
        data.push(4);
        data.extend_from_slice(pk);
        assert_eq!(&crate::crypto::sha256(&data)[..4], &key_id(&name, pk));
        assert_ne!(key_id(&name, pk), checkpoint::key_id(&name, pk));
    }
}
