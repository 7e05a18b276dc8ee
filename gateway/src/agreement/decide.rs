//! Evaluation of one crossing against the agreements (pure, deterministic): which agreement
//! and flow apply, what scope may cross, until when, and what is disclosed — or the reason code
//! of the denial.

use serde_json::json;

use super::{Agreement, Disclosure, Flow};
use crate::chain::{LinkSummary, SignerKind, VerifiedChain};
use crate::reason::Reason;
use crate::scope::ScopeSet;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A local agent's delegation leaving the domain (egress, token exchange).
    Outbound,
    /// A partner's token arriving (ingress).
    Inbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// An IdP-signed grant that can carry approval of PII-like scopes.
pub type Approval = LinkSummary;

/// Everything `decide` looks at.
#[derive(Debug, Clone)]
pub struct CrossingRequest<'a> {
    pub direction: Direction,
    /// This gateway's trust domain.
    pub local: &'a TrustDomain,
    /// The delegating agent: the chain's holder (outbound) or the token's `act.sub` (inbound).
    pub actor: &'a SpiffeId,
    pub target: &'a SpiffeId,
    /// Scopes asked for (outbound) or carried by the token (inbound).
    pub requested: &'a ScopeSet,
    /// Scopes the actor holds: the chain's (outbound) or the token's (inbound).
    pub held: &'a ScopeSet,
    /// Links so far (chain depth, or the token's `dep`).
    pub depth: usize,
    /// The chain's (or token's) expiry.
    pub expires: Instant,
    /// The chain's links (outbound), for approvals; empty inbound.
    pub links: &'a [LinkSummary],
    pub now: Instant,
}

impl<'a> CrossingRequest<'a> {
    /// An outbound request from a verified chain.
    pub fn outbound(
        local: &'a TrustDomain,
        chain: &'a VerifiedChain,
        actor: &'a SpiffeId,
        target: &'a SpiffeId,
        requested: &'a ScopeSet,
        now: Instant,
    ) -> Self {
        CrossingRequest {
            direction: Direction::Outbound,
            local,
            actor,
            target,
            requested,
            held: &chain.scope,
            depth: chain.depth,
            expires: chain.expires,
            links: &chain.links,
            now,
        }
    }

    /// The canonical JSON of the request, for decision records and Rego input.
    pub fn summary(&self) -> serde_json::Value {
        json!({
            "direction": self.direction.as_str(),
            "local": self.local.as_str(),
            "actor": self.actor.as_str(),
            "target": self.target.as_str(),
            "requested": self.requested.to_strings(),
            "held": self.held.to_strings(),
            "depth": self.depth,
            "expires": self.expires,
            "now": self.now,
        })
    }
}

/// The outcome of `decide`.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allow: bool,
    pub reason: Option<Reason>,
    /// Why, for people (`agreement explain`, logs).
    pub message: String,
    pub partner: Option<TrustDomain>,
    pub agreement_id: Option<String>,
    /// `<id>@<hash>` of the deciding agreement.
    pub agr: Option<String>,
    pub flow: Option<usize>,
    pub granted: ScopeSet,
    /// Latest expiry of a token for this crossing: min(chain exp, now + max_token_ttl).
    pub token_exp: Instant,
    pub max_chain_depth: u32,
    pub clock_skew: i64,
    /// The sending domain's disclosure.
    pub disclosure: Option<Disclosure>,
}

impl Decision {
    fn deny(reason: Reason, message: impl Into<String>, partner: Option<TrustDomain>) -> Self {
        Decision {
            allow: false,
            reason: Some(reason),
            message: message.into(),
            partner,
            agreement_id: None,
            agr: None,
            flow: None,
            granted: ScopeSet::default(),
            token_exp: 0,
            max_chain_depth: 0,
            clock_skew: 0,
            disclosure: None,
        }
    }
}

/// Decides a crossing against a set of agreements (the active ones of this gateway): the first
/// flow, in agreement then document order, that allows wins; otherwise the first matching
/// flow's denial, or `rule_denied` when no flow matches.
pub fn decide_among<'x>(
    agreements: impl IntoIterator<Item = &'x Agreement>,
    req: &CrossingRequest<'_>,
) -> Decision {
    let partner_td = match req.direction {
        Direction::Outbound => req.target.trust_domain(),
        Direction::Inbound => req.actor.trust_domain(),
    };
    let partner = Some(partner_td.clone());
    if partner_td == *req.local {
        return Decision::deny(
            Reason::RuleDenied,
            "both parties are in the local domain: nothing crosses",
            partner,
        );
    }
    let mut named = 0usize;
    let mut in_window = 0usize;
    let mut first_denial: Option<Decision> = None;
    for a in agreements {
        if a.domain(req.local).is_none() || a.domain(&partner_td).is_none() {
            continue;
        }
        named += 1;
        if !super::versions::window_holds(a, req.now, req.direction == Direction::Inbound) {
            continue;
        }
        in_window += 1;
        let (from_td, to_td) = match req.direction {
            Direction::Outbound => (req.local, &partner_td),
            Direction::Inbound => (&partner_td, req.local),
        };
        for f in &a.flows {
            if f.from.trust_domain() != from_td || f.to.trust_domain() != to_td {
                continue;
            }
            if !(f.from.matches(req.actor) && f.to.matches(req.target)) {
                continue;
            }
            let d = evaluate(a, f, req, &partner_td);
            if d.allow {
                return d;
            }
            if first_denial.is_none() {
                first_denial = Some(d);
            }
        }
    }
    if named == 0 {
        return Decision::deny(
            Reason::NoAgreement,
            format!("no agreement between {} and {partner_td}", req.local),
            partner,
        );
    }
    if in_window == 0 {
        return Decision::deny(
            Reason::AgreementExpired,
            format!("no agreement with {partner_td} is inside its validity window"),
            partner,
        );
    }
    first_denial.unwrap_or_else(|| {
        Decision::deny(
            Reason::RuleDenied,
            format!("no flow lets {} delegate to {}", req.actor, req.target),
            partner,
        )
    })
}

fn evaluate(a: &Agreement, f: &Flow, req: &CrossingRequest<'_>, partner: &TrustDomain) -> Decision {
    let mut d = Decision::deny(Reason::RuleDenied, "", Some(partner.clone()));
    d.agreement_id = Some(a.id.clone());
    d.agr = Some(a.agr());
    d.flow = Some(f.index);
    d.max_chain_depth = a.max_chain_depth;
    d.clock_skew = a.clock_skew;
    let deny = |mut d: Decision, r: Reason, m: String| {
        d.reason = Some(r);
        d.message = m;
        d
    };
    if req.depth + 1 > a.max_chain_depth as usize {
        return deny(
            d,
            Reason::TooDeep,
            format!(
                "{} links plus the crossing exceed max_chain_depth {}",
                req.depth, a.max_chain_depth
            ),
        );
    }
    let granted = match req.direction {
        Direction::Outbound => {
            if !req.requested.is_subset_of(req.held) {
                return deny(
                    d,
                    Reason::ScopeEscalation,
                    format!(
                        "requested [{}] is not within the chain's [{}]",
                        req.requested, req.held
                    ),
                );
            }
            // Beyond the chain is an escalation attempt (denied above); beyond the agreement is
            // narrowed away: the agent need not know the agreement, and what crosses is the
            // intersection (SPEC section 4). Nothing left is `scope_exceeds_agreement` below.
            req.requested.intersect(&f.max_scope)
        }
        Direction::Inbound => {
            if !req.requested.is_subset_of(&f.max_scope) {
                return deny(
                    d,
                    Reason::ScopeExceedsAgreement,
                    format!(
                        "token scope [{}] is not within flow {}'s max_scope [{}]",
                        req.requested, f.index, f.max_scope
                    ),
                );
            }
            req.requested.clone()
        }
    };
    if granted.is_empty() {
        return deny(
            d,
            Reason::ScopeExceedsAgreement,
            "nothing requested is within the agreement".into(),
        );
    }
    if req.direction == Direction::Outbound {
        for g in granted.iter() {
            let needs = f.requires_approval.iter().any(|p| p.meet(g).is_some());
            if !needs {
                continue;
            }
            let approved = !g.is_wildcard()
                && req.links.iter().any(|l| {
                    l.signer == SignerKind::Idp
                        && l.scope.iter().any(|s| s == g)
                        && req
                            .now
                            .checked_sub(l.iat)
                            .is_some_and(|age| age <= f.approval_max_age)
                });
            if !approved {
                return deny(
                    d,
                    Reason::ApprovalRequired,
                    format!(
                        "{g} needs a human's grant naming it within the last {}",
                        crate::time::format_duration(f.approval_max_age)
                    ),
                );
            }
        }
    }
    let token_exp = req.expires.min(req.now.saturating_add(a.max_token_ttl));
    let sender = match req.direction {
        Direction::Outbound => a.domain(req.local),
        Direction::Inbound => a.domain(partner),
    };
    d.allow = true;
    d.reason = None;
    d.message = format!(
        "allowed by {} flow {}: {} -> {} with [{}]",
        a.id, f.index, f.from, f.to, granted
    );
    d.granted = granted;
    d.token_exp = token_exp;
    d.disclosure = sender.map(|s| s.disclosure);
    d
}

/// A decision-log entry in the style of OPA's decision logs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionRecord {
    pub decision_id: String,
    pub time: String,
    pub direction: Direction,
    /// base64url SHA-256 of the canonical JSON of the input.
    pub input_digest: String,
    pub result: &'static str,
    pub reason: Option<Reason>,
    pub message: String,
    pub agreement: Option<String>,
    pub flow: Option<usize>,
    pub granted: Vec<String>,
    pub eval_ns: u64,
}

impl DecisionRecord {
    pub fn new(req: &CrossingRequest<'_>, d: &Decision, eval_ns: u64) -> Self {
        let canonical = crate::jcs::canonicalize(&req.summary()).unwrap_or_default();
        DecisionRecord {
            decision_id: crate::crypto::random_id(),
            time: crate::time::format_rfc3339(req.now),
            direction: req.direction,
            input_digest: crate::crypto::b64url(&crate::crypto::sha256(&canonical)),
            result: if d.allow { "allow" } else { "deny" },
            reason: d.reason,
            message: d.message.clone(),
            agreement: d.agr.clone(),
            flow: d.flow,
            granted: d.granted.to_strings(),
            eval_ns,
        }
    }
}
