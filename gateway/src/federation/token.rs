//! The federation token (SPEC section 6): a compact JWS `typ` `federation+jwt` signed by the
//! issuing gateway, verifiable by any JOSE library with only the issuer's bundle; and the
//! receiving gateway's checks, in the spec's order, each with its reason code. Replay, route and
//! revocation checks need state and the request, so the server does them after these.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::agreement::{decide_among, Agreement, CrossingRequest, Decision, Direction};
use crate::jose::{parse_compact, sign_compact, JoseError, SigningKey};
use crate::reason::Reason;
use crate::scope::ScopeSet;
use crate::spiffe::{BundleSet, KeyRole, SpiffeId, TrustDomain};
use crate::time::Instant;

pub const TYP_TOKEN: &str = "federation+jwt";
/// Largest token accepted: a token with a full `act` chain of 16 agents is about 3 KiB.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Deepest `act` nesting accepted (one per link of the longest chain).
pub const MAX_ACT_DEPTH: usize = crate::chain::MAX_LINKS_HARD;

/// RFC 8693 actor claim: the current agent, and with `chain = "full"` the prior ones.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

impl Actor {
    /// Builds `{sub: agents[last], act: {sub: agents[last-1], ...}}`.
    pub fn from_agents(agents: &[&str], full: bool) -> Option<Actor> {
        let (last, prior) = agents.split_last()?;
        let mut a = Actor {
            sub: last.to_string(),
            act: None,
        };
        if full {
            let mut inner: Option<Box<Actor>> = None;
            for p in prior.iter() {
                inner = Some(Box::new(Actor {
                    sub: p.to_string(),
                    act: inner,
                }));
            }
            a.act = inner;
        }
        Some(a)
    }

    pub fn depth(&self) -> usize {
        1 + self.act.as_ref().map(|a| a.depth()).unwrap_or(0)
    }
}

/// RFC 8705 confirmation: SHA-256 thumbprint of the requesting agent's certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cnf {
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FederationClaims {
    pub iss: String,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub act: Actor,
    pub tgt: String,
    pub scope: String,
    pub txn: String,
    pub agr: String,
    pub chn: String,
    pub dep: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Cnf>,
    pub iat: Instant,
    pub nbf: Instant,
    pub exp: Instant,
    pub jti: String,
}

/// Signs a federation token with the gateway key (`kid` from the bundle).
pub fn mint_token(key: &SigningKey, claims: &FederationClaims) -> Result<String, JoseError> {
    sign_compact(key, TYP_TOKEN, true, None, claims)
}

/// The mTLS peer that presented the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: SpiffeId,
    /// SHA-256 of the peer's leaf certificate DER.
    pub cert_sha256: [u8; 32],
}

/// What the receiving gateway checks against.
pub struct TokenContext<'a> {
    pub bundles: &'a BundleSet,
    pub local_td: &'a TrustDomain,
    pub local_gateway: &'a SpiffeId,
    pub agreements: &'a [Arc<Agreement>],
    pub peer: &'a PeerInfo,
    pub now: Instant,
}

/// A token that passed every stateless check.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub claims: FederationClaims,
    pub issuer_td: TrustDomain,
    pub actor: SpiffeId,
    pub target: SpiffeId,
    pub scope: ScopeSet,
    pub agreement: Arc<Agreement>,
    pub decision: Decision,
    /// Presented by the agent itself (`cnf`-bound) rather than by the partner gateway.
    pub direct: bool,
}

impl VerifiedToken {
    /// Whether either party terminated the agreement the token is under (a termination is
    /// filed under the domain that sent it).
    pub fn terminated(
        &self,
        local: &TrustDomain,
        rev: &dyn crate::chain::Revocations,
        now: Instant,
    ) -> Option<String> {
        use crate::chain::RevocationKind as K;
        let id = &self.agreement.id;
        [local.as_str(), self.issuer_td.as_str()]
            .into_iter()
            .find(|d| rev.is_revoked(d, K::Agreement, id, now))
            .map(|d| format!("agreement {id} was terminated by {d}"))
    }

    /// What of this token is revoked at `now`, if anything: its `jti`, agent (`act.sub`), task
    /// or principal (all owned by the issuing domain), or the target agent of `local`.
    pub fn revoked(
        &self,
        local: &TrustDomain,
        rev: &dyn crate::chain::Revocations,
        now: Instant,
    ) -> Option<String> {
        use crate::chain::RevocationKind as K;
        let issuer = self.issuer_td.as_str();
        let c = &self.claims;
        if rev.is_revoked(issuer, K::Jti, &c.jti, now) {
            return Some(format!("token {}", c.jti));
        }
        if rev.is_revoked(issuer, K::Agent, &c.act.sub, now) {
            return Some(format!("agent {}", c.act.sub));
        }
        if rev.is_revoked(issuer, K::Task, &c.txn, now) {
            return Some(format!("task {}", c.txn));
        }
        if let Some(p) = c.sub.as_deref() {
            if rev.is_revoked(issuer, K::Principal, p, now) {
                return Some(format!("principal {p}"));
            }
        }
        if rev.is_revoked(local.as_str(), K::Agent, &c.tgt, now) {
            return Some(format!("target agent {}", c.tgt));
        }
        None
    }
}

/// A refusal: the reason code, what happened, and what is known of the token for the audit
/// record (whether its signature verified, and its claims if so).
#[derive(Debug, Clone)]
pub struct TokenError {
    pub reason: Reason,
    pub message: String,
    pub claims: Option<Box<FederationClaims>>,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

fn fail(reason: Reason, m: impl Into<String>) -> TokenError {
    TokenError {
        reason,
        message: m.into(),
        claims: None,
    }
}

/// The token's times against the agreement (SPEC section 6), in checked arithmetic: a partner
/// controls every number here, so no subtraction may wrap and every time is bounded by `now`.
/// `iat` and `nbf` lie within `[now - skew - max_ttl, now + skew]`, `nbf` not before `iat`,
/// the token has not expired (`exp + skew > now`) and lives at most `max_ttl + skew`.
pub fn check_times(
    c: &FederationClaims,
    skew: i64,
    max_ttl: i64,
    now: Instant,
) -> Result<(), (Reason, String)> {
    let latest = now.saturating_add(skew);
    let earliest = now.saturating_sub(skew).saturating_sub(max_ttl);
    if c.nbf > latest || c.iat > latest {
        return Err((
            Reason::NotYetValid,
            format!(
                "not valid before {}",
                crate::time::format_rfc3339(c.nbf.max(c.iat))
            ),
        ));
    }
    if c.iat < earliest {
        return Err((
            Reason::Expired,
            format!(
                "issued at {}, longer ago than max_token_ttl allows",
                crate::time::format_rfc3339(c.iat)
            ),
        ));
    }
    if c.nbf < c.iat.saturating_sub(skew) {
        return Err((Reason::Malformed, "nbf is before iat".into()));
    }
    if now >= c.exp.saturating_add(skew) {
        return Err((
            Reason::Expired,
            format!("expired at {}", crate::time::format_rfc3339(c.exp)),
        ));
    }
    let lifetime = c.exp.checked_sub(c.iat);
    match lifetime {
        Some(l) if l > 0 && l <= max_ttl.saturating_add(skew) => Ok(()),
        Some(l) if l <= 0 => Err((Reason::Malformed, "exp is not after iat".into())),
        _ => Err((
            Reason::ExpiryExtension,
            format!("lifetime exceeds max_token_ttl {max_ttl}s"),
        )),
    }
}

/// The receiving gateway's checks of SPEC section 6, except replay, route and revocation.
pub fn verify_token(token: &str, ctx: &TokenContext<'_>) -> Result<VerifiedToken, TokenError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(fail(
            Reason::TooLarge,
            format!("token larger than {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    let c = parse_compact(token).map_err(|e| match e {
        JoseError::BadAlg(a) => fail(Reason::BadAlg, format!("alg {a:?} is not allowed")),
        JoseError::BadSignature => fail(Reason::BadSignature, "signature does not verify"),
        other => fail(Reason::Malformed, other.to_string()),
    })?;
    if c.header.typ.as_deref() != Some(TYP_TOKEN) {
        return Err(fail(Reason::Malformed, format!("typ must be {TYP_TOKEN}")));
    }
    if c.header.x5c.is_some() {
        return Err(fail(
            Reason::Malformed,
            "a federation token is signed by a gateway key (kid), not x5c",
        ));
    }
    let kid = c
        .header
        .kid
        .as_deref()
        .ok_or_else(|| fail(Reason::Malformed, "no kid"))?;
    // Which bundle: the issuer's, named by `iss` (read before the signature is checked, and
    // trusted only once it is).
    #[derive(Deserialize)]
    struct Iss {
        iss: String,
    }
    let iss: Iss = serde_json::from_slice(&c.payload)
        .map_err(|e| fail(Reason::Malformed, format!("claims: {e}")))?;
    let iss_id =
        SpiffeId::parse(&iss.iss).map_err(|e| fail(Reason::Malformed, format!("iss: {e}")))?;
    let issuer_td = iss_id.trust_domain();
    let bundle = ctx
        .bundles
        .get(&issuer_td)
        .ok_or_else(|| fail(Reason::UnknownDomain, format!("no bundle for {issuer_td}")))?;
    // Only the issuer domain's gateway keys sign federation tokens (not its IdP or audit key).
    let key = bundle
        .jwt_key(kid, KeyRole::Gateway)
        .map_err(|e| fail(e.reason(), e.to_string()))?;
    c.verify_with(key).map_err(|e| match e {
        JoseError::BadAlg(m) => fail(Reason::BadAlg, m),
        _ => fail(Reason::BadSignature, "signature does not verify"),
    })?;
    let claims: FederationClaims = serde_json::from_slice(&c.payload)
        .map_err(|e| fail(Reason::Malformed, format!("claims: {e}")))?;
    let authentic = |reason: Reason, m: String| TokenError {
        reason,
        message: m,
        claims: Some(Box::new(claims.clone())),
    };

    // The issuer is the partner gateway of an agreement with us.
    let ours: Vec<&Arc<Agreement>> = ctx
        .agreements
        .iter()
        .filter(|a| a.domain(ctx.local_td).is_some() && a.domain(&issuer_td).is_some())
        .collect();
    if ours.is_empty() {
        return Err(authentic(
            Reason::NoAgreement,
            format!("no agreement with {issuer_td}"),
        ));
    }
    if !ours.iter().any(|a| {
        a.domain(&issuer_td)
            .map(|d| d.gateway_id == iss_id)
            .unwrap_or(false)
    }) {
        return Err(authentic(
            Reason::IssuerMismatch,
            format!("{iss_id} is not {issuer_td}'s gateway in any agreement"),
        ));
    }
    if claims.act.depth() > MAX_ACT_DEPTH {
        return Err(authentic(Reason::Malformed, "act nesting too deep".into()));
    }
    let actor = SpiffeId::parse(&claims.act.sub)
        .map_err(|e| authentic(Reason::Malformed, format!("act.sub: {e}")))?;
    let target = SpiffeId::parse(&claims.tgt)
        .map_err(|e| authentic(Reason::Malformed, format!("tgt: {e}")))?;
    // Who presents it: the issuing gateway (no cnf), or the agent the token is bound to.
    let direct = match &claims.cnf {
        None => {
            if ctx.peer.id != iss_id {
                return Err(authentic(
                    Reason::IssuerMismatch,
                    format!(
                        "presented by {}, not by the issuing gateway {iss_id}",
                        ctx.peer.id
                    ),
                ));
            }
            false
        }
        Some(cnf) => {
            let thumb = crate::crypto::b64url(&ctx.peer.cert_sha256);
            if !ctx.peer.id.in_domain(&issuer_td)
                || ctx.peer.id != actor
                || !crate::crypto::ct_eq(thumb.as_bytes(), cnf.x5t_s256.as_bytes())
            {
                return Err(authentic(
                    Reason::IssuerMismatch,
                    format!(
                        "the token is bound to another certificate than {}'s",
                        ctx.peer.id
                    ),
                ));
            }
            true
        }
    };
    if claims.aud != ctx.local_gateway.as_str() {
        return Err(authentic(
            Reason::WrongAudience,
            format!("aud {} is not {}", claims.aud, ctx.local_gateway),
        ));
    }
    // The agreement the token names: same id and the same hash as our copy.
    let (agr_id, agr_hash) = claims
        .agr
        .split_once('@')
        .ok_or_else(|| authentic(Reason::Malformed, "agr must be <id>@<hash>".into()))?;
    // Several versions of one id may be held (agreement/versions.rs): the token names one by
    // its hash, and that version must not have been superseded.
    let versions: Vec<&&Arc<Agreement>> = ours.iter().filter(|a| a.id == agr_id).collect();
    let agreement = match versions.iter().find(|a| a.hash.as_str() == agr_hash) {
        Some(a) => (**a).clone(),
        None if versions.is_empty() => {
            return Err(authentic(
                Reason::NoAgreement,
                format!("no agreement {agr_id} with {issuer_td}"),
            ))
        }
        None => {
            return Err(authentic(
                Reason::AgreementMismatch,
                format!(
                    "no version of agreement {agr_id} held here hashes to {agr_hash} (held: {})",
                    versions
                        .iter()
                        .map(|a| format!("v{} {}", a.version, a.hash))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    };
    crate::agreement::versions::accepted(ctx.agreements, &agreement, ctx.now)
        .map_err(|(r, m)| authentic(r, m))?;
    if agreement
        .domain(&issuer_td)
        .map(|d| d.gateway_id != iss_id)
        .unwrap_or(true)
    {
        return Err(authentic(
            Reason::IssuerMismatch,
            format!("{iss_id} is not {issuer_td}'s gateway in {agr_id}"),
        ));
    }
    check_times(
        &claims,
        agreement.clock_skew,
        agreement.max_token_ttl,
        ctx.now,
    )
    .map_err(|(r, m)| authentic(r, m))?;
    if !actor.in_domain(&issuer_td) {
        return Err(authentic(
            Reason::RuleDenied,
            format!("act.sub {actor} is not in the issuing domain {issuer_td}"),
        ));
    }
    if !target.in_domain(ctx.local_td) {
        return Err(authentic(
            Reason::RuleDenied,
            format!("tgt {target} is not in this domain"),
        ));
    }
    let scope = ScopeSet::parse_spaced(&claims.scope)
        .map_err(|e| authentic(Reason::Malformed, format!("scope: {e}")))?;
    if scope.is_empty() {
        return Err(authentic(Reason::Malformed, "empty scope".into()));
    }
    let req = CrossingRequest {
        direction: Direction::Inbound,
        local: ctx.local_td,
        actor: &actor,
        target: &target,
        requested: &scope,
        held: &scope,
        depth: claims.dep as usize,
        expires: claims.exp,
        links: &[],
        now: ctx.now,
    };
    let t0 = std::time::Instant::now();
    let decision = decide_among([agreement.as_ref()], &req);
    if tracing::enabled!(target: "fedgate::decisions", tracing::Level::DEBUG) {
        let rec =
            crate::agreement::DecisionRecord::new(&req, &decision, t0.elapsed().as_nanos() as u64);
        tracing::debug!(target: "fedgate::decisions", decision = %serde_json::to_string(&rec).unwrap_or_default());
    }
    if !decision.allow {
        let r = decision.reason.unwrap_or(Reason::RuleDenied);
        return Err(authentic(r, decision.message));
    }
    Ok(VerifiedToken {
        claims,
        issuer_td,
        actor,
        target,
        scope,
        agreement,
        decision,
        direct,
    })
}
