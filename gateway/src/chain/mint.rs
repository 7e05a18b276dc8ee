//! Minting links: the IdP's human grant and its first delegation (`issue`), an agent's
//! delegation signed with its own X509-SVID key (`extend`), and the gateway's crossing link.
//! Minting refuses what verification would reject (wider scope, longer expiry), so honest
//! callers cannot produce invalid chains; tests that need invalid chains use [`mint_link`].

use super::{
    link_hash, valid_principal, valid_task, LinkClaims, SEPARATOR, SUB_AGENT, SUB_HUMAN, TYP_LINK,
};
use crate::crypto::{b64std, random_id};
use crate::jose::{sign_compact, JoseError, SigningKey};
use crate::scope::ScopeSet;
use crate::spiffe::SpiffeId;
use crate::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MintError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Jose(#[from] JoseError),
}

/// Who signs a link and how the header designates the key.
pub enum LinkSigner<'a> {
    /// The IdP or a gateway: header `kid` (a `jwt-svid` authority of its trust domain).
    Kid(&'a SigningKey),
    /// An agent: header `x5c` = its X509-SVID chain (DER, leaf first).
    X5c(&'a SigningKey, &'a [Vec<u8>]),
}

/// Signs arbitrary link claims (no checks): the primitive under every other minting function.
pub fn mint_link(signer: LinkSigner<'_>, claims: &LinkClaims) -> Result<String, MintError> {
    match signer {
        LinkSigner::Kid(k) => Ok(sign_compact(k, TYP_LINK, true, None, claims)?),
        LinkSigner::X5c(k, certs) => {
            let x5c = certs.iter().map(|c| b64std(c)).collect();
            Ok(sign_compact(k, TYP_LINK, false, Some(x5c), claims)?)
        }
    }
}

fn invalid(m: impl Into<String>) -> MintError {
    MintError::Invalid(m.into())
}

/// As the IdP: the human's grant `L0` and the human → agent link `L1`, both signed by the IdP
/// key, valid from `now` for `ttl` seconds. Returns `L0~L1`.
#[allow(clippy::too_many_arguments)]
pub fn issue(
    idp_key: &SigningKey,
    idp: &SpiffeId,
    principal: &str,
    agent: &SpiffeId,
    scope: &ScopeSet,
    task: &str,
    now: Instant,
    ttl: i64,
) -> Result<String, MintError> {
    if !valid_principal(principal) {
        return Err(invalid(
            "principal must be 1-256 printable bytes without spaces",
        ));
    }
    if !valid_task(task) {
        return Err(invalid("task must be 1-128 printable bytes"));
    }
    if scope.is_empty() {
        return Err(invalid("at least one scope is required"));
    }
    if ttl <= 0 {
        return Err(invalid("ttl must be positive"));
    }
    let l0 = LinkClaims {
        iss: idp.to_string(),
        sub: principal.to_string(),
        sub_type: SUB_HUMAN.into(),
        dlg: None,
        scope: scope.to_strings(),
        task: task.to_string(),
        iat: now,
        exp: now.saturating_add(ttl),
        prev: None,
        jti: random_id(),
        crossing: None,
        dep: None,
        agr: None,
        prn: None,
    };
    let l0s = mint_link(LinkSigner::Kid(idp_key), &l0)?;
    let l1 = LinkClaims {
        iss: idp.to_string(),
        sub: agent.to_string(),
        sub_type: SUB_AGENT.into(),
        dlg: Some(principal.to_string()),
        prev: Some(link_hash(&l0s)),
        jti: random_id(),
        ..l0
    };
    let l1s = mint_link(LinkSigner::Kid(idp_key), &l1)?;
    Ok(format!("{l0s}{SEPARATOR}{l1s}"))
}

/// As the holder agent: appends a link delegating to `to`. `scope` must be within the
/// holder's; expiry is `min(now + ttl, holder's expiry)`. `certs` is the agent's SVID chain,
/// leaf first; its SPIFFE ID must be the chain's current holder.
#[allow(clippy::too_many_arguments)]
pub fn extend(
    chain: &str,
    key: &SigningKey,
    certs: &[Vec<u8>],
    holder: &SpiffeId,
    to: &SpiffeId,
    scope: &ScopeSet,
    now: Instant,
    ttl: i64,
) -> Result<String, MintError> {
    let chain = chain.trim();
    let last = chain.rsplit(SEPARATOR).next().unwrap_or("");
    let c = crate::jose::parse_compact(last).map_err(|e| invalid(format!("last link: {e}")))?;
    let prev: LinkClaims = serde_json::from_slice(&c.payload)
        .map_err(|e| invalid(format!("last link claims: {e}")))?;
    if prev.sub != holder.as_str() {
        return Err(invalid(format!(
            "the chain's holder is {}, not {holder}",
            prev.sub
        )));
    }
    let prev_scope = ScopeSet::parse_nonempty(&prev.scope).map_err(|e| invalid(e.to_string()))?;
    if scope.is_empty() || !scope.is_subset_of(&prev_scope) {
        return Err(invalid(format!(
            "scope {scope} is not within the holder's {prev_scope}"
        )));
    }
    if ttl <= 0 {
        return Err(invalid("ttl must be positive"));
    }
    let claims = LinkClaims {
        iss: holder.to_string(),
        sub: to.to_string(),
        sub_type: SUB_AGENT.into(),
        dlg: Some(holder.to_string()),
        scope: scope.to_strings(),
        task: prev.task,
        iat: now.max(prev.iat),
        exp: now.saturating_add(ttl).min(prev.exp),
        prev: Some(link_hash(last)),
        jti: random_id(),
        crossing: None,
        dep: None,
        agr: None,
        prn: None,
    };
    let link = mint_link(LinkSigner::X5c(key, certs), &claims)?;
    Ok(format!("{chain}{SEPARATOR}{link}"))
}

/// What the gateway puts in a crossing link (SPEC section 3, rule 2, and docs/spec-notes.md).
#[derive(Debug, Clone)]
pub struct CrossingLink<'a> {
    pub gateway: &'a SpiffeId,
    /// The target agent (the link's `sub`, its holder).
    pub target: &'a SpiffeId,
    /// The partner's agent that delegated across (`dlg`).
    pub foreign_actor: &'a SpiffeId,
    /// The federation token (`prev` is its hash).
    pub federation_token: &'a str,
    /// The token's `jti` (`crossing`).
    pub crossing: &'a str,
    /// Links counted before this one (`dep`).
    pub dep: u32,
    pub scope: &'a ScopeSet,
    pub task: &'a str,
    /// `<id>@<hash>` of the agreement the crossing was under (`agr`).
    pub agreement: &'a str,
    /// The root principal as the sending domain disclosed it (`prn`), if it did.
    pub principal: Option<&'a str>,
    pub now: Instant,
    pub exp: Instant,
}

/// As the gateway, for an inbound crossing: the root link of the target's new chain (SPEC
/// section 3, rule 2): signed by the gateway's `kid`, `dlg` = the foreign actor, `prev` = hash
/// of the federation token, `crossing` = its `jti`, `dep` = links counted before it, plus the
/// agreement (`agr`) and the principal as disclosed (`prn`) for the receiving agent.
pub fn mint_crossing_link(
    gateway_key: &SigningKey,
    l: &CrossingLink<'_>,
) -> Result<String, MintError> {
    if l.scope.is_empty() {
        return Err(invalid("crossing link needs at least one scope"));
    }
    if l.exp <= l.now {
        return Err(invalid("crossing link would already be expired"));
    }
    let claims = LinkClaims {
        iss: l.gateway.to_string(),
        sub: l.target.to_string(),
        sub_type: SUB_AGENT.into(),
        dlg: Some(l.foreign_actor.to_string()),
        scope: l.scope.to_strings(),
        task: l.task.to_string(),
        iat: l.now,
        exp: l.exp,
        prev: Some(link_hash(l.federation_token)),
        jti: random_id(),
        crossing: Some(l.crossing.to_string()),
        dep: Some(l.dep),
        agr: (!l.agreement.is_empty()).then(|| l.agreement.to_string()),
        prn: l.principal.map(String::from),
    };
    mint_link(LinkSigner::Kid(gateway_key), &claims)
}
