//! Regression tests for the ten defects of the security review (issue 21), and for what the
//! review of the fixes found (`r..`), each through real
//! gateways where the defect is at the boundary. Every one of these failed on the code the
//! review tested.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fedgate::federation::{mint_token, Actor, FederationClaims};
use fedgate::scope::ScopeSet;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ANALYTICS: &str = "spiffe://vendor.example/agent/analytics/a1";

fn key(d: &Domain, name: &str) -> fedgate::jose::SigningKey {
    fedgate::files::read_signing_key(&d.dir.join(format!("keys/{name}.key"))).unwrap()
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
        txn: "task-review".into(),
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

/// Presents `token` to vendor.example's ingress as company.com's gateway.
async fn present(f: &Federation, token: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
    let c = gateway_client(&f.co, &f.ve);
    let auth = format!("Bearer {token}");
    let mut h = vec![("Authorization", auth.as_str())];
    h.extend_from_slice(extra);
    call(
        &c,
        Method::POST,
        &format!("https://{}/ingress{path}", f.ve.federation),
        &h,
        "{}",
    )
    .await
    .unwrap()
}

/// planning/p1 calls vendor.example's analytics through company.com's egress.
async fn egress(f: &Federation, chain: &str, method: Method, path: &str, scope: &str) -> Reply {
    let c = agent_client(&f.co, "planning/p1", &f.co);
    call(
        &c,
        method,
        &format!("https://{}/egress{path}", f.co.internal),
        &[
            ("Delegation-Chain", chain),
            ("Fedgate-Target", ANALYTICS),
            ("Fedgate-Scope", scope),
        ],
        "",
    )
    .await
    .unwrap()
}

fn seen(u: &Upstream) -> Vec<fedgate::demo::Seen> {
    u.seen.lock().unwrap().clone()
}

/// Defect 1: keys have roles. The gateway key and the audit key cannot mint human grants (or
/// "fresh approvals" for PII scopes), and a partner's IdP key cannot sign federation tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d01_every_key_has_one_role() {
    let f = Federation::start().await;
    let scope = ScopeSet::parse_list(&["analytics:*", "pii:customers:read"]).unwrap();
    let grant = |signer: &fedgate::jose::SigningKey| {
        fedgate::chain::issue(
            signer,
            &f.co.id("/idp"),
            "alice@company.com",
            &f.co.id("/agent/planning/p1"),
            &scope,
            "task-roles",
            fedgate::time::now(),
            3600,
        )
        .unwrap()
    };
    // The IdP's own grant works (PII with fresh approval).
    let ok = grant(&key(&f.co, "idp"));
    let r = egress(&f, &ok, Method::GET, "/customers/42", "pii:customers:read").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The same grant signed with the gateway key or the audit key is refused.
    for name in ["gateway", "audit"] {
        let forged = grant(&key(&f.co, name));
        let r = egress(
            &f,
            &forged,
            Method::GET,
            "/customers/42",
            "pii:customers:read",
        )
        .await;
        assert_eq!(
            r.reason(),
            "wrong_signer",
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // A federation token signed with company.com's IdP key, presented by its gateway.
    let t = mint_token(&key(&f.co, "idp"), &claims(&f)).unwrap();
    let r = present(&f, &t, "/analytics/run", &[]).await;
    assert_eq!(
        r.reason(),
        "wrong_signer",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let t = mint_token(&key(&f.co, "gateway"), &claims(&f)).unwrap();
    assert_eq!(present(&f, &t, "/analytics/run", &[]).await.status, 200);
    f.stop().await;
}

/// Defect 2: `exp - iat` in unchecked arithmetic let a token live for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d02_token_times_cannot_overflow() {
    let f = Federation::start().await;
    let k = key(&f.co, "gateway");
    let before = seen(&f.ve_up).len();
    for (iat, exp) in [
        (-1000, i64::MAX - 100),
        (i64::MIN + 5, 1 << 40),
        (0, i64::MAX),
    ] {
        let mut c = claims(&f);
        c.iat = iat;
        c.nbf = iat;
        c.exp = exp;
        let r = present(&f, &mint_token(&k, &c).unwrap(), "/analytics/run", &[]).await;
        assert_eq!(
            r.status,
            401,
            "iat {iat} exp {exp}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            ["expired", "expiry_extension", "not_yet_valid"].contains(&r.reason().as_str()),
            "{}",
            r.reason()
        );
    }
    assert_eq!(seen(&f.ve_up).len(), before, "nothing reached the upstream");
    // A valid token's crossing link never outlives max_token_ttl.
    let t = mint_token(&k, &claims(&f)).unwrap();
    assert_eq!(present(&f, &t, "/analytics/run", &[]).await.status, 200);
    let s = seen(&f.ve_up);
    let link = s.last().unwrap().headers["delegation-chain"]
        .to_str()
        .unwrap();
    let payload = fedgate::jose::parse_compact(link).unwrap().payload;
    let lc: fedgate::chain::LinkClaims = serde_json::from_slice(&payload).unwrap();
    assert!(lc.exp <= fedgate::time::now() + 15 * 60);
    f.stop().await;
}

async fn tls_to(f: &Federation) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let trust = trust_of(&f.ve);
    let v = std::sync::Arc::new(fedgate::server::tls::SpiffeServerVerifier::exact(
        trust,
        f.ve.gateway_id(),
    ));
    let cfg = fedgate::server::tls::client_config(None, v).unwrap();
    let tcp = tokio::net::TcpStream::connect(f.ve.federation)
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Whether the server closes `s` within `within` (EOF or a reset).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(within, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Defect 3: header-read and idle timeouts were off, and connections were not capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d03_timeouts_and_connection_caps() {
    let f = Federation::start_with(|f| {
        set_limit(&f.ve, "header_timeout", "1s");
        set_limit(&f.ve, "unauthenticated_idle_timeout", "1s");
        set_limit(&f.ve, "max_unauthenticated", 16);
        set_limit(&f.ve, "max_unauthenticated_per_ip", 8);
    })
    .await;
    // A half-sent request is dropped after the header timeout.
    let mut s = tls_to(&f).await;
    s.write_all(b"GET /bundle HTTP/1.1\r\nHost: vendor\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    // A TLS connection without a certificate that sends nothing is closed when idle.
    let mut idle = tls_to(&f).await;
    assert!(closed_within(&mut idle, Duration::from_secs(5)).await);
    // 40 connections that never finish a handshake: all but the newest 8 are closed at once
    // to make room, and a partner's crossing still goes through.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(
            tokio::net::TcpStream::connect(f.ve.federation)
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = mint_token(&key(&f.co, "gateway"), &claims(&f)).unwrap();
    let r = present(&f, &t, "/analytics/run", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let mut closed = 0;
    for s in held.iter_mut() {
        if closed_within(s, Duration::from_millis(50)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 32,
        "only {closed} of 40 unauthenticated connections were closed"
    );
    let counts = f
        .ve_gw()
        .gateway
        .connections(fedgate::server::tls::ListenerKind::Federation)
        .counts();
    assert!(counts.unauthenticated <= 8, "{counts:?}");
    f.stop().await;
}

/// Defect 4: unauthenticated requests were records of the log of record; now they are counted
/// and side-logged, and a source that keeps being denied is rate-limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d04_unauthenticated_refusals_stay_out_of_the_log_of_record() {
    let f = Federation::start_with(|f| {
        set_limit(&f.ve, "denials_per_second", 1);
        set_limit(&f.ve, "denial_burst", 5);
    })
    .await;
    let log = &f.ve_gw().gateway.log;
    let before = log.size();
    let anon = anonymous_client(f.ve.gateway_id(), &f.ve);
    let url = format!("https://{}/ingress/analytics/run", f.ve.federation);
    for _ in 0..100 {
        let r = call(&anon, Method::POST, &url, &[], "").await.unwrap();
        assert_eq!(r.reason(), "bad_svid");
    }
    // A partner gateway without a token at all is not authenticated either.
    let gw = gateway_client(&f.co, &f.ve);
    for _ in 0..50 {
        let r = call(&gw, Method::POST, &url, &[], "").await.unwrap();
        assert_eq!(r.reason(), "malformed");
    }
    assert_eq!(
        log.size(),
        before,
        "nothing unauthenticated reached the log of record"
    );
    let m = f.ve_gw().gateway.metrics.get(
        "fedgate_unauthenticated_refusals_total",
        &[("listener", "federation"), ("reason", "bad_svid")],
    );
    assert_eq!(m, 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let side = std::fs::read_to_string(f.ve.dir.join("data/refusals.jsonl")).unwrap();
    let lines = side.lines().count();
    assert!((1..=60).contains(&lines), "{lines} side-log lines");
    assert!(!side.contains("Bearer"), "no tokens in the side log");
    // Authenticated denials are records, up to the source's budget; then `rate_limited`.
    let mut limited = 0;
    for _ in 0..20 {
        let r = call(
            &gw,
            Method::POST,
            &url,
            &[("Authorization", "Bearer not.a.token")],
            "",
        )
        .await
        .unwrap();
        if r.reason() == "rate_limited" {
            assert_eq!(r.status, 429);
            limited += 1;
        } else {
            assert_eq!(r.reason(), "malformed");
        }
    }
    assert!(limited >= 13, "{limited} of 20 rate-limited");
    let audited = log.size() - before;
    assert!((5..=7).contains(&audited), "{audited} denials audited");
    f.stop().await;
}

async fn admin_revoke(d: &Domain, body: serde_json::Value) -> Reply {
    let c = admin_client(d);
    call(
        &c,
        Method::POST,
        &format!("https://{}/v1/revoke", d.admin),
        &[("Content-Type", "application/json")],
        body.to_string(),
    )
    .await
    .unwrap()
}

fn vendor_revoked(f: &Federation, kind: fedgate::chain::RevocationKind, v: &str, at: i64) -> bool {
    use fedgate::chain::Revocations;
    f.ve_gw()
        .gateway
        .state
        .revocations()
        .is_revoked(CO, kind, v, at)
}

/// Defect 5: a second revocation overwrote the first (lifting a permanent one), a past
/// `until` was accepted, and a stale notice was applied over a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d05_revocations_merge_and_are_never_lifted() {
    use fedgate::chain::RevocationKind as K;
    let f = Federation::start().await;
    let agent = "spiffe://company.com/agent/planning/p1";
    let now = fedgate::time::now();
    let r = admin_revoke(
        &f.co,
        serde_json::json!({"kind": "agent", "value": agent, "until": now - 10}),
    )
    .await;
    assert_eq!(r.status, 400, "a past until is refused");
    assert_eq!(r.reason(), "malformed");
    assert_eq!(
        admin_revoke(&f.co, serde_json::json!({"kind": "agent", "value": agent}))
            .await
            .status,
        200
    );
    let r = admin_revoke(
        &f.co,
        serde_json::json!({"kind": "agent", "value": agent, "until": now + 2}),
    )
    .await;
    assert_eq!(r.status, 200);
    // Both notices reach vendor.example; after the short until the agent is still revoked on
    // both sides.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !vendor_revoked(&f, K::Agent, agent, now) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = now + 3600;
    assert!(
        vendor_revoked(&f, K::Agent, agent, later),
        "the partner kept the permanent revocation"
    );
    {
        use fedgate::chain::Revocations;
        assert!(f
            .co_gw()
            .gateway
            .state
            .revocations()
            .is_revoked(CO, K::Agent, agent, later));
    }
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-rev",
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        egress(&f, &chain, Method::POST, "/analytics/run", "analytics:run")
            .await
            .reason(),
        "revoked"
    );
    // A notice older than the newest applied for a value changes nothing.
    let k = key(&f.co, "gateway");
    let notice = |until: i64, iat: i64| {
        fedgate::federation::notice::mint_notice(
            &k,
            &fedgate::federation::notice::NoticeClaims {
                iss: "spiffe://company.com/gateway".into(),
                kind: "task".into(),
                value: "task-stale".into(),
                until,
                iat,
                jti: fedgate::crypto::random_id(),
            },
        )
        .unwrap()
    };
    let gw = gateway_client(&f.co, &f.ve);
    let url = format!("https://{}/v1/revocations", f.ve.federation);
    let r = call(&gw, Method::POST, &url, &[], notice(now + 600, now))
        .await
        .unwrap();
    assert_eq!(r.json()["result"], "applied");
    let r = call(&gw, Method::POST, &url, &[], notice(0, now - 100))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"], "stale");
    assert!(
        !vendor_revoked(&f, K::Task, "task-stale", now + 3600),
        "the stale notice was not applied"
    );
    f.stop().await;
}

/// Defect 6: reconcile looked only at the receiver's first record of a crossing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d06_reconcile_counts_every_receiver_record() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-leak",
    );
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let token = fedgate::demo::exchange(&c, f.co.internal, &chain, ANALYTICS, "analytics:run")
        .await
        .unwrap();
    let auth = format!("Bearer {token}");
    let iu = format!("https://{}/ingress/analytics/run", f.ve.federation);
    // Leaked: presented first from another agent's certificate (refused, audited)...
    let thief = agent_client(&f.co, "inventory/i1", &f.ve);
    let r = call(
        &thief,
        Method::POST,
        &iu,
        &[("Authorization", auth.as_str())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.reason(), "issuer_mismatch");
    // ...then used for real.
    let owner = agent_client(&f.co, "planning/p1", &f.ve);
    let r = call(
        &owner,
        Method::POST,
        &iu,
        &[("Authorization", auth.as_str())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let export = |r: &fedgate::server::Running, d: &Domain| {
        let note = r.gateway.log.checkpoint_now().unwrap();
        let n = fedgate::audit::checkpoint::peek(&note).unwrap().size;
        let mut jsonl = Vec::new();
        for rec in r.gateway.log.read(0, n).unwrap() {
            jsonl.extend_from_slice(&rec);
            jsonl.push(b'\n');
        }
        let bundles = fedgate::files::load_bundle_dir(&d.bundles()).unwrap();
        fedgate::audit::export::verify(&jsonl, &note, &bundles).unwrap()
    };
    let (co, ve) = (export(f.co_gw(), &f.co), export(f.ve_gw(), &f.ve));
    let crossing = {
        let p = fedgate::jose::parse_compact(&token).unwrap().payload;
        serde_json::from_slice::<FederationClaims>(&p).unwrap().jti
    };
    let bundles = fedgate::files::load_bundle_dir(&f.co.bundles()).unwrap();
    let report = fedgate::audit::reconcile::reconcile(
        &co,
        &ve,
        bundles.get(&td(CO)).unwrap(),
        bundles.get(&td(VE)).unwrap(),
        5,
        &Default::default(),
    );
    let kinds: Vec<&str> = report
        .findings
        .iter()
        .filter(|x| x.crossing.as_deref() == Some(crossing.as_str()))
        .map(|x| x.kind)
        .collect();
    assert_eq!(kinds, vec!["matched"], "{:?}", report.findings);
    f.stop().await;
}

/// Defect 7: identity and routing headers set by a partner reached upstreams, and paths with
/// `;` parameters or double encoding passed the route check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d07_partner_headers_and_ambiguous_paths() {
    let f = Federation::start().await;
    let k = key(&f.co, "gateway");
    let spoofed = [
        ("X-Forwarded-For", "10.9.8.7"),
        ("Forwarded", "for=10.9.8.7;host=admin.internal"),
        ("X-Real-IP", "10.9.8.7"),
        (
            "X-Forwarded-Client-Cert",
            "By=spiffe://vendor.example/admin",
        ),
        ("X-Original-URL", "/admin/delete"),
        ("X-Rewrite-URL", "/admin/delete"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X_Forwarded_For", "10.9.8.7"),
        ("X-Request-Id", "kept"),
    ];
    let r = present(
        &f,
        &mint_token(&k, &claims(&f)).unwrap(),
        "/analytics/run",
        &spoofed,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let got = seen(&f.ve_up).last().unwrap().headers.clone();
    for (name, _) in &spoofed[..8] {
        if name.eq_ignore_ascii_case("forwarded") {
            continue;
        }
        assert!(got.get(*name).is_none(), "{name} reached the upstream");
    }
    assert_eq!(got["x-request-id"], "kept");
    let fwd = got["forwarded"].to_str().unwrap();
    assert!(
        fwd.starts_with("for=\"127.0.0.1:") && fwd.ends_with(";proto=https"),
        "{fwd}"
    );
    let before = seen(&f.ve_up).len();
    for path in [
        "/analytics/..;/admin",
        "/analytics/%252e%252e/admin",
        "/analytics;jsessionid=x/run",
        "/analytics/%2e%2e/admin",
        "/%61nalytics/run",
    ] {
        let r = present(&f, &mint_token(&k, &claims(&f)).unwrap(), path, &[]).await;
        assert_eq!(r.reason(), "route_denied", "{path}");
    }
    assert_eq!(
        seen(&f.ve_up).len(),
        before,
        "no ambiguous path reached the upstream"
    );
    // The egress strips them on the way out too.
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-h",
    );
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/egress/analytics/run", f.co.internal),
        &[
            ("Delegation-Chain", chain.as_str()),
            ("Fedgate-Target", ANALYTICS),
            ("Fedgate-Scope", "analytics:run"),
            ("X-Forwarded-For", "10.1.1.1"),
            ("X-Original-URL", "/admin"),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let got = seen(&f.ve_up).last().unwrap().headers.clone();
    assert!(got.get("x-original-url").is_none());
    assert!(!got["forwarded"].to_str().unwrap().contains("10.1.1.1"));
    assert!(got.get("x-forwarded-for").is_none());
    f.stop().await;
}

/// Defect 8: recovery cut intact records at an implausible length field; now the gateway
/// refuses to start and the log is left exactly as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d08_recovery_never_destroys_records() {
    let mut f = Federation::start().await;
    let k = key(&f.co, "gateway");
    for _ in 0..20 {
        assert_eq!(
            present(
                &f,
                &mint_token(&k, &claims(&f)).unwrap(),
                "/analytics/run",
                &[]
            )
            .await
            .status,
            200
        );
    }
    f.ve_gw.take().unwrap().shutdown().await;
    let dir = f.ve.dir.join("data/audit");
    let seg = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with(".log"))
        .unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    // Walk to the 10th frame and give it an implausible length.
    let mut off = 0usize;
    for _ in 0..10 {
        let len = u32::from_be_bytes(data[off..off + 4].try_into().unwrap()) as usize;
        off += 8 + len;
    }
    data[off..off + 4].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
    std::fs::write(&seg, &data).unwrap();
    let cfg = fedgate::server::config::load(&f.ve.config()).unwrap();
    let l = fedgate::server::Listeners::loopback().unwrap();
    let e = fedgate::server::start(cfg, Some(l))
        .await
        .err()
        .expect("must refuse to start");
    assert!(e.join(" ").contains("damaged"), "{e:?}");
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        data,
        "not a byte of the log was changed"
    );
    f.stop().await;
}

/// Defect 9: a `Connection` value with a non-ASCII byte switched off stripping of the headers it
/// names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d09_connection_header_with_non_ascii_still_strips() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-c",
    );
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("https://{}/egress/analytics/run", f.co.internal))
        .header("Delegation-Chain", chain.as_str())
        .header("Fedgate-Target", ANALYTICS)
        .header("Fedgate-Scope", "analytics:run")
        .header(
            "Connection",
            http::HeaderValue::from_bytes(b"x-internal-token, \xe9t\xe9").unwrap(),
        )
        .header("X-Internal-Token", "internal-secret")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = seen(&f.ve_up).last().unwrap().headers.clone();
    assert!(
        got.get("x-internal-token").is_none(),
        "the internal token crossed"
    );
    f.stop().await;
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(args)
        .output()
        .unwrap()
}

/// Defect 10: the agreement hash did not normalize date-times.
#[test]
fn d10_agreement_hash_normalizes_date_times() {
    let d = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/federation-agreements/company-vendor-analytics.toml"
    ))
    .unwrap();
    let mut hashes = Vec::new();
    for (i, v) in [
        "2026-01-01T00:00:00Z",
        "2026-01-01 00:00:00+00:00",
        "2026-01-01T01:00:00+01:00",
        "2026-01-01T00:00:00.000Z",
    ]
    .iter()
    .enumerate()
    {
        let p = d.path().join(format!("a{i}.toml"));
        std::fs::write(
            &p,
            base.replace(
                "valid_from = 2026-01-01T00:00:00Z",
                &format!("valid_from = {v}"),
            ),
        )
        .unwrap();
        let o = cli(&["agreement", "hash", p.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "{v}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        hashes.push(String::from_utf8(o.stdout).unwrap());
    }
    assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
    let p = d.path().join("local.toml");
    std::fs::write(
        &p,
        base.replace(
            "valid_from = 2026-01-01T00:00:00Z",
            "valid_from = 2026-01-01T00:00:00",
        ),
    )
    .unwrap();
    let o = cli(&["agreement", "lint", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("valid_from"), "{text}");
}

/// Review follow-up: the denial budget belongs to who sent the request (the mTLS peer), not to
/// the agent a presented chain names. An agent that replays a colleague's stolen chain spends
/// its own budget and is rate-limited; the colleague keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r01_a_thief_spends_its_own_denial_budget() {
    let f = Federation::start_with(|f| {
        set_limit(&f.co, "denials_per_second", 1);
        set_limit(&f.co, "denial_burst", 5);
    })
    .await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-theft",
    );
    let thief = agent_client(&f.co, "inventory/i1", &f.co);
    let mut reasons = Vec::new();
    for _ in 0..15 {
        let r = call(
            &thief,
            Method::POST,
            &format!("https://{}/egress/analytics/run", f.co.internal),
            &[
                ("Delegation-Chain", chain.as_str()),
                ("Fedgate-Target", ANALYTICS),
                ("Fedgate-Scope", "analytics:run"),
            ],
            "",
        )
        .await
        .unwrap();
        reasons.push(r.reason());
    }
    assert_eq!(reasons[0], "not_holder", "{reasons:?}");
    assert!(
        reasons.iter().filter(|r| *r == "rate_limited").count() >= 8,
        "{reasons:?}"
    );
    // The chain's real holder is not charged for the thief's denials.
    let r = egress(&f, &chain, Method::POST, "/analytics/run", "analytics:run").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let denials: Vec<_> = records(f.co_gw())
        .into_iter()
        .filter(|x| x.decision == "deny")
        .collect();
    assert!(!denials.is_empty());
    for d in &denials {
        assert_eq!(
            d.peer.as_deref(),
            Some("spiffe://company.com/agent/inventory/i1"),
            "a denial names the peer that sent it"
        );
    }
    f.stop().await;
}

/// A request body fed by the test, chunk by chunk.
struct Fed(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl http_body::Body for Fed {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// Review follow-up: request bodies held at the egress share one budget. A slow upload holds
/// its share only until the body time limit cuts it; a request that finds the budget spent for
/// its whole time limit is refused with `rate_limited` (never unbounded buffering); once the
/// budget is back, requests go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r02_buffered_bodies_share_one_budget() {
    let f = Federation::start_with(|f| {
        set_limit(&f.co, "max_body_bytes", 65_536);
        set_limit(&f.co, "max_buffered_bytes", 65_536);
        set_limit(&f.co, "max_response_bytes", 65_536);
        set_limit(&f.co, "body_timeout", "1s");
    })
    .await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-upload",
    );
    let url = format!("https://{}/egress/analytics/run", f.co.internal);
    let headers = [
        ("Delegation-Chain", chain.as_str()),
        ("Fedgate-Target", ANALYTICS),
        ("Fedgate-Scope", "analytics:run"),
    ];
    let budget = f.co_gw().gateway.buffer_budget.clone();
    let upload = |fill: u8| {
        let c = agent_client(&f.co, "planning/p1", &f.co);
        let (url, headers) = (url.clone(), headers);
        async move {
            call(&c, Method::POST, &url, &headers, vec![fill; 10_000])
                .await
                .unwrap()
        }
    };
    // The slow upload: 60 000 bytes, then nothing.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let slow = {
        let c = agent_client(&f.co, "planning/p1", &f.co);
        let mut b = http::Request::builder().method(Method::POST).uri(&url);
        for (k, v) in headers {
            b = b.header(k, v);
        }
        let req = b.body(axum::body::Body::new(Fed(rx))).unwrap();
        tokio::spawn(async move {
            let r = c.request(req).await.unwrap();
            let st = r.status();
            let b = http_body_util::BodyExt::collect(r.into_body())
                .await
                .unwrap()
                .to_bytes();
            (st, String::from_utf8_lossy(&b).to_string())
        })
    };
    tx.send(bytes::Bytes::from(vec![b'a'; 60_000]))
        .await
        .unwrap();
    let t0 = Instant::now();
    while budget.available_permits() > 65_536 - 60_000 && t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        budget.available_permits(),
        65_536 - 60_000,
        "the upload holds what it buffered"
    );
    // A second upload waits for the budget; the slow one is cut at its time limit, and the
    // second then goes through.
    let t0 = Instant::now();
    let r = upload(b'b').await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let waited = t0.elapsed();
    let (st, body) = slow.await.unwrap();
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("did not arrive in time"), "{body}");
    assert!(
        waited > Duration::from_millis(300),
        "it waited for the budget: {waited:?}"
    );
    drop(tx);
    assert_eq!(budget.available_permits(), 65_536, "every permit returned");
    // With the budget spent for longer than the body time limit (other uploads in flight:
    // here the gateway's own budget taken by the test), a request is refused, not buffered.
    let held = budget.clone().acquire_many_owned(65_536).await.unwrap();
    let t0 = Instant::now();
    let r = upload(b'c').await;
    assert_eq!(
        r.reason(),
        "rate_limited",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.status, 429);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    drop(held);
    let r = upload(b'c').await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    f.stop().await;
}
