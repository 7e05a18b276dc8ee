//! Agreement lint: every problem, each with its key path, in one pass.

use std::fmt;

use super::{
    Agreement, ChainDisclosure, Disclosure, DisclosureDoc, Doc, DomainDoc, DomainTerms, Flow,
    FlowDoc, PrincipalDisclosure, Route, MAX_AGREEMENT_BYTES, MAX_AGREEMENT_DEPTH, MAX_FLOWS,
    MAX_ROUTES, MAX_TOKEN_TTL,
};
use crate::scope::{Scope, ScopeSet};
use crate::spiffe::{IdPattern, SpiffeId, TrustDomain};

/// Longest agreement id (it is also part of signature file names).
pub const MAX_ID_BYTES: usize = 128;

/// One problem: where (a key path like `flows[0].routes[1].scope`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintIssue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for LintIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

struct Issues(Vec<LintIssue>);

impl Issues {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(LintIssue {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn https_url(s: &str) -> Result<(), &'static str> {
    let rest = s
        .strip_prefix("https://")
        .ok_or("must be an https:// URL")?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || s.contains(char::is_whitespace) {
        return Err("needs a host[:port] and no userinfo or spaces");
    }
    Ok(())
}

fn route_path_ok(p: &str) -> bool {
    if !p.starts_with('/') || p.contains("..") || p.contains("//") || p.contains('%') {
        return false;
    }
    let body = p.strip_suffix('*').unwrap_or(p);
    !body.contains('*')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()+,;=:@/".contains(&b))
}

fn instant(issues: &mut Issues, path: &str, dt: &toml::value::Datetime) -> Option<i64> {
    match super::normalize_datetime(dt) {
        Ok((t, _)) => Some(t),
        Err(e) => {
            issues.add(path, e);
            None
        }
    }
}

/// Response headers a route may not let through (besides every hop-by-hop and identity or
/// routing header): credentials, framing, headers that would redirect or pin the agent's client
/// to another origin, and the ones the gateway sets or consumes itself.
const NEVER_ALLOWED: &[&str] = &[
    "content-length",
    "content-encoding",
    "content-digest",
    "alt-svc",
    "strict-transport-security",
    "proxy-connection",
    "set-cookie",
    "set-cookie2",
    "authorization",
    "proxy-authenticate",
    "www-authenticate",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "trailer",
    "te",
    "delegation-chain",
    "signature",
    "signature-input",
];

fn response_rules(
    issues: &mut Issues,
    path: &str,
    doc: Option<&super::ResponseDoc>,
) -> super::ResponseRules {
    let Some(d) = doc else {
        return super::ResponseRules::default();
    };
    let mut r = super::ResponseRules::default();
    if d.content_types.len() > super::MAX_RESPONSE_LIST
        || d.allow_headers.len() > super::MAX_RESPONSE_LIST
    {
        issues.add(
            path,
            format!(
                "at most {} content types and headers",
                super::MAX_RESPONSE_LIST
            ),
        );
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"!#$&-^_.+".contains(&c))
    };
    for (i, t) in d.content_types.iter().enumerate() {
        if t.split_once('/').is_some_and(|(a, b)| token(a) && token(b)) {
            r.content_types.push(t.clone());
        } else {
            issues.add(
                format!("{path}.content_types[{i}]"),
                "must be a lower-case type/subtype without parameters",
            );
        }
    }
    if let Some(n) = d.max_bytes {
        if n < 0 || n as usize > super::MAX_RESPONSE_BYTES {
            issues.add(
                format!("{path}.max_bytes"),
                format!("must be 0..={}", super::MAX_RESPONSE_BYTES),
            );
        } else {
            r.max_bytes = Some(n as usize);
        }
    }
    for (i, h) in d.allow_headers.iter().enumerate() {
        let lower = h.to_ascii_lowercase();
        match http::HeaderName::from_bytes(lower.as_bytes()) {
            Ok(_)
                if NEVER_ALLOWED.contains(&lower.as_str())
                    || crate::hygiene::is_hop_by_hop(&lower)
                    || crate::hygiene::is_forwarding(&lower)
                    || lower.contains('_')
                    || lower.starts_with("fedgate-") =>
            {
                issues.add(
                    format!("{path}.allow_headers[{i}]"),
                    format!("{h} never crosses back to an agent"),
                )
            }
            Ok(_) => r.allow_headers.push(lower),
            Err(_) => issues.add(format!("{path}.allow_headers[{i}]"), "not a header name"),
        }
    }
    r.stream = d.stream;
    if d.stream && d.schema.is_some() {
        issues.add(
            format!("{path}.stream"),
            "a streamed answer cannot be checked against a schema (it reaches the agent before it ends)",
        );
    }
    if let Some(s) = &d.schema {
        match serde_json::to_value(s)
            .map_err(|e| e.to_string())
            .and_then(super::Schema::compile)
        {
            Ok(schema) => r.schema = Some(schema),
            Err(e) => issues.add(
                format!("{path}.schema"),
                format!("not a valid JSON Schema: {e}"),
            ),
        }
    }
    r
}

fn duration(issues: &mut Issues, path: &str, s: &str) -> Option<i64> {
    match crate::time::parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            issues.add(path, e.to_string());
            None
        }
    }
}

fn scopes(issues: &mut Issues, path: &str, items: &[String], nonempty: bool) -> Option<ScopeSet> {
    if nonempty && items.is_empty() {
        issues.add(path, "needs at least one scope");
        return None;
    }
    let mut ok = true;
    let mut v = Vec::new();
    for (i, s) in items.iter().enumerate() {
        match Scope::parse(s) {
            Ok(x) => v.push(x),
            Err(e) => {
                issues.add(format!("{path}[{i}]"), e.to_string());
                ok = false;
            }
        }
    }
    match ScopeSet::from_scopes(v) {
        Ok(s) if ok => Some(s),
        Ok(_) => None,
        Err(e) => {
            issues.add(path, e.to_string());
            None
        }
    }
}

fn disclosure(issues: &mut Issues, path: &str, d: &DisclosureDoc) -> Option<Disclosure> {
    let principal = match d.principal.as_str() {
        "clear" => Some(PrincipalDisclosure::Clear),
        "pseudonymous" => Some(PrincipalDisclosure::Pseudonymous),
        "none" => Some(PrincipalDisclosure::None),
        _ => {
            issues.add(
                format!("{path}.principal"),
                "must be clear, pseudonymous or none",
            );
            None
        }
    };
    let chain = match d.chain.as_str() {
        "full" => Some(ChainDisclosure::Full),
        "digest" => Some(ChainDisclosure::Digest),
        _ => {
            issues.add(format!("{path}.chain"), "must be full or digest");
            None
        }
    };
    Some(Disclosure {
        principal: principal?,
        chain: chain?,
    })
}

fn domain(issues: &mut Issues, i: usize, d: &DomainDoc) -> Option<DomainTerms> {
    let path = format!("domains[{i}]");
    let td = TrustDomain::parse(&d.trust_domain)
        .map_err(|e| issues.add(format!("{path}.trust_domain"), e.to_string()))
        .ok();
    let gw = SpiffeId::parse(&d.gateway_id)
        .map_err(|e| issues.add(format!("{path}.gateway_id"), e.to_string()))
        .ok();
    if let (Some(td), Some(gw)) = (&td, &gw) {
        if !gw.in_domain(td) {
            issues.add(
                format!("{path}.gateway_id"),
                format!("must be in trust domain {td}"),
            );
        }
    }
    if let Err(e) = https_url(&d.gateway_url) {
        issues.add(format!("{path}.gateway_url"), e);
    }
    if let Err(e) = https_url(&d.bundle_endpoint) {
        issues.add(format!("{path}.bundle_endpoint"), e);
    }
    let disc = disclosure(issues, &format!("{path}.disclosure"), &d.disclosure);
    Some(DomainTerms {
        trust_domain: td?,
        gateway_id: gw?,
        gateway_url: d.gateway_url.trim_end_matches('/').to_string(),
        bundle_endpoint: d.bundle_endpoint.clone(),
        disclosure: disc?,
    })
}

fn flow(issues: &mut Issues, i: usize, f: &FlowDoc, tds: &[TrustDomain]) -> Option<Flow> {
    let path = format!("flows[{i}]");
    let from = IdPattern::parse(&f.from)
        .map_err(|e| issues.add(format!("{path}.from"), format!("bad pattern: {e}")))
        .ok();
    let to = IdPattern::parse(&f.to)
        .map_err(|e| issues.add(format!("{path}.to"), format!("bad pattern: {e}")))
        .ok();
    if let (Some(a), Some(b)) = (&from, &to) {
        let known = |p: &IdPattern| tds.contains(p.trust_domain());
        if !known(a) {
            issues.add(
                format!("{path}.from"),
                format!("{} is not a domain of this agreement", a.trust_domain()),
            );
        }
        if !known(b) {
            issues.add(
                format!("{path}.to"),
                format!("{} is not a domain of this agreement", b.trust_domain()),
            );
        }
        if a.trust_domain() == b.trust_domain() {
            issues.add(
                path.clone(),
                "flow does not cross between the two domains (from and to are in the same domain)",
            );
        }
    }
    let max_scope = scopes(issues, &format!("{path}.max_scope"), &f.max_scope, true);
    let approval = scopes(
        issues,
        &format!("{path}.requires_approval"),
        &f.requires_approval,
        false,
    );
    let age = match (&f.approval_max_age, f.requires_approval.is_empty()) {
        (Some(s), _) => {
            let d = duration(issues, &format!("{path}.approval_max_age"), s);
            if d == Some(0) {
                issues.add(format!("{path}.approval_max_age"), "must be positive");
            }
            d
        }
        (None, true) => Some(0),
        (None, false) => {
            issues.add(
                format!("{path}.approval_max_age"),
                "required when requires_approval is set",
            );
            None
        }
    };
    if f.routes.len() > MAX_ROUTES {
        issues.add(
            format!("{path}.routes"),
            format!("more than {MAX_ROUTES} routes"),
        );
    }
    let mut routes = Vec::new();
    for (j, r) in f.routes.iter().enumerate() {
        let rp = format!("{path}.routes[{j}]");
        let method_ok = r.method == "*"
            || (!r.method.is_empty()
                && r.method.len() <= 16
                && r.method.bytes().all(|b| b.is_ascii_uppercase()));
        if !method_ok {
            issues.add(
                format!("{rp}.method"),
                "must be an upper-case HTTP method or *",
            );
        }
        if !route_path_ok(&r.path) {
            issues.add(
                format!("{rp}.path"),
                "must start with / and use plain path characters, with * only at the end",
            );
        }
        match Scope::parse(&r.scope) {
            Ok(s) => {
                if let Some(ms) = &max_scope {
                    if !ms.covers(&s) {
                        issues.add(
                            format!("{rp}.scope"),
                            format!("{s} is outside the flow's max_scope"),
                        );
                    }
                }
                let response =
                    response_rules(issues, &format!("{rp}.response"), r.response.as_ref());
                let protocol = route_protocol(issues, &rp, r, &s);
                routes.push(Route {
                    method: r.method.clone(),
                    path: r.path.clone(),
                    scope: s,
                    response,
                    protocol,
                    skills: r.skills.clone(),
                });
            }
            Err(e) => issues.add(format!("{rp}.scope"), e.to_string()),
        }
    }
    Some(Flow {
        index: i,
        from: from?,
        to: to?,
        max_scope: max_scope?,
        requires_approval: approval?,
        approval_max_age: age?,
        routes,
    })
}

/// Longest A2A skill id a route may name.
pub const MAX_SKILL_BYTES: usize = 128;

/// A route's `protocol` and `skills`: an MCP route's scope is `mcp:...`, an A2A route's
/// `a2a:...`, and only A2A routes list skills (at most [`super::MAX_RESPONSE_LIST`]).
fn route_protocol(
    issues: &mut Issues,
    rp: &str,
    r: &super::RouteDoc,
    scope: &Scope,
) -> crate::server::protocol::Protocol {
    use crate::server::protocol::Protocol;
    let protocol = match r.protocol.as_deref() {
        None => Protocol::Http,
        Some(s) => match Protocol::parse(s) {
            Some(p) => p,
            None => {
                issues.add(
                    format!("{rp}.protocol"),
                    "must be \"http\", \"mcp\" or \"a2a\"",
                );
                Protocol::Http
            }
        },
    };
    let prefix = match protocol {
        Protocol::Mcp => Some("mcp:"),
        Protocol::A2a => Some("a2a:"),
        Protocol::Http => None,
    };
    if let Some(pre) = prefix {
        if !scope.as_str().starts_with(pre) {
            issues.add(
                format!("{rp}.scope"),
                format!("a {} route's scope starts with {pre}", protocol.as_str()),
            );
        }
    }
    if !r.skills.is_empty() && protocol != Protocol::A2a {
        issues.add(format!("{rp}.skills"), "only an a2a route lists skills");
    }
    if r.skills.len() > super::MAX_RESPONSE_LIST {
        issues.add(
            format!("{rp}.skills"),
            format!("more than {} skills", super::MAX_RESPONSE_LIST),
        );
    }
    for (k, s) in r.skills.iter().enumerate() {
        if s.is_empty() || s.len() > MAX_SKILL_BYTES || s.chars().any(char::is_control) {
            issues.add(
                format!("{rp}.skills[{k}]"),
                format!("a skill id is 1 to {MAX_SKILL_BYTES} bytes without control characters"),
            );
        }
    }
    protocol
}

pub(super) fn parse_and_lint(text: &str) -> Result<Agreement, Vec<LintIssue>> {
    let one = |m: String| {
        vec![LintIssue {
            path: String::new(),
            message: m,
        }]
    };
    if text.len() > MAX_AGREEMENT_BYTES {
        return Err(one(format!(
            "agreement larger than {MAX_AGREEMENT_BYTES} bytes"
        )));
    }
    let doc: Doc =
        toml::from_str(text).map_err(|e| one(e.to_string().trim().replace('\n', " ")))?;
    let mut is = Issues(Vec::new());
    let hashed = super::hash_text_at(text);
    if let Err((path, m)) = &hashed {
        // valid_from/valid_until are reported below with the same message.
        if path != "valid_from" && path != "valid_until" {
            is.add(path.clone(), m.clone());
        }
    }

    let id_ok = !doc.id.is_empty()
        && doc.id.len() <= MAX_ID_BYTES
        && !doc.id.starts_with('.')
        && doc
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !id_ok {
        is.add(
            "id",
            "must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'",
        );
    }
    if doc.version < 1 {
        is.add("version", "must be a positive integer");
    }
    let from = instant(&mut is, "valid_from", &doc.valid_from);
    let until = instant(&mut is, "valid_until", &doc.valid_until);
    if let (Some(a), Some(b)) = (from, until) {
        if a >= b {
            is.add(
                "valid_until",
                "validity window is inverted (valid_until is not after valid_from)",
            );
        }
    }
    if doc.max_chain_depth < 1 || doc.max_chain_depth > MAX_AGREEMENT_DEPTH as i64 {
        is.add(
            "max_chain_depth",
            format!("must be 1..={MAX_AGREEMENT_DEPTH}"),
        );
    }
    let ttl = duration(&mut is, "max_token_ttl", &doc.max_token_ttl);
    if let Some(t) = ttl {
        if t <= 0 {
            is.add("max_token_ttl", "must be positive");
        } else if t > MAX_TOKEN_TTL {
            is.add("max_token_ttl", "must be at most 24h");
        }
    }
    let skew = match &doc.clock_skew {
        Some(s) => duration(&mut is, "clock_skew", s),
        None => Some(crate::chain::DEFAULT_CLOCK_SKEW),
    };
    if let Some(s) = skew {
        if s > crate::chain::MAX_CLOCK_SKEW {
            is.add(
                "clock_skew",
                format!("must be at most {}s", crate::chain::MAX_CLOCK_SKEW),
            );
        }
    }
    if doc.domains.len() != 2 {
        is.add(
            "domains",
            format!("must list exactly two domains, found {}", doc.domains.len()),
        );
    }
    let domains: Vec<Option<DomainTerms>> = doc
        .domains
        .iter()
        .enumerate()
        .map(|(i, d)| domain(&mut is, i, d))
        .collect();
    if let (Some(Some(a)), Some(Some(b))) = (domains.first(), domains.get(1)) {
        if a.trust_domain == b.trust_domain {
            is.add(
                "domains[1].trust_domain",
                "both domains are the same trust domain",
            );
        }
    }
    let tds: Vec<TrustDomain> = domains
        .iter()
        .flatten()
        .map(|d| d.trust_domain.clone())
        .collect();
    if doc.flows.is_empty() {
        is.add("flows", "no flows: the agreement would allow nothing");
    }
    if doc.flows.len() > MAX_FLOWS {
        is.add("flows", format!("more than {MAX_FLOWS} flows"));
    }
    let mut flows = Vec::new();
    for (i, f) in doc.flows.iter().enumerate() {
        if let Some(j) = doc.flows[..i]
            .iter()
            .position(|g| g.from == f.from && g.to == f.to)
        {
            is.add(
                format!("flows[{i}]"),
                format!("duplicate of flows[{j}] (same from and to)"),
            );
        }
        if let Some(fl) = flow(&mut is, i, f, &tds) {
            flows.push(fl);
        }
    }
    if !is.0.is_empty() {
        return Err(is.0);
    }
    let mut ds = domains.into_iter().flatten();
    let (Some(d0), Some(d1), Some(from), Some(until), Some(ttl), Some(skew), Ok((hash, canonical))) =
        (ds.next(), ds.next(), from, until, ttl, skew, hashed)
    else {
        return Err(one("agreement is incomplete".into()));
    };
    Ok(Agreement {
        id: doc.id,
        version: doc.version as u64,
        valid_from: from,
        valid_until: until,
        max_chain_depth: doc.max_chain_depth as u32,
        max_token_ttl: ttl,
        clock_skew: skew,
        domains: [d0, d1],
        flows,
        hash,
        canonical,
    })
}
