//! Chain benches: verification of depth 1/3/5 (cold: nothing cached) side by side with its
//! *signature floor* — the same signature verifications and SVID path checks done directly with
//! the same crypto backend — and minting one link.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use fedgate::chain::{self, NoRevocations, Policy, UnverifiedChain};
use fedgate::devkit::{DevAgent, DevDomain};
use fedgate::scope::ScopeSet;
use rustls_pki_types::{CertificateDer, UnixTime};

struct Fixture {
    bundles: fedgate::spiffe::BundleSet,
    chains: Vec<(usize, String)>,
    now: i64,
    planning: DevAgent,
}

fn fixture() -> Fixture {
    let now = fedgate::time::now();
    let co = DevDomain::new("company.com", now - 60).unwrap();
    let a: Vec<DevAgent> = (0..4)
        .map(|i| co.agent("worker", &format!("w{i}"), now - 60).unwrap())
        .collect();
    let planning = co.agent("planning", "p1", now - 60).unwrap();
    let s = ScopeSet::parse_list(&["cloud:read", "reports:write"]).unwrap();
    let c2 = chain::issue(
        &co.idp_key,
        &co.idp_id,
        "alice@company.com",
        &planning.id,
        &s,
        "task-1",
        now,
        3600,
    )
    .unwrap();
    let l0 = c2.split('~').next().unwrap().to_string();
    let c3 = chain::extend(
        &c2,
        &planning.key,
        &planning.certs,
        &planning.id,
        &a[0].id,
        &s,
        now,
        3600,
    )
    .unwrap();
    let c4 = chain::extend(
        &c3,
        &a[0].key,
        &a[0].certs,
        &a[0].id,
        &a[1].id,
        &s,
        now,
        3600,
    )
    .unwrap();
    let c5 = chain::extend(
        &c4,
        &a[1].key,
        &a[1].certs,
        &a[1].id,
        &a[2].id,
        &s,
        now,
        3600,
    )
    .unwrap();
    Fixture {
        bundles: DevDomain::bundle_set(&[&co]),
        chains: vec![(1, l0), (3, c3), (5, c5)],
        now,
        planning,
    }
}

/// The irreducible work of verifying `chain`: each link's signature with the key its header
/// names, and each x5c leaf's path validation, with nothing else.
fn signature_floor(bundles: &fedgate::spiffe::BundleSet, chain: &str, now: i64) {
    let bundle = bundles.iter().next().unwrap();
    for link in chain.split('~') {
        let c = fedgate::jose::parse_compact(link).unwrap();
        match (&c.header.kid, &c.header.x5c) {
            (Some(kid), _) => {
                c.verify_with(&bundle.authority(kid).unwrap().key).unwrap();
            }
            (None, Some(x5c)) => {
                let der = fedgate::crypto::b64std_decode(&x5c[0]).unwrap();
                let cert = CertificateDer::from(der.as_slice());
                let ee = webpki::EndEntityCert::try_from(&cert).unwrap();
                let t = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now as u64));
                ee.verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    bundle.trust_anchors(),
                    &[],
                    t,
                    webpki::KeyUsage::client_auth(),
                    None,
                    None,
                )
                .unwrap();
                let key = fedgate::spiffe::svid::leaf_verifying_key(&der).unwrap();
                c.verify_with(&key).unwrap();
            }
            _ => unreachable!(),
        }
    }
}

fn bench_verify(c: &mut Criterion) {
    fedgate::crypto::install_provider();
    let f = fixture();
    let mut g = c.benchmark_group("chain_verify_cold");
    for (depth, raw) in &f.chains {
        g.bench_with_input(BenchmarkId::new("fedgate", depth), raw, |b, raw| {
            b.iter(|| {
                let v = UnverifiedChain::parse(black_box(raw))
                    .unwrap()
                    .verify(&f.bundles, &Policy::default(), &NoRevocations, f.now)
                    .unwrap();
                black_box(v);
            })
        });
        g.bench_with_input(BenchmarkId::new("signature_floor", depth), raw, |b, raw| {
            b.iter(|| signature_floor(&f.bundles, black_box(raw), f.now))
        });
    }
    g.finish();
}

fn bench_mint(c: &mut Criterion) {
    let f = fixture();
    let s = ScopeSet::parse_list(&["cloud:read"]).unwrap();
    let c3 = &f.chains[1].1;
    let two: String = c3.split('~').take(2).collect::<Vec<_>>().join("~");
    let to = fedgate::spiffe::SpiffeId::parse("spiffe://company.com/agent/x/y").unwrap();
    c.bench_function("chain_mint_link_x5c", |b| {
        b.iter(|| {
            chain::extend(
                black_box(&two),
                &f.planning.key,
                &f.planning.certs,
                &f.planning.id,
                &to,
                &s,
                f.now,
                60,
            )
            .unwrap()
        })
    });
}

criterion_group!(benches, bench_verify, bench_mint);
criterion_main!(benches);
