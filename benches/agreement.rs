//! Agreement benches: `decide` natively, and the background's delegation rule in Rego on
//! regorus (policies/seed_delegation.rego) evaluated on the same crossing, side by side.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fedgate::agreement::rego::{crossing_input, LocalPolicy};
use fedgate::agreement::{decide_among, Agreement, CrossingRequest, Direction};
use fedgate::chain::{LinkSummary, SignerKind};
use fedgate::scope::ScopeSet;
use fedgate::spiffe::{SpiffeId, TrustDomain};

fn bench(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text =
        std::fs::read_to_string(root.join("federation-agreements/company-vendor-analytics.toml"))
            .unwrap();
    let a = Agreement::parse(&text).unwrap();
    let now = 1_800_000_000;
    let local = TrustDomain::parse("company.com").unwrap();
    let actor = SpiffeId::parse("spiffe://company.com/agent/planning/p1").unwrap();
    let target = SpiffeId::parse("spiffe://vendor.example/agent/analytics/a1").unwrap();
    let requested = ScopeSet::parse_list(&["analytics:*", "cloud:read"]).unwrap();
    let held = ScopeSet::parse_list(&["analytics:*", "cloud:read", "reports:write"]).unwrap();
    let links = vec![LinkSummary {
        iss: "spiffe://company.com/idp".into(),
        sub: actor.to_string(),
        signer: SignerKind::Idp,
        scope: held.clone(),
        iat: now - 60,
        exp: now + 3600,
        jti: "j".into(),
    }];
    let req = CrossingRequest {
        direction: Direction::Outbound,
        local: &local,
        actor: &actor,
        target: &target,
        requested: &requested,
        held: &held,
        depth: 2,
        expires: now + 3600,
        links: &links,
        now,
    };
    assert!(decide_among([&a], &req).allow);
    let mut g = c.benchmark_group("decide");
    g.bench_function("native", |b| {
        b.iter(|| black_box(decide_among([&a], black_box(&req))))
    });
    let policy = LocalPolicy::compile(&[(
        "seed_delegation.rego".into(),
        std::fs::read_to_string(root.join("policies/seed_delegation.rego")).unwrap(),
    )])
    .unwrap();
    let input = crossing_input(
        "outbound",
        actor.as_str(),
        target.as_str(),
        &requested.to_strings(),
        &requested.to_strings(),
        &held.to_strings(),
        &a.agr(),
        Some("alice@company.com"),
        "task-1",
        2,
        &[actor.as_str()],
        now + 3600,
        now,
    );
    assert!(policy.deny_messages(&input).unwrap().is_empty());
    g.bench_function("rego_seed_rule", |b| {
        b.iter(|| black_box(policy.deny_messages(black_box(&input)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
