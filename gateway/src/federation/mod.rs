//! Federation artefacts (pure): the cross-domain token of SPEC section 6 (mint and the receiving
//! gateway's checks), receipts (section 8), revocation notices, and pseudonymous principals.

pub mod httpsig;
pub mod notice;
pub mod receipt;
pub mod token;

pub use token::{
    mint_token, verify_token, Actor, Cnf, FederationClaims, PeerInfo, TokenContext, TokenError,
    VerifiedToken, TYP_TOKEN,
};

/// `anon:` + base64url(HMAC-SHA256(key, principal)) (SPEC section 5).
pub fn pseudonym(key: &[u8], principal: &str) -> String {
    format!(
        "anon:{}",
        crate::crypto::b64url(&crate::crypto::hmac_sha256(key, principal.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn pseudonyms_are_stable_and_keyed() {
        let a = super::pseudonym(b"k1", "alice@company.com");
        assert_eq!(a, super::pseudonym(b"k1", "alice@company.com"));
        assert_ne!(a, super::pseudonym(b"k2", "alice@company.com"));
        assert_ne!(a, super::pseudonym(b"k1", "bob@company.com"));
        assert!(a.starts_with("anon:") && a.len() == 5 + 43);
    }
}
