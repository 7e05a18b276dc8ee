//! What changed between two versions of an agreement, each change classified as a tightening
//! (something allowed before is not, or needs more), a loosening (the reverse) or a neutral
//! change (an address, a version number): what an operator reviews before countersigning a
//! proposal (`fedgate agreement diff`, the proposals list). Pure.
//!
//! Flows are matched by their `from` and `to` patterns, routes by method and path; a flow or
//! route present on one side only is removed (tightened) or added (loosened). Scope sets are
//! compared by coverage (SPEC section 4), so `analytics:*` → `analytics:read` is a tightening.

use serde::Serialize;

use super::{Agreement, ChainDisclosure, Flow, PrincipalDisclosure, ResponseRules, Route};
use crate::scope::ScopeSet;

/// Which way a change goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Tightened,
    Loosened,
    Changed,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Tightened => "tightened",
            Direction::Loosened => "loosened",
            Direction::Changed => "changed",
        }
    }
}

/// One change: which way, what kind (`window`, `depth`, `ttl`, `skew`, `domain`,
/// `disclosure`, `flow`, `scope`, `approval`, `route`, `response`), where (a key path in the
/// newer version's terms) and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub direction: Direction,
    pub kind: &'static str,
    #[serde(rename = "where")]
    pub at: String,
    pub detail: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<9} {:<10} {}: {}",
            self.direction.as_str(),
            self.kind,
            self.at,
            self.detail
        )
    }
}

struct Out(Vec<Change>);

impl Out {
    fn push(&mut self, direction: Direction, kind: &'static str, at: &str, detail: String) {
        self.0.push(Change {
            direction,
            kind,
            at: at.to_string(),
            detail,
        });
    }

    /// A number where lower is stricter.
    fn lower_is_tighter(
        &mut self,
        kind: &'static str,
        at: &str,
        old: i64,
        new: i64,
        show: &dyn Fn(i64) -> String,
    ) {
        if new < old {
            self.push(
                Direction::Tightened,
                kind,
                at,
                format!("{} → {}", show(old), show(new)),
            );
        } else if new > old {
            self.push(
                Direction::Loosened,
                kind,
                at,
                format!("{} → {}", show(old), show(new)),
            );
        }
    }

    /// Scopes of `old` that `new` no longer covers, and scopes of `new` that `old` did not.
    /// `more_is_looser`: whether covering more loosens (grants) or tightens (approvals).
    fn scopes(
        &mut self,
        kind: &'static str,
        at: &str,
        old: &ScopeSet,
        new: &ScopeSet,
        more_is_looser: bool,
        what: &str,
    ) {
        let (gone, came) = if more_is_looser {
            (Direction::Tightened, Direction::Loosened)
        } else {
            (Direction::Loosened, Direction::Tightened)
        };
        for s in old.iter().filter(|s| !new.covers(s)) {
            self.push(gone, kind, at, format!("{what} no longer covers {s}"));
        }
        for s in new.iter().filter(|s| !old.covers(s)) {
            self.push(came, kind, at, format!("{what} now covers {s}"));
        }
    }
}

fn principal_rank(p: PrincipalDisclosure) -> i64 {
    match p {
        PrincipalDisclosure::None => 0,
        PrincipalDisclosure::Pseudonymous => 1,
        PrincipalDisclosure::Clear => 2,
    }
}

fn principal_name(p: PrincipalDisclosure) -> &'static str {
    match p {
        PrincipalDisclosure::None => "none",
        PrincipalDisclosure::Pseudonymous => "pseudonymous",
        PrincipalDisclosure::Clear => "clear",
    }
}

fn chain_name(c: ChainDisclosure) -> &'static str {
    match c {
        ChainDisclosure::Digest => "digest",
        ChainDisclosure::Full => "full",
    }
}

fn duration(s: i64) -> String {
    format!("{s}s")
}

/// Every change from `old` to `new`, in document order: top-level terms, domains, then flows.
pub fn diff(old: &Agreement, new: &Agreement) -> Vec<Change> {
    let mut o = Out(Vec::new());
    if old.id != new.id {
        o.push(
            Direction::Changed,
            "id",
            "id",
            format!("{} → {}", old.id, new.id),
        );
    }
    if old.version != new.version {
        o.push(
            Direction::Changed,
            "version",
            "version",
            format!("{} → {}", old.version, new.version),
        );
    }
    let t = |x: i64| crate::time::format_rfc3339(x);
    // A later start or an earlier end allows less.
    o.lower_is_tighter(
        "window",
        "valid_from",
        -old.valid_from,
        -new.valid_from,
        &|x| t(-x),
    );
    o.lower_is_tighter(
        "window",
        "valid_until",
        old.valid_until,
        new.valid_until,
        &t,
    );
    o.lower_is_tighter(
        "depth",
        "max_chain_depth",
        old.max_chain_depth as i64,
        new.max_chain_depth as i64,
        &|x| x.to_string(),
    );
    o.lower_is_tighter(
        "ttl",
        "max_token_ttl",
        old.max_token_ttl,
        new.max_token_ttl,
        &duration,
    );
    o.lower_is_tighter(
        "skew",
        "clock_skew",
        old.clock_skew,
        new.clock_skew,
        &duration,
    );

    for (i, d) in new.domains.iter().enumerate() {
        let at = format!("domains[{i}] ({})", d.trust_domain);
        let Some(p) = old
            .domains
            .iter()
            .find(|x| x.trust_domain == d.trust_domain)
        else {
            o.push(Direction::Changed, "domain", &at, "a new party".into());
            continue;
        };
        for (name, a, b) in [
            (
                "gateway_id",
                p.gateway_id.to_string(),
                d.gateway_id.to_string(),
            ),
            ("gateway_url", p.gateway_url.clone(), d.gateway_url.clone()),
            (
                "bundle_endpoint",
                p.bundle_endpoint.clone(),
                d.bundle_endpoint.clone(),
            ),
        ] {
            if a != b {
                o.push(
                    Direction::Changed,
                    "domain",
                    &at,
                    format!("{name} {a} → {b}"),
                );
            }
        }
        // Disclosing more is a loosening (of the privacy the terms gave).
        let (pa, pb) = (p.disclosure.principal, d.disclosure.principal);
        if pa != pb {
            let dir = if principal_rank(pb) > principal_rank(pa) {
                Direction::Loosened
            } else {
                Direction::Tightened
            };
            o.push(
                dir,
                "disclosure",
                &at,
                format!("principal {} → {}", principal_name(pa), principal_name(pb)),
            );
        }
        let (ca, cb) = (p.disclosure.chain, d.disclosure.chain);
        if ca != cb {
            let dir = if cb == ChainDisclosure::Full {
                Direction::Loosened
            } else {
                Direction::Tightened
            };
            o.push(
                dir,
                "disclosure",
                &at,
                format!("chain {} → {}", chain_name(ca), chain_name(cb)),
            );
        }
    }
    for (i, d) in old.domains.iter().enumerate() {
        if !new.domains.iter().any(|x| x.trust_domain == d.trust_domain) {
            o.push(
                Direction::Changed,
                "domain",
                &format!("domains[{i}] ({})", d.trust_domain),
                "no longer a party".into(),
            );
        }
    }

    let same_flow = |a: &Flow, b: &Flow| {
        a.from.to_string() == b.from.to_string() && a.to.to_string() == b.to.to_string()
    };
    let flow_at = |f: &Flow| format!("flows[{}] ({} → {})", f.index, f.from, f.to);
    for f in &old.flows {
        if !new.flows.iter().any(|n| same_flow(f, n)) {
            o.push(Direction::Tightened, "flow", &flow_at(f), "removed".into());
        }
    }
    for f in &new.flows {
        let at = flow_at(f);
        let Some(p) = old.flows.iter().find(|x| same_flow(x, f)) else {
            o.push(
                Direction::Loosened,
                "flow",
                &at,
                format!("added, max_scope {}", f.max_scope.to_spaced()),
            );
            continue;
        };
        o.scopes("scope", &at, &p.max_scope, &f.max_scope, true, "max_scope");
        o.scopes(
            "approval",
            &at,
            &p.requires_approval,
            &f.requires_approval,
            false,
            "requires_approval",
        );
        if !f.requires_approval.is_empty() || !p.requires_approval.is_empty() {
            o.lower_is_tighter(
                "approval",
                &at,
                p.approval_max_age,
                f.approval_max_age,
                &|x| format!("approval_max_age {x}s"),
            );
        }
        routes(&mut o, &at, &p.routes, &f.routes);
    }
    o.0
}

fn routes(o: &mut Out, flow_at: &str, old: &[Route], new: &[Route]) {
    // JSON-RPC routes share a method and path and differ by scope (one per tool or method).
    let key = |r: &Route| {
        let by_scope = if r.protocol.is_rpc() {
            r.scope.to_string()
        } else {
            String::new()
        };
        (r.method.clone(), r.path.clone(), by_scope)
    };
    for r in old {
        if !new.iter().any(|n| key(n) == key(r)) {
            o.push(
                Direction::Tightened,
                "route",
                flow_at,
                format!("route {} {} removed", r.method, r.path),
            );
        }
    }
    for r in new {
        let name = format!("route {} {}", r.method, r.path);
        let Some(p) = old.iter().find(|x| key(x) == key(r)) else {
            o.push(
                Direction::Loosened,
                "route",
                flow_at,
                format!("{name} added (scope {})", r.scope),
            );
            continue;
        };
        if p.protocol != r.protocol {
            o.push(
                Direction::Changed,
                "route",
                flow_at,
                format!(
                    "{name} protocol {} → {}",
                    p.protocol.as_str(),
                    r.protocol.as_str()
                ),
            );
        }
        if p.skills != r.skills {
            let dir = if p.skills.is_empty() {
                Direction::Tightened
            } else if r.skills.is_empty() {
                Direction::Loosened
            } else if r.skills.iter().all(|s| p.skills.contains(s)) {
                Direction::Tightened
            } else if p.skills.iter().all(|s| r.skills.contains(s)) {
                Direction::Loosened
            } else {
                Direction::Changed
            };
            let list = |v: &[String]| {
                if v.is_empty() {
                    "any".to_string()
                } else {
                    v.join(", ")
                }
            };
            o.push(
                dir,
                "route",
                flow_at,
                format!("{name} skills {} → {}", list(&p.skills), list(&r.skills)),
            );
        }
        if p.scope != r.scope {
            let dir = if p.scope.covers(&r.scope) {
                // A narrower route scope: fewer tokens reach the route, and the crossing link
                // carries less.
                Direction::Tightened
            } else if r.scope.covers(&p.scope) {
                Direction::Loosened
            } else {
                Direction::Changed
            };
            o.push(
                dir,
                "route",
                flow_at,
                format!("{name} scope {} → {}", p.scope, r.scope),
            );
        }
        response(o, flow_at, &name, &p.response, &r.response);
    }
}

fn response(o: &mut Out, flow_at: &str, name: &str, a: &ResponseRules, b: &ResponseRules) {
    let mut push = |d, m: String| o.push(d, "response", flow_at, format!("{name}: {m}"));
    match (a.content_types.is_empty(), b.content_types.is_empty()) {
        (true, false) => push(
            Direction::Tightened,
            format!("content types limited to {}", b.content_types.join(", ")),
        ),
        (false, true) => push(Direction::Loosened, "any content type".into()),
        _ => {
            for t in a
                .content_types
                .iter()
                .filter(|t| !b.content_types.contains(t))
            {
                push(
                    Direction::Tightened,
                    format!("content type {t} no longer allowed"),
                );
            }
            for t in b
                .content_types
                .iter()
                .filter(|t| !a.content_types.contains(t))
            {
                push(Direction::Loosened, format!("content type {t} allowed"));
            }
        }
    }
    match (a.max_bytes, b.max_bytes) {
        (x, y) if x == y => {}
        (None, Some(y)) => push(Direction::Tightened, format!("max_bytes {y}")),
        (Some(x), None) => push(
            Direction::Loosened,
            format!("max_bytes {x} → the gateway's limit"),
        ),
        (Some(x), Some(y)) if y < x => push(Direction::Tightened, format!("max_bytes {x} → {y}")),
        (Some(x), Some(y)) => push(Direction::Loosened, format!("max_bytes {x} → {y}")),
        _ => {}
    }
    for h in a
        .allow_headers
        .iter()
        .filter(|h| !b.allow_headers.contains(h))
    {
        push(
            Direction::Tightened,
            format!("header {h} no longer let through"),
        );
    }
    for h in b
        .allow_headers
        .iter()
        .filter(|h| !a.allow_headers.contains(h))
    {
        push(Direction::Loosened, format!("header {h} let through"));
    }
    match (&a.schema, &b.schema) {
        (None, Some(_)) => push(Direction::Tightened, "a JSON Schema now applies".into()),
        (Some(_), None) => push(Direction::Loosened, "no JSON Schema any more".into()),
        (Some(x), Some(y)) if x != y => push(Direction::Changed, "JSON Schema changed".into()),
        _ => {}
    }
    if a.stream != b.stream {
        if b.stream {
            push(
                Direction::Loosened,
                "answers may stream before they are checked".into(),
            );
        } else {
            push(
                Direction::Tightened,
                "answers are read whole and checked".into(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = include_str!("../../../federation-agreements/company-vendor-analytics.toml");

    fn parse(text: &str) -> Agreement {
        Agreement::parse(text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
    }

    /// `BASE` with each `(old, new)` replaced once (each must be present).
    fn edit(pairs: &[(&str, &str)]) -> Agreement {
        let mut s = BASE.to_string();
        for (a, b) in pairs {
            assert!(s.contains(a), "fixture lacks {a:?}");
            s = s.replacen(a, b, 1);
        }
        parse(&s)
    }

    /// The only change from BASE to `new`, apart from the version bump.
    fn only(new: &Agreement) -> Change {
        let cs: Vec<Change> = diff(&parse(BASE), new)
            .into_iter()
            .filter(|c| c.kind != "version")
            .collect();
        assert_eq!(cs.len(), 1, "{cs:#?}");
        cs[0].clone()
    }

    fn check(pairs: &[(&str, &str)], dir: Direction, kind: &str, detail: &str) {
        let mut all = vec![("version = 3", "version = 4")];
        all.extend_from_slice(pairs);
        let c = only(&edit(&all));
        assert_eq!((c.direction, c.kind), (dir, kind), "{c}");
        assert!(c.detail.contains(detail), "{c}");
        // The reverse change goes the other way (a neutral one stays neutral).
        let back = diff(&edit(&all), &parse(BASE));
        let rev: Vec<_> = back.iter().filter(|c| c.kind == kind).collect();
        assert!(!rev.is_empty(), "{back:#?}");
        let want = match dir {
            Direction::Tightened => Direction::Loosened,
            Direction::Loosened => Direction::Tightened,
            Direction::Changed => Direction::Changed,
        };
        assert!(rev.iter().all(|c| c.direction == want), "{rev:#?}");
    }

    #[test]
    fn the_same_terms_give_no_change() {
        assert!(diff(&parse(BASE), &parse(BASE)).is_empty());
        let v4 = edit(&[("version = 3", "version = 4")]);
        let cs = diff(&parse(BASE), &v4);
        assert_eq!(cs.len(), 1);
        assert_eq!(
            (cs[0].direction, cs[0].kind),
            (Direction::Changed, "version")
        );
        assert_eq!(cs[0].to_string(), "changed   version    version: 3 → 4");
    }

    #[test]
    fn window_depth_ttl_and_skew() {
        check(
            &[(
                "valid_from = 2026-01-01T00:00:00Z",
                "valid_from = 2026-06-01T00:00:00Z",
            )],
            Direction::Tightened,
            "window",
            "2026-06-01",
        );
        check(
            &[(
                "valid_until = 2028-01-01T00:00:00Z",
                "valid_until = 2029-01-01T00:00:00Z",
            )],
            Direction::Loosened,
            "window",
            "2029-01-01",
        );
        check(
            &[("max_chain_depth = 5", "max_chain_depth = 3")],
            Direction::Tightened,
            "depth",
            "5 → 3",
        );
        check(
            &[("max_token_ttl = \"15m\"", "max_token_ttl = \"30m\"")],
            Direction::Loosened,
            "ttl",
            "900s → 1800s",
        );
        check(
            &[("clock_skew = \"30s\"", "clock_skew = \"10s\"")],
            Direction::Tightened,
            "skew",
            "30s → 10s",
        );
    }

    #[test]
    fn domains_and_disclosure() {
        check(
            &[(
                "gateway_url = \"https://127.0.0.1:9444\"",
                "gateway_url = \"https://127.0.0.1:9555\"",
            )],
            Direction::Changed,
            "domain",
            "gateway_url",
        );
        check(
            &[(
                "bundle_endpoint = \"https://127.0.0.1:9443/bundle\"",
                "bundle_endpoint = \"https://127.0.0.1:9443/b2\"",
            )],
            Direction::Changed,
            "domain",
            "bundle_endpoint",
        );
        check(
            &[("principal = \"pseudonymous\"", "principal = \"clear\"")],
            Direction::Loosened,
            "disclosure",
            "pseudonymous → clear",
        );
        check(
            &[("principal = \"pseudonymous\"", "principal = \"none\"")],
            Direction::Tightened,
            "disclosure",
            "pseudonymous → none",
        );
        check(
            &[(
                "principal = \"none\", chain = \"digest\"",
                "principal = \"none\", chain = \"full\"",
            )],
            Direction::Loosened,
            "disclosure",
            "digest → full",
        );
    }

    #[test]
    fn flows_scopes_and_approval() {
        // A narrower max_scope (its route narrowed with it, or it would not lint): two lines.
        let narrow = edit(&[
            ("version = 3", "version = 4"),
            (
                "max_scope = [\"analytics:*\", \"pii:customers:read\"]",
                "max_scope = [\"analytics:read\", \"pii:customers:read\"]",
            ),
            ("scope = \"analytics:*\"", "scope = \"analytics:read\""),
        ]);
        let cs: Vec<String> = diff(&parse(BASE), &narrow)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert!(
            cs.iter().any(|c| c.starts_with("tightened scope")
                && c.ends_with("max_scope no longer covers analytics:*")),
            "{cs:#?}"
        );
        assert!(
            cs.iter().any(|c| c.starts_with("tightened route")
                && c.ends_with("scope analytics:* → analytics:read")),
            "{cs:#?}"
        );
        assert!(diff(&narrow, &parse(BASE))
            .iter()
            .filter(|c| c.kind != "version")
            .all(|c| c.direction == Direction::Loosened));
        check(
            &[(
                "max_scope = [\"analytics:report-back\"]",
                "max_scope = [\"analytics:report-back\", \"analytics:extra\"]",
            )],
            Direction::Loosened,
            "scope",
            "now covers analytics:extra",
        );
        check(
            &[(
                "requires_approval = [\"pii:*\"]",
                "requires_approval = [\"pii:*\", \"analytics:export\"]",
            )],
            Direction::Tightened,
            "approval",
            "now covers analytics:export",
        );
        check(
            &[("approval_max_age = \"1h\"", "approval_max_age = \"10m\"")],
            Direction::Tightened,
            "approval",
            "3600s → approval_max_age 600s",
        );
        // A whole flow removed (its routes with it) is one line.
        let without: String =
            BASE[..BASE.find("# vendor.example's analytics agents").unwrap()].to_string();
        let c = only(&parse(&without.replacen("version = 3", "version = 4", 1)));
        assert_eq!(
            (c.direction, c.kind, c.detail.as_str()),
            (Direction::Tightened, "flow", "removed")
        );
        assert!(c.at.contains("vendor.example/agent/analytics/*"), "{c}");
        let back = diff(&parse(&without), &parse(BASE));
        assert_eq!(back.len(), 1);
        assert_eq!(
            (back[0].direction, back[0].kind),
            (Direction::Loosened, "flow")
        );
        assert!(back[0].detail.contains("analytics:report-back"));
    }

    #[test]
    fn routes_and_response_rules() {
        let route = "[[flows.routes]]\nmethod = \"GET\"\npath = \"/customers/*\"\nscope = \"pii:customers:read\"\n";
        check(
            &[(route, "")],
            Direction::Tightened,
            "route",
            "route GET /customers/* removed",
        );
        check(&[("path = \"/reports/*\"\nscope = \"analytics:report-back\"", "path = \"/reports/*\"\nscope = \"analytics:report-back\"\n\n[[flows.routes]]\nmethod = \"GET\"\npath = \"/reports/*\"\nscope = \"analytics:report-back\"")], Direction::Loosened, "route", "route GET /reports/* added");
        check(
            &[(
                "path = \"/analytics/*\"\nscope = \"analytics:*\"",
                "path = \"/analytics/*\"\nscope = \"analytics:run\"",
            )],
            Direction::Tightened,
            "route",
            "scope analytics:* → analytics:run",
        );
        let with = |extra: &str| {
            format!("path = \"/customers/*\"\nscope = \"pii:customers:read\"\n{extra}")
        };
        let plain = with("");
        for (extra, dir, detail) in [
            (
                "response = { content_types = [\"application/json\"] }",
                Direction::Tightened,
                "content types limited to application/json",
            ),
            (
                "response = { max_bytes = 1024 }",
                Direction::Tightened,
                "max_bytes 1024",
            ),
            (
                "response = { allow_headers = [\"x-request-id\"] }",
                Direction::Loosened,
                "header x-request-id let through",
            ),
            (
                "response = { schema = { type = \"object\" } }",
                Direction::Tightened,
                "a JSON Schema now applies",
            ),
            (
                "response = { stream = true }",
                Direction::Loosened,
                "answers may stream",
            ),
        ] {
            check(
                &[(plain.as_str(), with(extra).as_str())],
                dir,
                "response",
                detail,
            );
        }
        // Between two limits and two schemas.
        let a = edit(&[(plain.as_str(), with("response = { max_bytes = 4096, schema = { type = \"object\" }, content_types = [\"application/json\"] }").as_str())]);
        let b = edit(&[("version = 3", "version = 4"), (plain.as_str(), with("response = { max_bytes = 1024, schema = { type = \"array\" }, content_types = [\"text/csv\"] }").as_str())]);
        let cs: Vec<String> = diff(&a, &b).iter().map(|c| c.to_string()).collect();
        let joined = cs.join("\n");
        for want in [
            "max_bytes 4096 → 1024",
            "JSON Schema changed",
            "content type application/json no longer allowed",
            "content type text/csv allowed",
        ] {
            assert!(joined.contains(want), "{joined}");
        }
    }

    #[test]
    fn json_names_the_location_where() {
        let v = serde_json::to_value(diff(
            &parse(BASE),
            &edit(&[("max_chain_depth = 5", "max_chain_depth = 4")]),
        ))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"direction": "tightened", "kind": "depth", "where": "max_chain_depth", "detail": "5 → 4"}])
        );
    }
}
