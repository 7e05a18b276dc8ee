//! Two-party agreement signatures (SPEC section 5): each domain's gateway key signs a compact
//! JWS, `typ` `agreement+jwt`, over `{"agr": <agreement hash>}`, stored next to the agreement
//! as `<id>.<trust-domain>.sig`. A signature binds the exact content: any change of the
//! document changes the hash and breaks both signatures.

use serde::{Deserialize, Serialize};

use super::AgreementHash;
use crate::jose::{parse_compact, sign_compact, JoseError, SigningKey};
use crate::spiffe::Bundle;

pub const TYP_AGREEMENT: &str = "agreement+jwt";

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    agr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("signature is not a valid JWS: {0}")]
    Malformed(String),
    #[error("signature typ must be agreement+jwt")]
    WrongTyp,
    #[error("signature key {0:?} is not a jwt-svid authority of {1}")]
    UnknownKey(String, String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("signature covers {0}, but the agreement hashes to {1}")]
    HashMismatch(String, String),
}

/// `<id>.<trust-domain>.sig`
pub fn signature_file_name(id: &str, td: &str) -> String {
    format!("{id}.{td}.sig")
}

/// Signs the agreement hash with a domain's gateway key.
pub fn sign_agreement(hash: &AgreementHash, key: &SigningKey) -> Result<String, JoseError> {
    sign_compact(
        key,
        TYP_AGREEMENT,
        true,
        None,
        &Payload {
            agr: hash.as_str().to_string(),
        },
    )
}

/// Verifies one domain's signature with that domain's bundle.
pub fn verify_signature(
    sig: &str,
    hash: &AgreementHash,
    bundle: &Bundle,
) -> Result<(), SignatureError> {
    let c = parse_compact(sig.trim()).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if c.header.typ.as_deref() != Some(TYP_AGREEMENT) {
        return Err(SignatureError::WrongTyp);
    }
    let kid = c
        .header
        .kid
        .clone()
        .ok_or_else(|| SignatureError::Malformed("no kid".into()))?;
    let key = bundle
        .jwt_key(&kid, crate::spiffe::KeyRole::Gateway)
        .map_err(|e| match e {
            crate::spiffe::KeyError::Unknown(..) => {
                SignatureError::UnknownKey(kid.clone(), bundle.trust_domain.to_string())
            }
            other => SignatureError::Malformed(other.to_string()),
        })?;
    c.verify_with(key)
        .map_err(|_| SignatureError::BadSignature)?;
    let p: Payload =
        serde_json::from_slice(&c.payload).map_err(|e| SignatureError::Malformed(e.to_string()))?;
    if p.agr != hash.as_str() {
        return Err(SignatureError::HashMismatch(p.agr, hash.to_string()));
    }
    Ok(())
}
