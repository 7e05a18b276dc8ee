//! Receipts (SPEC section 8): the ingress gateway answers each allowed crossing with a compact
//! JWS `typ` `receipt+jwt` over `{crossing, seq, leaf, iat}` — its log position and leaf hash
//! for the crossing's record — signed by its gateway key. The egress gateway verifies it with
//! the partner's bundle and keeps it in its outcome record, so an auditor can later check the
//! partner's log really holds that record at that position.

use serde::{Deserialize, Serialize};

use crate::jose::{parse_compact, sign_compact, JoseError, SigningKey};
use crate::spiffe::{Bundle, KeyRole};

pub const TYP_RECEIPT: &str = "receipt+jwt";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ReceiptClaims {
    pub crossing: String,
    pub seq: u64,
    /// base64url of the record's Merkle leaf hash.
    pub leaf: String,
    pub iat: i64,
    /// The replica whose log holds the record, when the domain runs several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
}

pub fn mint_receipt(key: &SigningKey, claims: &ReceiptClaims) -> Result<String, JoseError> {
    sign_compact(key, TYP_RECEIPT, true, None, claims)
}

/// Verifies a receipt with the bundle of the domain that should have signed it.
pub fn verify_receipt(receipt: &str, bundle: &Bundle) -> Result<ReceiptClaims, String> {
    let c = parse_compact(receipt.trim()).map_err(|e| e.to_string())?;
    if c.header.typ.as_deref() != Some(TYP_RECEIPT) {
        return Err("typ must be receipt+jwt".into());
    }
    let kid = c.header.kid.as_deref().ok_or("no kid")?;
    let key = bundle
        .jwt_key(kid, KeyRole::Gateway)
        .map_err(|e| e.to_string())?;
    c.verify_with(key).map_err(|e| e.to_string())?;
    serde_json::from_slice(&c.payload).map_err(|e| format!("claims: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_verify_only_with_the_signers_bundle() {
        let a = crate::devkit::DevDomain::new("vendor.example", 1_800_000_000).unwrap();
        let b = crate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        let c = ReceiptClaims {
            crossing: "j".into(),
            seq: 4,
            leaf: "AAAA".into(),
            iat: 5,
            replica: None,
        };
        let r = mint_receipt(&a.gateway_key, &c).unwrap();
        assert_eq!(verify_receipt(&r, &a.bundle).unwrap(), c);
        assert!(verify_receipt(&r, &b.bundle).is_err());
        let forged = r.replacen('.', ".x", 1);
        assert!(verify_receipt(&forged, &a.bundle).is_err());
        // Keys have roles: the IdP key of the same domain cannot sign receipts.
        let by_idp = mint_receipt(&a.idp_key, &c).unwrap();
        assert!(verify_receipt(&by_idp, &a.bundle)
            .unwrap_err()
            .contains("not a gateway key"));
    }
}
