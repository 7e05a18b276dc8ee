//! Compact JWS (RFC 7515) with exactly two algorithms: ES256 (P-256, fixed-size `r||s`
//! signatures) and EdDSA (Ed25519). Every other `alg` — `none`, HMAC, RSA, anything unknown —
//! is refused before any key is touched, and the algorithm is always pinned from the *key type*,
//! never taken from the token header alone (the classic JOSE confusion attacks).
//!
//! Signature primitives are aws-lc-rs's; this module only frames them. We keep framing here
//! rather than in jsonwebtoken so that keys are parsed once and reused (jsonwebtoken re-parses a
//! PKCS#8 key on every signature), header members such as `x5c` and `crit` are under exact
//! control, and duplicate JSON members are rejected by the typed deserializers. Interop with
//! jsonwebtoken is proven by tests that verify our tokens with it.

use std::fmt;

use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{b64url, b64url_decode, sha256};

/// Largest compact JWS we parse at all; a link, token, receipt or notice is far smaller. The
/// per-use limits (e.g. bytes per chain link) are tighter and checked by the callers.
pub const MAX_JWS_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Es256,
    EdDsa,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// Only the two allowed names parse; everything else (including `none`, `HS256`, `RS256`,
    /// and case variants) is `None`.
    pub fn parse(s: &str) -> Option<Alg> {
        match s {
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoseError {
    #[error("not a compact JWS: {0}")]
    Malformed(String),
    #[error("algorithm not allowed: {0:?}")]
    BadAlg(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("key error: {0}")]
    Key(String),
}

/// A public key that can verify one of the allowed algorithms. Parsed once.
#[derive(Clone)]
pub struct VerifyingKey {
    alg: Alg,
    key: std::sync::Arc<ParsedPublicKey>,
    raw: Vec<u8>,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VerifyingKey({}, {})",
            self.alg.as_str(),
            crate::crypto::hex(&self.raw[..8.min(self.raw.len())])
        )
    }
}

impl PartialEq for VerifyingKey {
    fn eq(&self, other: &Self) -> bool {
        self.alg == other.alg && self.raw == other.raw
    }
}

impl VerifyingKey {
    /// A P-256 public key from its uncompressed SEC1 point (65 bytes).
    pub fn p256_from_point(point: &[u8]) -> Result<Self, JoseError> {
        // Uncompressed points only: JWKs carry x and y, and the thumbprint needs both.
        if point.len() != 65 || point[0] != 4 {
            return Err(JoseError::Key(
                "P-256 key must be an uncompressed point (65 bytes)".into(),
            ));
        }
        let k = UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
            .parse()
            .map_err(|e| JoseError::Key(format!("P-256 point rejected: {e}")))?;
        Ok(VerifyingKey {
            alg: Alg::Es256,
            key: std::sync::Arc::new(k),
            raw: point.to_vec(),
        })
    }

    /// An Ed25519 public key (32 bytes).
    pub fn ed25519(public: &[u8]) -> Result<Self, JoseError> {
        if public.len() != 32 {
            return Err(JoseError::Key("Ed25519 public key must be 32 bytes".into()));
        }
        let k = UnparsedPublicKey::new(&signature::ED25519, public)
            .parse()
            .map_err(|e| JoseError::Key(format!("Ed25519 key rejected: {e}")))?;
        Ok(VerifyingKey {
            alg: Alg::EdDsa,
            key: std::sync::Arc::new(k),
            raw: public.to_vec(),
        })
    }

    /// From a certificate's SubjectPublicKeyInfo: P-256 and Ed25519 keys only.
    pub fn from_spki(
        spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    ) -> Result<Self, JoseError> {
        use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
        let alg_oid = &spki.algorithm.algorithm;
        if *alg_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve_ok = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o == OID_EC_P256)
                .unwrap_or(false);
            if !curve_ok {
                return Err(JoseError::BadAlg(
                    "EC key on a curve other than P-256".into(),
                ));
            }
            Self::p256_from_point(&spki.subject_public_key.data)
        } else if *alg_oid == OID_SIG_ED25519 {
            Self::ed25519(&spki.subject_public_key.data)
        } else {
            Err(JoseError::BadAlg(format!(
                "key algorithm {alg_oid} is not P-256 or Ed25519"
            )))
        }
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The raw public key: SEC1 point for P-256, 32 bytes for Ed25519.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    pub fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> Result<(), JoseError> {
        if alg != self.alg {
            return Err(JoseError::BadAlg(format!(
                "header says {} but the key is for {}",
                alg.as_str(),
                self.alg.as_str()
            )));
        }
        self.key
            .verify_sig(message, sig)
            .map_err(|_| JoseError::BadSignature)
    }

    /// The public JWK members (`kty`, `crv`, `x`, `y`), in RFC 7638 member order.
    pub fn jwk_members(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        match self.alg {
            Alg::Es256 => {
                m.insert("crv".into(), "P-256".into());
                m.insert("kty".into(), "EC".into());
                m.insert("x".into(), b64url(&self.raw[1..33]).into());
                m.insert("y".into(), b64url(&self.raw[33..65]).into());
            }
            Alg::EdDsa => {
                m.insert("crv".into(), "Ed25519".into());
                m.insert("kty".into(), "OKP".into());
                m.insert("x".into(), b64url(&self.raw).into());
            }
        }
        m
    }

    /// RFC 7638 JWK thumbprint (SHA-256, base64url): the `kid` fedgate gives its keys.
    pub fn thumbprint(&self) -> String {
        let m = self.jwk_members();
        // serde_json's Map is a BTreeMap here: members are already in lexicographic order, and
        // RFC 7638 asks for exactly that with no whitespace.
        let json = serde_json::to_string(&m).unwrap_or_default();
        b64url(&sha256(json.as_bytes()))
    }
}

enum KeyPairInner {
    P256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private signing key with its `kid`. Key bytes live inside aws-lc (cleared on drop by it);
/// the PKCS#8 input is held in a zeroizing buffer only while parsing.
pub struct SigningKey {
    inner: KeyPairInner,
    kid: String,
    public: VerifyingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey(kid={})", self.kid)
    }
}

impl SigningKey {
    /// Parses a PKCS#8 DER private key, P-256 or Ed25519. The `kid` is the RFC 7638 thumbprint.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, JoseError> {
        let der = Zeroizing::new(der.to_vec());
        if let Ok(kp) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der)
        {
            let public = VerifyingKey::p256_from_point(kp.public_key().as_ref())?;
            let kid = public.thumbprint();
            return Ok(SigningKey {
                inner: KeyPairInner::P256(kp),
                kid,
                public,
            });
        }
        if let Ok(kp) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            let public = VerifyingKey::ed25519(kp.public_key().as_ref())?;
            let kid = public.thumbprint();
            return Ok(SigningKey {
                inner: KeyPairInner::Ed25519(kp),
                kid,
                public,
            });
        }
        Err(JoseError::Key(
            "not a PKCS#8 P-256 or Ed25519 private key".into(),
        ))
    }

    /// A fresh P-256 key; returns it with its PKCS#8 DER (to be written 0600 by the caller).
    pub fn generate_p256() -> Result<(Self, Zeroizing<Vec<u8>>), JoseError> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JoseError::Key("P-256 key generation failed".into()))?;
        let der = Zeroizing::new(doc.as_ref().to_vec());
        Ok((Self::from_pkcs8(&der)?, der))
    }

    /// A fresh Ed25519 key with its PKCS#8 DER.
    pub fn generate_ed25519() -> Result<(Self, Zeroizing<Vec<u8>>), JoseError> {
        let kp = Ed25519KeyPair::generate()
            .map_err(|_| JoseError::Key("Ed25519 key generation failed".into()))?;
        let doc = kp
            .to_pkcs8()
            .map_err(|_| JoseError::Key("Ed25519 export failed".into()))?;
        let der = Zeroizing::new(doc.as_ref().to_vec());
        Ok((Self::from_pkcs8(&der)?, der))
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Alg {
        self.public.alg
    }

    pub fn public(&self) -> &VerifyingKey {
        &self.public
    }

    /// Signs raw bytes (JWS signing input, signed-note text).
    pub fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, JoseError> {
        match &self.inner {
            KeyPairInner::P256(kp) => {
                let rng = aws_lc_rs::rand::SystemRandom::new();
                kp.sign(&rng, message)
                    .map(|s| s.as_ref().to_vec())
                    .map_err(|_| JoseError::Key("ECDSA signing failed".into()))
            }
            KeyPairInner::Ed25519(kp) => Ok(kp.sign(message).as_ref().to_vec()),
        }
    }
}

/// The JOSE header members fedgate reads. Unknown members are ignored except `crit`, which we
/// refuse (we implement no extensions). Duplicate members are a parse error (serde).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub alg: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x5c: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crit: Option<serde_json::Value>,
}

/// A compact JWS split into its parts; nothing is verified yet.
#[derive(Debug, Clone)]
pub struct Compact<'a> {
    pub header: Header,
    pub alg: Alg,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`
    pub signing_input: &'a str,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS, checking the header's `alg` against the allow-list and
/// refusing `crit`. Signature is *not* checked here.
pub fn parse_compact(token: &str) -> Result<Compact<'_>, JoseError> {
    if token.len() > MAX_JWS_BYTES {
        return Err(JoseError::Malformed(format!(
            "longer than {MAX_JWS_BYTES} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s), None) => (h, p, s),
        _ => {
            return Err(JoseError::Malformed(
                "expected three dot-separated parts".into(),
            ))
        }
    };
    let hbytes =
        b64url_decode(h).ok_or_else(|| JoseError::Malformed("header is not base64url".into()))?;
    let header: Header = serde_json::from_slice(&hbytes)
        .map_err(|e| JoseError::Malformed(format!("header JSON: {e}")))?;
    let alg = Alg::parse(&header.alg).ok_or_else(|| JoseError::BadAlg(header.alg.clone()))?;
    if header.crit.is_some() {
        return Err(JoseError::Malformed(
            "crit header parameters are not supported".into(),
        ));
    }
    let payload =
        b64url_decode(p).ok_or_else(|| JoseError::Malformed("payload is not base64url".into()))?;
    let signature = b64url_decode(s)
        .ok_or_else(|| JoseError::Malformed("signature is not base64url".into()))?;
    let expected_len = match alg {
        Alg::Es256 => 64,
        Alg::EdDsa => 64,
    };
    if signature.len() != expected_len {
        return Err(JoseError::BadSignature);
    }
    Ok(Compact {
        header,
        alg,
        signing_input: &token[..h.len() + 1 + p.len()],
        payload,
        signature,
    })
}

impl Compact<'_> {
    pub fn verify_with(&self, key: &VerifyingKey) -> Result<(), JoseError> {
        key.verify(self.alg, self.signing_input.as_bytes(), &self.signature)
    }
}

/// Produces a compact JWS of `claims` with the given header members (alg is set from the key).
pub fn sign_compact<T: Serialize>(
    key: &SigningKey,
    typ: &str,
    use_kid: bool,
    x5c: Option<Vec<String>>,
    claims: &T,
) -> Result<String, JoseError> {
    let header = Header {
        alg: key.alg().as_str().to_string(),
        typ: Some(typ.to_string()),
        kid: if use_kid {
            Some(key.kid().to_string())
        } else {
            None
        },
        x5c,
        crit: None,
    };
    let h = serde_json::to_vec(&header).map_err(|e| JoseError::Malformed(e.to_string()))?;
    let p = serde_json::to_vec(claims).map_err(|e| JoseError::Malformed(e.to_string()))?;
    let mut out = String::with_capacity(h.len() * 2 + p.len() * 2 + 100);
    out.push_str(&b64url(&h));
    out.push('.');
    out.push_str(&b64url(&p));
    let sig = key.sign_raw(out.as_bytes())?;
    out.push('.');
    out.push_str(&b64url(&sig));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct C {
        a: String,
    }

    #[test]
    fn sign_and_verify_both_algs() {
        for (k, _) in [
            SigningKey::generate_p256().unwrap(),
            SigningKey::generate_ed25519().unwrap(),
        ] {
            let t = sign_compact(&k, "x+jwt", true, None, &C { a: "b".into() }).unwrap();
            let c = parse_compact(&t).unwrap();
            assert_eq!(c.header.kid.as_deref(), Some(k.kid()));
            c.verify_with(k.public()).unwrap();
            let claims: C = serde_json::from_slice(&c.payload).unwrap();
            assert_eq!(claims.a, "b");
            // Flip one payload character: the signature must fail.
            let mut bad = t.clone().into_bytes();
            let i = t.find('.').unwrap() + 2;
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            match parse_compact(&bad) {
                Ok(c) => assert_eq!(c.verify_with(k.public()), Err(JoseError::BadSignature)),
                Err(JoseError::Malformed(_)) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn refuses_other_algs_and_key_mismatch() {
        let (p, _) = SigningKey::generate_p256().unwrap();
        let (e, _) = SigningKey::generate_ed25519().unwrap();
        for alg in [
            "none", "HS256", "RS256", "PS256", "ES384", "es256", "EDDSA", "",
        ] {
            let h = b64url(format!("{{\"alg\":\"{alg}\"}}").as_bytes());
            let t = format!("{h}.{}.{}", b64url(b"{}"), b64url(&[0u8; 64]));
            assert!(
                matches!(parse_compact(&t), Err(JoseError::BadAlg(_))),
                "{alg}"
            );
        }
        // An EdDSA-signed token presented against a P-256 key: alg pinned by key type.
        let t = sign_compact(&e, "x", true, None, &C { a: "b".into() }).unwrap();
        let c = parse_compact(&t).unwrap();
        assert!(matches!(
            c.verify_with(p.public()),
            Err(JoseError::BadAlg(_))
        ));
    }

    #[test]
    fn malformed_inputs() {
        for t in ["", "a", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30.AA"] {
            assert!(parse_compact(t).is_err(), "{t}");
        }
        // Duplicate header member.
        let h = b64url(br#"{"alg":"ES256","alg":"none"}"#);
        let t = format!("{h}.{}.{}", b64url(b"{}"), b64url(&[0u8; 64]));
        assert!(matches!(parse_compact(&t), Err(JoseError::Malformed(_))));
        // crit is refused.
        let h = b64url(br#"{"alg":"ES256","crit":["exp"]}"#);
        let t = format!("{h}.{}.{}", b64url(b"{}"), b64url(&[0u8; 64]));
        assert!(matches!(parse_compact(&t), Err(JoseError::Malformed(_))));
        let huge = "a".repeat(MAX_JWS_BYTES + 1);
        assert!(parse_compact(&huge).is_err());
    }

    #[test]
    fn thumbprint_rfc7638_shape() {
        let (k, der) = SigningKey::generate_p256().unwrap();
        let again = SigningKey::from_pkcs8(&der).unwrap();
        assert_eq!(k.kid(), again.kid());
        assert_eq!(k.kid().len(), 43);
        assert!(SigningKey::from_pkcs8(b"junk").is_err());
    }
}
