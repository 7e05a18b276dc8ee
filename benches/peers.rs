//! Hot paths beside their references, in one run:
//! - chain verify depth 3 (cold) vs biscuit-auth verifying and authorizing a 3-block token with
//!   equivalent attenuation checks, for P-256 and Ed25519 on both sides;
//! - the verified-chain cache: warm vs cold;
//! - federation token mint and the receiving gateway's stateless checks;
//! - Merkle inclusion proof (generate and verify) in a 1 M-leaf tree;
//! - durable audit appends with group commit at 1, 16 and 64 concurrent writers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use biscuit_auth::builder::{Algorithm, BlockBuilder};
use biscuit_auth::builder_ext::AuthorizerExt;
use biscuit_auth::{Biscuit, KeyPair};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fedgate::chain::{self, NoRevocations, Policy, UnverifiedChain};
use fedgate::devkit::DevDomain;
use fedgate::jose::SigningKey;
use fedgate::scope::ScopeSet;
use fedgate::spiffe::pki::{ed25519_from_seed, Ca};
use fedgate::spiffe::{Bundle, BundleSet, SpiffeId, TrustDomain};

fn es256_depth3(now: i64) -> (BundleSet, String) {
    let co = DevDomain::new("company.com", now - 60).unwrap();
    let planning = co.agent("planning", "p1", now - 60).unwrap();
    let inventory = co.agent("inventory", "i1", now - 60).unwrap();
    let s = ScopeSet::parse_list(&["cloud:read", "reports:write"]).unwrap();
    let c = chain::issue(
        &co.idp_key,
        &co.idp_id,
        "alice@company.com",
        &planning.id,
        &s,
        "task",
        now,
        3600,
    )
    .unwrap();
    let c = chain::extend(
        &c,
        &planning.key,
        &planning.certs,
        &planning.id,
        &inventory.id,
        &ScopeSet::parse_list(&["cloud:read"]).unwrap(),
        now,
        3600,
    )
    .unwrap();
    (DevDomain::bundle_set(&[&co]), c)
}

/// The same chain with Ed25519 keys everywhere (IdP, CA, agent SVID).
fn eddsa_depth3(now: i64) -> (BundleSet, String) {
    let td = TrustDomain::parse("company.com").unwrap();
    let seed = |n: &str| fedgate::crypto::sha256(n.as_bytes());
    let ca = Ca::with_key(
        &td,
        ed25519_from_seed(&seed("ca")).unwrap().0,
        now - 60,
        now + 86_400,
        Some(1),
    )
    .unwrap();
    let (_, idp_der) = ed25519_from_seed(&seed("idp")).unwrap();
    let idp = SigningKey::from_pkcs8(&idp_der).unwrap();
    let planning = SpiffeId::parse("spiffe://company.com/agent/planning/p1").unwrap();
    let inventory = SpiffeId::parse("spiffe://company.com/agent/inventory/i1").unwrap();
    let (pk, pder) = ed25519_from_seed(&seed("planning")).unwrap();
    let svid = ca
        .issue_svid_with_key(&planning, pk, now - 60, now + 86_400, &[], &[], Some(2))
        .unwrap();
    let pkey = SigningKey::from_pkcs8(&pder).unwrap();
    let idp_id = SpiffeId::parse("spiffe://company.com/idp").unwrap();
    let s = ScopeSet::parse_list(&["cloud:read", "reports:write"]).unwrap();
    let c = chain::issue(
        &idp,
        &idp_id,
        "alice@company.com",
        &planning,
        &s,
        "task",
        now,
        3600,
    )
    .unwrap();
    let c = chain::extend(
        &c,
        &pkey,
        std::slice::from_ref(&svid.cert_der),
        &planning,
        &inventory,
        &ScopeSet::parse_list(&["cloud:read"]).unwrap(),
        now,
        3600,
    )
    .unwrap();
    let mut b = Bundle::new(td);
    b.add_x509_authority(ca.cert_der.clone()).unwrap();
    b.add_jwt_authority(
        idp.kid(),
        idp.public().clone(),
        fedgate::spiffe::KeyRole::Idp,
    )
    .unwrap();
    let mut set = BundleSet::new();
    set.insert(b);
    (set, c)
}

/// A 3-block biscuit with the same attenuation: the authority block grants the human's scope
/// with an expiry; each delegation block checks that what is used stays within its narrower
/// scope and expiry.
fn biscuit_depth3(alg: Algorithm, now: i64) -> (KeyPair, Vec<u8>) {
    let root = KeyPair::new_with_algorithm(alg);
    let exp = now + 3600;
    let token = Biscuit::builder()
        .fact("user(\"alice@company.com\")")
        .unwrap()
        .fact("right(\"cloud:read\")")
        .unwrap()
        .fact("right(\"reports:write\")")
        .unwrap()
        .check(format!("check if time($t), $t < {exp}").as_str())
        .unwrap()
        .build(&root)
        .unwrap();
    let b1 = BlockBuilder::new()
        .check("check if operation($op), [\"cloud:read\", \"reports:write\"].contains($op)")
        .unwrap()
        .check(format!("check if time($t), $t < {exp}").as_str())
        .unwrap();
    let token = token
        .append_with_keypair(&KeyPair::new_with_algorithm(alg), b1)
        .unwrap();
    let b2 = BlockBuilder::new()
        .check("check if operation($op), [\"cloud:read\"].contains($op)")
        .unwrap()
        .check(format!("check if time($t), $t < {}", exp - 1).as_str())
        .unwrap();
    let token = token
        .append_with_keypair(&KeyPair::new_with_algorithm(alg), b2)
        .unwrap();
    (root, token.to_vec().unwrap())
}

fn biscuit_verify(root: &KeyPair, bytes: &[u8], now: i64) {
    let t = Biscuit::from(bytes, root.public()).unwrap();
    let mut a = biscuit_auth::builder::AuthorizerBuilder::new()
        .fact("operation(\"cloud:read\")")
        .unwrap()
        .fact(format!("time({now})").as_str())
        .unwrap()
        .allow_all()
        .build(&t)
        .unwrap();
    a.authorize().unwrap();
}

fn bench_vs_biscuit(c: &mut Criterion) {
    fedgate::crypto::install_provider();
    let now = fedgate::time::now();
    let (b1, es) = es256_depth3(now);
    let (b2, ed) = eddsa_depth3(now);
    let (r1, bp) = biscuit_depth3(Algorithm::Secp256r1, now);
    let (r2, be) = biscuit_depth3(Algorithm::Ed25519, now);
    biscuit_verify(&r1, &bp, now);
    biscuit_verify(&r2, &be, now);
    let p = Policy::default();
    let mut g = c.benchmark_group("depth3_vs_biscuit");
    g.bench_function("fedgate_es256", |b| {
        b.iter(|| {
            UnverifiedChain::parse(black_box(&es))
                .unwrap()
                .verify(&b1, &p, &NoRevocations, now)
                .unwrap()
        })
    });
    g.bench_function("biscuit_secp256r1", |b| {
        b.iter(|| biscuit_verify(&r1, black_box(&bp), now))
    });
    g.bench_function("fedgate_eddsa", |b| {
        b.iter(|| {
            UnverifiedChain::parse(black_box(&ed))
                .unwrap()
                .verify(&b2, &p, &NoRevocations, now)
                .unwrap()
        })
    });
    g.bench_function("biscuit_ed25519", |b| {
        b.iter(|| biscuit_verify(&r2, black_box(&be), now))
    });
    g.finish();

    // Warm: what a repeated call with the same chain costs through the gateway's cache.
    let cache = fedgate::server::state::ChainCache::default();
    let v = Arc::new(
        UnverifiedChain::parse(&es)
            .unwrap()
            .verify(&b1, &p, &NoRevocations, now)
            .unwrap(),
    );
    cache.put(v, now);
    let mut g = c.benchmark_group("chain_cache_depth3");
    g.bench_function("cold_verify", |b| {
        b.iter(|| {
            UnverifiedChain::parse(black_box(&es))
                .unwrap()
                .verify(&b1, &p, &NoRevocations, now)
                .unwrap()
        })
    });
    g.bench_function("warm_lookup", |b| {
        b.iter(|| {
            cache
                .get(&chain::chain_digest(black_box(&es)), now)
                .unwrap()
        })
    });
    g.finish();
}

fn bench_token(c: &mut Criterion) {
    use fedgate::federation::{
        mint_token, verify_token, Actor, FederationClaims, PeerInfo, TokenContext,
    };
    let now = fedgate::time::now();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let co = DevDomain::new("company.com", now - 60).unwrap();
    let ve = DevDomain::new("vendor.example", now - 60).unwrap();
    let text =
        std::fs::read_to_string(root.join("federation-agreements/company-vendor-analytics.toml"))
            .unwrap();
    let a = Arc::new(fedgate::agreement::Agreement::parse(&text).unwrap());
    let claims = FederationClaims {
        iss: co.gateway_id.to_string(),
        aud: ve.gateway_id.to_string(),
        sub: Some("anon:x".into()),
        act: Actor {
            sub: "spiffe://company.com/agent/planning/p1".into(),
            act: None,
        },
        tgt: "spiffe://vendor.example/agent/analytics/a1".into(),
        scope: "analytics:*".into(),
        txn: "t".into(),
        agr: a.agr(),
        chn: "d".into(),
        dep: 2,
        cnf: None,
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: "j".into(),
    };
    let token = mint_token(&co.gateway_key, &claims).unwrap();
    let bundles = DevDomain::bundle_set(&[&co, &ve]);
    let peer = PeerInfo {
        id: co.gateway_id.clone(),
        cert_sha256: [0; 32],
    };
    let agreements = vec![a];
    let ctx = TokenContext {
        bundles: &bundles,
        local_td: &ve.td,
        local_gateway: &ve.gateway_id,
        agreements: &agreements,
        peer: &peer,
        now,
    };
    assert!(verify_token(&token, &ctx).is_ok());
    let mut g = c.benchmark_group("federation_token");
    g.bench_function("mint_es256", |b| {
        b.iter(|| mint_token(&co.gateway_key, black_box(&claims)).unwrap())
    });
    g.bench_function("verify_es256", |b| {
        b.iter(|| verify_token(black_box(&token), &ctx).unwrap())
    });
    g.finish();
}

fn bench_merkle(c: &mut Criterion) {
    let mut t = fedgate::audit::MerkleTree::new();
    for i in 0u32..1_000_000 {
        t.push(fedgate::audit::leaf_hash(&i.to_be_bytes()));
    }
    let n = t.len();
    let root = t.root(n).unwrap();
    let mut g = c.benchmark_group("merkle_1m");
    g.bench_function("inclusion_proof", |b| {
        b.iter(|| t.inclusion_proof(black_box(654_321), n).unwrap())
    });
    let p = t.inclusion_proof(654_321, n).unwrap();
    let leaf = t.leaf(654_321).unwrap();
    g.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            assert!(fedgate::audit::merkle::verify_inclusion(
                &leaf,
                654_321,
                n,
                black_box(&p),
                &root
            ))
        })
    });
    g.bench_function("root_of_999_999", |b| {
        b.iter(|| t.root(black_box(999_999)).unwrap())
    });
    g.finish();
}

fn bench_audit_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = SigningKey::generate_ed25519().unwrap();
    let (log, _) = fedgate::store::AuditLog::open(dir.path(), "company.com", key).unwrap();
    let mut g = c.benchmark_group("audit_append_durable");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for writers in [1usize, 16, 64] {
        let per = 2048 / writers.min(64) + 8;
        g.throughput(Throughput::Elements((writers * per) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(writers), &writers, |b, &w| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t0 = Instant::now();
                    rt.block_on(async {
                        let mut hs = Vec::new();
                        for k in 0..w {
                            let l = log.clone();
                            hs.push(tokio::spawn(async move {
                                for i in 0..per {
                                    let r = fedgate::audit::Record::decision(
                                        "company.com",
                                        "outbound",
                                        &format!("w{k}-{i}"),
                                        true,
                                    );
                                    l.append(r).await.unwrap();
                                }
                            }));
                        }
                        for h in hs {
                            h.await.unwrap();
                        }
                    });
                    total += t0.elapsed();
                }
                total
            })
        });
    }
    g.finish();
    log.shutdown();
}

criterion_group!(
    benches,
    bench_vs_biscuit,
    bench_token,
    bench_merkle,
    bench_audit_append
);
criterion_main!(benches);
