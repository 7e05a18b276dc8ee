//! Revocation notices: a compact JWS `typ` `revocation+jwt` a gateway sends to every partner of
//! an active agreement when something of its own domain is revoked, so that tokens and
//! crossing links derived from it stop working on the other side too. A domain may only revoke
//! its own principals, agents, tasks and tokens: the receiver files every notice under the
//! sender's domain, and an agent revocation must name an agent of that domain.

use serde::{Deserialize, Serialize};

use crate::chain::RevocationKind;
use crate::jose::{parse_compact, sign_compact, JoseError, SigningKey};
use crate::spiffe::{BundleSet, KeyRole, SpiffeId};

pub const TYP_NOTICE: &str = "revocation+jwt";
/// Longest revoked value (a SPIFFE ID is at most 2048 bytes).
pub const MAX_VALUE_BYTES: usize = 2048;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NoticeClaims {
    /// The sending gateway.
    pub iss: String,
    /// `jti`, `task`, `agent` or `principal`.
    pub kind: String,
    pub value: String,
    /// Until when (0: for good).
    pub until: i64,
    pub iat: i64,
    pub jti: String,
}

pub fn mint_notice(key: &SigningKey, claims: &NoticeClaims) -> Result<String, JoseError> {
    sign_compact(key, TYP_NOTICE, true, None, claims)
}

/// Verifies a notice's signature with the sender's bundle and that it only revokes what the
/// sender owns. Returns the claims and the sender's gateway ID.
pub fn verify_notice(
    notice: &str,
    bundles: &BundleSet,
) -> Result<(NoticeClaims, SpiffeId), String> {
    let c = parse_compact(notice.trim()).map_err(|e| e.to_string())?;
    if c.header.typ.as_deref() != Some(TYP_NOTICE) {
        return Err("typ must be revocation+jwt".into());
    }
    let kid = c.header.kid.as_deref().ok_or("no kid")?;
    let claims: NoticeClaims =
        serde_json::from_slice(&c.payload).map_err(|e| format!("claims: {e}"))?;
    let iss = SpiffeId::parse(&claims.iss).map_err(|e| format!("iss: {e}"))?;
    let bundle = bundles
        .get_str(iss.trust_domain_str())
        .ok_or_else(|| format!("no bundle for {}", iss.trust_domain_str()))?;
    let key = bundle
        .jwt_key(kid, KeyRole::Gateway)
        .map_err(|e| e.to_string())?;
    c.verify_with(key).map_err(|e| e.to_string())?;
    let kind = RevocationKind::parse(&claims.kind)
        .ok_or_else(|| format!("unknown kind {:?}", claims.kind))?;
    if claims.value.is_empty() || claims.value.len() > MAX_VALUE_BYTES {
        return Err("value must be 1-2048 bytes".into());
    }
    if kind == RevocationKind::Agent {
        let a = SpiffeId::parse(&claims.value).map_err(|e| format!("agent: {e}"))?;
        if !a.in_domain(&iss.trust_domain()) {
            return Err(format!(
                "{} may only revoke its own agents, not {a}",
                iss.trust_domain()
            ));
        }
    }
    Ok((claims, iss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_scoped_to_the_sender() {
        let co = crate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        let ve = crate::devkit::DevDomain::new("vendor.example", 1_800_000_000).unwrap();
        let set = crate::devkit::DevDomain::bundle_set(&[&co, &ve]);
        let mut c = NoticeClaims {
            iss: co.gateway_id.to_string(),
            kind: "agent".into(),
            value: "spiffe://company.com/agent/planning/p1".into(),
            until: 0,
            iat: 1,
            jti: "n1".into(),
        };
        let n = mint_notice(&co.gateway_key, &c).unwrap();
        assert_eq!(verify_notice(&n, &set).unwrap().0, c);
        // Revoking the partner's agent is refused.
        c.value = "spiffe://vendor.example/agent/analytics/a1".into();
        let n = mint_notice(&co.gateway_key, &c).unwrap();
        assert!(verify_notice(&n, &set).unwrap_err().contains("own agents"));
        // Signed by vendor's key but claiming to be company's gateway.
        c.value = "spiffe://company.com/agent/planning/p1".into();
        let n = mint_notice(&ve.gateway_key, &c).unwrap();
        assert!(verify_notice(&n, &set).is_err());
        // Keys have roles: company's IdP key cannot sign a notice.
        let n = mint_notice(&co.idp_key, &c).unwrap();
        assert!(verify_notice(&n, &set)
            .unwrap_err()
            .contains("not a gateway key"));
        c.kind = "everything".into();
        let n = mint_notice(&co.gateway_key, &c).unwrap();
        assert!(verify_notice(&n, &set).is_err());
    }
}
