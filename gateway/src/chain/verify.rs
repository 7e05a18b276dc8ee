//! Chain verification: rules 1–8 of SPEC section 3, each failure with its reason code and the
//! index of the first offending link. Sizes and counts are checked before any signature work,
//! so a hostile chain costs at most `max_links` signature checks.

use std::fmt;

use rustls_pki_types::CertificateDer;

use super::{
    chain_digest, link_hash, valid_principal, valid_task, LinkClaims, MAX_CHAIN_BYTES,
    MAX_JTI_BYTES, MAX_LINKS_HARD, MAX_LINK_BYTES, MAX_X5C_CERTS, SEPARATOR, SUB_AGENT, SUB_HUMAN,
    TYP_LINK,
};
use crate::crypto::b64std_decode;
use crate::jose::{parse_compact, JoseError, VerifyingKey};
use crate::reason::Reason;
use crate::scope::ScopeSet;
use crate::spiffe::svid::{leaf_verifying_key, verify_svid, SvidError, SvidUsage};
use crate::spiffe::{BundleSet, KeyError, KeyRole, SpiffeId};
use crate::time::Instant;

/// What verification accepts beyond the spec's fixed rules.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Most links, a crossing root's `dep` included (rule 7).
    pub max_links: usize,
    /// Tolerated clock skew on `iat` (rule 6).
    pub skew: i64,
    /// IdPs whose human grants may root a chain. `None`: the conventional
    /// `spiffe://<td>/idp` of any trust domain with a bundle.
    pub idps: Option<Vec<SpiffeId>>,
    /// Gateways whose crossing links may root a chain. `None`: the conventional
    /// `spiffe://<td>/gateway` of the target's own trust domain.
    pub gateways: Option<Vec<SpiffeId>>,
    /// Every agent of the chain must be of the root's trust domain: an internal chain does not
    /// pass through another organization's agents except by a crossing (the gateway sets this).
    pub one_domain: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_links: super::DEFAULT_MAX_LINKS,
            skew: super::DEFAULT_CLOCK_SKEW,
            idps: None,
            gateways: None,
            one_domain: false,
        }
    }
}

/// What can be revoked (SPEC section 3, rule 8; `fedgate revoke`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevocationKind {
    Jti,
    Task,
    Agent,
    Principal,
    /// An agreement id, terminated by either party (`fedgate agreement terminate`): every
    /// token under any version of it is refused on both sides.
    Agreement,
}

impl RevocationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RevocationKind::Jti => "jti",
            RevocationKind::Task => "task",
            RevocationKind::Agent => "agent",
            RevocationKind::Principal => "principal",
            RevocationKind::Agreement => "agreement",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "jti" => Some(RevocationKind::Jti),
            "task" => Some(RevocationKind::Task),
            "agent" => Some(RevocationKind::Agent),
            "principal" => Some(RevocationKind::Principal),
            "agreement" => Some(RevocationKind::Agreement),
            _ => None,
        }
    }
}

/// Revocation lookup, provided by the store. `domain` is the trust domain that owns the value
/// (a domain may only revoke its own principals, agents, tasks and tokens).
pub trait Revocations {
    fn is_revoked(&self, domain: &str, kind: RevocationKind, value: &str, now: Instant) -> bool;
}

/// No revocations (CLI verification without a store, tests).
pub struct NoRevocations;

impl Revocations for NoRevocations {
    fn is_revoked(&self, _: &str, _: RevocationKind, _: &str, _: Instant) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainErrorKind {
    #[error("malformed: {0}")]
    Malformed(String),
    #[error("algorithm not allowed: {0}")]
    BadAlg(String),
    #[error("signature does not verify")]
    BadSignature,
    #[error("unknown key: {0}")]
    UnknownKey(String),
    #[error("no bundle for trust domain {0}")]
    UnknownDomain(String),
    #[error("x5c is not a valid X509-SVID: {0}")]
    BadSvid(SvidError),
    #[error("bad root: {0}")]
    BadRoot(String),
    #[error("broken link: {0}")]
    BrokenLink(String),
    #[error("wrong signer: {0}")]
    WrongSigner(String),
    #[error("scope {0} is not within the previous link's {1}")]
    ScopeEscalation(String, String),
    #[error("expiry extension: {0}")]
    ExpiryExtension(String),
    #[error("issued in the future (iat {0})")]
    NotYetValid(Instant),
    #[error("expired at {0}")]
    Expired(Instant),
    #[error("task differs from the root's")]
    TaskMismatch,
    #[error("{0} links, more than the allowed {1}")]
    TooDeep(usize, usize),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("revoked: {0}")]
    Revoked(String),
}

/// A verification failure: what, and at which link (0-based) when one is to blame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainError {
    pub kind: ChainErrorKind,
    pub link: Option<usize>,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.link {
            Some(i) => write!(f, "link {i}: {}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl std::error::Error for ChainError {}

impl ChainError {
    fn at(link: usize, kind: ChainErrorKind) -> Self {
        ChainError {
            kind,
            link: Some(link),
        }
    }

    /// The SPEC section 10 reason code.
    pub fn reason(&self) -> Reason {
        match &self.kind {
            ChainErrorKind::Malformed(_) => Reason::Malformed,
            ChainErrorKind::BadAlg(_) => Reason::BadAlg,
            ChainErrorKind::BadSignature => Reason::BadSignature,
            ChainErrorKind::UnknownKey(_) => Reason::UnknownKey,
            ChainErrorKind::UnknownDomain(_) => Reason::UnknownDomain,
            ChainErrorKind::BadSvid(_) => Reason::BadSvid,
            ChainErrorKind::BadRoot(_) => Reason::BadRoot,
            ChainErrorKind::BrokenLink(_) => Reason::BrokenLink,
            ChainErrorKind::WrongSigner(_) => Reason::WrongSigner,
            ChainErrorKind::ScopeEscalation(_, _) => Reason::ScopeEscalation,
            ChainErrorKind::ExpiryExtension(_) => Reason::ExpiryExtension,
            ChainErrorKind::NotYetValid(_) => Reason::NotYetValid,
            ChainErrorKind::Expired(_) => Reason::Expired,
            ChainErrorKind::TaskMismatch => Reason::TaskMismatch,
            ChainErrorKind::TooDeep(_, _) => Reason::TooDeep,
            ChainErrorKind::TooLarge(_) => Reason::TooLarge,
            ChainErrorKind::Revoked(_) => Reason::Revoked,
        }
    }
}

/// Which kind of key signed a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignerKind {
    Idp,
    Gateway,
    Agent,
}

/// One verified link, as later checks need it (approvals, `act`, audit).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSummary {
    pub iss: String,
    pub sub: String,
    pub signer: SignerKind,
    pub scope: ScopeSet,
    pub iat: Instant,
    pub exp: Instant,
    pub jti: String,
}

/// How the chain starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Root {
    /// A human's grant, signed by an IdP.
    Human { principal: String, idp: SpiffeId },
    /// A crossing link minted by a gateway for an inbound crossing.
    Crossing {
        gateway: SpiffeId,
        crossing: String,
        foreign_actor: SpiffeId,
        dep: u32,
        /// The agreement the crossing was under (`agr`), when the link names it.
        agreement: Option<String>,
        /// The root principal as the sending domain disclosed it (`prn`).
        principal: Option<String>,
    },
}

/// Who holds a chain: `Ln.sub`. Only an agent can present a chain (proving it with its SVID);
/// a lone human grant verifies but cannot be presented to a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Agent(SpiffeId),
    Human(String),
}

impl Holder {
    pub fn as_str(&self) -> &str {
        match self {
            Holder::Agent(id) => id.as_str(),
            Holder::Human(p) => p,
        }
    }

    pub fn agent(&self) -> Option<&SpiffeId> {
        match self {
            Holder::Agent(id) => Some(id),
            Holder::Human(_) => None,
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A chain that passed every rule at a given time.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedChain {
    /// `Ln.sub`: the only party that may present this chain.
    pub holder: Holder,
    /// The holder's scope (`Ln.scope`; each link's is within the previous one's).
    pub scope: ScopeSet,
    pub task: String,
    pub root: Root,
    /// Links counted, a crossing root's `dep` included.
    pub depth: usize,
    /// The earliest expiry (that of `Ln`).
    pub expires: Instant,
    /// Until when this verification holds: the chain's expiry or the earliest `notAfter` of an
    /// SVID that signed a link, whichever is first (for caches).
    pub valid_until: Instant,
    /// base64url SHA-256 of the chain as presented.
    pub digest: String,
    pub links: Vec<LinkSummary>,
    /// Trust domain whose IdP or gateway rooted the chain.
    pub root_domain: String,
}

impl VerifiedChain {
    /// The root principal for audit and disclosure: the human, or for a crossing-rooted chain
    /// the foreign actor that crossed.
    pub fn root_principal(&self) -> &str {
        match &self.root {
            Root::Human { principal, .. } => principal,
            Root::Crossing { foreign_actor, .. } => foreign_actor.as_str(),
        }
    }

    /// Agents of the chain in delegation order, the holder last.
    pub fn agents(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        if let Root::Crossing { foreign_actor, .. } = &self.root {
            v.push(foreign_actor.as_str());
        }
        for l in &self.links {
            if l.sub.starts_with("spiffe://") && v.last() != Some(&l.sub.as_str()) {
                v.push(&l.sub);
            }
        }
        v
    }
}

/// A chain split into links; nothing verified yet.
#[derive(Debug, Clone)]
pub struct UnverifiedChain<'a> {
    raw: &'a str,
    links: Vec<&'a str>,
}

fn malformed(i: usize, m: impl Into<String>) -> ChainError {
    ChainError::at(i, ChainErrorKind::Malformed(m.into()))
}

fn jose_err(i: usize, e: JoseError) -> ChainError {
    match e {
        JoseError::BadAlg(a) => ChainError::at(i, ChainErrorKind::BadAlg(a)),
        JoseError::BadSignature => ChainError::at(i, ChainErrorKind::BadSignature),
        JoseError::Malformed(m) | JoseError::Key(m) => malformed(i, m),
    }
}

/// Per-link facts carried to the next link.
struct Prev<'a> {
    compact: &'a str,
    claims: LinkClaims,
    scope: ScopeSet,
}

impl<'a> UnverifiedChain<'a> {
    /// Splits `L0~L1~…~Ln`, enforcing the size and count limits before any decoding.
    pub fn parse(raw: &'a str) -> Result<Self, ChainError> {
        if raw.len() > MAX_CHAIN_BYTES {
            return Err(ChainError {
                kind: ChainErrorKind::TooLarge(format!("chain over {MAX_CHAIN_BYTES} bytes")),
                link: None,
            });
        }
        if raw.is_empty() {
            return Err(ChainError {
                kind: ChainErrorKind::Malformed("empty chain".into()),
                link: None,
            });
        }
        let count = raw.split(SEPARATOR).count();
        if count > MAX_LINKS_HARD {
            return Err(ChainError {
                kind: ChainErrorKind::TooDeep(count, MAX_LINKS_HARD),
                link: None,
            });
        }
        let links: Vec<&str> = raw.split(SEPARATOR).collect();
        for (i, l) in links.iter().enumerate() {
            if l.len() > MAX_LINK_BYTES {
                return Err(ChainError::at(
                    i,
                    ChainErrorKind::TooLarge(format!("link over {MAX_LINK_BYTES} bytes")),
                ));
            }
            if l.is_empty() {
                return Err(malformed(i, "empty link"));
            }
        }
        Ok(UnverifiedChain { raw, links })
    }

    pub fn len(&self) -> usize {
        self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    pub fn raw(&self) -> &str {
        self.raw
    }

    pub fn links(&self) -> &[&'a str] {
        &self.links
    }

    /// Verifies every rule of SPEC section 3 at time `now`.
    pub fn verify(
        &self,
        bundles: &BundleSet,
        policy: &Policy,
        revocations: &dyn Revocations,
        now: Instant,
    ) -> Result<VerifiedChain, ChainError> {
        let n = self.links.len();
        let max = policy.max_links.min(MAX_LINKS_HARD);
        if n > max {
            return Err(ChainError {
                kind: ChainErrorKind::TooDeep(n, max),
                link: Some(max),
            });
        }
        let mut prev: Option<Prev<'_>> = None;
        let mut root: Option<Root> = None;
        let mut root_domain = String::new();
        let mut summaries = Vec::with_capacity(n);
        let mut dep: usize = 0;
        let mut svid_until = Instant::MAX;

        for (i, &compact) in self.links.iter().enumerate() {
            // Rule 1: parse, alg, typ, signature with the key the header designates.
            let c = parse_compact(compact).map_err(|e| jose_err(i, e))?;
            if c.header.typ.as_deref() != Some(TYP_LINK) {
                return Err(malformed(i, format!("typ must be {TYP_LINK}")));
            }
            let claims: LinkClaims = serde_json::from_slice(&c.payload)
                .map_err(|e| malformed(i, format!("claims: {e}")))?;
            let iss =
                SpiffeId::parse(&claims.iss).map_err(|e| malformed(i, format!("iss: {e}")))?;
            let scope = ScopeSet::parse_nonempty(&claims.scope)
                .map_err(|e| malformed(i, format!("scope: {e}")))?;
            if !valid_task(&claims.task) {
                return Err(malformed(i, "task must be 1-128 printable bytes"));
            }
            if claims.jti.is_empty() || claims.jti.len() > MAX_JTI_BYTES {
                return Err(malformed(i, "jti must be 1-128 bytes"));
            }
            if claims.exp <= claims.iat {
                return Err(malformed(i, "exp must be after iat"));
            }
            let sub_agent = match claims.sub_type.as_str() {
                SUB_HUMAN => {
                    if !valid_principal(&claims.sub) {
                        return Err(malformed(
                            i,
                            "human principal must be 1-256 printable bytes",
                        ));
                    }
                    None
                }
                SUB_AGENT => Some(
                    SpiffeId::parse(&claims.sub).map_err(|e| malformed(i, format!("sub: {e}")))?,
                ),
                other => {
                    return Err(malformed(
                        i,
                        format!("sub_type {other:?} is not human or agent"),
                    ))
                }
            };
            let x5c_id = match (&c.header.kid, &c.header.x5c) {
                (Some(kid), None) => {
                    let bundle = bundles.get_str(iss.trust_domain_str()).ok_or_else(|| {
                        ChainError::at(
                            i,
                            ChainErrorKind::UnknownDomain(iss.trust_domain_str().into()),
                        )
                    })?;
                    // Keys have roles: a human's grant and a human's delegation are the
                    // IdP's to sign; a crossing link (an agent-rooted L0) the gateway's.
                    let human_side = match &prev {
                        None => claims.sub_type == SUB_HUMAN,
                        Some(p) => p.claims.sub_type == SUB_HUMAN,
                    };
                    let role = if human_side {
                        KeyRole::Idp
                    } else {
                        KeyRole::Gateway
                    };
                    let key = bundle.jwt_key(kid, role).map_err(|e| match e {
                        KeyError::Unknown(..) => {
                            ChainError::at(i, ChainErrorKind::UnknownKey(e.to_string()))
                        }
                        // A root whose issuer is not an accepted IdP or gateway at all is a bad
                        // root (rule 2), whatever key signed it.
                        KeyError::WrongRole { .. }
                            if prev.is_none() && !root_issuer_accepted(&iss, role, policy) =>
                        {
                            ChainError::at(
                                i,
                                ChainErrorKind::BadRoot(format!(
                                    "{iss} is not an accepted {}",
                                    if role == KeyRole::Idp {
                                        "IdP"
                                    } else {
                                        "gateway"
                                    }
                                )),
                            )
                        }
                        KeyError::WrongRole { .. } => {
                            ChainError::at(i, ChainErrorKind::WrongSigner(e.to_string()))
                        }
                    })?;
                    c.verify_with(key).map_err(|e| jose_err(i, e))?;
                    None
                }
                (None, Some(x5c)) => {
                    if x5c.is_empty() || x5c.len() > MAX_X5C_CERTS {
                        return Err(malformed(
                            i,
                            format!("x5c must hold 1-{MAX_X5C_CERTS} certificates"),
                        ));
                    }
                    let mut certs = Vec::with_capacity(x5c.len());
                    for s in x5c {
                        let der = b64std_decode(s)
                            .ok_or_else(|| malformed(i, "x5c entry is not base64"))?;
                        certs.push(CertificateDer::from(der));
                    }
                    let svid =
                        verify_svid(&certs, bundles, now, SvidUsage::Any).map_err(|e| match e {
                            SvidError::UnknownDomain(d) => {
                                ChainError::at(i, ChainErrorKind::UnknownDomain(d))
                            }
                            other => ChainError::at(i, ChainErrorKind::BadSvid(other)),
                        })?;
                    let key: VerifyingKey = leaf_verifying_key(&certs[0])
                        .map_err(|e| ChainError::at(i, ChainErrorKind::BadSvid(e)))?;
                    c.verify_with(&key).map_err(|e| jose_err(i, e))?;
                    svid_until = svid_until.min(svid.not_after);
                    Some(svid.id)
                }
                _ => return Err(malformed(i, "header must carry exactly one of kid and x5c")),
            };

            // Rules 2-6 relative to the previous link.
            let signer = match &prev {
                None => {
                    let (r, kind) =
                        self.check_root(&c.header.kid, &x5c_id, &claims, &iss, &sub_agent, policy)?;
                    if let Root::Crossing { dep: d, .. } = &r {
                        dep = *d as usize;
                        if dep + n > max {
                            return Err(ChainError::at(0, ChainErrorKind::TooDeep(dep + n, max)));
                        }
                    }
                    root_domain = iss.trust_domain_str().to_string();
                    root = Some(r);
                    kind
                }
                Some(p) => {
                    // Rule 3: linkage.
                    if claims.dlg.as_deref() != Some(p.claims.sub.as_str()) {
                        return Err(ChainError::at(
                            i,
                            ChainErrorKind::BrokenLink("dlg is not the previous link's sub".into()),
                        ));
                    }
                    if claims.prev.as_deref() != Some(link_hash(p.compact).as_str()) {
                        return Err(ChainError::at(
                            i,
                            ChainErrorKind::BrokenLink(
                                "prev is not the hash of the previous link".into(),
                            ),
                        ));
                    }
                    if sub_agent.is_none() {
                        return Err(malformed(i, "only the root link may grant to a human"));
                    }
                    if policy.one_domain {
                        if let Some(a) = &sub_agent {
                            if a.trust_domain_str() != root_domain {
                                return Err(ChainError::at(
                                    i,
                                    ChainErrorKind::BrokenLink(format!(
                                        "{a} is not of {root_domain}: a delegation leaves the domain only through a crossing"
                                    )),
                                ));
                            }
                        }
                    }
                    if claims.crossing.is_some()
                        || claims.dep.is_some()
                        || claims.agr.is_some()
                        || claims.prn.is_some()
                    {
                        return Err(malformed(
                            i,
                            "crossing, dep, agr and prn belong to a root crossing link only",
                        ));
                    }
                    // Rule 4: the right signer.
                    let kind = if p.claims.sub_type == SUB_HUMAN {
                        let idp_ok = matches!(&root, Some(Root::Human { idp, .. }) if *idp == iss);
                        if !idp_ok || x5c_id.is_some() {
                            return Err(ChainError::at(i, ChainErrorKind::WrongSigner("a human's delegation must be signed by the IdP that issued the grant".into())));
                        }
                        SignerKind::Idp
                    } else {
                        match &x5c_id {
                            Some(id) if id.as_str() == p.claims.sub && iss == *id => SignerKind::Agent,
                            Some(id) => {
                                return Err(ChainError::at(i, ChainErrorKind::WrongSigner(format!(
                                    "signed by {id}, but the delegator is {}",
                                    p.claims.sub
                                ))))
                            }
                            None => {
                                return Err(ChainError::at(i, ChainErrorKind::WrongSigner(
                                    "an agent's delegation must be signed with its own X509-SVID (x5c)".into(),
                                )))
                            }
                        }
                    };
                    // Rule 5: scope only narrows.
                    if !scope.is_subset_of(&p.scope) {
                        return Err(ChainError::at(
                            i,
                            ChainErrorKind::ScopeEscalation(scope.to_string(), p.scope.to_string()),
                        ));
                    }
                    // Rule 6: expiry only shortens, issue time only moves forward.
                    if claims.exp > p.claims.exp {
                        return Err(ChainError::at(
                            i,
                            ChainErrorKind::ExpiryExtension(
                                "exp is later than the previous link's".into(),
                            ),
                        ));
                    }
                    if claims.iat < p.claims.iat {
                        return Err(ChainError::at(
                            i,
                            ChainErrorKind::ExpiryExtension(
                                "iat is earlier than the previous link's".into(),
                            ),
                        ));
                    }
                    // Rule 7: one task.
                    if claims.task != p.claims.task {
                        return Err(ChainError::at(i, ChainErrorKind::TaskMismatch));
                    }
                    kind
                }
            };
            // Rule 6: times of every link.
            if claims.iat > now.saturating_add(policy.skew) {
                return Err(ChainError::at(i, ChainErrorKind::NotYetValid(claims.iat)));
            }
            if now >= claims.exp {
                return Err(ChainError::at(i, ChainErrorKind::Expired(claims.exp)));
            }
            summaries.push(LinkSummary {
                iss: claims.iss.clone(),
                sub: claims.sub.clone(),
                signer,
                scope: scope.clone(),
                iat: claims.iat,
                exp: claims.exp,
                jti: claims.jti.clone(),
            });
            prev = Some(Prev {
                compact,
                claims,
                scope,
            });
        }

        let last = prev.ok_or_else(|| ChainError {
            kind: ChainErrorKind::Malformed("empty chain".into()),
            link: None,
        })?;
        let root = root.ok_or_else(|| ChainError {
            kind: ChainErrorKind::Malformed("no root".into()),
            link: None,
        })?;
        let holder = match SpiffeId::parse(&last.claims.sub) {
            Ok(id) if last.claims.sub_type == SUB_AGENT => Holder::Agent(id),
            _ => Holder::Human(last.claims.sub.clone()),
        };

        let v = VerifiedChain {
            holder,
            scope: last.scope,
            task: last.claims.task,
            root,
            depth: dep + n,
            expires: last.claims.exp,
            valid_until: last.claims.exp.min(svid_until),
            digest: chain_digest(self.raw),
            links: summaries,
            root_domain,
        };
        // Rule 8: revocation of any link, agent, the task or the root principal.
        v.revoked(revocations, now)?;
        Ok(v)
    }

    /// Rule 2: a human grant by an accepted IdP, or a crossing link by an accepted gateway.
    fn check_root(
        &self,
        kid: &Option<String>,
        x5c_id: &Option<SpiffeId>,
        claims: &LinkClaims,
        iss: &SpiffeId,
        sub_agent: &Option<SpiffeId>,
        policy: &Policy,
    ) -> Result<(Root, SignerKind), ChainError> {
        let bad = |m: &str| ChainError::at(0, ChainErrorKind::BadRoot(m.to_string()));
        if kid.is_none() || x5c_id.is_some() {
            return Err(bad(
                "the root link must be signed by an IdP or gateway key (kid)",
            ));
        }
        match sub_agent {
            None => {
                if !root_issuer_accepted(iss, KeyRole::Idp, policy) {
                    return Err(bad(&format!("{iss} is not an accepted IdP")));
                }
                if claims.dlg.is_some()
                    || claims.prev.is_some()
                    || claims.crossing.is_some()
                    || claims.dep.is_some()
                    || claims.agr.is_some()
                    || claims.prn.is_some()
                {
                    return Err(bad(
                        "a human grant has no dlg, prev, crossing, dep, agr or prn",
                    ));
                }
                Ok((
                    Root::Human {
                        principal: claims.sub.clone(),
                        idp: iss.clone(),
                    },
                    SignerKind::Idp,
                ))
            }
            Some(target) => {
                if !root_issuer_accepted(iss, KeyRole::Gateway, policy) {
                    return Err(bad(&format!("{iss} is not an accepted gateway")));
                }
                if !target.in_domain(&iss.trust_domain()) {
                    return Err(bad(
                        "a gateway mints crossing links only for agents of its own domain",
                    ));
                }
                let foreign = claims
                    .dlg
                    .as_deref()
                    .and_then(|d| SpiffeId::parse(d).ok())
                    .ok_or_else(|| bad("a crossing link names the foreign actor in dlg"))?;
                if foreign.trust_domain_str() == iss.trust_domain_str() {
                    return Err(bad(
                        "the foreign actor of a crossing link must be in another domain",
                    ));
                }
                let crossing = claims
                    .crossing
                    .clone()
                    .filter(|c| !c.is_empty() && c.len() <= MAX_JTI_BYTES);
                let (Some(crossing), Some(dep), Some(_prev)) =
                    (crossing, claims.dep, claims.prev.as_ref())
                else {
                    return Err(bad("a crossing link carries crossing, dep and prev"));
                };
                Ok((
                    Root::Crossing {
                        gateway: iss.clone(),
                        crossing,
                        foreign_actor: foreign,
                        dep,
                        agreement: claims.agr.clone(),
                        principal: claims.prn.clone(),
                    },
                    SignerKind::Gateway,
                ))
            }
        }
    }
}

/// Whether `iss` may root a chain in `role` (rule 2): a configured IdP or gateway, or by
/// default the conventional `spiffe://<td>/idp` / `spiffe://<td>/gateway`.
fn root_issuer_accepted(iss: &SpiffeId, role: KeyRole, policy: &Policy) -> bool {
    let (list, path) = match role {
        KeyRole::Idp => (&policy.idps, "/idp"),
        _ => (&policy.gateways, "/gateway"),
    };
    match list {
        Some(list) => list.contains(iss),
        None => iss.path() == path,
    }
}

impl VerifiedChain {
    /// Rule 8 of SPEC section 3: no link, agent, the task or the root principal is revoked at
    /// `now`. The one revocation check of a chain, for a fresh verification and for a chain
    /// taken from a cache alike. Each value is looked up under the domain that owns it: links
    /// and agents under their own domain; the task and, for a crossing-rooted chain, the
    /// crossing and its foreign actor under the domain where the task started.
    pub fn revoked(&self, rev: &dyn Revocations, now: Instant) -> Result<(), ChainError> {
        let revoked =
            |i: usize, what: String| Err(ChainError::at(i, ChainErrorKind::Revoked(what)));
        let task_owner = match &self.root {
            Root::Human { principal, .. } => {
                if rev.is_revoked(&self.root_domain, RevocationKind::Principal, principal, now) {
                    return revoked(0, format!("principal {principal}"));
                }
                self.root_domain.clone()
            }
            Root::Crossing {
                crossing,
                foreign_actor,
                principal,
                ..
            } => {
                let fd = foreign_actor.trust_domain_str().to_string();
                if rev.is_revoked(&fd, RevocationKind::Jti, crossing, now) {
                    return revoked(0, format!("crossing {crossing}"));
                }
                if rev.is_revoked(&fd, RevocationKind::Agent, foreign_actor.as_str(), now) {
                    return revoked(0, format!("agent {foreign_actor}"));
                }
                if let Some(p) = principal {
                    if rev.is_revoked(&fd, RevocationKind::Principal, p, now) {
                        return revoked(0, format!("principal {p}"));
                    }
                }
                fd
            }
        };
        if rev.is_revoked(&task_owner, RevocationKind::Task, &self.task, now) {
            return revoked(0, format!("task {}", self.task));
        }
        for (i, l) in self.links.iter().enumerate() {
            let link_domain = SpiffeId::parse(&l.iss)
                .map(|s| s.trust_domain_str().to_string())
                .unwrap_or_default();
            if rev.is_revoked(&link_domain, RevocationKind::Jti, &l.jti, now) {
                return revoked(i, format!("link {}", l.jti));
            }
            for who in [&l.iss, &l.sub] {
                if let Ok(id) = SpiffeId::parse(who) {
                    if id.agent_type().is_some()
                        && rev.is_revoked(
                            id.trust_domain_str(),
                            RevocationKind::Agent,
                            id.as_str(),
                            now,
                        )
                    {
                        return revoked(i, format!("agent {id}"));
                    }
                }
            }
        }
        Ok(())
    }
}
