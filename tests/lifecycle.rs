//! Federation lifecycle with real gateways: partner bundle refresh that survives a partner
//! endpoint that is down, serves a lower sequence or another domain's bundle; key rotation on
//! company.com with no failed crossing at vendor.example; live reload (file change, admin
//! endpoint, SIGHUP) all-or-nothing; revocation propagated to the partner within 2 s and
//! retried until acknowledged.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use fedgate::spiffe::Bundle;
use http::Method;

/// A stand-in for vendor.example's bundle endpoint: TLS with vendor's real gateway SVID,
/// serving whatever body the test sets (or nothing, when stopped).
struct FakeEndpoint {
    addr: std::net::SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn fake_endpoint(d: &Domain, body: Vec<u8>) -> FakeEndpoint {
    let chain = fedgate::files::read_pem_certs(&d.dir.join("gateway.pem")).unwrap();
    let key = fedgate::files::read_private_key_der(&d.dir.join("keys/gateway-svid.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(fedgate::server::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = Arc::new(Mutex::new(body));
    let b = body.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let b = b.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    let body = b.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    FakeEndpoint { addr, body, task }
}

fn bundle_with_seq(d: &Domain, seq: u64, extra_key: bool) -> Bundle {
    let mut b = Bundle::parse(
        td(&d.td),
        &std::fs::read(d.bundles().join(format!("{}.json", d.td))).unwrap(),
    )
    .unwrap();
    b.sequence = Some(seq);
    if extra_key {
        let (k, _) = fedgate::jose::SigningKey::generate_p256().unwrap();
        b.add_jwt_authority(
            k.kid(),
            k.public().clone(),
            fedgate::spiffe::KeyRole::Gateway,
        )
        .unwrap();
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_refresh_never_breaks_or_poisons_the_gateway() {
    let (f, co_l, _ve_l) = Federation::prepare().await;
    // vendor.example's bundle endpoint is our fake one.
    let seq2 = bundle_with_seq(&f.ve, 2, true);
    let ep = fake_endpoint(&f.ve, seq2.to_json().into_bytes()).await;
    let text = agreement_text(f.co.federation, f.ve.federation, fedgate::time::now()).replace(
        &format!("bundle_endpoint = \"https://{}/bundle\"", f.ve.federation),
        &format!("bundle_endpoint = \"https://{}/bundle\"", ep.addr),
    );
    sign_into(&text, &[&f.co, &f.ve]);
    let co = start_gateway(&f.co, co_l).await;
    let gw = co.gateway.clone();
    let ve_td = td(VE);
    // A higher sequence is accepted and persisted.
    fedgate::server::lifecycle::refresh_now(&gw, &ve_td)
        .await
        .ok();
    assert_eq!(
        gw.trust.get().bundles.get(&ve_td).unwrap().sequence,
        Some(2)
    );
    assert_eq!(gw.trust.get().bundles.get(&ve_td).unwrap().jwt.len(), 4);
    // A lower sequence is refused; the current bundle stays.
    *ep.body.lock().unwrap() = bundle_with_seq(&f.ve, 1, false).to_json().into_bytes();
    let e = fedgate::server::lifecycle::refresh_now(&gw, &ve_td)
        .await
        .unwrap_err();
    assert!(e.contains("backwards"), "{e}");
    assert_eq!(
        gw.trust.get().bundles.get(&ve_td).unwrap().sequence,
        Some(2)
    );
    // Another domain's bundle (a different CA) with a higher sequence: refused, because it does
    // not validate vendor.example's own gateway.
    let other = fedgate::devkit::DevDomain::new("vendor.example", fedgate::time::now()).unwrap();
    let mut ob = other.bundle.clone();
    ob.sequence = Some(9);
    *ep.body.lock().unwrap() = ob.to_json().into_bytes();
    let e = fedgate::server::lifecycle::refresh_now(&gw, &ve_td)
        .await
        .unwrap_err();
    assert!(e.contains("does not validate"), "{e}");
    // Garbage: refused.
    *ep.body.lock().unwrap() = b"{not json".to_vec();
    assert!(fedgate::server::lifecycle::refresh_now(&gw, &ve_td)
        .await
        .is_err());
    // The endpoint down: refused, last good kept, failures counted.
    ep.task.abort();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(fedgate::server::lifecycle::refresh_now(&gw, &ve_td)
        .await
        .is_err());
    assert_eq!(
        gw.trust.get().bundles.get(&ve_td).unwrap().sequence,
        Some(2)
    );
    // The last good bundle survives a restart (the file still says sequence 1).
    co.shutdown().await;
    drop(gw);
    let l = fedgate::server::Listeners::bind(f.co.internal, f.co.federation, f.co.admin).unwrap();
    let co = start_gateway(&f.co, l).await;
    assert_eq!(
        co.gateway.trust.get().bundles.get(&ve_td).unwrap().sequence,
        Some(2)
    );
    // The background loop keeps trying and counts failures without breaking anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        co.gateway
            .metrics
            .get("fedgate_bundle_refresh_failures_total", &[("domain", VE)])
            >= 1
    );
    assert_eq!(
        call(
            &admin_client(&f.co),
            Method::GET,
            &format!("https://{}/readyz", f.co.admin),
            &[],
            ""
        )
        .await
        .unwrap()
        .status,
        200
    );
    co.shutdown().await;
}

async fn crossing(f: &Federation, chain: &str) -> u16 {
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let h = [
        ("Delegation-Chain", chain),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "analytics:*"),
    ];
    call(
        &c,
        Method::POST,
        &format!("https://{}/egress/analytics/run", f.co.internal),
        &h,
        "{}",
    )
    .await
    .map(|r| r.status.as_u16())
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_without_a_failed_crossing() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-rotate",
    );
    let old_kid = f.co_gw().gateway.keys.signing().kid().to_string();
    let seq0 = f
        .co_gw()
        .gateway
        .trust
        .get()
        .bundles
        .get(&td(CO))
        .unwrap()
        .sequence
        .unwrap();
    // Steady traffic before, during and after the rotation.
    let (kid, new_key) =
        fedgate::server::lifecycle::stage_rotation(&f.co.dir.join("data")).unwrap();
    let mut statuses = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < deadline {
        statuses.push(crossing(&f, &chain).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "failed crossings during rotation: {statuses:?}"
    );
    let gw = &f.co_gw().gateway;
    assert_eq!(gw.keys.signing().kid(), kid, "signing with the new key");
    let local = gw.trust.get().bundles.get(&td(CO)).unwrap().clone();
    assert_eq!(local.sequence, Some(seq0 + 1));
    assert!(
        local
            .jwt_key(&old_kid, fedgate::spiffe::KeyRole::Gateway)
            .is_ok(),
        "the old key stays published while its tokens live"
    );
    // The bundle file and the bundle endpoint serve the new key; vendor.example learned it.
    let file = std::fs::read_to_string(f.co.bundles().join("company.com.json")).unwrap();
    assert!(file.contains(&kid));
    assert!(f
        .ve_gw()
        .gateway
        .trust
        .get()
        .bundles
        .get(&td(CO))
        .unwrap()
        .jwt_key(&kid, fedgate::spiffe::KeyRole::Gateway)
        .is_ok());
    // Retirement once every old token has expired (fast-forwarded here).
    let mut r = fedgate::server::lifecycle::read_rotation(&f.co.dir.join("data")).unwrap();
    assert_eq!(r.phase, "active");
    r.retire_at = Some(0);
    std::fs::write(
        f.co.dir.join("data/rotation.json"),
        serde_json::to_string(&r).unwrap(),
    )
    .unwrap();
    // The old key signs the agreement: it is not retired (that would void the agreement on
    // both sides at their next reload) until the agreement is signed with the new key.
    fedgate::server::lifecycle::rotation_step(gw).await.unwrap();
    let local = gw.trust.get().bundles.get(&td(CO)).unwrap().clone();
    assert!(
        local.authority(&old_kid).is_some(),
        "retired under a signed agreement"
    );
    assert_eq!(
        gw.metrics.gauge("fedgate_rotation_retire_blocked", &[]),
        Some(1.0)
    );
    let text =
        std::fs::read_to_string(f.co.dir.join("agreements/company-vendor-analytics.toml")).unwrap();
    let a = fedgate::agreement::Agreement::parse(&text).unwrap();
    let sig = fedgate::agreement::sign_agreement(
        &a.hash,
        &fedgate::files::read_signing_key(&new_key).unwrap(),
    )
    .unwrap();
    for d in [&f.co, &f.ve] {
        std::fs::write(
            d.dir
                .join("agreements")
                .join(fedgate::agreement::signature_file_name(&a.id, CO)),
            &sig,
        )
        .unwrap();
    }
    fedgate::server::lifecycle::rotation_step(gw).await.unwrap();
    assert_eq!(
        gw.metrics.gauge("fedgate_rotation_retire_blocked", &[]),
        Some(0.0)
    );
    let local = gw.trust.get().bundles.get(&td(CO)).unwrap().clone();
    assert!(local.authority(&old_kid).is_none());
    assert_eq!(local.sequence, Some(seq0 + 2));
    assert_eq!(crossing(&f, &chain).await, 200);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reload_is_atomic_and_prompt() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-reload",
    );
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let url = format!("https://{}/egress/analytics/run", f.co.internal);
    let h = [
        ("Delegation-Chain", chain.as_str()),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "analytics:*"),
        ("X-Other-Secret", "s3cret"),
    ];
    assert_eq!(
        call(&c, Method::POST, &url, &h, "").await.unwrap().status,
        200
    );
    assert!(f.ve_up.seen.lock().unwrap()[0]
        .headers
        .get("x-other-secret")
        .is_some());
    // The strip list changes on disk: within 2 s it applies.
    let cfgp = f.co.config();
    let cfg = std::fs::read_to_string(&cfgp).unwrap().replace(
        "extra_headers = [\"X-Api-Key\"]",
        "extra_headers = [\"X-Api-Key\", \"X-Other-Secret\"]",
    );
    std::fs::write(&cfgp, cfg).unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        call(&c, Method::POST, &url, &h, "").await.unwrap().status,
        200
    );
    assert!(
        f.ve_up.seen.lock().unwrap()[1]
            .headers
            .get("x-other-secret")
            .is_none(),
        "stripped after the reload"
    );
    // A gateway-local Rego rule added: crossings it denies get policy_denied.
    std::fs::write(f.co.dir.join("deny-review.rego"), "package fedgate\n\ndeny contains \"no reviews on Fridays and not this task\" if input.chain.task == \"task-reload\"\n").unwrap();
    let cfg = std::fs::read_to_string(&cfgp)
        .unwrap()
        .replace("rego = []", "rego = [\"deny-review.rego\"]");
    std::fs::write(&cfgp, cfg).unwrap();
    let admin = admin_client(&f.co);
    let r = call(
        &admin,
        Method::POST,
        &format!("https://{}/v1/reload", f.co.admin),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = call(&c, Method::POST, &url, &h, "").await.unwrap();
    assert_eq!(r.reason(), "policy_denied");
    // A broken Rego file: the reload is refused with every problem, the old state stays.
    let gen = f.co_gw().gateway.trust.get().generation;
    std::fs::write(
        f.co.dir.join("deny-review.rego"),
        "package fedgate\ndeny contains x if {",
    )
    .unwrap();
    std::fs::write(f.co.dir.join("agreements/bad.toml"), "id = \"bad\"\n").unwrap();
    let r = call(
        &admin,
        Method::POST,
        &format!("https://{}/v1/reload", f.co.admin),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    let problems = r.json()["problems"].as_array().unwrap().len();
    assert!(problems >= 2, "{}", r.json());
    assert_eq!(
        f.co_gw().gateway.trust.get().generation,
        gen,
        "old trust kept"
    );
    assert_eq!(
        call(&c, Method::POST, &url, &h, "").await.unwrap().reason(),
        "policy_denied",
        "old policy still applies"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_propagates_to_the_partner_and_is_retried() {
    let mut f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-revoke",
    );
    // A cnf-bound token issued before the revocation.
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let form = fedgate::demo::exchange_form(
        &chain,
        "spiffe://vendor.example/agent/analytics/a1",
        "analytics:run",
    );
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/v1/token", f.co.internal),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    )
    .await
    .unwrap();
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    // Stop vendor: the notice must wait and be retried.
    if let Some(v) = f.ve_gw.take() {
        v.shutdown().await;
    }
    let o = tokio::task::spawn_blocking({
        let admin = format!("https://{}", f.co.admin);
        let dir = f.co.dir.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
                .args([
                    "revoke",
                    "--admin-url",
                    &admin,
                    "--agent",
                    "spiffe://company.com/agent/planning/p1",
                    "--dir",
                    dir.to_str().unwrap(),
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Locally at once.
    assert_eq!(crossing(&f, &chain).await, 403);
    // Vendor back: the notice arrives within 2 s of it being reachable.
    let l = fedgate::server::Listeners::bind(f.ve.internal, f.ve.federation, f.ve.admin).unwrap();
    f.ve_gw = Some(start_gateway(&f.ve, l).await);
    let direct = agent_client(&f.co, "planning/p1", &f.ve);
    let auth = format!("Bearer {token}");
    let url = format!("https://{}/ingress/analytics/run", f.ve.federation);
    let start = std::time::Instant::now();
    let mut reason = String::new();
    while start.elapsed() < Duration::from_secs(3) {
        if fedgate::chain::Revocations::is_revoked(
            f.ve_gw().gateway.state.revocations(),
            CO,
            fedgate::chain::RevocationKind::Agent,
            "spiffe://company.com/agent/planning/p1",
            fedgate::time::now(),
        ) {
            reason = call(
                &direct,
                Method::POST,
                &url,
                &[("Authorization", auth.as_str())],
                "",
            )
            .await
            .unwrap()
            .reason();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reason, "revoked",
        "the partner refuses tokens of the revoked agent"
    );
    assert!(start.elapsed() < Duration::from_millis(2500));
    // Audited on both sides.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(records(f.co_gw()).iter().any(|r| r.kind == "revocation"
        && r.mode.as_deref() == Some("notice")
        && r.status == Some(200)));
    assert!(records(f.ve_gw())
        .iter()
        .any(|r| r.kind == "revocation" && r.direction == "inbound"));
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_serving_process() {
    let (f, _a, _b) = Federation::prepare().await;
    let cfgp = f.co.config();
    let text = std::fs::read_to_string(&cfgp)
        .unwrap()
        .replace(
            &format!("internal = \"{}\"", f.co.internal),
            "internal = \"127.0.0.1:0\"",
        )
        .replace(
            &format!("federation = \"{}\"", f.co.federation),
            "federation = \"127.0.0.1:0\"",
        )
        .replace(
            &format!("admin = \"{}\"", f.co.admin),
            "admin = \"127.0.0.1:0\"",
        )
        .replace("watch = true", "watch = false");
    std::fs::write(&cfgp, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(["serve", "--config", cfgp.to_str().unwrap()])
        .env("FEDGATE_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let started = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert!(started.contains("gateway started"), "{started}");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status();
    let mut reloaded = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        if line.contains("reloaded on SIGHUP") {
            reloaded = true;
            break;
        }
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(reloaded, "no reload after SIGHUP");
    assert!(status.success(), "graceful shutdown on SIGTERM exits 0");
}
