//! The reason codes of SPEC section 10: the one vocabulary every denial, CLI result and audit
//! record uses. Each typed error of the verification modules maps to exactly one of these.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    Malformed,
    BadAlg,
    BadSignature,
    UnknownKey,
    BadRoot,
    BrokenLink,
    WrongSigner,
    BadSvid,
    ScopeEscalation,
    Expired,
    NotYetValid,
    ExpiryExtension,
    TaskMismatch,
    TooDeep,
    TooLarge,
    NotHolder,
    Revoked,
    Replayed,
    WrongAudience,
    IssuerMismatch,
    UnknownDomain,
    NoAgreement,
    AgreementExpired,
    AgreementMismatch,
    RuleDenied,
    ScopeExceedsAgreement,
    ApprovalRequired,
    RouteDenied,
    PolicyDenied,
    AuditUnavailable,
    PartnerUnavailable,
    /// Beyond SPEC section 10 (docs/spec-notes.md): the source keeps being denied and is
    /// refused up front for a while (HTTP 429); not a crossing decision, so not audited.
    RateLimited,
    /// Beyond SPEC section 10: the shared state store (PostgreSQL) cannot be reached or its
    /// revocation mirror is not current, so nothing can be decided safely (HTTP 503).
    StateUnavailable,
    /// Beyond SPEC section 10: the partner's response is not signed by its gateway key, or its
    /// signature or body digest does not verify (HTTP 502).
    BadResponseSignature,
    /// Beyond SPEC section 10: the partner's response body is larger than the route allows.
    ResponseTooLarge,
    /// Beyond SPEC section 10: the partner's response breaks the route's response rules
    /// (content type, JSON Schema).
    ResponseInvalid,
    /// Beyond SPEC section 10 (issue 25): the token names a version of the agreement that a
    /// later version has superseded (HTTP 403).
    AgreementSuperseded,
    /// Beyond SPEC section 10 (issue 25): either party terminated the agreement (HTTP 403).
    AgreementTerminated,
    /// Beyond SPEC section 10 (issue 14): a partner's signed checkpoint is not consistent with
    /// the one our witness cosigned before (a fork, or history rewritten); refused with 409/422
    /// as tlog-witness says, audited, kept as evidence.
    CheckpointFork,
}

impl Reason {
    pub const ALL: [Reason; 39] = [
        Reason::Malformed,
        Reason::BadAlg,
        Reason::BadSignature,
        Reason::UnknownKey,
        Reason::BadRoot,
        Reason::BrokenLink,
        Reason::WrongSigner,
        Reason::BadSvid,
        Reason::ScopeEscalation,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::ExpiryExtension,
        Reason::TaskMismatch,
        Reason::TooDeep,
        Reason::TooLarge,
        Reason::NotHolder,
        Reason::Revoked,
        Reason::Replayed,
        Reason::WrongAudience,
        Reason::IssuerMismatch,
        Reason::UnknownDomain,
        Reason::NoAgreement,
        Reason::AgreementExpired,
        Reason::AgreementMismatch,
        Reason::RuleDenied,
        Reason::ScopeExceedsAgreement,
        Reason::ApprovalRequired,
        Reason::RouteDenied,
        Reason::PolicyDenied,
        Reason::AuditUnavailable,
        Reason::PartnerUnavailable,
        Reason::RateLimited,
        Reason::StateUnavailable,
        Reason::BadResponseSignature,
        Reason::ResponseTooLarge,
        Reason::ResponseInvalid,
        Reason::AgreementSuperseded,
        Reason::AgreementTerminated,
        Reason::CheckpointFork,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::BadAlg => "bad_alg",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKey => "unknown_key",
            Reason::BadRoot => "bad_root",
            Reason::BrokenLink => "broken_link",
            Reason::WrongSigner => "wrong_signer",
            Reason::BadSvid => "bad_svid",
            Reason::ScopeEscalation => "scope_escalation",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::ExpiryExtension => "expiry_extension",
            Reason::TaskMismatch => "task_mismatch",
            Reason::TooDeep => "too_deep",
            Reason::TooLarge => "too_large",
            Reason::NotHolder => "not_holder",
            Reason::Revoked => "revoked",
            Reason::Replayed => "replayed",
            Reason::WrongAudience => "wrong_audience",
            Reason::IssuerMismatch => "issuer_mismatch",
            Reason::UnknownDomain => "unknown_domain",
            Reason::NoAgreement => "no_agreement",
            Reason::AgreementExpired => "agreement_expired",
            Reason::AgreementMismatch => "agreement_mismatch",
            Reason::RuleDenied => "rule_denied",
            Reason::ScopeExceedsAgreement => "scope_exceeds_agreement",
            Reason::ApprovalRequired => "approval_required",
            Reason::RouteDenied => "route_denied",
            Reason::PolicyDenied => "policy_denied",
            Reason::AuditUnavailable => "audit_unavailable",
            Reason::PartnerUnavailable => "partner_unavailable",
            Reason::RateLimited => "rate_limited",
            Reason::StateUnavailable => "state_unavailable",
            Reason::BadResponseSignature => "bad_response_signature",
            Reason::ResponseTooLarge => "response_too_large",
            Reason::ResponseInvalid => "response_invalid",
            Reason::AgreementSuperseded => "agreement_superseded",
            Reason::AgreementTerminated => "agreement_terminated",
            Reason::CheckpointFork => "checkpoint_fork",
        }
    }

    pub fn from_code(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == s)
    }

    /// HTTP status of a denial with this reason (SPEC section 7): 400 malformed input, 413
    /// oversized, 401 when the credential itself is not acceptable, 403 when it is authentic
    /// but not allowed, 502/504 when the partner fails, 503 when the audit log is unavailable.
    pub fn http_status(self) -> u16 {
        match self {
            Reason::Malformed => 400,
            Reason::TooLarge => 413,
            Reason::BadAlg
            | Reason::BadSignature
            | Reason::UnknownKey
            | Reason::BadRoot
            | Reason::BrokenLink
            | Reason::WrongSigner
            | Reason::BadSvid
            | Reason::Expired
            | Reason::NotYetValid
            | Reason::ExpiryExtension
            | Reason::TaskMismatch
            | Reason::NotHolder
            | Reason::Replayed
            | Reason::WrongAudience
            | Reason::IssuerMismatch
            | Reason::AgreementMismatch => 401,
            Reason::AuditUnavailable | Reason::StateUnavailable => 503,
            Reason::PartnerUnavailable
            | Reason::BadResponseSignature
            | Reason::ResponseTooLarge
            | Reason::ResponseInvalid => 502,
            Reason::RateLimited => 429,
            _ => 403,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()));
            assert_eq!(Reason::from_code(r.code()), Some(r));
            assert!((400..=599).contains(&r.http_status()));
        }
        assert_eq!(Reason::from_code("nope"), None);
        assert_eq!(Reason::TooLarge.http_status(), 413);
        assert_eq!(Reason::Malformed.http_status(), 400);
    }
}
