//! Agreement tests: lint finds each mistake at its key path, the hash ignores form and sees
//! content, signatures bind both domains, and `decide` reaches every one of its reason codes.

use super::*;
use crate::chain::{LinkSummary, SignerKind};
use crate::reason::Reason;

pub(crate) const EXAMPLE: &str = r#"
# The demo agreement between company.com and vendor.example.
id = "company-vendor-analytics"
version = 3
valid_from = 2026-01-01T00:00:00Z
valid_until = 2028-01-01T00:00:00Z
max_chain_depth = 5
max_token_ttl = "15m"
clock_skew = "30s"

[[domains]]
trust_domain = "company.com"
gateway_id = "spiffe://company.com/gateway"
gateway_url = "https://127.0.0.1:9443"
bundle_endpoint = "https://127.0.0.1:9443/bundle"
disclosure = { principal = "pseudonymous", chain = "digest" }

[[domains]]
trust_domain = "vendor.example"
gateway_id = "spiffe://vendor.example/gateway"
gateway_url = "https://127.0.0.1:9444"
bundle_endpoint = "https://127.0.0.1:9444/bundle"
disclosure = { principal = "none", chain = "digest" }

[[flows]]
from = "spiffe://company.com/agent/planning/*"
to = "spiffe://vendor.example/agent/analytics/*"
max_scope = ["analytics:*", "pii:customers:read"]
requires_approval = ["pii:*"]
approval_max_age = "1h"

[[flows.routes]]
method = "POST"
path = "/analytics/*"
scope = "analytics:*"

[[flows.routes]]
method = "GET"
path = "/customers/*"
scope = "pii:customers:read"

[[flows]]
from = "spiffe://vendor.example/agent/analytics/*"
to = "spiffe://company.com/agent/report/*"
max_scope = ["analytics:report-back"]

[[flows.routes]]
method = "POST"
path = "/reports/*"
scope = "analytics:report-back"
"#;

const T: i64 = 1_800_000_000; // 2027-01-15, inside the window

fn example() -> Agreement {
    Agreement::parse(EXAMPLE).unwrap_or_else(|e| panic!("{e:?}"))
}

fn issues(text: &str) -> Vec<LintIssue> {
    Agreement::parse(text).expect_err("should not lint clean")
}

fn has(issues: &[LintIssue], path: &str, needle: &str) -> bool {
    issues
        .iter()
        .any(|i| i.path == path && i.message.contains(needle))
}

#[test]
fn example_lints_clean() {
    let a = example();
    assert_eq!(a.id, "company-vendor-analytics");
    assert_eq!(a.flows.len(), 2);
    assert_eq!(a.max_token_ttl, 900);
    assert!(a.in_window(T));
    assert!(a.agr().starts_with("company-vendor-analytics@sha256:"));
    assert_eq!(
        a.partner_of(&TrustDomain::parse("company.com").unwrap())
            .unwrap()
            .trust_domain
            .as_str(),
        "vendor.example"
    );
}

#[test]
fn lint_finds_each_mistake_at_its_path() {
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "spiffe://company.com/agent/planning/*",
            "spiffe://company.com/agent/plan ning/*",
            "flows[0].from",
            "bad pattern",
        ),
        (
            "to = \"spiffe://vendor.example/agent/analytics/*\"",
            "to = \"spiffe://company.com/agent/analytics/*\"",
            "flows[0]",
            "does not cross",
        ),
        (
            "max_scope = [\"analytics:*\", \"pii:customers:read\"]",
            "max_scope = [\"analytics:*\", \"pii customers\"]",
            "flows[0].max_scope[1]",
            "character",
        ),
        (
            "valid_until = 2028-01-01T00:00:00Z",
            "valid_until = 2025-01-01T00:00:00Z",
            "valid_until",
            "inverted",
        ),
        (
            "max_token_ttl = \"15m\"",
            "max_token_ttl = \"25h\"",
            "max_token_ttl",
            "24h",
        ),
        (
            "max_chain_depth = 5",
            "max_chain_depth = 0",
            "max_chain_depth",
            "1..=16",
        ),
        (
            "max_chain_depth = 5",
            "max_chain_depth = 17",
            "max_chain_depth",
            "1..=16",
        ),
        (
            "scope = \"analytics:report-back\"",
            "scope = \"reports:write\"",
            "flows[1].routes[0].scope",
            "outside the flow's max_scope",
        ),
        (
            "disclosure = { principal = \"none\"",
            "disclosure = { principal = \"everything\"",
            "domains[1].disclosure.principal",
            "clear",
        ),
        (
            "gateway_url = \"https://127.0.0.1:9444\"",
            "gateway_url = \"http://127.0.0.1:9444\"",
            "domains[1].gateway_url",
            "https",
        ),
        (
            "approval_max_age = \"1h\"\n",
            "\n",
            "flows[0].approval_max_age",
            "required",
        ),
        (
            "path = \"/reports/*\"",
            "path = \"reports/../x\"",
            "flows[1].routes[0].path",
            "start with /",
        ),
    ];
    for (from, to, path, needle) in cases {
        assert!(EXAMPLE.contains(from), "fixture lacks {from}");
        let text = EXAMPLE.replacen(from, to, 1);
        let got = issues(&text);
        assert!(has(&got, path, needle), "{path} / {needle} not in {got:?}");
    }
    // Duplicate flows.
    let dup = format!("{EXAMPLE}\n[[flows]]\nfrom = \"spiffe://company.com/agent/planning/*\"\nto = \"spiffe://vendor.example/agent/analytics/*\"\nmax_scope = [\"analytics:*\"]\n");
    assert!(has(&issues(&dup), "flows[2]", "duplicate of flows[0]"));
    // Unknown keys are errors.
    let unknown = EXAMPLE.replacen("version = 3", "version = 3\nsurprise = true", 1);
    assert!(issues(&unknown)[0].message.contains("surprise"));
    // Three domains.
    let three = EXAMPLE.replacen("[[flows]]", "[[domains]]\ntrust_domain = \"third.test\"\ngateway_id = \"spiffe://third.test/gateway\"\ngateway_url = \"https://h\"\nbundle_endpoint = \"https://h/bundle\"\ndisclosure = { principal = \"none\", chain = \"digest\" }\n\n[[flows]]", 1);
    assert!(has(&issues(&three), "domains", "exactly two"));
    // Every problem at once, not just the first.
    let many = EXAMPLE
        .replacen("max_chain_depth = 5", "max_chain_depth = 99", 1)
        .replacen("max_token_ttl = \"15m\"", "max_token_ttl = \"2d\"", 1);
    assert!(issues(&many).len() >= 2);
    assert!(!issues("not toml [").is_empty());
}

#[test]
fn hash_ignores_form_and_sees_content() {
    let a = example();
    // Comments, blank lines and key order do not change it.
    let reordered = EXAMPLE
        .replacen(
            "# The demo agreement between company.com and vendor.example.\n",
            "# another comment\n\n",
            1,
        )
        .replacen(
            "id = \"company-vendor-analytics\"\nversion = 3",
            "version = 3\nid = \"company-vendor-analytics\"",
            1,
        )
        .replacen(
            "disclosure = { principal = \"none\", chain = \"digest\" }",
            "disclosure = { chain = \"digest\", principal = \"none\" }",
            1,
        );
    assert_ne!(reordered, EXAMPLE);
    assert_eq!(Agreement::parse(&reordered).unwrap().hash, a.hash);
    // Any change of content does.
    let changed = EXAMPLE.replacen("version = 3", "version = 4", 1);
    assert_ne!(Agreement::parse(&changed).unwrap().hash, a.hash);
    // The hash covers the document as written: no defaults filled in.
    let no_skew = EXAMPLE.replacen("clock_skew = \"30s\"\n", "", 1);
    let b = Agreement::parse(&no_skew).unwrap();
    assert_eq!(b.clock_skew, 30);
    assert_ne!(b.hash, a.hash);
    assert!(a
        .canonical
        .starts_with("{\"clock_skew\":\"30s\",\"domains\":["));
    assert!(a
        .canonical
        .contains("\"valid_from\":\"2026-01-01T00:00:00Z\""));
    assert_eq!(AgreementHash::parse(a.hash.as_str()), Some(a.hash.clone()));
    assert_eq!(AgreementHash::parse("sha256:XYZ"), None);
}

/// SPEC section 5: offset date-times hash as their UTC instant. Vectors: each row is a
/// spelling of `valid_from` and the string the canonical JSON must hold.
#[test]
fn date_times_are_normalized_to_utc_before_hashing() {
    let a = example();
    let vectors = [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        ("2026-01-01 00:00:00+00:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z"),
        ("2025-12-31T19:00:00-05:00", "2026-01-01T00:00:00Z"),
        ("2026-01-01t00:00:00z", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:00Z"),
        ("2026-01-01T00:00Z", "2026-01-01T00:00:00Z"),
    ];
    for (written, canonical) in vectors {
        let text = EXAMPLE.replacen(
            "valid_from = 2026-01-01T00:00:00Z",
            &format!("valid_from = {written}"),
            1,
        );
        let b = Agreement::parse(&text).unwrap_or_else(|e| panic!("{written}: {e:?}"));
        assert_eq!(b.hash, a.hash, "{written}");
        assert!(b
            .canonical
            .contains(&format!("\"valid_from\":\"{canonical}\"")));
        assert_eq!(b.valid_from, a.valid_from);
    }
    // Fractional seconds stay when non-zero, without trailing zeros; a different instant is a
    // different hash.
    for (written, canonical) in [
        ("2026-01-01T00:00:00.500Z", "2026-01-01T00:00:00.5Z"),
        ("2026-01-01T02:00:00.120+02:00", "2026-01-01T00:00:00.12Z"),
        (
            "2026-01-01T00:00:00.000000001Z",
            "2026-01-01T00:00:00.000000001Z",
        ),
    ] {
        let text = EXAMPLE.replacen(
            "valid_from = 2026-01-01T00:00:00Z",
            &format!("valid_from = {written}"),
            1,
        );
        let b = Agreement::parse(&text).unwrap_or_else(|e| panic!("{written}: {e:?}"));
        assert!(
            b.canonical
                .contains(&format!("\"valid_from\":\"{canonical}\"")),
            "{written}: {}",
            b.canonical
        );
        assert_ne!(b.hash, a.hash);
    }
    // An instant that leaves the representable years in UTC is a lint error, not a panic.
    let text = EXAMPLE.replacen(
        "valid_until = 2028-01-01T00:00:00Z",
        "valid_until = 9999-12-31T23:30:00-01:00",
        1,
    );
    assert!(has(&issues(&text), "valid_until", "years"));
    // Local date-times, dates and times are lint errors at their key path.
    for local in ["2026-01-01T00:00:00", "2026-01-01", "00:00:00"] {
        let text = EXAMPLE.replacen(
            "valid_from = 2026-01-01T00:00:00Z",
            &format!("valid_from = {local}"),
            1,
        );
        let i = issues(&text);
        assert!(has(&i, "valid_from", "offset"), "{local}: {i:?}");
        assert!(hash_text(&text).is_err());
    }
    // Elsewhere in the document too (a date-time in an unknown place is refused by the schema,
    // but the hash alone names the path).
    let text = format!("{EXAMPLE}\n[extra]\nwhen = 2026-01-01T00:00:00\n");
    assert!(hash_text(&text).unwrap_err().starts_with("extra.when:"));
}

#[test]
fn signatures_bind_both_domains() {
    let a = example();
    let co = crate::devkit::DevDomain::new("company.com", T).unwrap();
    let ve = crate::devkit::DevDomain::new("vendor.example", T).unwrap();
    let sig = sign_agreement(&a.hash, &co.gateway_key).unwrap();
    verify_signature(&sig, &a.hash, &co.bundle).unwrap();
    // The other domain's bundle does not know the key.
    assert!(matches!(
        verify_signature(&sig, &a.hash, &ve.bundle),
        Err(SignatureError::UnknownKey(_, _))
    ));
    // A changed agreement breaks it.
    let other = Agreement::parse(&EXAMPLE.replacen("version = 3", "version = 4", 1)).unwrap();
    assert!(matches!(
        verify_signature(&sig, &other.hash, &co.bundle),
        Err(SignatureError::HashMismatch(_, _))
    ));
    // Another typ is refused.
    let wrong = crate::jose::sign_compact(
        &co.gateway_key,
        "JWT",
        true,
        None,
        &serde_json::json!({"agr": a.hash.as_str()}),
    )
    .unwrap();
    assert_eq!(
        verify_signature(&wrong, &a.hash, &co.bundle),
        Err(SignatureError::WrongTyp)
    );
    assert!(matches!(
        verify_signature("garbage", &a.hash, &co.bundle),
        Err(SignatureError::Malformed(_))
    ));
    assert_eq!(
        signature_file_name(&a.id, "company.com"),
        "company-vendor-analytics.company.com.sig"
    );
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn set(s: &[&str]) -> ScopeSet {
    ScopeSet::parse_list(s).unwrap()
}

fn idp_link(scope: &[&str], iat: i64) -> LinkSummary {
    LinkSummary {
        iss: "spiffe://company.com/idp".into(),
        sub: "spiffe://company.com/agent/planning/p1".into(),
        signer: SignerKind::Idp,
        scope: set(scope),
        iat,
        exp: iat + 7200,
        jti: "j".into(),
    }
}

/// Every reason code `decide` can give, and the allow path, from one table.
#[test]
fn decide_covers_every_reason() {
    let a = example();
    let co = TrustDomain::parse("company.com").unwrap();
    let ve = TrustDomain::parse("vendor.example").unwrap();
    let planning = id("spiffe://company.com/agent/planning/p1");
    let inventory = id("spiffe://company.com/agent/inventory/i1");
    let analytics = id("spiffe://vendor.example/agent/analytics/a1");
    let other = id("spiffe://elsewhere.test/agent/analytics/a1");
    let report = id("spiffe://company.com/agent/report/r1");
    let fresh = vec![idp_link(
        &["analytics:*", "pii:customers:read", "cloud:read"],
        T - 60,
    )];
    let stale = vec![idp_link(&["analytics:*", "pii:customers:read"], T - 7200)];
    let wildcard = vec![idp_link(&["analytics:*", "pii:*"], T - 60)];
    // An approval time chosen so that `now - iat` overflows must not pass (or panic).
    let overflow = vec![idp_link(
        &["analytics:*", "pii:customers:read"],
        i64::MIN + 1,
    )];

    struct Case<'a> {
        name: &'a str,
        dir: Direction,
        local: &'a TrustDomain,
        actor: &'a SpiffeId,
        target: &'a SpiffeId,
        req: &'a [&'a str],
        held: &'a [&'a str],
        depth: usize,
        links: &'a [LinkSummary],
        now: i64,
        want: Option<Reason>,
        granted: &'a [&'a str],
    }
    let cases = [
        Case {
            name: "allow, bounded by the agreement",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["analytics:*", "cloud:read"],
            held: &["analytics:*", "cloud:read"],
            depth: 2,
            links: &fresh,
            now: T,
            want: None,
            granted: &["analytics:*"],
        },
        Case {
            name: "allow PII with fresh approval",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["pii:customers:read"],
            held: &["pii:customers:read"],
            depth: 2,
            links: &fresh,
            now: T,
            want: None,
            granted: &["pii:customers:read"],
        },
        Case {
            name: "no_agreement",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &other,
            req: &["analytics:run"],
            held: &["analytics:*"],
            depth: 2,
            links: &fresh,
            now: T,
            want: Some(Reason::NoAgreement),
            granted: &[],
        },
        Case {
            name: "agreement_expired",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["analytics:run"],
            held: &["analytics:*"],
            depth: 2,
            links: &fresh,
            now: a.valid_until,
            want: Some(Reason::AgreementExpired),
            granted: &[],
        },
        Case {
            name: "rule_denied (no flow for inventory)",
            dir: Direction::Outbound,
            local: &co,
            actor: &inventory,
            target: &analytics,
            req: &["analytics:run"],
            held: &["analytics:*"],
            depth: 2,
            links: &fresh,
            now: T,
            want: Some(Reason::RuleDenied),
            granted: &[],
        },
        Case {
            name: "rule_denied (local to local)",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &report,
            req: &["analytics:run"],
            held: &["analytics:*"],
            depth: 2,
            links: &fresh,
            now: T,
            want: Some(Reason::RuleDenied),
            granted: &[],
        },
        Case {
            name: "too_deep",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["analytics:run"],
            held: &["analytics:*"],
            depth: 5,
            links: &fresh,
            now: T,
            want: Some(Reason::TooDeep),
            granted: &[],
        },
        Case {
            name: "scope_escalation",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["analytics:*"],
            held: &["analytics:run"],
            depth: 2,
            links: &fresh,
            now: T,
            want: Some(Reason::ScopeEscalation),
            granted: &[],
        },
        Case {
            name: "scope_exceeds_agreement",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["billing:read"],
            held: &["billing:read"],
            depth: 2,
            links: &fresh,
            now: T,
            want: Some(Reason::ScopeExceedsAgreement),
            granted: &[],
        },
        Case {
            name: "approval_required (stale)",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["pii:customers:read"],
            held: &["pii:customers:read"],
            depth: 2,
            links: &stale,
            now: T,
            want: Some(Reason::ApprovalRequired),
            granted: &[],
        },
        Case {
            name: "approval_required (approval age overflows)",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["pii:customers:read"],
            held: &["pii:customers:read"],
            depth: 2,
            links: &overflow,
            now: T,
            want: Some(Reason::ApprovalRequired),
            granted: &[],
        },
        Case {
            name: "approval_required (wildcard grant)",
            dir: Direction::Outbound,
            local: &co,
            actor: &planning,
            target: &analytics,
            req: &["pii:customers:read"],
            held: &["pii:*"],
            depth: 2,
            links: &wildcard,
            now: T,
            want: Some(Reason::ApprovalRequired),
            granted: &[],
        },
        Case {
            name: "inbound allow",
            dir: Direction::Inbound,
            local: &ve,
            actor: &planning,
            target: &analytics,
            req: &["analytics:*"],
            held: &["analytics:*"],
            depth: 2,
            links: &[],
            now: T,
            want: None,
            granted: &["analytics:*"],
        },
        Case {
            name: "inbound scope_exceeds_agreement",
            dir: Direction::Inbound,
            local: &ve,
            actor: &planning,
            target: &analytics,
            req: &["analytics:*", "billing:read"],
            held: &["analytics:*", "billing:read"],
            depth: 2,
            links: &[],
            now: T,
            want: Some(Reason::ScopeExceedsAgreement),
            granted: &[],
        },
        Case {
            name: "inbound rule_denied (wrong direction)",
            dir: Direction::Inbound,
            local: &ve,
            actor: &analytics,
            target: &planning,
            req: &["analytics:*"],
            held: &["analytics:*"],
            depth: 2,
            links: &[],
            now: T,
            want: Some(Reason::RuleDenied),
            granted: &[],
        },
        Case {
            name: "inbound too_deep",
            dir: Direction::Inbound,
            local: &ve,
            actor: &planning,
            target: &analytics,
            req: &["analytics:*"],
            held: &["analytics:*"],
            depth: 5,
            links: &[],
            now: T,
            want: Some(Reason::TooDeep),
            granted: &[],
        },
        Case {
            name: "reverse crossing allowed",
            dir: Direction::Outbound,
            local: &ve,
            actor: &analytics,
            target: &report,
            req: &["analytics:report-back"],
            held: &["analytics:*"],
            depth: 3,
            links: &[],
            now: T,
            want: None,
            granted: &["analytics:report-back"],
        },
    ];
    let mut reasons = std::collections::BTreeSet::new();
    for c in &cases {
        let req = set(c.req);
        let held = set(c.held);
        let r = CrossingRequest {
            direction: c.dir,
            local: c.local,
            actor: c.actor,
            target: c.target,
            requested: &req,
            held: &held,
            depth: c.depth,
            expires: T + 3600,
            links: c.links,
            now: c.now,
        };
        let d = decide_among([&a], &r);
        assert_eq!(d.reason, c.want, "{}: {}", c.name, d.message);
        assert_eq!(d.allow, c.want.is_none(), "{}", c.name);
        if d.allow {
            assert_eq!(d.granted, set(c.granted), "{}", c.name);
            assert_eq!(
                d.token_exp,
                T + 900,
                "{}: ttl capped by max_token_ttl",
                c.name
            );
            assert_eq!(d.agr.as_deref(), Some(a.agr().as_str()));
        }
        if let Some(r) = c.want {
            reasons.insert(r);
        }
        let rec = DecisionRecord::new(&r, &d, 1);
        assert_eq!(rec.result, if d.allow { "allow" } else { "deny" });
        assert_eq!(rec.input_digest.len(), 43);
    }
    for r in [
        Reason::NoAgreement,
        Reason::AgreementExpired,
        Reason::RuleDenied,
        Reason::TooDeep,
        Reason::ScopeEscalation,
        Reason::ScopeExceedsAgreement,
        Reason::ApprovalRequired,
    ] {
        assert!(reasons.contains(&r), "{r} not covered");
    }
    // The token never outlives the chain.
    let req = set(&["analytics:run"]);
    let held = set(&["analytics:*"]);
    let r = CrossingRequest {
        direction: Direction::Outbound,
        local: &co,
        actor: &planning,
        target: &analytics,
        requested: &req,
        held: &held,
        depth: 2,
        expires: T + 60,
        links: &fresh,
        now: T,
    };
    assert_eq!(decide_among([&a], &r).token_exp, T + 60);
    // Disclosure is the sending domain's.
    let d = decide_among([&a], &r);
    assert_eq!(
        d.disclosure.unwrap().principal,
        PrincipalDisclosure::Pseudonymous
    );
}

#[test]
fn routes_match_method_path_and_scope() {
    let a = example();
    let f = &a.flows[0];
    let g = set(&["analytics:*"]);
    assert!(f.route_for("POST", "/analytics/run", &g).is_some());
    assert!(f.route_for("GET", "/analytics/run", &g).is_none());
    assert!(f.route_for("POST", "/other", &g).is_none());
    // The route's scope must overlap what the token grants.
    assert!(f.route_for("GET", "/customers/1", &g).is_none());
    assert!(f
        .route_for("GET", "/customers/1", &set(&["pii:customers:read"]))
        .is_some());
    // A narrower grant still matches; the crossing link carries the intersection.
    assert!(f
        .route_for("POST", "/analytics/run", &set(&["analytics:run"]))
        .is_some());
    assert!(f
        .route_for("POST", "/analytics/run", &set(&["pii:customers:read"]))
        .is_none());
}

/// Response rules (issue 23): every mistake at its key path, the good form parsed.
#[test]
fn response_rules_lint_at_their_paths() {
    let with = |rules: &str| {
        EXAMPLE.replace(
            "path = \"/analytics/*\"\nscope = \"analytics:*\"\n",
            &format!("path = \"/analytics/*\"\nscope = \"analytics:*\"\n[flows.routes.response]\n{rules}\n"),
        )
    };
    let good = Agreement::parse(&with(
        "content_types = [\"application/json\"]\nmax_bytes = 1024\nallow_headers = [\"X-Request-Id\"]\nschema = { type = \"object\" }",
    ))
    .unwrap_or_else(|e| panic!("{e:?}"));
    let r = &good.flows[0].routes[0].response;
    assert_eq!(r.content_types, ["application/json"]);
    assert_eq!(r.max_bytes, Some(1024));
    assert_eq!(r.allow_headers, ["x-request-id"]);
    assert!(r.schema.is_some() && !r.stream);
    let p = "flows[0].routes[0].response";
    for (rules, path, needle) in [
        (
            "content_types = [\"Application/JSON\"]",
            format!("{p}.content_types[0]"),
            "lower-case",
        ),
        (
            "content_types = [\"application/json; charset=utf-8\"]",
            format!("{p}.content_types[0]"),
            "without parameters",
        ),
        ("max_bytes = -1", format!("{p}.max_bytes"), "must be"),
        ("max_bytes = 67108865", format!("{p}.max_bytes"), "must be"),
        (
            "allow_headers = [\"Set-Cookie\"]",
            format!("{p}.allow_headers[0]"),
            "never crosses",
        ),
        (
            "allow_headers = [\"proxy-connection\"]",
            format!("{p}.allow_headers[0]"),
            "never crosses",
        ),
        (
            "allow_headers = [\"content-length\"]",
            format!("{p}.allow_headers[0]"),
            "never crosses",
        ),
        (
            "allow_headers = [\"alt-svc\"]",
            format!("{p}.allow_headers[0]"),
            "never crosses",
        ),
        (
            "allow_headers = [\"x-forwarded-host\"]",
            format!("{p}.allow_headers[0]"),
            "never crosses",
        ),
        (
            "allow_headers = [\"fedgate-receipt\"]",
            format!("{p}.allow_headers[0]"),
            "never crosses",
        ),
        (
            "allow_headers = [\"x_internal\"]",
            format!("{p}.allow_headers[0]"),
            "never crosses",
        ),
        (
            "allow_headers = [\"bad header\"]",
            format!("{p}.allow_headers[0]"),
            "not a header name",
        ),
        (
            "schema = { type = 5 }",
            format!("{p}.schema"),
            "not a valid JSON Schema",
        ),
        (
            "schema = { \"$ref\" = \"https://example.com/s.json\" }",
            format!("{p}.schema"),
            "not a valid JSON Schema",
        ),
        (
            "stream = true\nschema = { type = \"object\" }",
            format!("{p}.stream"),
            "cannot be checked",
        ),
    ] {
        let i = issues(&with(rules));
        assert!(has(&i, &path, needle), "{rules}: {i:?}");
    }
}

#[test]
fn protocol_routes_lint_and_diff() {
    let with = |route: &str| format!("{EXAMPLE}\n[[flows.routes]]\n{route}\n");
    // Clean: an MCP route per tool sharing a path, an A2A card route with skills.
    let ok = EXAMPLE.replace(
        "max_scope = [\"analytics:*\", \"pii:customers:read\"]",
        "max_scope = [\"analytics:*\", \"pii:customers:read\", \"mcp:tools/*\", \"a2a:*\"]",
    );
    let ok = ok.replace(
        "[[flows]]\nfrom = \"spiffe://vendor.example",
        "[[flows.routes]]\nmethod = \"*\"\npath = \"/mcp\"\nscope = \"mcp:tools/a\"\nprotocol = \"mcp\"\n\n[[flows.routes]]\nmethod = \"*\"\npath = \"/mcp\"\nscope = \"mcp:tools/b\"\nprotocol = \"mcp\"\n\n[[flows.routes]]\nmethod = \"GET\"\npath = \"/.well-known/agent-card.json\"\nscope = \"a2a:card\"\nprotocol = \"a2a\"\nskills = [\"analyze\"]\n\n[[flows]]\nfrom = \"spiffe://vendor.example",
    );
    let a = Agreement::parse(&ok).unwrap_or_else(|e| panic!("{e:?}"));
    let r = &a.flows[0].routes;
    assert_eq!(r[2].protocol, crate::server::protocol::Protocol::Mcp);
    assert_eq!(r[4].skills, vec!["analyze".to_string()]);
    assert_eq!(r[0].protocol, crate::server::protocol::Protocol::Http);
    // Plain-HTTP route matching never opens an MCP or A2A route.
    let mcp = ScopeSet::parse_list(&["mcp:tools/a"]).unwrap();
    assert!(a.flows[0].route_for("POST", "/mcp", &mcp).is_none());
    assert_eq!(
        a.flows[0].rpc_route_protocol("POST", "/mcp"),
        Some(crate::server::protocol::Protocol::Mcp)
    );
    // Lint: an unknown protocol, a scope without its protocol's prefix, skills off A2A.
    let i = issues(&with(
        "method = \"POST\"\npath = \"/reports/x\"\nscope = \"analytics:report-back\"\nprotocol = \"grpc\"",
    ));
    assert!(has(&i, "flows[1].routes[1].protocol", "must be"), "{i:?}");
    let i = issues(&with(
        "method = \"POST\"\npath = \"/reports/x\"\nscope = \"analytics:report-back\"\nprotocol = \"mcp\"",
    ));
    assert!(has(&i, "flows[1].routes[1].scope", "mcp:"), "{i:?}");
    let i = issues(&with(
        "method = \"POST\"\npath = \"/reports/x\"\nscope = \"analytics:report-back\"\nskills = [\"x\"]",
    ));
    assert!(has(&i, "flows[1].routes[1].skills", "a2a"), "{i:?}");
    // Diff: routes of one path told apart by scope; a narrowed skill list is a tightening.
    let narrower = ok.replace("scope = \"mcp:tools/b\"\n", "scope = \"mcp:tools/c\"\n");
    let b = Agreement::parse(&narrower).unwrap();
    let d = crate::agreement::diff::diff(&a, &b);
    let lines: Vec<String> = d.iter().map(|c| c.to_string()).collect();
    assert!(lines.iter().any(|l| l.contains("removed")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("added")), "{lines:?}");
    let skills = ok.replace("skills = [\"analyze\"]", "skills = []");
    let c = Agreement::parse(&skills).unwrap();
    let lines: Vec<String> = crate::agreement::diff::diff(&a, &c)
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("skills analyze → any")),
        "{lines:?}"
    );
}
