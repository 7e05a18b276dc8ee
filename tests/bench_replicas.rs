//! Throughput of vendor.example's ingress in the three deployments of issue 13, measured side
//! by side in one run: one replica on sled, one replica on PostgreSQL, two replicas on one
//! PostgreSQL. Not part of `cargo test` (ignored); run it with `bench/replicas.sh`, which
//! builds in release and prints the table for BENCHMARKS.md.
//!
//! Every deployment runs at once (idle ones cost a poll every 200 ms), and the rounds are
//! interleaved (sled, pg×1, pg×2, sled, …) so that the shared machine's drift hits all three
//! alike. The load is company.com's gateway as the tests see it: `CONCURRENCY` keep-alive mTLS
//! connections as company.com's gateway SVID, each presenting freshly minted federation tokens
//! to `/ingress/analytics/run` back to back (so every request is a full crossing: token and
//! agreement checks, the replay insert, the durable decision record, the crossing link, the
//! upstream call, the signed response and receipt). With two replicas the connections are
//! spread over both, as a TCP balancer would.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pg::{clone_domain, free_low_port, Pg};
use common::*;
use fedgate::federation::{mint_token, Actor, FederationClaims};
use http::Method;

/// In-flight requests: enough to keep a replica's group commit busy on two cores.
const CONCURRENCY: usize = 32;

fn seconds() -> u64 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

struct Node {
    federation: SocketAddr,
    _running: fedgate::server::Running,
}

/// Gives `dir` its own low ports and, for PostgreSQL, the `[state]` table.
fn configure(dir: &Path, pg: Option<(&str, &str)>) -> (SocketAddr, SocketAddr, SocketAddr) {
    let a = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let (i, f, ad) = (a(free_low_port()), a(free_low_port()), a(free_low_port()));
    let text = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    let mut t: toml::Table = toml::from_str(&text).unwrap();
    let mut listen = toml::Table::new();
    listen.insert("internal".into(), i.to_string().into());
    listen.insert("federation".into(), f.to_string().into());
    listen.insert("admin".into(), ad.to_string().into());
    t.insert("listen".into(), listen.into());
    if let Some((url, name)) = pg {
        let mut state = toml::Table::new();
        state.insert("backend".into(), "postgres".into());
        state.insert("url".into(), url.into());
        state.insert("replica".into(), name.into());
        t.insert("state".into(), state.into());
    }
    // The load is one source presenting tokens as fast as it can: no denial budget applies
    // (there are no denials), and the connection caps are far above CONCURRENCY.
    std::fs::write(dir.join("gateway.toml"), toml::to_string(&t).unwrap()).unwrap();
    (i, f, ad)
}

async fn start(dir: &Path, pg: Option<(&str, &str)>) -> Node {
    let (i, f, a) = configure(dir, pg);
    let cfg = fedgate::server::config::load(&dir.join("gateway.toml"))
        .unwrap_or_else(|p| panic!("{p:?}"));
    let l = fedgate::server::Listeners::bind(i, f, a).unwrap();
    let running = fedgate::server::start(cfg, Some(l))
        .await
        .unwrap_or_else(|p| panic!("{p:?}"));
    Node {
        federation: f,
        _running: running,
    }
}

fn claims(agr: &str) -> FederationClaims {
    let now = fedgate::time::now();
    FederationClaims {
        iss: "spiffe://company.com/gateway".into(),
        aud: "spiffe://vendor.example/gateway".into(),
        sub: Some("anon:bench".into()),
        act: Actor {
            sub: "spiffe://company.com/agent/planning/p1".into(),
            act: None,
        },
        tgt: "spiffe://vendor.example/agent/analytics/a1".into(),
        scope: "analytics:*".into(),
        txn: "task-bench".into(),
        agr: agr.into(),
        chn: "digest".into(),
        dep: 2,
        cnf: None,
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: fedgate::crypto::random_id(),
    }
}

/// Crossings per second through `targets` (connections spread round robin) for `secs`.
async fn drive(f: &Federation, agr: &str, targets: &[SocketAddr], secs: u64) -> (f64, u64) {
    let key =
        Arc::new(fedgate::files::read_signing_key(&f.co.dir.join("keys/gateway.key")).unwrap());
    let ok = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut hs = Vec::new();
    for n in 0..CONCURRENCY {
        let c = gateway_client(&f.co, &f.ve);
        let at = targets[n % targets.len()];
        let (key, ok, bad, stop, agr) = (
            key.clone(),
            ok.clone(),
            bad.clone(),
            stop.clone(),
            agr.to_string(),
        );
        hs.push(tokio::spawn(async move {
            let url = format!("https://{at}/ingress/analytics/run");
            while !stop.load(Ordering::Relaxed) {
                let t = mint_token(&key, &claims(&agr)).unwrap();
                let auth = format!("Bearer {t}");
                match call(
                    &c,
                    Method::POST,
                    &url,
                    &[("Authorization", auth.as_str())],
                    "{}",
                )
                .await
                {
                    Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Warm up the connections, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (o0, t0) = (ok.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (o1, el) = (ok.load(Ordering::Relaxed), t0.elapsed());
    stop.store(true, Ordering::Relaxed);
    for h in hs {
        let _ = h.await;
    }
    (
        (o1 - o0) as f64 / el.as_secs_f64(),
        bad.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run bench/replicas.sh"]
async fn crossings_per_second_sled_vs_postgres() {
    let pg = Pg::start();
    let (f, _co_l, _ve_l) = Federation::prepare().await;
    let agr = {
        let a = fedgate::files::load_agreements(
            &f.ve.dir.join("agreements"),
            &fedgate::files::load_bundle_dir(&f.ve.bundles()).unwrap(),
            None,
        )
        .unwrap();
        a[0].agr()
    };
    let root = f.tmp.path();
    for d in ["sled", "pg-r1", "pg-r2"] {
        clone_domain(&f.ve.dir, &root.join(d));
    }
    let url = pg.url();
    let sled = start(&root.join("sled"), None).await;
    let r1 = start(&root.join("pg-r1"), Some((&url, "r1"))).await;
    let r2 = start(&root.join("pg-r2"), Some((&url, "r2"))).await;
    let setups: [(&str, Vec<SocketAddr>); 3] = [
        ("1 replica, sled", vec![sled.federation]),
        ("1 replica, PostgreSQL", vec![r1.federation]),
        ("2 replicas, PostgreSQL", vec![r1.federation, r2.federation]),
    ];
    let secs = seconds();
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for round in 0..rounds() {
        for (i, (name, targets)) in setups.iter().enumerate() {
            let (rate, bad) = drive(&f, &agr, targets, secs).await;
            eprintln!("round {round}: {name}: {rate:.0} crossings/s ({bad} not 200)");
            assert_eq!(bad, 0, "{name}: every crossing must succeed");
            results[i].push(rate);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let base = median(&results[0]);
    println!(
        "| deployment | crossings/s (median of {} × {secs} s) | runs | vs sled |",
        rounds()
    );
    println!("|---|---:|---|---:|");
    for (i, (name, _)) in setups.iter().enumerate() {
        let m = median(&results[i]);
        let runs: Vec<String> = results[i].iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "| {name} | {m:.0} | {} | {:.2}× |",
            runs.join(", "),
            m / base
        );
    }
}
