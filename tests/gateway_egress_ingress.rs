//! Two real gateways (company.com, vendor.example) with real TLS and sled: the seed story
//! crosses end to end, nothing internal leaks, and each denial gives its reason code.

mod common;

use common::*;
use http::Method;

const LEAKS: &[(&str, &str)] = &[
    ("Authorization", "Bearer internal-secret-1"),
    ("AUTHORIZATION", "Basic aW50ZXJuYWw6c2VjcmV0"),
    ("Proxy-Authorization", "Basic cHJveHk6c2VjcmV0"),
    ("Cookie", "session=internal-secret-2"),
    ("cookie", "sso=internal-secret-3"),
    ("X-Api-Key", "internal-secret-4"),
    ("x-api-key", "internal-secret-5"),
    ("Fedgate-Debug", "internal-secret-6"),
    ("Connection", "X-Internal-Hop"),
    ("X-Internal-Hop", "internal-secret-7"),
    ("X-Request-Id", "req-1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_story_crosses_end_to_end_and_nothing_internal_leaks() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &[
            "infrastructure:review",
            "cloud:read",
            "reports:write",
            "analytics:*",
        ],
        "task-12345",
    );
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let url = format!("https://{}/egress/analytics/run?quarter=q3", f.co.internal);
    let mut headers = vec![
        ("Delegation-Chain", chain.as_str()),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "analytics:* cloud:read reports:write"),
        ("Content-Type", "application/json"),
    ];
    headers.extend_from_slice(LEAKS);
    let r = call(
        &c,
        Method::POST,
        &url,
        &headers,
        r#"{"report":"quarterly infrastructure review"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/analytics/run");

    // The upstream saw exactly one credential: the crossing link.
    let seen = f.ve_up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.path, "/analytics/run");
    assert_eq!(
        s.body.as_ref(),
        br#"{"report":"quarterly infrastructure review"}"#
    );
    let all: String = s
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {}\n", v.to_str().unwrap_or("")))
        .collect();
    assert!(!all.contains("internal-secret"), "leaked: {all}");
    assert!(s.headers.get("authorization").is_none() && s.headers.get("cookie").is_none());
    assert!(s
        .headers
        .keys()
        .all(|k| !k.as_str().starts_with("fedgate-")));
    assert_eq!(s.headers.get("x-request-id").unwrap(), "req-1");
    let links = s
        .headers
        .get_all("delegation-chain")
        .iter()
        .collect::<Vec<_>>();
    assert_eq!(links.len(), 1);
    let link = links[0].to_str().unwrap();
    assert!(!link.contains('~'), "exactly one link");
    assert!(!link.contains(chain.split('~').next().unwrap()));
    // The crossing link verifies in vendor.example as a chain rooted at its gateway, bounded by
    // the chain (analytics:*), the agreement (analytics:*) and the route (analytics:*).
    let bundles = fedgate::files::load_bundle_dir(&f.ve.bundles()).unwrap();
    let policy = fedgate::chain::Policy {
        gateways: Some(vec![f.ve.gateway_id()]),
        ..Default::default()
    };
    let v = fedgate::chain::UnverifiedChain::parse(link)
        .unwrap()
        .verify(
            &bundles,
            &policy,
            &fedgate::chain::NoRevocations,
            fedgate::time::now(),
        )
        .unwrap();
    assert_eq!(
        v.holder.agent().unwrap().as_str(),
        "spiffe://vendor.example/agent/analytics/a1"
    );
    assert_eq!(v.scope.to_strings(), vec!["analytics:*"]);
    assert_eq!(v.depth, 3, "two company links + the crossing link");

    // Both gateways hold a decision record with the same crossing id; the egress outcome
    // carries the verified receipt.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let co_recs = records(f.co_gw());
    let ve_recs = records(f.ve_gw());
    let out = co_recs
        .iter()
        .find(|r| r.kind == "decision" && r.direction == "outbound" && r.is_allow())
        .unwrap();
    let inb = ve_recs
        .iter()
        .find(|r| r.kind == "decision" && r.direction == "inbound" && r.is_allow())
        .unwrap();
    assert_eq!(out.crossing, inb.crossing);
    assert_eq!(out.scope_granted, vec!["analytics:*"]);
    assert_eq!(inb.scope_granted, vec!["analytics:*"]);
    assert!(
        out.principal.as_deref().unwrap().starts_with("anon:"),
        "pseudonymous disclosure"
    );
    assert_eq!(out.principal, inb.principal);
    let outcome = co_recs
        .iter()
        .find(|r| r.kind == "outcome" && r.crossing == out.crossing)
        .unwrap();
    assert_eq!(outcome.status, Some(200));
    assert_eq!(outcome.receipt_valid, Some(true));
    let receipt = outcome.receipt.as_deref().unwrap();
    let vb = fedgate::files::load_bundle_dir(&f.co.bundles()).unwrap();
    let rc =
        fedgate::federation::receipt::verify_receipt(receipt, vb.get(&td(VE)).unwrap()).unwrap();
    assert_eq!(rc.seq, inb.seq);
    assert_eq!(
        rc.leaf,
        fedgate::crypto::b64url(&f.ve_gw().gateway.log.leaf(inb.seq).unwrap())
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_chains_are_refused() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "t-smuggle",
    );
    let link1 = chain.split('~').nth(1).unwrap().to_string();
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let base = [
        ("Delegation-Chain", chain.as_str()),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "analytics:*"),
    ];
    // In the body.
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/egress/analytics/run", f.co.internal),
        &base,
        format!("{{\"x\":\"{link1}\"}}"),
    )
    .await
    .unwrap();
    assert_eq!((r.status.as_u16(), r.reason().as_str()), (400, "malformed"));
    // In the query string, percent-encoded.
    let enc: String = link1
        .chars()
        .map(|c| format!("%{:02X}", c as u32))
        .collect();
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/egress/analytics/run?c={enc}", f.co.internal),
        &base,
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.reason(), "malformed");
    // In another header.
    let mut h = base.to_vec();
    h.push(("X-Forward-This", link1.as_str()));
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/egress/analytics/run", f.co.internal),
        &h,
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.reason(), "malformed");
    assert!(
        f.ve_up.seen.lock().unwrap().is_empty(),
        "nothing reached the partner"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_denials_carry_their_reason() {
    let f = Federation::start().await;
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let url = format!("https://{}/egress/analytics/run", f.co.internal);
    let target = "spiffe://vendor.example/agent/analytics/a1";
    let planning = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*", "pii:*"],
        "t-deny",
    );
    let inventory = issue_chain(
        &f.co,
        "alice@company.com",
        "inventory/i1",
        &["analytics:*"],
        "t-deny",
    );
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing chain",
            vec![("Fedgate-Target", target), ("Fedgate-Scope", "analytics:*")],
            400,
            "malformed",
        ),
        (
            "not the holder",
            vec![
                ("Delegation-Chain", &inventory),
                ("Fedgate-Target", target),
                ("Fedgate-Scope", "analytics:*"),
            ],
            401,
            "not_holder",
        ),
        (
            "scope escalation",
            vec![
                ("Delegation-Chain", &planning),
                ("Fedgate-Target", target),
                ("Fedgate-Scope", "billing:*"),
            ],
            403,
            "scope_escalation",
        ),
        (
            "no flow to this agent",
            vec![
                ("Delegation-Chain", &planning),
                ("Fedgate-Target", "spiffe://vendor.example/agent/worker/w1"),
                ("Fedgate-Scope", "analytics:run"),
            ],
            403,
            "rule_denied",
        ),
        (
            "unknown domain",
            vec![
                ("Delegation-Chain", &planning),
                ("Fedgate-Target", "spiffe://elsewhere.test/agent/x/y"),
                ("Fedgate-Scope", "analytics:run"),
            ],
            403,
            "unknown_domain",
        ),
        (
            "PII without approval",
            vec![
                ("Delegation-Chain", &planning),
                ("Fedgate-Target", target),
                ("Fedgate-Scope", "pii:customers:read"),
            ],
            403,
            "approval_required",
        ),
        (
            "bad target",
            vec![
                ("Delegation-Chain", &planning),
                ("Fedgate-Target", "not an id"),
                ("Fedgate-Scope", "analytics:run"),
            ],
            400,
            "malformed",
        ),
        (
            "garbage chain",
            vec![
                ("Delegation-Chain", "x.y.z"),
                ("Fedgate-Target", target),
                ("Fedgate-Scope", "analytics:run"),
            ],
            400,
            "malformed",
        ),
    ];
    for (name, h, status, reason) in cases {
        let r = call(&c, Method::POST, &url, &h, "").await.unwrap();
        assert_eq!(
            (r.status.as_u16(), r.reason().as_str()),
            (status, reason),
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !r.json()["crossing"].as_str().unwrap_or("").is_empty(),
            "{name}: crossing id"
        );
    }
    // Oversized body: 413.
    let big = vec![b'x'; 5 * 1024 * 1024];
    let h = [
        ("Delegation-Chain", planning.as_str()),
        ("Fedgate-Target", target),
        ("Fedgate-Scope", "analytics:*"),
    ];
    let r = call(&c, Method::POST, &url, &h, big).await.unwrap();
    assert_eq!((r.status.as_u16(), r.reason().as_str()), (413, "too_large"));
    assert!(f.ve_up.seen.lock().unwrap().is_empty());
    // Every denial was audited.
    let denials = records(f.co_gw())
        .iter()
        .filter(|r| r.decision == "deny")
        .count();
    assert_eq!(denials, 9);
    f.stop().await;
}
