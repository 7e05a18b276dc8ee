//! Two replicas of vendor.example's gateway behind one address (a TCP balancer), sharing state
//! on a real PostgreSQL started by the test: replay protection and revocations hold across
//! replicas, a replica killed with SIGKILL under load loses no acknowledged crossing, and the
//! gateways fail closed while PostgreSQL is down and recover by themselves.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::pg::{clone_domain, free_low_port, Balancer, Pg};
use common::*;
use fedgate::federation::{mint_token, Actor, FederationClaims};
use http::Method;

const ANALYTICS: &str = "spiffe://vendor.example/agent/analytics/a1";

struct Replica {
    dir: PathBuf,
    federation: SocketAddr,
    admin: SocketAddr,
    internal: SocketAddr,
}

fn addr(p: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], p))
}

/// Points `dir`'s config at PostgreSQL as replica `name`, on fixed low ports.
fn make_replica(dir: &Path, name: &str, url: &str) -> Replica {
    let r = Replica {
        dir: dir.to_path_buf(),
        internal: addr(free_low_port()),
        federation: addr(free_low_port()),
        admin: addr(free_low_port()),
    };
    let text = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    let mut t: toml::Table = toml::from_str(&text).unwrap();
    let mut listen = toml::Table::new();
    listen.insert("internal".into(), r.internal.to_string().into());
    listen.insert("federation".into(), r.federation.to_string().into());
    listen.insert("admin".into(), r.admin.to_string().into());
    t.insert("listen".into(), listen.into());
    let mut state = toml::Table::new();
    state.insert("backend".into(), "postgres".into());
    state.insert("url".into(), url.into());
    state.insert("replica".into(), name.into());
    state.insert("statement_timeout".into(), "1s".into());
    t.insert("state".into(), state.into());
    std::fs::write(dir.join("gateway.toml"), toml::to_string(&t).unwrap()).unwrap();
    r
}

/// company.com (sled, in-process) and two vendor.example replica directories on PostgreSQL;
/// the balancer listens on the vendor address the agreement names.
async fn prepare(pg: &Pg) -> (Federation, [Replica; 2], Balancer) {
    let (mut f, co_l, ve_l) = Federation::prepare().await;
    let r2dir = f.tmp.path().join("vendor.example-r2");
    clone_domain(&f.ve.dir, &r2dir);
    let r1 = make_replica(&f.ve.dir, "r1", &pg.url());
    let r2 = make_replica(&r2dir, "r2", &pg.url());
    let lb = Balancer::start(ve_l.federation, vec![r1.federation, r2.federation]).await;
    f.co_gw = Some(start_gateway(&f.co, co_l).await);
    (f, [r1, r2], lb)
}

async fn start_replica(r: &Replica) -> fedgate::server::Running {
    let cfg = fedgate::server::config::load(&r.dir.join("gateway.toml"))
        .unwrap_or_else(|p| panic!("{p:?}"));
    let l = fedgate::server::Listeners::bind(r.internal, r.federation, r.admin).unwrap();
    fedgate::server::start(cfg, Some(l))
        .await
        .unwrap_or_else(|p| panic!("{p:?}"))
}

fn claims(f: &Federation) -> FederationClaims {
    let now = fedgate::time::now();
    FederationClaims {
        iss: "spiffe://company.com/gateway".into(),
        aud: "spiffe://vendor.example/gateway".into(),
        sub: Some("anon:xyz".into()),
        act: Actor {
            sub: "spiffe://company.com/agent/planning/p1".into(),
            act: None,
        },
        tgt: ANALYTICS.into(),
        scope: "analytics:*".into(),
        txn: "task-replicas".into(),
        agr: f.co_gw().gateway.trust.get().agreements[0].agr(),
        chn: "digest".into(),
        dep: 2,
        cnf: None,
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: fedgate::crypto::random_id(),
    }
}

fn token(f: &Federation) -> (String, String) {
    let k = fedgate::files::read_signing_key(&f.co.dir.join("keys/gateway.key")).unwrap();
    let c = claims(f);
    (mint_token(&k, &c).unwrap(), c.jti)
}

/// Presents `token` as company.com's gateway straight to one replica.
async fn present_at(f: &Federation, at: SocketAddr, token: &str) -> Reply {
    let c = gateway_client(&f.co, &f.ve);
    let auth = format!("Bearer {token}");
    call(
        &c,
        Method::POST,
        &format!("https://{at}/ingress/analytics/run"),
        &[("Authorization", auth.as_str())],
        "{}",
    )
    .await
    .unwrap()
}

fn inbound_of(r: &fedgate::server::Running, jti: &str) -> Vec<fedgate::audit::Record> {
    records(r)
        .into_iter()
        .filter(|x| x.kind == "decision" && x.direction == "inbound" && x.crossing == jti)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_and_revocation_hold_across_replicas() {
    let pg = Pg::start();
    let (f, reps, _lb) = prepare(&pg).await;
    let r = [start_replica(&reps[0]).await, start_replica(&reps[1]).await];
    // A token used at replica 1 is replayed at replica 2.
    let (t, _) = token(&f);
    let a = present_at(&f, reps[0].federation, &t).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let b = present_at(&f, reps[1].federation, &t).await;
    assert_eq!(b.reason(), "replayed");
    // 50 concurrent presentations of one token over both replicas: exactly one allowed.
    let (t, jti) = token(&f);
    let mut hs = Vec::new();
    for i in 0..50 {
        let t = t.clone();
        let at = reps[i % 2].federation;
        let c = gateway_client(&f.co, &f.ve);
        hs.push(tokio::spawn(async move {
            let auth = format!("Bearer {t}");
            call(
                &c,
                Method::POST,
                &format!("https://{at}/ingress/analytics/run"),
                &[("Authorization", auth.as_str())],
                "{}",
            )
            .await
            .unwrap()
        }));
    }
    let mut ok = 0;
    let mut replayed = 0;
    for h in hs {
        let r = h.await.unwrap();
        match (r.status.as_u16(), r.reason().as_str()) {
            (200, _) => ok += 1,
            (_, "replayed") => replayed += 1,
            (s, why) => panic!("unexpected {s} {why}"),
        }
    }
    assert_eq!((ok, replayed), (1, 49));
    let audited = inbound_of(&r[0], &jti).len() + inbound_of(&r[1], &jti).len();
    assert_eq!(
        audited, 50,
        "every presentation is a record of one replica's log"
    );
    let allows = inbound_of(&r[0], &jti)
        .iter()
        .chain(inbound_of(&r[1], &jti).iter())
        .filter(|x| x.is_allow())
        .count();
    assert_eq!(allows, 1);

    // A revocation at replica 1 is enforced by replica 2 within a second.
    let admin = admin_client(&f.ve);
    let t0 = Instant::now();
    let resp = call(
        &admin,
        Method::POST,
        &format!("https://{}/v1/revoke", reps[0].admin),
        &[("Content-Type", "application/json")],
        serde_json::json!({"kind": "agent", "value": ANALYTICS}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let after_call = t0.elapsed();
    let mut seen_at = None;
    while t0.elapsed() < Duration::from_secs(3) {
        if fedgate::chain::Revocations::is_revoked(
            r[1].gateway.state.revocations(),
            VE,
            fedgate::chain::RevocationKind::Agent,
            ANALYTICS,
            fedgate::time::now(),
        ) {
            seen_at = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen_at = seen_at.expect("replica 2 never saw the revocation");
    eprintln!("revocation at replica 1 seen by replica 2 after {seen_at:?} (admin call took {after_call:?})");
    assert!(seen_at < Duration::from_secs(1), "{seen_at:?}");
    let (t, _) = token(&f);
    assert_eq!(
        present_at(&f, reps[1].federation, &t).await.reason(),
        "revoked"
    );
    // The notice to company.com is delivered once, by one of the replicas.
    let co = f.co_gw();
    let deadline = Instant::now() + Duration::from_secs(5);
    let count = || {
        records(co)
            .iter()
            .filter(|x| x.kind == "revocation" && x.direction == "inbound" && x.decision == "allow")
            .count()
    };
    while count() < 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(), 1, "one notice, delivered once");
    assert_eq!(pg.sql("SELECT count(*) FROM fedgate_notices"), "0");
    for x in r {
        x.shutdown().await;
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_fails_closed_and_recovers_without_a_restart() {
    let pg = Pg::start();
    let (f, reps, _lb) = prepare(&pg).await;
    let r = start_replica(&reps[0]).await;
    let (t, _) = token(&f);
    assert_eq!(present_at(&f, reps[0].federation, &t).await.status, 200);
    let upstream_before = f.ve_up.seen.lock().unwrap().len();
    let log_before = r.gateway.log.size();
    pg.stop();
    let mut denied = 0;
    for _ in 0..10 {
        let (t, _) = token(&f);
        let rep = present_at(&f, reps[0].federation, &t).await;
        assert_eq!(rep.status, 503, "{}", String::from_utf8_lossy(&rep.body));
        assert_eq!(rep.reason(), "state_unavailable");
        denied += 1;
    }
    assert_eq!(
        f.ve_up.seen.lock().unwrap().len(),
        upstream_before,
        "nothing forwarded"
    );
    let recs = records(&r);
    let audited = recs[log_before as usize..]
        .iter()
        .filter(|x| x.reason.as_deref() == Some("state_unavailable"))
        .count();
    assert_eq!(audited, denied, "every denial in the outage is audited");
    // Not ready while the store is away.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let admin = admin_client(&f.ve);
    let ready = call(
        &admin,
        Method::GET,
        &format!("https://{}/readyz", reps[0].admin),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(ready.status, 503);
    // Back: crossings succeed again, no restart.
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = false;
    while Instant::now() < deadline {
        let (t, _) = token(&f);
        if present_at(&f, reps[0].federation, &t).await.status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "the gateway did not recover by itself");
    let ready = call(
        &admin,
        Method::GET,
        &format!("https://{}/readyz", reps[0].admin),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(ready.status, 200);
    r.shutdown().await;
    f.stop().await;
}

fn fedgate_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fedgate")
}

fn spawn_replica(r: &Replica) -> std::process::Child {
    let log = std::fs::File::create(r.dir.join("serve.log")).unwrap();
    std::process::Command::new(fedgate_bin())
        .args(["serve", "--config"])
        .arg(r.dir.join("gateway.toml"))
        .env("FEDGATE_LOG", "warn")
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn wait_listening(a: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(a).await.is_err() {
        assert!(Instant::now() < deadline, "{a} never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn terminate(c: &mut std::process::Child) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(fedgate_bin())
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_under_load_loses_no_acknowledged_crossing() {
    let pg = Pg::start();
    let (mut f, reps, _lb) = prepare(&pg).await;
    let mut p1 = spawn_replica(&reps[0]);
    let mut p2 = spawn_replica(&reps[1]);
    wait_listening(reps[0].federation).await;
    wait_listening(reps[1].federation).await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-load",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let after_kill = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..6 {
        let c = agent_client(&f.co, "planning/p1", &f.co);
        let (stop, acked, chain) = (stop.clone(), acked.clone(), chain.clone());
        let (after_kill, killed) = (after_kill.clone(), killed.clone());
        let url = format!("https://{}/egress/analytics/run", f.co.internal);
        workers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = call(
                    &c,
                    Method::POST,
                    &url,
                    &[
                        ("Delegation-Chain", chain.as_str()),
                        ("Fedgate-Target", ANALYTICS),
                        ("Fedgate-Scope", "analytics:run"),
                    ],
                    "{}",
                )
                .await;
                let Ok(r) = r else { continue };
                if r.status != 200 {
                    continue;
                }
                let Some(receipt) = r.headers.get("fedgate-receipt") else {
                    continue;
                };
                let p = fedgate::jose::parse_compact(receipt.to_str().unwrap())
                    .unwrap()
                    .payload;
                let rc: fedgate::federation::receipt::ReceiptClaims =
                    serde_json::from_slice(&p).unwrap();
                acked.lock().unwrap().push(rc.crossing);
                if killed.load(std::sync::atomic::Ordering::Relaxed) {
                    after_kill.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p1.kill().unwrap(); // SIGKILL
    let _ = p1.wait();
    killed.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let survived = after_kill.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{} crossings acknowledged, {survived} after the kill",
        acked.len()
    );
    assert!(survived > 0, "the surviving replica kept serving");
    // Replica 1 comes back (recovering its log), then both stop cleanly.
    let mut p1 = spawn_replica(&reps[0]);
    wait_listening(reps[0].federation).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    terminate(&mut p1);
    terminate(&mut p2);
    if let Some(r) = f.co_gw.take() {
        r.shutdown().await;
    }
    let out = f.tmp.path().join("exports");
    std::fs::create_dir_all(&out).unwrap();
    let mut files = Vec::new();
    for (d, name) in [
        (f.co.dir.clone(), "co"),
        (reps[0].dir.clone(), "r1"),
        (reps[1].dir.clone(), "r2"),
    ] {
        let file = out.join(format!("{name}.jsonl"));
        let o = cli(&[
            "audit",
            "export",
            "--data-dir",
            d.join("data").to_str().unwrap(),
            "--out",
            file.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        files.push(file);
    }
    // Every acknowledged crossing is an allowed inbound record in one replica's log.
    let mut allowed = std::collections::HashSet::new();
    for file in &files[1..] {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let r: fedgate::audit::Record = serde_json::from_str(line).unwrap();
            if r.kind == "decision" && r.direction == "inbound" && r.is_allow() {
                allowed.insert(r.crossing);
            }
        }
    }
    let missing: Vec<&String> = acked.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged crossings missing: {missing:?}",
        missing.len()
    );
    // And the two domains reconcile clean, company's log against both replicas' logs.
    let o = cli(&[
        "audit",
        "reconcile",
        "--bundles",
        f.co.bundles().to_str().unwrap(),
        files[0].to_str().unwrap(),
        files[1].to_str().unwrap(),
        files[2].to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let bad: Vec<&serde_json::Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| {
            !["matched", "pending", "refused", "failed", "unanswered"]
                .contains(&x["kind"].as_str().unwrap())
        })
        .collect();
    assert!(o.status.success() && bad.is_empty(), "{bad:#?}");
    assert!(report["summary"]["matched"].as_u64().unwrap() as usize >= acked.len());
    drop(pg);
}

/// What PostgreSQL may not do: grant trust (a bundle row it holds but did not get from one of
/// the domain's gateways is ignored), let two gateways write one audit log origin, or lose a
/// revocation committed out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_grants_no_trust_and_a_replica_name_is_held_once() {
    let pg = Pg::start();
    let (f, reps, _lb) = prepare(&pg).await;
    let r1 = start_replica(&reps[0]).await;

    // A second gateway configured with r1's name is refused while r1 runs.
    let dup_dir = f.tmp.path().join("vendor.example-dup");
    clone_domain(&f.ve.dir, &dup_dir);
    let dup = make_replica(&dup_dir, "r1", &pg.url());
    let cfg = fedgate::server::config::load(&dup.dir.join("gateway.toml")).unwrap();
    let l = fedgate::server::Listeners::bind(dup.internal, dup.federation, dup.admin).unwrap();
    let t0 = Instant::now();
    let err = match fedgate::server::start(cfg, Some(l)).await {
        Ok(_) => panic!("a second gateway started as replica r1"),
        Err(p) => p.join("; "),
    };
    assert!(err.contains("in use"), "{err}");
    eprintln!("duplicate replica name refused after {:?}", t0.elapsed());

    // Someone with write access to the database swaps company.com's bundle for keys of their
    // own (here vendor.example's, under a higher sequence). Replica 2 starts anyway and keeps
    // trusting the bundle file: the forged row carries no valid integrity tag.
    let forged = {
        let text = std::fs::read_to_string(f.ve.bundles().join("vendor.example.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["spiffe_sequence"] = serde_json::json!(999_999);
        v.to_string().replace('\'', "''")
    };
    pg.sql(&format!(
        "INSERT INTO fedgate_bundles (domain, trust_domain, sequence, document) \
         VALUES ('vendor.example', 'company.com', 999999, convert_to('{forged}', 'UTF8')) \
         ON CONFLICT (domain, trust_domain) DO UPDATE \
         SET sequence = EXCLUDED.sequence, document = EXCLUDED.document, mac = NULL"
    ));
    let r2 = start_replica(&reps[1]).await;
    let co = fedgate::spiffe::TrustDomain::parse(CO).unwrap();
    let seq = r2.gateway.trust.get().bundles.get(&co).unwrap().sequence;
    assert_ne!(seq, Some(999_999), "the forged bundle was loaded");
    let (t, _) = token(&f);
    let a = present_at(&f, reps[1].federation, &t).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));

    // 40 revocations at once over both replicas: each replica mirrors every one of them
    // within a second, however their transactions interleaved.
    let admin = admin_client(&f.ve);
    let mut hs = Vec::new();
    for i in 0..40 {
        let admin = admin.clone();
        let at = reps[i % 2].admin;
        hs.push(tokio::spawn(async move {
            call(
                &admin,
                Method::POST,
                &format!("https://{at}/v1/revoke"),
                &[("Content-Type", "application/json")],
                serde_json::json!({"kind": "agent", "value": format!("spiffe://vendor.example/agent/x/{i}")})
                    .to_string(),
            )
            .await
            .unwrap()
        }));
    }
    for h in hs {
        let r = h.await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let t0 = Instant::now();
    let missing = |r: &fedgate::server::Running| {
        (0..40)
            .filter(|i| {
                !fedgate::chain::Revocations::is_revoked(
                    r.gateway.state.revocations(),
                    VE,
                    fedgate::chain::RevocationKind::Agent,
                    &format!("spiffe://vendor.example/agent/x/{i}"),
                    fedgate::time::now(),
                )
            })
            .count()
    };
    while (missing(&r1) > 0 || missing(&r2) > 0) && t0.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t0.elapsed();
    assert_eq!((missing(&r1), missing(&r2)), (0, 0));
    assert!(took < Duration::from_secs(1), "{took:?}");

    // A clean stop hands the name back: a new r1 starts at once.
    r1.shutdown().await;
    let t0 = Instant::now();
    let again = start_replica(&reps[0]).await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    again.shutdown().await;
    r2.shutdown().await;
    f.stop().await;
}

/// A database of schema 1 (rows without integrity tags) is upgraded by the first gateway of
/// the domain that starts: its own rows are adopted (tagged), so the upgrade loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrading_schema_1_adopts_the_domains_rows() {
    let pg = Pg::start();
    let (f, reps, _lb) = prepare(&pg).await;
    pg.sql(&format!(
        "CREATE TABLE fedgate_schema (version integer NOT NULL); INSERT INTO fedgate_schema VALUES (1); {}",
        fedgate::store::postgres::MIGRATIONS[0]
    ));
    // A partner bundle refreshed under schema 1: company.com's, at a higher sequence.
    let saved = {
        let text = std::fs::read_to_string(f.ve.bundles().join("company.com.json")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["spiffe_sequence"] = serde_json::json!(7);
        v.to_string().replace('\'', "''")
    };
    pg.sql(&format!(
        "INSERT INTO fedgate_bundles (domain, trust_domain, sequence, document) \
         VALUES ('vendor.example', 'company.com', 7, convert_to('{saved}', 'UTF8'))"
    ));
    let r1 = start_replica(&reps[0]).await;
    assert_eq!(pg.sql("SELECT version FROM fedgate_schema"), "3");
    let co = fedgate::spiffe::TrustDomain::parse(CO).unwrap();
    assert_eq!(
        r1.gateway.trust.get().bundles.get(&co).unwrap().sequence,
        Some(7),
        "the schema-1 row was adopted"
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM fedgate_bundles WHERE mac IS NULL"),
        "0"
    );
    let (t, _) = token(&f);
    let a = present_at(&f, reps[0].federation, &t).await;
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    r1.shutdown().await;
    f.stop().await;
}

#[test]
fn an_unknown_or_unreachable_backend_exits_2_before_binding() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    let o = cli(&[
        "init",
        "--trust-domain",
        "vendor.example",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = dir.join("gateway.toml");
    let port = free_low_port();
    let fed = free_low_port();
    let write = |state: &[(&str, &str)]| {
        let text = std::fs::read_to_string(&cfg).unwrap();
        let mut t: toml::Table = toml::from_str(&text).unwrap();
        if let Some(toml::Value::Table(l)) = t.get_mut("listen") {
            l.insert("federation".into(), format!("127.0.0.1:{fed}").into());
        }
        let mut st = toml::Table::new();
        for (k, v) in state {
            st.insert(k.to_string(), v.to_string().into());
        }
        t.insert("state".into(), st.into());
        std::fs::write(&cfg, toml::to_string(&t).unwrap()).unwrap();
    };
    write(&[("backend", "mysql")]);
    let o = cli(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("mysql") && err.contains("backend"), "{err}");
    let url = format!("postgres://fedgate:secret-pw@127.0.0.1:{port}/fedgate");
    write(&[
        ("backend", "postgres"),
        ("url", &url),
        ("replica", "r1"),
        ("statement_timeout", "1s"),
    ]);
    let o = cli(&["serve", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("postgres"), "{err}");
    assert!(
        !err.contains("secret-pw"),
        "the password never appears: {err}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", fed)).is_err(),
        "nothing was bound"
    );
    // A database off this host without TLS is refused before connecting.
    write(&[
        ("backend", "postgres"),
        ("url", "postgres://fedgate@db.example.net/fedgate"),
        ("replica", "r1"),
    ]);
    let o = cli(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("TLS"));
    // Without a replica name (every replica needs its own log).
    write(&[("backend", "postgres"), ("url", &url)]);
    let o = cli(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("state.replica"));
}

/// The witness's latest cosigned checkpoint of company.com's log lives in the shared store:
/// both vendor replicas answer an old size of 0 with the same size, and a checkpoint that
/// rewrites what either cosigned is refused as a fork by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_one_witness_state() {
    use fedgate::audit::merkle::{leaf_hash, MerkleTree};
    use fedgate::witness::AddCheckpoint;
    let pg = Pg::start();
    let (f, reps, _lb) = prepare(&pg).await;
    let r = [start_replica(&reps[0]).await, start_replica(&reps[1]).await];
    let gw = &f.co_gw().gateway;
    for i in 0..4 {
        let rec = fedgate::server::base_record(gw, "outbound", &format!("w{i}"), true);
        fedgate::server::append(gw, rec).await.unwrap();
    }
    // Cosigned through the balancer by one replica or the other.
    let t = Instant::now();
    let held = loop {
        let note = gw.log.checkpoint_now().unwrap();
        let with = fedgate::server::lifecycle::cosigned_note(&gw.cfg.data_dir, &note);
        if with.contains("\u{2014} vendor.example/fedgate-witness ") {
            break fedgate::audit::checkpoint::peek(&with).unwrap();
        }
        assert!(t.elapsed() < Duration::from_secs(15), "not cosigned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let c = gateway_client(&f.co, &f.ve);
    let latest = gw.log.latest_checkpoint().unwrap().1;
    let key = fedgate::files::read_signing_key(&f.co.dir.join("keys/audit.key")).unwrap();
    let mut forked = MerkleTree::new();
    for i in 0..held.size {
        forked.push(if i == 0 {
            leaf_hash(b"x")
        } else {
            gw.log.leaf(i).unwrap()
        });
    }
    let fork = fedgate::audit::Checkpoint {
        origin: held.origin.clone(),
        size: held.size,
        root: forked.root(held.size).unwrap(),
    }
    .sign(&key)
    .unwrap();
    for rep in &reps {
        let url = format!("https://{}/v1/witness/add-checkpoint", rep.federation);
        let body = AddCheckpoint {
            old: 0,
            proof: vec![],
            checkpoint: latest.clone(),
        }
        .encode();
        let a = call(&c, Method::POST, &url, &[], body).await.unwrap();
        assert_eq!(a.status, 409);
        let size: u64 = String::from_utf8_lossy(&a.body).trim().parse().unwrap();
        assert!(size >= held.size, "{size}");
        let body = AddCheckpoint {
            old: held.size,
            proof: vec![],
            checkpoint: fork.clone(),
        }
        .encode();
        let a = call(&c, Method::POST, &url, &[], body).await.unwrap();
        // A fork (409) if this replica's view is still `held`, else a conflict on the size.
        assert_eq!(a.status, 409, "{}", String::from_utf8_lossy(&a.body));
    }
    let forks: u64 = r
        .iter()
        .map(|x| {
            x.gateway
                .metrics
                .get("fedgate_witness_forks_total", &[("partner", CO)])
        })
        .sum();
    let cosigned_now = pg.sql(
        "SELECT count(*) FROM fedgate_witness WHERE domain = 'vendor.example' AND origin = 'company.com/fedgate-audit'",
    );
    assert_eq!(cosigned_now, "1");
    // The company log did not grow meanwhile in this test (no traffic), so both saw `held`.
    assert_eq!(forks, 2);
    for x in r {
        x.shutdown().await;
    }
    f.stop().await;
}
