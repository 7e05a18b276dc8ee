//! Faults a boundary sees (issue 17), through real gateways: the audit log's disk fills up or
//! fails (a fault-injecting file layer under the log's writer), a read-only data directory at
//! start, a partner that is down, resets mid-answer, answers garbage or a server error, and 200
//! concurrent presentations of one token. Each asserts the status and reason the caller gets,
//! the audit record, and that nothing leaked or was forwarded unaudited.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fedgate::federation::{mint_token, Actor, FederationClaims};
use fedgate::store::io::{FaultIo, Faults};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ANALYTICS: &str = "spiffe://vendor.example/agent/analytics/a1";

async fn start_faulty(
    d: &Domain,
    l: fedgate::server::Listeners,
) -> (fedgate::server::Running, Arc<Faults>) {
    let cfg = fedgate::server::config::load(&d.config()).unwrap_or_else(|p| panic!("{p:?}"));
    let (io, faults) = FaultIo::new();
    let r = fedgate::server::start_with(
        cfg,
        Some(l),
        fedgate::server::StartOptions {
            log_io: Some(Arc::new(io)),
        },
    )
    .await
    .unwrap_or_else(|p| panic!("{p:?}"));
    (r, faults)
}

fn chain(f: &Federation) -> String {
    issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-faults",
    )
}

async fn egress(f: &Federation, chain: &str, path: &str) -> Reply {
    let c = agent_client(&f.co, "planning/p1", &f.co);
    call(
        &c,
        Method::POST,
        &format!("https://{}/egress{path}", f.co.internal),
        &[
            ("Delegation-Chain", chain),
            ("Fedgate-Target", ANALYTICS),
            ("Fedgate-Scope", "analytics:run"),
        ],
        "{}",
    )
    .await
    .unwrap()
}

fn seen(f: &Federation) -> usize {
    f.ve_up.seen.lock().unwrap().len()
}

async fn readyz(d: &Domain) -> u16 {
    call(
        &admin_client(d),
        Method::GET,
        &format!("https://{}/readyz", d.admin),
        &[],
        "",
    )
    .await
    .map(|r| r.status.as_u16())
    .unwrap_or(0)
}

/// Waits until a crossing goes through again (the log recovers by itself).
async fn until_200(f: &Federation, ch: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        if egress(f, ch, "/analytics/run").await.status == 200 {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the gateway never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn export_and_verify(d: &Domain, out: &std::path::Path) -> usize {
    let bin = env!("CARGO_BIN_EXE_fedgate");
    let o = std::process::Command::new(bin)
        .args(["audit", "export", "--data-dir"])
        .arg(d.dir.join("data"))
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = std::process::Command::new(bin)
        .args(["audit", "verify", "--bundles"])
        .arg(d.bundles())
        .arg(out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read_to_string(out).unwrap().lines().count()
}

/// A fault case: its name, the side it hits, how it starts and how it ends.
type FaultCase<'a> = (
    &'a str,
    &'a Arc<Faults>,
    Box<dyn Fn(&Faults)>,
    Box<dyn Fn(&Faults)>,
);

/// The disk under either gateway's audit log fills up (nothing left, or room for part of a
/// batch) or fails to sync: every crossing is refused `audit_unavailable`, nothing reaches the
/// vendor's upstream unaudited, `/readyz` says so, and when the disk cooperates again the
/// gateway resumes by itself. No acknowledged record is lost or corrupted: both logs export
/// and verify, reopen cleanly, and hold a record of every crossing the upstream saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_disk_full_and_io_errors_deny_then_resume() {
    let (mut f, co_l, ve_l) = Federation::prepare().await;
    let (co, co_faults) = start_faulty(&f.co, co_l).await;
    let (ve, ve_faults) = start_faulty(&f.ve, ve_l).await;
    f.co_gw = Some(co);
    f.ve_gw = Some(ve);
    let ch = chain(&f);
    assert_eq!(egress(&f, &ch, "/analytics/run").await.status, 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let faults: [FaultCase; 5] = [
        (
            "vendor disk full",
            &ve_faults,
            Box::new(|x| x.set_space(0)),
            Box::new(|x| x.unlimited()),
        ),
        (
            "vendor disk fills mid-batch",
            &ve_faults,
            Box::new(|x| x.set_space(40)),
            Box::new(|x| x.unlimited()),
        ),
        (
            "vendor sync fails",
            &ve_faults,
            Box::new(|x| x.fail_sync(true)),
            Box::new(|x| x.fail_sync(false)),
        ),
        (
            "company disk full",
            &co_faults,
            Box::new(|x| x.set_space(0)),
            Box::new(|x| x.unlimited()),
        ),
        (
            "company writes fail",
            &co_faults,
            Box::new(|x| x.fail_writes(true)),
            Box::new(|x| x.fail_writes(false)),
        ),
    ];
    for (what, fl, on, off) in faults.iter() {
        let before = seen(&f);
        on(fl);
        for i in 0..5 {
            let r = egress(&f, &ch, "/analytics/run").await;
            assert_eq!(
                r.status,
                503,
                "{what} #{i}: {}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(r.reason(), "audit_unavailable", "{what} #{i}");
        }
        assert_eq!(seen(&f), before, "{what}: nothing reached the upstream");
        let side = if what.starts_with("vendor") {
            &f.ve
        } else {
            &f.co
        };
        assert_eq!(readyz(side).await, 503, "{what}: /readyz");
        off(fl);
        let took = until_200(&f, &ch).await;
        eprintln!("{what}: crossings resumed {took:?} after the disk recovered");
        assert_eq!(readyz(side).await, 200, "{what}");
    }
    let crossings = seen(&f);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let co = f.co_gw.take().unwrap();
    let ve = f.ve_gw.take().unwrap();
    co.shutdown().await;
    ve.shutdown().await;
    // Both logs verify against their signed checkpoints. The vendor allowed exactly what
    // reached its upstream; the company allowed more (the vendor refused some) and holds an
    // answered outcome for exactly the crossings that went through.
    for d in [&f.co, &f.ve] {
        let out = f.tmp.path().join(format!("{}.jsonl", d.td));
        export_and_verify(d, &out);
        let recs: Vec<_> = std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .map(|l| fedgate::audit::Record::from_canonical(l.as_bytes()).unwrap())
            .collect();
        let n = if d.td == VE {
            recs.iter()
                .filter(|r| r.kind == "decision" && r.is_allow())
                .count()
        } else {
            recs.iter()
                .filter(|r| r.kind == "outcome" && r.status == Some(200))
                .count()
        };
        assert_eq!(n, crossings, "{}", d.td);
    }
    // And they reopen without anything to cut.
    let l = fedgate::server::Listeners::bind(f.ve.internal, f.ve.federation, f.ve.admin).unwrap();
    let again = start_gateway(&f.ve, l).await;
    again.shutdown().await;
}

/// A data directory the gateway cannot write: `fedgate serve` exits 2 naming the path, before
/// binding a port.
#[test]
fn a_read_only_data_dir_stops_the_start_with_its_path() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    let bin = env!("CARGO_BIN_EXE_fedgate");
    let o = std::process::Command::new(bin)
        .args(["init", "--trust-domain", "ro.example", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success());
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    use std::os::unix::fs::PermissionsExt;
    let mut cmd = if root {
        // Permissions do not bind root: run the gateway as an unprivileged user who owns the
        // directory but may not write its data dir.
        for p in [t.path().to_path_buf(), dir.clone()] {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let o = std::process::Command::new("chown")
            .args(["-R", "nobody"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(o.status.success());
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "nobody", "--", bin]);
        c
    } else {
        std::process::Command::new(bin)
    };
    std::fs::set_permissions(dir.join("data"), std::fs::Permissions::from_mode(0o555)).unwrap();
    let o = cmd
        .args(["serve", "--config"])
        .arg(dir.join("gateway.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&dir.join("data").display().to_string()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// How a stand-in at the partner's address misbehaves.
#[derive(Clone, Copy, Debug)]
enum Partner {
    /// Sends half a response head, then resets the connection.
    ResetMidAnswer,
    /// Answers bytes that are not HTTP.
    Garbage,
    /// An unsigned 500 from something holding the partner's certificate.
    Unsigned500,
}

/// A TLS server with the partner's SVID (HTTP/1.1 only) that misbehaves as told.
async fn stand_in(f: &Federation, how: Partner) -> tokio::task::JoinHandle<()> {
    let identity = fedgate::server::tls::Identity {
        chain: fedgate::files::read_pem_certs(&f.ve.dir.join("gateway.pem")).unwrap(),
        key: fedgate::files::read_private_key_der(&f.ve.dir.join("keys/gateway-svid.key")).unwrap(),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(fedgate::server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let mut l = None;
    for _ in 0..50 {
        match tokio::net::TcpListener::bind(f.ve.federation).await {
            Ok(x) => {
                l = Some(x);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let l = l.expect("the partner's address is free");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let sock = socket2::SockRef::from(&tcp);
                let _ = sock.set_linger(Some(Duration::ZERO));
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = match how {
                    Partner::ResetMidAnswer => {
                        tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-len").await
                    }
                    Partner::Garbage => tls.write_all(b"\x16\x03\x01 this is not http at all\r\n\r\n").await,
                    Partner::Unsigned500 => {
                        tls.write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 36\r\n\r\n{\"error\":\"db=postgres://secret@db\"}\n").await
                    }
                };
                let _ = tls.flush().await;
                if let Partner::Unsigned500 = how {
                    // A complete answer: the connection stays until the client is done.
                    let _ = tls.read(&mut buf).await;
                }
                // Dropping with SO_LINGER 0: a reset, not a clean close.
                drop(tls);
            });
        }
    })
}

/// The partner is down, resets mid-answer, answers garbage, or answers an unsigned 500: the
/// agent gets 502/504 `partner_unavailable` or 502 `bad_response_signature`, never a byte of
/// what the stand-in sent; every one has its outcome record. A real partner's upstream error
/// (500, signed, with a receipt) reaches the agent as the partner's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_faults_each_get_their_status_reason_and_outcome() {
    let mut f = Federation::start_with(|f| {
        set_limit(&f.co, "partner_timeout", "2s");
    })
    .await;
    let ch = chain(&f);
    assert_eq!(egress(&f, &ch, "/analytics/run").await.status, 200);
    f.ve_gw.take().unwrap().shutdown().await;
    let outcomes = |f: &Federation| {
        records(f.co_gw())
            .into_iter()
            .filter(|r| r.kind == "outcome")
            .collect::<Vec<_>>()
    };
    // Down: nothing listens.
    let before = outcomes(&f).len();
    let r = egress(&f, &ch, "/analytics/run").await;
    assert_eq!(
        (r.status.as_u16(), r.reason().as_str()),
        (502, "partner_unavailable")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let o = outcomes(&f);
    assert_eq!(o.len(), before + 1);
    assert_eq!(
        o.last().unwrap().reason.as_deref(),
        Some("partner_unavailable")
    );
    for (how, status, reason) in [
        (Partner::ResetMidAnswer, 502, "partner_unavailable"),
        (Partner::Garbage, 502, "partner_unavailable"),
        (Partner::Unsigned500, 502, "bad_response_signature"),
    ] {
        let h = stand_in(&f, how).await;
        let before = outcomes(&f).len();
        let r = egress(&f, &ch, "/analytics/run").await;
        h.abort();
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status.as_u16(), status, "{how:?}: {body}");
        assert_eq!(r.reason(), reason, "{how:?}");
        assert!(
            !body.contains("postgres") && !body.contains("not http"),
            "{how:?}: leaked {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let o = outcomes(&f);
        assert_eq!(o.len(), before + 1, "{how:?}");
        assert_eq!(o.last().unwrap().reason.as_deref(), Some(reason), "{how:?}");
        // Let the aborted listener's socket go before the next bind.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    f.stop().await;
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
        txn: "task-replay".into(),
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

/// 200 concurrent presentations of one token at the vendor: exactly one allowed, 199
/// `replayed`, every one audited, the upstream reached once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_uses_of_one_token_allow_exactly_one() {
    let f = Federation::start_with(|f| {
        set_limit(&f.ve, "denial_burst", 1000);
        set_limit(&f.ve, "max_unauthenticated_per_ip", 512);
        set_limit(&f.ve, "max_unauthenticated", 1024);
    })
    .await;
    let k = fedgate::files::read_signing_key(&f.co.dir.join("keys/gateway.key")).unwrap();
    let c = claims(&f);
    let token = mint_token(&k, &c).unwrap();
    let before = seen(&f);
    let url = format!("https://{}/ingress/analytics/run", f.ve.federation);
    // 200 connections at once, one request each (the per-address cap on connections still in
    // their handshake is raised for this).
    let mut hs = Vec::new();
    for _ in 0..200 {
        let client = gateway_client(&f.co, &f.ve);
        let (url, token) = (url.clone(), token.clone());
        hs.push(tokio::spawn(async move {
            let auth = format!("Bearer {token}");
            call(
                &client,
                Method::POST,
                &url,
                &[("Authorization", auth.as_str())],
                "{}",
            )
            .await
            .unwrap()
        }));
    }
    let (mut ok, mut replayed) = (0, 0);
    for h in hs {
        let r = h.await.unwrap();
        match (r.status.as_u16(), r.reason().as_str()) {
            (200, _) => ok += 1,
            (_, "replayed") => replayed += 1,
            (s, why) => panic!("unexpected {s} {why}"),
        }
    }
    assert_eq!((ok, replayed), (1, 199));
    assert_eq!(seen(&f), before + 1, "the upstream was reached once");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let recs: Vec<_> = records(f.ve_gw())
        .into_iter()
        .filter(|r| r.kind == "decision" && r.crossing == c.jti)
        .collect();
    assert_eq!(recs.len(), 200, "every presentation audited");
    assert_eq!(recs.iter().filter(|r| r.is_allow()).count(), 1);
    f.stop().await;
}
