//! Federation agreements (SPEC section 5), pure: the TOML document both domains hold, its lint
//! (every problem with its key path), its hash (SHA-256 of the RFC 8785 canonical JSON of the
//! document as written), two-party signatures, evaluation of a crossing (`decide`), and the
//! gateway-local Rego rules evaluated after the agreement allows.

mod decide;
pub mod diff;
mod lint;
pub mod rego;
mod sign;
pub mod versions;

use std::fmt;

use serde::Deserialize;

pub use decide::{decide_among, Approval, CrossingRequest, Decision, DecisionRecord, Direction};
pub use lint::LintIssue;
pub use sign::{
    sign_agreement, signature_file_name, verify_signature, SignatureError, TYP_AGREEMENT,
};

use crate::scope::{Scope, ScopeSet};
use crate::spiffe::{IdPattern, SpiffeId, TrustDomain};
use crate::time::Instant;

/// Largest agreement file: a few hundred flows fit easily.
pub const MAX_AGREEMENT_BYTES: usize = 256 * 1024;
/// Most flows in one agreement: each crossing is checked against every flow.
pub const MAX_FLOWS: usize = 256;
/// Most routes per flow.
pub const MAX_ROUTES: usize = 256;
/// Longest federation token lifetime an agreement may allow (SPEC: tokens are short-lived).
pub const MAX_TOKEN_TTL: i64 = 24 * 3600;
/// Deepest chain an agreement may allow.
pub const MAX_AGREEMENT_DEPTH: u32 = 16;

/// `sha256:` + lowercase hex of the SHA-256 of the canonical JSON of the agreement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgreementHash(String);

impl AgreementHash {
    pub fn of_canonical(bytes: &[u8]) -> Self {
        AgreementHash(format!(
            "sha256:{}",
            crate::crypto::hex(&crate::crypto::sha256(bytes))
        ))
    }

    pub fn parse(s: &str) -> Option<Self> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| AgreementHash(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgreementHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a domain discloses about the root principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalDisclosure {
    Clear,
    Pseudonymous,
    None,
}

/// What a domain discloses about the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainDisclosure {
    Full,
    Digest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disclosure {
    pub principal: PrincipalDisclosure,
    pub chain: ChainDisclosure,
}

/// One side of an agreement.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainTerms {
    pub trust_domain: TrustDomain,
    pub gateway_id: SpiffeId,
    pub gateway_url: String,
    pub bundle_endpoint: String,
    pub disclosure: Disclosure,
}

/// A route the receiving gateway enforces per request.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Upper-case HTTP method, or `*` for any.
    pub method: String,
    /// Exact path, or a prefix ending in `*`.
    pub path: String,
    pub scope: Scope,
    /// What the sending gateway accepts back from the partner on this route.
    pub response: ResponseRules,
    /// `http` (default), `mcp` or `a2a`. On an MCP or A2A route the scope is matched against
    /// each JSON-RPC call's own scope (`mcp:tools/<name>`, `a2a:<method>`), so several routes
    /// may share a method and path.
    pub protocol: crate::server::protocol::Protocol,
    /// A2A only: the skills a partner's AgentCard may list on this route (empty: any).
    pub skills: Vec<String>,
}

/// Largest `max_bytes` a route may set for its responses.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Most content types and extra headers a route may list.
pub const MAX_RESPONSE_LIST: usize = 64;

/// Rules for a partner's responses on a route, enforced by the sending gateway: allowed
/// content types (empty: any), the largest body (else the gateway's
/// `[limits] max_response_bytes`), extra response headers let through (besides the standard
/// allow-list), an optional JSON Schema for JSON bodies, and whether answers may be streamed
/// to the agent before they are verified (`stream`; otherwise every answer is read whole and
/// checked first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseRules {
    pub content_types: Vec<String>,
    pub max_bytes: Option<usize>,
    pub allow_headers: Vec<String>,
    pub schema: Option<Schema>,
    pub stream: bool,
}

/// A compiled JSON Schema (draft from its `$schema`, 2020-12 by default; no remote references).
#[derive(Clone)]
pub struct Schema {
    pub json: serde_json::Value,
    pub validator: std::sync::Arc<jsonschema::Validator>,
}

impl PartialEq for Schema {
    fn eq(&self, o: &Self) -> bool {
        self.json == o.json
    }
}

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schema({})", self.json)
    }
}

impl Schema {
    pub fn compile(json: serde_json::Value) -> Result<Schema, String> {
        let validator = jsonschema::options()
            .build(&json)
            .map_err(|e| e.to_string())?;
        Ok(Schema {
            json,
            validator: std::sync::Arc::new(validator),
        })
    }

    /// The first violation, if any.
    pub fn check(&self, instance: &serde_json::Value) -> Result<(), String> {
        match self.validator.iter_errors(instance).next() {
            None => Ok(()),
            Some(e) => Err(format!("{} (at {})", e, e.instance_path())),
        }
    }
}

impl ResponseRules {
    /// Whether a response's `Content-Type` (parameters ignored) is allowed.
    pub fn allows_type(&self, content_type: &str) -> bool {
        if self.content_types.is_empty() {
            return true;
        }
        let base = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        self.content_types.contains(&base)
    }
}

impl Route {
    pub fn matches(&self, method: &str, path: &str) -> bool {
        let m = self.method == "*" || self.method == method;
        let p = match self.path.strip_suffix('*') {
            Some(prefix) => path.starts_with(prefix),
            None => path == self.path,
        };
        m && p
    }
}

/// Who may delegate to whom across the boundary, and how much.
#[derive(Debug, Clone, PartialEq)]
pub struct Flow {
    pub index: usize,
    pub from: IdPattern,
    pub to: IdPattern,
    pub max_scope: ScopeSet,
    pub requires_approval: ScopeSet,
    pub approval_max_age: i64,
    pub routes: Vec<Route>,
}

impl Flow {
    /// The first plain-HTTP route matching method and path whose scope overlaps what the token
    /// grants: the crossing link then carries the intersection (SPEC sections 4 and 6). MCP and
    /// A2A routes are never matched this way: their scope names one call, and only a request
    /// classified as that protocol's call may use them (`server/protocol/`), so an upstream
    /// configured as plain HTTP cannot open an MCP or A2A route to any body.
    pub fn route_for(&self, method: &str, path: &str, granted: &ScopeSet) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.protocol == crate::server::protocol::Protocol::Http
                && r.matches(method, path)
                && granted.iter().any(|g| g.meet(&r.scope).is_some())
        })
    }

    /// The protocol of the first MCP or A2A route matching method and path, if any.
    pub fn rpc_route_protocol(
        &self,
        method: &str,
        path: &str,
    ) -> Option<crate::server::protocol::Protocol> {
        self.routes
            .iter()
            .find(|r| r.protocol.is_rpc() && r.matches(method, path))
            .map(|r| r.protocol)
    }
}

/// A parsed agreement that lints clean.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub id: String,
    pub version: u64,
    pub valid_from: Instant,
    pub valid_until: Instant,
    pub max_chain_depth: u32,
    pub max_token_ttl: i64,
    pub clock_skew: i64,
    pub domains: [DomainTerms; 2],
    pub flows: Vec<Flow>,
    pub hash: AgreementHash,
    /// The canonical JSON the hash covers.
    pub canonical: String,
}

impl Agreement {
    /// Parses and lints; any lint issue is an error.
    pub fn parse(text: &str) -> Result<Agreement, Vec<LintIssue>> {
        lint::parse_and_lint(text)
    }

    /// `<id>@<hash>`, the federation token's `agr`.
    pub fn agr(&self) -> String {
        format!("{}@{}", self.id, self.hash)
    }

    pub fn domain(&self, td: &TrustDomain) -> Option<&DomainTerms> {
        self.domains.iter().find(|d| &d.trust_domain == td)
    }

    pub fn domain_str(&self, td: &str) -> Option<&DomainTerms> {
        self.domains.iter().find(|d| d.trust_domain.as_str() == td)
    }

    /// The other side, seen from `td`.
    pub fn partner_of(&self, td: &TrustDomain) -> Option<&DomainTerms> {
        if self.domains[0].trust_domain == *td {
            Some(&self.domains[1])
        } else if self.domains[1].trust_domain == *td {
            Some(&self.domains[0])
        } else {
            None
        }
    }

    pub fn in_window(&self, now: Instant) -> bool {
        self.valid_from <= now && now < self.valid_until
    }
}

/// Only the hash: TOML data mapped to JSON as written, canonicalized (RFC 8785), SHA-256.
/// Offset date-times are normalized to UTC first (SPEC section 5), so every spelling of one
/// instant hashes the same; a local date-time, date or time (no offset) is refused.
pub fn hash_text(text: &str) -> Result<(AgreementHash, String), String> {
    hash_text_at(text).map_err(|(path, m)| {
        if path.is_empty() {
            m
        } else {
            format!("{path}: {m}")
        }
    })
}

/// [`hash_text`], with the key path of the value that could not be hashed.
pub(crate) fn hash_text_at(text: &str) -> Result<(AgreementHash, String), (String, String)> {
    let table: toml::Table = toml::from_str(text).map_err(|e| (String::new(), e.to_string()))?;
    let json = toml_to_json(&toml::Value::Table(table), "")?;
    let canonical = crate::jcs::to_string(&json).map_err(|e| (String::new(), e.to_string()))?;
    Ok((AgreementHash::of_canonical(canonical.as_bytes()), canonical))
}

/// An offset date-time in UTC, as the agreement hash writes it: `YYYY-MM-DDTHH:MM:SSZ`, with
/// fractional seconds only when non-zero and without trailing zeros; and its Unix time.
/// Local date-times, dates and times (no offset) and leap seconds are refused: an instant both
/// domains read the same needs an offset.
pub fn normalize_datetime(d: &toml::value::Datetime) -> Result<(Instant, String), String> {
    let (Some(date), Some(t), Some(offset)) = (d.date, d.time, d.offset) else {
        return Err(
            "a local date-time, date or time (no offset) is ambiguous: write a full date-time with an offset, e.g. 2026-01-01T00:00:00Z"
                .into(),
        );
    };
    let second = t.second.unwrap_or(0);
    if second > 59 {
        return Err("leap seconds are not accepted".into());
    }
    let month = time::Month::try_from(date.month).map_err(|e| e.to_string())?;
    let day = time::Date::from_calendar_date(date.year as i32, month, date.day)
        .map_err(|e| e.to_string())?;
    let tm = time::Time::from_hms_nano(t.hour, t.minute, second, t.nanosecond.unwrap_or(0))
        .map_err(|e| e.to_string())?;
    let minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => minutes,
    };
    let off =
        time::UtcOffset::from_whole_seconds(minutes as i32 * 60).map_err(|e| e.to_string())?;
    let utc = time::PrimitiveDateTime::new(day, tm)
        .assume_offset(off)
        .checked_to_offset(time::UtcOffset::UTC)
        .ok_or("the instant is outside the years 0000-9999 in UTC")?;
    let mut s = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        utc.year(),
        utc.month() as u8,
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    );
    if utc.year() < 0 || utc.year() > 9999 {
        return Err("the year must be 0000-9999".into());
    }
    let nanos = utc.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    Ok((utc.unix_timestamp(), s))
}

fn toml_to_json(v: &toml::Value, path: &str) -> Result<serde_json::Value, (String, String)> {
    use serde_json::Value as J;
    Ok(match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .ok_or_else(|| (path.to_string(), "NaN or infinity in agreement".to_string()))?,
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => {
            J::String(normalize_datetime(d).map_err(|m| (path.to_string(), m))?.1)
        }
        toml::Value::Array(a) => J::Array(
            a.iter()
                .enumerate()
                .map(|(i, x)| toml_to_json(x, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::Table(t) => {
            let mut m = serde_json::Map::new();
            for (k, x) in t {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                m.insert(k.clone(), toml_to_json(x, &p)?);
            }
            J::Object(m)
        }
    })
}

// The TOML document as serde reads it (unknown keys are errors).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    id: String,
    version: i64,
    valid_from: toml::value::Datetime,
    valid_until: toml::value::Datetime,
    max_chain_depth: i64,
    max_token_ttl: String,
    #[serde(default)]
    clock_skew: Option<String>,
    domains: Vec<DomainDoc>,
    #[serde(default)]
    flows: Vec<FlowDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainDoc {
    trust_domain: String,
    gateway_id: String,
    gateway_url: String,
    bundle_endpoint: String,
    disclosure: DisclosureDoc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisclosureDoc {
    principal: String,
    chain: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlowDoc {
    from: String,
    to: String,
    max_scope: Vec<String>,
    #[serde(default)]
    requires_approval: Vec<String>,
    #[serde(default)]
    approval_max_age: Option<String>,
    #[serde(default)]
    routes: Vec<RouteDoc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteDoc {
    method: String,
    path: String,
    scope: String,
    #[serde(default)]
    response: Option<ResponseDoc>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    skills: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseDoc {
    #[serde(default)]
    content_types: Vec<String>,
    #[serde(default)]
    max_bytes: Option<i64>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    schema: Option<toml::Value>,
    #[serde(default)]
    stream: bool,
}

#[cfg(test)]
mod tests;

/// Why an agreement cannot be activated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    #[error("does not lint clean: {}", .0.iter().map(|i| i.to_string()).collect::<Vec<_>>().join("; "))]
    Lint(Vec<LintIssue>),
    #[error("does not name this gateway's domain {0}")]
    NotOurs(String),
    #[error("no bundle for {0}, whose signature must be checked")]
    NoBundle(String),
    #[error("missing signature of {0}")]
    MissingSignature(String),
    #[error("signature of {0}: {1}")]
    BadSignature(String, SignatureError),
}

/// Checks that an agreement lints clean, names `local` (when given) and carries valid
/// signatures of both domains. The validity window is checked per crossing (`decide` says
/// `agreement_expired`), so an agreement that expires while the gateway runs stops working
/// at that second.
pub fn activate(
    text: &str,
    signature_of: &dyn Fn(&str) -> Option<String>,
    bundles: &crate::spiffe::BundleSet,
    local: Option<&TrustDomain>,
) -> Result<Agreement, ActivationError> {
    let a = Agreement::parse(text).map_err(ActivationError::Lint)?;
    if let Some(td) = local {
        if a.domain(td).is_none() {
            return Err(ActivationError::NotOurs(td.to_string()));
        }
    }
    for d in &a.domains {
        let td = d.trust_domain.as_str();
        let bundle = bundles
            .get(&d.trust_domain)
            .ok_or_else(|| ActivationError::NoBundle(td.to_string()))?;
        let sig =
            signature_of(td).ok_or_else(|| ActivationError::MissingSignature(td.to_string()))?;
        verify_signature(&sig, &a.hash, bundle)
            .map_err(|e| ActivationError::BadSignature(td.to_string(), e))?;
    }
    Ok(a)
}
