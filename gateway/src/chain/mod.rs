//! Internal delegation chains (SPEC section 3), pure: link claims and headers, minting (the
//! IdP's human grant, an agent's extension signed with its X509-SVID, the gateway's crossing
//! link), and verification of every rule 1–8 with its reason code. An [`UnverifiedChain`]
//! becomes a [`VerifiedChain`] only through [`UnverifiedChain::verify`].

mod mint;
mod verify;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use mint::{extend, issue, mint_crossing_link, mint_link, CrossingLink, LinkSigner, MintError};
pub use verify::{
    ChainError, ChainErrorKind, Holder, LinkSummary, NoRevocations, Policy, RevocationKind,
    Revocations, Root, SignerKind, UnverifiedChain, VerifiedChain,
};

/// Default most links in a chain (SPEC section 3, rule 7).
pub const DEFAULT_MAX_LINKS: usize = 16;
/// No configuration may allow more links than this: verification cost grows with each link
/// (one signature and possibly one certificate path each).
pub const MAX_LINKS_HARD: usize = 64;
/// Largest single link: a link with a P-256 SVID and one intermediate in `x5c` is about 3 KiB.
pub const MAX_LINK_BYTES: usize = 16 * 1024;
/// Largest whole chain (SPEC section 3, rule 7 default), checked before any parsing.
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// Most certificates in a link's `x5c` (leaf plus intermediates).
pub const MAX_X5C_CERTS: usize = 4;
/// Longest task id (SPEC section 3).
pub const MAX_TASK_BYTES: usize = 128;
/// Longest human principal (SPEC section 1).
pub const MAX_PRINCIPAL_BYTES: usize = 256;
/// Longest link `jti`.
pub const MAX_JTI_BYTES: usize = 128;
/// Default clock skew tolerated on `iat` (SPEC section 3, rule 6).
pub const DEFAULT_CLOCK_SKEW: i64 = 30;
/// Most skew any configuration may tolerate: beyond this, "not yet valid" stops meaning much.
pub const MAX_CLOCK_SKEW: i64 = 300;

/// JWS `typ` of a link.
pub const TYP_LINK: &str = "delegation+jwt";
pub const SUB_HUMAN: &str = "human";
pub const SUB_AGENT: &str = "agent";
/// The chain separator on the wire.
pub const SEPARATOR: char = '~';

/// The claims of one link (SPEC section 3). Duplicate members are a parse error.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LinkClaims {
    pub iss: String,
    pub sub: String,
    pub sub_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dlg: Option<String>,
    pub scope: Vec<String>,
    pub task: String,
    pub iat: i64,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<String>,
    pub jti: String,
    /// Crossing links only: the federation token's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossing: Option<String>,
    /// Crossing links only: links counted before this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dep: Option<u32>,
    /// Crossing links only: the agreement (`<id>@<hash>`) the crossing was under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agr: Option<String>,
    /// Crossing links only: the root principal as the sending domain disclosed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prn: Option<String>,
}

/// `prev` of a link: base64url (no padding) SHA-256 of the previous link's compact JWS.
pub fn link_hash(compact: &str) -> String {
    crate::crypto::b64url(&crate::crypto::sha256(compact.as_bytes()))
}

/// The chain digest: base64url SHA-256 of the chain as presented (federation token `chn`).
pub fn chain_digest(raw: &str) -> String {
    crate::crypto::b64url(&crate::crypto::sha256(raw.as_bytes()))
}

/// A human principal: 1–256 printable ASCII bytes, no spaces (SPEC section 1).
pub fn valid_principal(p: &str) -> bool {
    !p.is_empty() && p.len() <= MAX_PRINCIPAL_BYTES && p.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// A task id: 1–128 bytes of printable ASCII.
pub fn valid_task(t: &str) -> bool {
    !t.is_empty() && t.len() <= MAX_TASK_BYTES && t.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// Readable form of a chain for `chain inspect` (the shape the background article sketches),
/// without verifying anything.
pub fn inspect(raw: &str) -> Result<serde_json::Value, String> {
    if raw.len() > MAX_CHAIN_BYTES {
        return Err(format!("chain larger than {MAX_CHAIN_BYTES} bytes"));
    }
    let mut out = Vec::new();
    for (i, link) in raw.trim().split(SEPARATOR).enumerate() {
        let c = crate::jose::parse_compact(link).map_err(|e| format!("link {i}: {e}"))?;
        let claims: LinkClaims =
            serde_json::from_slice(&c.payload).map_err(|e| format!("link {i}: claims: {e}"))?;
        let signer = if c.header.x5c.is_some() { "x5c" } else { "kid" };
        let mut entry = serde_json::json!({
            "principal": claims.sub,
            "type": claims.sub_type,
            "scope": claims.scope,
            "task": claims.task,
            "timestamp": crate::time::format_rfc3339(claims.iat),
            "expires": crate::time::format_rfc3339(claims.exp),
            "issuer": claims.iss,
            "signed_with": signer,
            "alg": c.header.alg,
            "signature": format!("sha256:{}", crate::crypto::hex(&crate::crypto::sha256(&c.signature))),
            "jti": claims.jti,
        });
        if let Some(d) = &claims.dlg {
            entry["delegated_by"] = d.clone().into();
        }
        if let Some(x) = &claims.crossing {
            entry["crossing"] = x.clone().into();
        }
        if let Some(d) = claims.dep {
            entry["dep"] = d.into();
        }
        out.push(entry);
    }
    Ok(serde_json::json!({ "chain": out, "digest": chain_digest(raw.trim()) }))
}
