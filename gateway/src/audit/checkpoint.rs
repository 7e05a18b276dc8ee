//! Checkpoints in the C2SP `tlog-checkpoint` format, signed as C2SP signed notes with Ed25519:
//!
//! ```text
//! company.com/fedgate-audit
//! 42
//! <base64 root hash>
//!
//! — company.com/fedgate-audit <base64(key id || signature)>
//! ```
//!
//! The key id is the first four bytes of SHA-256(name || "\n" || 0x01 || public key). The
//! audit key is published in the domain's bundle as a `jwt-svid` OKP key, so an auditor needs
//! nothing but the bundle to check a checkpoint.

use super::merkle::Hash;
use crate::crypto::{b64std, b64std_decode, sha256_parts};
use crate::jose::{Alg, SigningKey, VerifyingKey};
use crate::spiffe::Bundle;

/// Largest note accepted.
pub const MAX_NOTE_BYTES: usize = 16 * 1024;
/// The signed-note signature type of Ed25519.
const ED25519_TYPE: u8 = 0x01;
pub const SIG_PREFIX: &str = "\u{2014} ";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("malformed checkpoint: {0}")]
    Malformed(String),
    #[error("no signature by a key of {0}")]
    NoKnownSignature(String),
    #[error("checkpoint signature does not verify")]
    BadSignature,
    #[error("origin {0:?} is not {1:?}")]
    WrongOrigin(String, String),
}

/// A tree head: origin, size and root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// The origin line of a domain's audit log.
pub fn origin_of(trust_domain: &str) -> String {
    format!("{trust_domain}/fedgate-audit")
}

/// The origin of a domain's log, or of one replica's log when the domain runs several
/// (`<trust-domain>/fedgate-audit/<replica>`, SPEC section 8).
pub fn origin_for(trust_domain: &str, replica: Option<&str>) -> String {
    match replica {
        Some(r) => format!("{trust_domain}/fedgate-audit/{r}"),
        None => origin_of(trust_domain),
    }
}

/// Longest replica name (part of the origin line).
pub const MAX_REPLICA_BYTES: usize = 32;

/// A replica name: 1-32 of `[a-z0-9-]`, not starting with `-`.
pub fn valid_replica(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= MAX_REPLICA_BYTES
        && !r.starts_with('-')
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Splits an origin into `(trust domain, replica)`; `None` if it is not a fedgate audit origin.
pub fn parse_origin(origin: &str) -> Option<(&str, Option<&str>)> {
    let (td, rest) = origin.split_once("/fedgate-audit")?;
    if td.is_empty() || td.contains('/') {
        return None;
    }
    match rest {
        "" => Some((td, None)),
        r => {
            let name = r.strip_prefix('/')?;
            valid_replica(name).then_some((td, Some(name)))
        }
    }
}

/// The note key id for an Ed25519 key under `name`.
pub fn key_id(name: &str, public: &[u8]) -> [u8; 4] {
    let h = sha256_parts(&[name.as_bytes(), b"\n", &[ED25519_TYPE], public]);
    [h[0], h[1], h[2], h[3]]
}

/// The C2SP verifier key string `<name>+<hex key id>+<base64(0x01 || key)>`, for tools that
/// speak signed notes.
pub fn verifier_key(name: &str, public: &[u8]) -> String {
    let mut k = vec![ED25519_TYPE];
    k.extend_from_slice(public);
    format!(
        "{name}+{}+{}",
        crate::crypto::hex(&key_id(name, public)),
        b64std(&k)
    )
}

impl Checkpoint {
    /// The note body: three lines, each ending in a newline.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, b64std(&self.root))
    }

    /// Signs the body with the Ed25519 audit key; returns the whole signed note.
    pub fn sign(&self, key: &SigningKey) -> Result<String, CheckpointError> {
        if key.alg() != Alg::EdDsa {
            return Err(CheckpointError::Malformed(
                "the audit key must be Ed25519".into(),
            ));
        }
        let body = self.body();
        let sig = key
            .sign_raw(body.as_bytes())
            .map_err(|e| CheckpointError::Malformed(e.to_string()))?;
        let mut blob = key_id(&self.origin, key.public().raw()).to_vec();
        blob.extend_from_slice(&sig);
        Ok(format!(
            "{body}\n{SIG_PREFIX}{} {}\n",
            self.origin,
            b64std(&blob)
        ))
    }

    pub fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let bad = |m: &str| CheckpointError::Malformed(m.to_string());
        let mut lines = body.split('\n');
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| bad("no origin line"))?;
        let size = lines.next().ok_or_else(|| bad("no size line"))?;
        if size.is_empty()
            || (size.len() > 1 && size.starts_with('0'))
            || !size.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("size is not a decimal number"));
        }
        let size: u64 = size.parse().map_err(|_| bad("size out of range"))?;
        let root = lines
            .next()
            .and_then(b64std_decode)
            .filter(|r| r.len() == 32)
            .ok_or_else(|| bad("root is not a base64 SHA-256 hash"))?;
        let mut r = [0u8; 32];
        r.copy_from_slice(&root);
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root: r,
        })
    }
}

/// A signature line: key name, key id, signature.
pub type NoteSig = (String, [u8; 4], Vec<u8>);

/// Splits a signed note into its body (ending in a newline) and signature lines.
pub fn split_note(text: &str) -> Result<(&str, Vec<NoteSig>), CheckpointError> {
    if text.len() > MAX_NOTE_BYTES {
        return Err(CheckpointError::Malformed("note too large".into()));
    }
    let at = text
        .rfind("\n\n")
        .ok_or_else(|| CheckpointError::Malformed("no blank line before the signatures".into()))?;
    let body = &text[..at + 1];
    let mut sigs = Vec::new();
    for line in text[at + 2..].split('\n').filter(|l| !l.is_empty()) {
        let rest = line.strip_prefix(SIG_PREFIX).ok_or_else(|| {
            CheckpointError::Malformed("signature line must start with an em dash".into())
        })?;
        let (name, b64) = rest.rsplit_once(' ').ok_or_else(|| {
            CheckpointError::Malformed("signature line needs a name and a signature".into())
        })?;
        let blob = b64std_decode(b64)
            .filter(|b| b.len() > 4)
            .ok_or_else(|| CheckpointError::Malformed("signature is not base64".into()))?;
        sigs.push((
            name.to_string(),
            [blob[0], blob[1], blob[2], blob[3]],
            blob[4..].to_vec(),
        ));
    }
    if sigs.is_empty() {
        return Err(CheckpointError::Malformed("no signature lines".into()));
    }
    Ok((body, sigs))
}

/// Verifies a signed checkpoint with a known Ed25519 public key named `origin`.
pub fn verify_with_key(
    text: &str,
    origin: &str,
    public: &[u8],
) -> Result<Checkpoint, CheckpointError> {
    let (body, sigs) = split_note(text)?;
    let cp = Checkpoint::parse_body(body)?;
    if cp.origin != origin {
        return Err(CheckpointError::WrongOrigin(cp.origin, origin.to_string()));
    }
    let kid = key_id(origin, public);
    let vk =
        VerifyingKey::ed25519(public).map_err(|e| CheckpointError::Malformed(e.to_string()))?;
    for (name, id, sig) in &sigs {
        if name == origin && *id == kid {
            return vk
                .verify(Alg::EdDsa, body.as_bytes(), sig)
                .map(|_| cp)
                .map_err(|_| CheckpointError::BadSignature);
        }
    }
    Err(CheckpointError::NoKnownSignature(origin.to_string()))
}

/// Verifies a signed checkpoint of `bundle`'s domain with an audit key of that bundle (only a
/// key whose role is `audit` signs checkpoints).
pub fn verify_with_bundle(text: &str, bundle: &Bundle) -> Result<Checkpoint, CheckpointError> {
    let td = bundle.trust_domain.as_str();
    // The domain's log, or one of its replicas' logs.
    let named = peek(text)?.origin;
    let origin = match parse_origin(&named) {
        Some((t, _)) if t == td => named,
        _ => return Err(CheckpointError::WrongOrigin(named, origin_of(td))),
    };
    let mut last = CheckpointError::NoKnownSignature(origin.clone());
    for a in bundle.keys_with_role(crate::spiffe::KeyRole::Audit) {
        if a.key.alg() != Alg::EdDsa {
            continue;
        }
        match verify_with_key(text, &origin, a.key.raw()) {
            Ok(cp) => return Ok(cp),
            Err(CheckpointError::NoKnownSignature(_)) => {}
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Parses the body without checking the signature (to read the origin first).
pub fn peek(text: &str) -> Result<Checkpoint, CheckpointError> {
    let (body, _) = split_note(text)?;
    Checkpoint::parse_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let (k, _) = SigningKey::generate_ed25519().unwrap();
        let cp = Checkpoint {
            origin: origin_of("company.com"),
            size: 42,
            root: [7u8; 32],
        };
        let note = cp.sign(&k).unwrap();
        assert!(note.starts_with("company.com/fedgate-audit\n42\nBwcH"));
        assert!(note.contains("\n\n\u{2014} company.com/fedgate-audit "));
        assert_eq!(
            verify_with_key(&note, "company.com/fedgate-audit", k.public().raw()).unwrap(),
            cp
        );
        // Change the size: the signature no longer verifies.
        let forged = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            verify_with_key(&forged, "company.com/fedgate-audit", k.public().raw()),
            Err(CheckpointError::BadSignature)
        );
        // Another key: not a known signature.
        let (other, _) = SigningKey::generate_ed25519().unwrap();
        assert!(matches!(
            verify_with_key(&note, "company.com/fedgate-audit", other.public().raw()),
            Err(CheckpointError::NoKnownSignature(_))
        ));
        // A P-256 key cannot sign notes.
        let (p, _) = SigningKey::generate_p256().unwrap();
        assert!(cp.sign(&p).is_err());
        for bad in [
            "",
            "x",
            "a\n1\nAAAA\n\n\u{2014} a AAAA\n",
            "a\n01\nAAAA\n\n\u{2014} a AAAAAAAA\n",
        ] {
            assert!(verify_with_key(bad, "a", k.public().raw()).is_err());
        }
        assert!(verifier_key("company.com/fedgate-audit", k.public().raw())
            .starts_with("company.com/fedgate-audit+"));
    }

    /// The C2SP signed-note key id and signature over a fixed Ed25519 key: a second
    /// implementation (Go's golang.org/x/mod/sumdb/note) computes key ids the same way.
    #[test]
    fn key_id_is_sha256_of_name_newline_type_key() {
        let public = [0u8; 32];
        let id = key_id("example.com/log", &public);
        let mut data = b"example.com/log\n".to_vec();
        data.push(1);
        data.extend_from_slice(&public);
        assert_eq!(&crate::crypto::sha256(&data)[..4], &id);
    }

    #[test]
    fn bundle_verification_uses_the_published_key() {
        let d = crate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        let cp = Checkpoint {
            origin: origin_of("company.com"),
            size: 1,
            root: [1u8; 32],
        };
        let note = cp.sign(&d.audit_key).unwrap();
        assert_eq!(verify_with_bundle(&note, &d.bundle).unwrap(), cp);
        let other = crate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        assert!(verify_with_bundle(&note, &other.bundle).is_err());
        // Only an audit-role key signs checkpoints: the same Ed25519 key published as a
        // gateway key does not vouch for one.
        let mut b = crate::spiffe::Bundle::new(d.td.clone());
        b.add_jwt_authority(
            d.audit_key.kid(),
            d.audit_key.public().clone(),
            crate::spiffe::KeyRole::Gateway,
        )
        .unwrap();
        assert!(verify_with_bundle(&note, &b).is_err());
    }
}
