//! SPIFFE trust bundles (the SPIFFE Trust Domain and Bundle standard): a JWK Set whose keys have
//! `use` = `x509-svid` (a CA certificate in `x5c`, exactly one) or `jwt-svid` (a public key with
//! a required, unique `kid`), plus `spiffe_sequence` and `spiffe_refresh_hint`. Keys with an
//! unknown `use`, and `jwt-svid` keys of a type fedgate cannot verify (anything but P-256 `EC`
//! and Ed25519 `OKP`), are skipped, not errors; they are kept for re-serialization.
//!
//! Every key has one role (docs/spec-notes.md, "Key roles"): a `jwt-svid` key carries the JWK
//! member `fedgate_role` (`idp`, `gateway`, `audit` or `witness`), and a verifier asks for a key
//! *in the role it needs* ([`Bundle::jwt_key`]). A key without the member, or with a role
//! fedgate does not know, verifies nothing fedgate checks: it stays in the document for other
//! SPIFFE tools, and using it is `wrong_signer`.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use rustls_pki_types::{CertificateDer, TrustAnchor};
use serde_json::{Map, Value};

use super::id::TrustDomain;
use crate::crypto::{b64std, b64std_decode, b64url_decode};
use crate::jose::VerifyingKey;

/// Largest bundle document accepted: a bundle with hundreds of authorities is still far below
/// this, and a partner's endpoint must not be able to make us buffer more.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;
/// Most keys in one bundle; rotation keeps a handful, so more is a mistake or an attack.
pub const MAX_BUNDLE_KEYS: usize = 256;
/// Largest single authority certificate, as rustls bounds certificate sizes.
pub const MAX_CERT_BYTES: usize = 64 * 1024;
/// Longest `kid` accepted.
pub const MAX_KID_BYTES: usize = 256;

pub const USE_X509: &str = "x509-svid";
pub const USE_JWT: &str = "jwt-svid";
/// The JWK member naming a `jwt-svid` key's fedgate role.
pub const ROLE_MEMBER: &str = "fedgate_role";

/// What a `jwt-svid` key of a fedgate domain may sign; each key has exactly one role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyRole {
    /// Human grants and the IdP's human-to-agent links.
    Idp,
    /// Crossing links, federation tokens, receipts, revocation notices, agreement signatures
    /// and the other gateway-to-gateway artefacts.
    Gateway,
    /// Audit-log checkpoints (Ed25519, C2SP signed notes).
    Audit,
    /// Cosignatures of partners' checkpoints (Ed25519, C2SP tlog-cosignature).
    Witness,
}

impl KeyRole {
    pub const ALL: [KeyRole; 4] = [
        KeyRole::Idp,
        KeyRole::Gateway,
        KeyRole::Audit,
        KeyRole::Witness,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Idp => "idp",
            KeyRole::Gateway => "gateway",
            KeyRole::Audit => "audit",
            KeyRole::Witness => "witness",
        }
    }

    pub fn parse(s: &str) -> Option<KeyRole> {
        KeyRole::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl std::fmt::Display for KeyRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a key lookup by `kid` and role failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No `jwt-svid` key with this `kid` (reason `unknown_key`).
    #[error("kid {0:?} is not a jwt-svid authority of {1}")]
    Unknown(String, String),
    /// The key exists but has another role, or none (reason `wrong_signer`).
    #[error("key {kid:?} of {domain} is a {} key, not a {wanted} key", .has.map(|r| r.as_str()).unwrap_or("role-less"))]
    WrongRole {
        kid: String,
        domain: String,
        has: Option<KeyRole>,
        wanted: KeyRole,
    },
}

impl KeyError {
    /// The SPEC section 10 reason code.
    pub fn reason(&self) -> crate::reason::Reason {
        match self {
            KeyError::Unknown(..) => crate::reason::Reason::UnknownKey,
            KeyError::WrongRole { .. } => crate::reason::Reason::WrongSigner,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("bundle larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("bundle is not valid JSON: {0}")]
    Json(String),
    #[error("bundle has no \"keys\" member")]
    MissingKeys,
    #[error("\"keys\" must be an array of objects")]
    KeysNotArray,
    #[error("more than {MAX_BUNDLE_KEYS} keys")]
    TooManyKeys,
    #[error("keys[{0}]: {1}")]
    Key(usize, String),
    #[error("keys[{0}]: jwt-svid key without \"kid\"")]
    MissingKid(usize),
    #[error("duplicate jwt-svid kid {0:?}")]
    DuplicateKid(String),
    #[error("keys[{0}]: x509-svid \"x5c\" must hold exactly one certificate, found {1}")]
    X5cCount(usize, usize),
    #[error("keys[{0}]: duplicate x509-svid authority")]
    DuplicateX509(usize),
    #[error("{0} must be a non-negative integer")]
    BadNumber(&'static str),
}

#[derive(Debug, Clone)]
pub struct X509Authority {
    pub der: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct JwtAuthority {
    pub kid: String,
    pub key: VerifyingKey,
    /// `None`: no `fedgate_role` member (or an unknown one): usable for nothing fedgate checks.
    pub role: Option<KeyRole>,
}

/// A parsed bundle of one trust domain.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub trust_domain: TrustDomain,
    pub sequence: Option<u64>,
    pub refresh_hint: Option<u64>,
    pub x509: Vec<X509Authority>,
    pub jwt: Vec<JwtAuthority>,
    /// Why keys were skipped (unknown use, unsupported key type), for `bundle inspect`.
    pub skipped: Vec<String>,
    anchors: Vec<TrustAnchor<'static>>,
    raw_keys: Vec<Value>,
}

fn key_err(i: usize, m: impl Into<String>) -> BundleError {
    BundleError::Key(i, m.into())
}

fn opt_u64(obj: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, BundleError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(BundleError::BadNumber(name)),
    }
}

fn parse_jwt_key(i: usize, k: &Map<String, Value>) -> Result<Option<VerifyingKey>, BundleError> {
    let kty = k.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = k.get("crv").and_then(Value::as_str).unwrap_or("");
    let coord = |name: &str| -> Result<Vec<u8>, BundleError> {
        let s = k
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| key_err(i, format!("missing \"{name}\"")))?;
        b64url_decode(s).ok_or_else(|| key_err(i, format!("\"{name}\" is not base64url")))
    };
    match (kty, crv) {
        ("EC", "P-256") => {
            let (x, y) = (coord("x")?, coord("y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err(key_err(i, "P-256 coordinates must be 32 bytes"));
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            VerifyingKey::p256_from_point(&point)
                .map(Some)
                .map_err(|e| key_err(i, e.to_string()))
        }
        ("OKP", "Ed25519") => {
            let x = coord("x")?;
            VerifyingKey::ed25519(&x)
                .map(Some)
                .map_err(|e| key_err(i, e.to_string()))
        }
        _ => Ok(None),
    }
}

impl Bundle {
    /// An empty bundle ("trust nothing") for `td`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Bundle {
            trust_domain,
            sequence: None,
            refresh_hint: None,
            x509: vec![],
            jwt: vec![],
            skipped: vec![],
            anchors: vec![],
            raw_keys: vec![],
        }
    }

    /// Parses a bundle document of trust domain `td` (the document itself does not name it).
    pub fn parse(trust_domain: TrustDomain, bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge);
        }
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Json(e.to_string()))?;
        let obj = doc
            .as_object()
            .ok_or_else(|| BundleError::Json("top level is not an object".into()))?;
        let keys = obj.get("keys").ok_or(BundleError::MissingKeys)?;
        let keys = keys.as_array().ok_or(BundleError::KeysNotArray)?;
        if keys.len() > MAX_BUNDLE_KEYS {
            return Err(BundleError::TooManyKeys);
        }
        let mut b = Bundle::new(trust_domain);
        b.sequence = opt_u64(obj, "spiffe_sequence")?;
        b.refresh_hint = opt_u64(obj, "spiffe_refresh_hint")?;
        let mut kids = HashSet::new();
        for (i, key) in keys.iter().enumerate() {
            let k = key.as_object().ok_or(BundleError::KeysNotArray)?;
            let use_ = match k.get("use") {
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(key_err(i, "\"use\" must be a string")),
                None => return Err(key_err(i, "missing \"use\"")),
            };
            match use_ {
                USE_X509 => {
                    let x5c = k
                        .get("x5c")
                        .and_then(Value::as_array)
                        .ok_or_else(|| key_err(i, "x509-svid key without \"x5c\" array"))?;
                    if x5c.len() != 1 {
                        return Err(BundleError::X5cCount(i, x5c.len()));
                    }
                    let der = x5c[0]
                        .as_str()
                        .and_then(b64std_decode)
                        .ok_or_else(|| key_err(i, "x5c entry is not standard base64"))?;
                    b.push_x509(i, der)?;
                    b.raw_keys.push(key.clone());
                }
                USE_JWT => {
                    let kid = match k.get("kid") {
                        Some(Value::String(s)) if !s.is_empty() => s.clone(),
                        Some(Value::String(_)) | None => return Err(BundleError::MissingKid(i)),
                        Some(_) => return Err(key_err(i, "\"kid\" must be a string")),
                    };
                    if kid.len() > MAX_KID_BYTES {
                        return Err(key_err(i, "kid too long"));
                    }
                    if !kids.insert(kid.clone()) {
                        return Err(BundleError::DuplicateKid(kid));
                    }
                    let role = match k.get(ROLE_MEMBER) {
                        None => None,
                        Some(Value::String(r)) => {
                            let role = KeyRole::parse(r);
                            if role.is_none() {
                                b.skipped.push(format!(
                                    "keys[{i}]: jwt-svid key {kid:?} has unknown {ROLE_MEMBER} {r:?}: usable for nothing"
                                ));
                            }
                            role
                        }
                        Some(_) => {
                            return Err(key_err(i, format!("\"{ROLE_MEMBER}\" must be a string")))
                        }
                    };
                    match parse_jwt_key(i, k)? {
                        Some(vk) => {
                            if b.jwt.iter().any(|a| a.key == vk) {
                                return Err(key_err(i, "the same public key appears twice"));
                            }
                            b.jwt.push(JwtAuthority { kid, key: vk, role });
                        }
                        None => b.skipped.push(format!(
                            "keys[{i}]: jwt-svid key {kid:?} of unsupported type {}/{}",
                            k.get("kty").and_then(Value::as_str).unwrap_or("?"),
                            k.get("crv").and_then(Value::as_str).unwrap_or("-")
                        )),
                    }
                    b.raw_keys.push(key.clone());
                }
                other => {
                    b.skipped.push(format!("keys[{i}]: unknown use {other:?}"));
                    b.raw_keys.push(key.clone());
                }
            }
        }
        Ok(b)
    }

    fn push_x509(&mut self, i: usize, der: Vec<u8>) -> Result<(), BundleError> {
        if der.len() > MAX_CERT_BYTES {
            return Err(key_err(i, "certificate too large"));
        }
        if self.x509.iter().any(|a| a.der == der) {
            return Err(BundleError::DuplicateX509(i));
        }
        x509_parser::parse_x509_certificate(&der)
            .map_err(|e| key_err(i, format!("x5c certificate does not parse: {e}")))?;
        let anchor = webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
            .map_err(|e| key_err(i, format!("not usable as a trust anchor: {e:?}")))?
            .to_owned();
        self.anchors.push(anchor);
        self.x509.push(X509Authority { der });
        Ok(())
    }

    /// Adds a CA certificate as an `x509-svid` authority.
    pub fn add_x509_authority(&mut self, der: Vec<u8>) -> Result<(), BundleError> {
        let i = self.raw_keys.len();
        let mut jwk = Map::new();
        jwk.insert("use".into(), USE_X509.into());
        if let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) {
            if let Ok(vk) = VerifyingKey::from_spki(cert.public_key()) {
                jwk.extend(vk.jwk_members());
            }
        }
        jwk.insert("x5c".into(), Value::Array(vec![b64std(&der).into()]));
        self.push_x509(i, der)?;
        self.raw_keys.push(Value::Object(jwk));
        Ok(())
    }

    /// Adds a `jwt-svid` authority under `kid` with its one role.
    pub fn add_jwt_authority(
        &mut self,
        kid: &str,
        key: VerifyingKey,
        role: KeyRole,
    ) -> Result<(), BundleError> {
        if kid.is_empty() {
            return Err(BundleError::MissingKid(self.raw_keys.len()));
        }
        if self.jwt.iter().any(|a| a.kid == kid) {
            return Err(BundleError::DuplicateKid(kid.to_string()));
        }
        if self.jwt.iter().any(|a| a.key == key) {
            return Err(key_err(
                self.raw_keys.len(),
                "the same public key appears twice",
            ));
        }
        let mut jwk = Map::new();
        jwk.insert("use".into(), USE_JWT.into());
        jwk.insert("kid".into(), kid.into());
        jwk.insert(ROLE_MEMBER.into(), role.as_str().into());
        jwk.extend(key.jwk_members());
        self.raw_keys.push(Value::Object(jwk));
        self.jwt.push(JwtAuthority {
            kid: kid.to_string(),
            key,
            role: Some(role),
        });
        Ok(())
    }

    /// Gives the role-less `jwt-svid` authority `kid` its role (upgrading a bundle written
    /// before keys had roles). Returns whether it changed anything; a key that already has a
    /// role keeps it (a role is never reassigned: that would let one key sign for another).
    pub fn set_role(&mut self, kid: &str, role: KeyRole) -> bool {
        let Some(a) = self.jwt.iter_mut().find(|a| a.kid == kid) else {
            return false;
        };
        let is_jwk = |k: &Value| {
            k.get("use").and_then(Value::as_str) == Some(USE_JWT)
                && k.get("kid").and_then(Value::as_str) == Some(kid)
        };
        // A member fedgate does not know (a newer role?) is left alone too.
        let has_member = self
            .raw_keys
            .iter()
            .any(|k| is_jwk(k) && k.get(ROLE_MEMBER).is_some());
        if a.role.is_some() || has_member {
            return false;
        }
        a.role = Some(role);
        for k in &mut self.raw_keys {
            if is_jwk(k) {
                if let Some(o) = k.as_object_mut() {
                    o.insert(ROLE_MEMBER.into(), role.as_str().into());
                }
            }
        }
        true
    }

    /// Removes the `jwt-svid` authority `kid` (key rotation). Returns whether it was present.
    pub fn remove_jwt_authority(&mut self, kid: &str) -> bool {
        let before = self.jwt.len();
        self.jwt.retain(|a| a.kid != kid);
        self.raw_keys.retain(|k| {
            !(k.get("use").and_then(Value::as_str) == Some(USE_JWT)
                && k.get("kid").and_then(Value::as_str) == Some(kid))
        });
        before != self.jwt.len()
    }

    /// The key `kid` for signatures of `role`: `Unknown` if no such key, `WrongRole` if it is
    /// another role's (or has none). The only way verifiers get a key by `kid`.
    pub fn jwt_key(&self, kid: &str, role: KeyRole) -> Result<&VerifyingKey, KeyError> {
        let a = self
            .authority(kid)
            .ok_or_else(|| KeyError::Unknown(kid.to_string(), self.trust_domain.to_string()))?;
        if a.role != Some(role) {
            return Err(KeyError::WrongRole {
                kid: kid.to_string(),
                domain: self.trust_domain.to_string(),
                has: a.role,
                wanted: role,
            });
        }
        Ok(&a.key)
    }

    /// The `jwt-svid` authority `kid`, whatever its role (for display and bookkeeping only).
    pub fn authority(&self, kid: &str) -> Option<&JwtAuthority> {
        self.jwt.iter().find(|a| a.kid == kid)
    }

    /// Every key of `role`.
    pub fn keys_with_role(&self, role: KeyRole) -> impl Iterator<Item = &JwtAuthority> {
        self.jwt.iter().filter(move |a| a.role == Some(role))
    }

    pub fn trust_anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The bundle document, pretty-printed JSON: `keys` in their original order.
    pub fn to_json(&self) -> String {
        let mut top = Map::new();
        top.insert("keys".into(), Value::Array(self.raw_keys.clone()));
        if let Some(s) = self.sequence {
            top.insert("spiffe_sequence".into(), s.into());
        }
        if let Some(r) = self.refresh_hint {
            top.insert("spiffe_refresh_hint".into(), r.into());
        }
        let mut s = serde_json::to_string_pretty(&Value::Object(top)).unwrap_or_default();
        s.push('\n');
        s
    }

    /// A readable summary for `bundle inspect --json`.
    pub fn summary(&self) -> Value {
        let x509: Vec<Value> = self
            .x509
            .iter()
            .map(|a| {
                let mut m = Map::new();
                if let Ok((_, c)) = x509_parser::parse_x509_certificate(&a.der) {
                    m.insert("subject".into(), c.subject().to_string().into());
                    m.insert(
                        "not_before".into(),
                        crate::time::format_rfc3339(c.validity().not_before.timestamp()).into(),
                    );
                    m.insert(
                        "not_after".into(),
                        crate::time::format_rfc3339(c.validity().not_after.timestamp()).into(),
                    );
                    let uris: Vec<Value> = c
                        .subject_alternative_name()
                        .ok()
                        .flatten()
                        .map(|san| {
                            san.value
                                .general_names
                                .iter()
                                .filter_map(|g| match g {
                                    x509_parser::extensions::GeneralName::URI(u) => {
                                        Some(Value::from(*u))
                                    }
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    m.insert("uri_sans".into(), Value::Array(uris));
                }
                m.insert(
                    "sha256".into(),
                    crate::crypto::hex(&crate::crypto::sha256(&a.der)).into(),
                );
                Value::Object(m)
            })
            .collect();
        let jwt: Vec<Value> = self
            .jwt
            .iter()
            .map(|a| serde_json::json!({"kid": a.kid, "alg": a.key.alg().as_str(), "role": a.role.map(|r| r.as_str())}))
            .collect();
        serde_json::json!({
            "trust_domain": self.trust_domain.as_str(),
            "spiffe_sequence": self.sequence,
            "spiffe_refresh_hint": self.refresh_hint,
            "x509_authorities": x509,
            "jwt_authorities": jwt,
            "skipped": self.skipped,
        })
    }
}

/// The bundles fedgate trusts, one per trust domain. Cheap to clone (shared bundles).
#[derive(Debug, Clone, Default)]
pub struct BundleSet {
    map: BTreeMap<TrustDomain, Arc<Bundle>>,
}

impl BundleSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, bundle: Bundle) {
        self.map
            .insert(bundle.trust_domain.clone(), Arc::new(bundle));
    }

    pub fn get(&self, td: &TrustDomain) -> Option<&Arc<Bundle>> {
        self.map.get(td)
    }

    /// Looks a bundle up by the trust domain part of a SPIFFE ID without allocating.
    pub fn get_str(&self, td: &str) -> Option<&Arc<Bundle>> {
        self.map
            .iter()
            .find(|(k, _)| k.as_str() == td)
            .map(|(_, v)| v)
    }

    pub fn domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.map.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Bundle>> {
        self.map.values()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::parse("example.org").unwrap()
    }

    #[test]
    fn empty_keys_is_valid_no_keys_is_not() {
        let b = Bundle::parse(td(), br#"{"keys":[]}"#).unwrap();
        assert!(b.x509.is_empty() && b.jwt.is_empty());
        assert_eq!(
            Bundle::parse(td(), br#"{"spiffe_sequence":1}"#).unwrap_err(),
            BundleError::MissingKeys
        );
        assert_eq!(
            Bundle::parse(td(), br#"{"keys":{}}"#).unwrap_err(),
            BundleError::KeysNotArray
        );
        assert!(matches!(
            Bundle::parse(td(), b"not json"),
            Err(BundleError::Json(_))
        ));
        assert!(matches!(
            Bundle::parse(td(), b""),
            Err(BundleError::Json(_))
        ));
        assert_eq!(
            Bundle::parse(td(), br#"{"keys":[],"spiffe_sequence":-1}"#).unwrap_err(),
            BundleError::BadNumber("spiffe_sequence")
        );
    }

    #[test]
    fn size_and_count_limits() {
        let big = vec![b' '; MAX_BUNDLE_BYTES + 1];
        assert_eq!(
            Bundle::parse(td(), &big).unwrap_err(),
            BundleError::TooLarge
        );
        let many: Vec<Value> = (0..=MAX_BUNDLE_KEYS)
            .map(|_| serde_json::json!({"use":"other"}))
            .collect();
        let doc = serde_json::to_vec(&serde_json::json!({ "keys": many })).unwrap();
        assert_eq!(
            Bundle::parse(td(), &doc).unwrap_err(),
            BundleError::TooManyKeys
        );
    }

    #[test]
    fn jwt_keys_and_duplicates() {
        let (k1, _) = crate::jose::SigningKey::generate_p256().unwrap();
        let (k2, _) = crate::jose::SigningKey::generate_ed25519().unwrap();
        let mut b = Bundle::new(td());
        b.sequence = Some(3);
        b.add_jwt_authority(k1.kid(), k1.public().clone(), KeyRole::Gateway)
            .unwrap();
        b.add_jwt_authority(k2.kid(), k2.public().clone(), KeyRole::Audit)
            .unwrap();
        assert_eq!(
            b.add_jwt_authority(k1.kid(), k2.public().clone(), KeyRole::Gateway)
                .unwrap_err(),
            BundleError::DuplicateKid(k1.kid().to_string())
        );
        let json = b.to_json();
        let back = Bundle::parse(td(), json.as_bytes()).unwrap();
        assert_eq!(back.jwt.len(), 2);
        assert_eq!(back.sequence, Some(3));
        assert_eq!(back.jwt_key(k2.kid(), KeyRole::Audit), Ok(k2.public()));
        assert!(matches!(
            back.jwt_key(k2.kid(), KeyRole::Gateway),
            Err(KeyError::WrongRole {
                has: Some(KeyRole::Audit),
                ..
            })
        ));
        assert!(matches!(
            back.jwt_key("nope", KeyRole::Gateway),
            Err(KeyError::Unknown(..))
        ));
        // Duplicate kid in a document.
        let mut v: Value = serde_json::from_str(&json).unwrap();
        let first = v["keys"][0].clone();
        v["keys"].as_array_mut().unwrap().push(first);
        let dup = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            Bundle::parse(td(), &dup),
            Err(BundleError::DuplicateKid(_))
        ));
        // Same key under another kid.
        let mut v: Value = serde_json::from_str(&json).unwrap();
        let mut again = v["keys"][0].clone();
        again["kid"] = "other".into();
        v["keys"].as_array_mut().unwrap().push(again);
        let dup = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            Bundle::parse(td(), &dup),
            Err(BundleError::Key(_, _))
        ));
        assert!(b.remove_jwt_authority(k1.kid()));
        assert!(!b.remove_jwt_authority(k1.kid()));
        assert_eq!(
            Bundle::parse(td(), b.to_json().as_bytes())
                .unwrap()
                .jwt
                .len(),
            1
        );
    }

    #[test]
    fn keys_without_a_known_role_verify_nothing() {
        let (k, _) = crate::jose::SigningKey::generate_p256().unwrap();
        let mut b = Bundle::new(td());
        b.add_jwt_authority(k.kid(), k.public().clone(), KeyRole::Idp)
            .unwrap();
        for member in [None, Some(Value::from("admin"))] {
            let mut v: Value = serde_json::from_str(&b.to_json()).unwrap();
            match &member {
                None => {
                    v["keys"][0].as_object_mut().unwrap().remove(ROLE_MEMBER);
                }
                Some(m) => v["keys"][0][ROLE_MEMBER] = m.clone(),
            }
            let back = Bundle::parse(td(), &serde_json::to_vec(&v).unwrap()).unwrap();
            assert_eq!(back.jwt.len(), 1, "the key stays for other tools");
            for role in KeyRole::ALL {
                assert_eq!(
                    back.jwt_key(k.kid(), role).unwrap_err().reason().code(),
                    "wrong_signer"
                );
            }
            // Re-serialized as it was.
            assert_eq!(serde_json::from_str::<Value>(&back.to_json()).unwrap(), v);
        }
        // Upgrading: a role-less key gets a role once; a role is never reassigned.
        let mut v: Value = serde_json::from_str(&b.to_json()).unwrap();
        v["keys"][0].as_object_mut().unwrap().remove(ROLE_MEMBER);
        let mut up = Bundle::parse(td(), &serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(up.set_role(k.kid(), KeyRole::Gateway));
        assert!(up.jwt_key(k.kid(), KeyRole::Gateway).is_ok());
        assert!(!up.set_role(k.kid(), KeyRole::Idp));
        let again = Bundle::parse(td(), up.to_json().as_bytes()).unwrap();
        assert!(again.jwt_key(k.kid(), KeyRole::Gateway).is_ok());
        v["keys"][0][ROLE_MEMBER] = "admin".into();
        let mut odd = Bundle::parse(td(), &serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(
            !odd.set_role(k.kid(), KeyRole::Gateway),
            "an unknown role is left alone"
        );
        let mut v: Value = serde_json::from_str(&b.to_json()).unwrap();
        v["keys"][0][ROLE_MEMBER] = 7.into();
        assert!(Bundle::parse(td(), &serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn unsupported_key_types_are_skipped() {
        let doc = br#"{"keys":[
            {"use":"jwt-svid","kid":"r","kty":"RSA","n":"AQAB","e":"AQAB"},
            {"use":"wit-svid","kid":"w","kty":"EC"},
            {"use":"jwt-svid","kid":"p","kty":"EC","crv":"P-384","x":"AA","y":"AA"}]}"#;
        let b = Bundle::parse(td(), doc).unwrap();
        assert!(b.jwt.is_empty());
        assert_eq!(b.skipped.len(), 3);
        let bad_point = br#"{"keys":[{"use":"jwt-svid","kid":"k","kty":"EC","crv":"P-256","x":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","y":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;
        assert!(matches!(
            Bundle::parse(td(), bad_point),
            Err(BundleError::Key(0, _))
        ));
        assert!(matches!(
            Bundle::parse(td(), br#"{"keys":[{"kty":"EC"}]}"#),
            Err(BundleError::Key(0, _))
        ));
    }

    #[test]
    fn x5c_rules() {
        let two = br#"{"keys":[{"use":"x509-svid","x5c":["AA==","AA=="]}]}"#;
        assert_eq!(
            Bundle::parse(td(), two).unwrap_err(),
            BundleError::X5cCount(0, 2)
        );
        let junk = br#"{"keys":[{"use":"x509-svid","x5c":["AAAA"]}]}"#;
        assert!(matches!(
            Bundle::parse(td(), junk),
            Err(BundleError::Key(0, _))
        ));
        let none = br#"{"keys":[{"use":"x509-svid"}]}"#;
        assert!(matches!(
            Bundle::parse(td(), none),
            Err(BundleError::Key(0, _))
        ));
    }
}
