//! Every response from a partner is signed by its gateway (RFC 9421) and checked by ours before
//! the agent gets it: an independent verifier accepts vendor.example's signatures; good
//! answers carry the same digest in both logs; a hostile stand-in's answers (another body, a
//! foreign key, no signature, a replayed signature) are refused; route rules refuse too-large,
//! wrong-type and schema-breaking answers; partner cookies and internal headers never reach
//! the agent; and a server-sent-events stream flows through and is still checked.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use common::*;
use fedgate::demo::hostile::{self, Tamper};
use http::Method;

const ANALYTICS: &str = "spiffe://vendor.example/agent/analytics/a1";

/// The demo agreement with response rules on the vendor's routes.
fn agreement(f: &Federation) -> String {
    let base = agreement_text(f.co.federation, f.ve.federation, fedgate::time::now());
    base.replace(
        r#"[[flows.routes]]
method = "POST"
path = "/analytics/*"
scope = "analytics:*"
"#,
        r#"[[flows.routes]]
method = "POST"
path = "/analytics/sse"
scope = "analytics:*"
response = { content_types = ["text/event-stream"], stream = true }

[[flows.routes]]
method = "POST"
path = "/analytics/*"
scope = "analytics:*"
response = { content_types = ["application/json", "text/event-stream"], max_bytes = 65536, allow_headers = ["x-request-id"] }

[[flows.routes]]
method = "POST"
path = "/checked/*"
scope = "analytics:*"

[flows.routes.response]
content_types = ["application/json"]

[flows.routes.response.schema]
type = "object"
required = ["status"]

[flows.routes.response.schema.properties.status]
type = "string"
"#,
    )
}

/// vendor.example's analytics upstream for these tests: one answer per path.
async fn upstream() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|req: http::Request<Body>| async move {
        let path = req.uri().path().to_string();
        let json = |s: &str| {
            http::Response::builder()
                .header("content-type", "application/json")
                .header("set-cookie", "session=vendor-internal-secret")
                .header("x-internal-debug", "db=postgres://internal:secret@10.0.0.5")
                .header("x-request-id", "req-42")
                .body(Body::from(s.to_string()))
                .unwrap()
        };
        match path.as_str() {
            "/analytics/big" => json(&format!("{{\"blob\":\"{}\"}}", "x".repeat(100_000))),
            "/analytics/html" => http::Response::builder()
                .header("content-type", "text/html")
                .body(Body::from("<html>hi</html>"))
                .unwrap(),
            "/checked/bad" => json("{\"status\":5}"),
            "/analytics/nocontent" => http::Response::builder()
                .status(204)
                .body(Body::empty())
                .unwrap(),
            "/analytics/hugestream" => {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
                tokio::spawn(async move {
                    for _ in 0..30 {
                        if tx.send(Ok(Bytes::from(vec![b' '; 10_000]))).await.is_err() {
                            break;
                        }
                    }
                });
                http::Response::builder()
                    .header("content-type", "application/json")
                    .body(Body::new(StreamBody(rx)))
                    .unwrap()
            }
            "/analytics/sse" => {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
                tokio::spawn(async move {
                    for i in 0..3 {
                        let _ = tx
                            .send(Ok(Bytes::from(format!("data: event {i}\n\n"))))
                            .await;
                        tokio::time::sleep(Duration::from_millis(400)).await;
                    }
                });
                http::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::new(StreamBody(rx)))
                    .unwrap()
            }
            _ => json("{\"status\":\"done\"}"),
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    a
}

struct StreamBody(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

async fn federation() -> Federation {
    federation_with(|_| {}).await
}

async fn federation_with(edit: impl FnOnce(&Federation)) -> Federation {
    let (mut f, co_l, ve_l) = Federation::prepare().await;
    let up = upstream().await;
    edit_config(&f.ve, |t| {
        let mut u = toml::Table::new();
        u.insert(
            "target".into(),
            "spiffe://vendor.example/agent/analytics/*".into(),
        );
        u.insert("url".into(), format!("http://{up}").into());
        t.insert("upstreams".into(), toml::Value::Array(vec![u.into()]));
    });
    let text = agreement(&f);
    sign_into(&text, &[&f.co, &f.ve]);
    edit(&f);
    f.co_gw = Some(start_gateway(&f.co, co_l).await);
    f.ve_gw = Some(start_gateway(&f.ve, ve_l).await);
    f
}

fn chain(f: &Federation) -> String {
    issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-responses",
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

fn outcomes(r: &fedgate::server::Running) -> Vec<fedgate::audit::Record> {
    records(r)
        .into_iter()
        .filter(|x| x.kind == "outcome")
        .collect()
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_answers_pass_with_one_digest_in_both_logs_and_no_partner_headers() {
    let f = federation().await;
    let ch = chain(&f);
    let r = egress(&f, &ch, "/analytics/run").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "done");
    // The partner's cookie and internal header never reach the agent; the route's allowed
    // header does.
    assert!(r.headers.get("set-cookie").is_none());
    assert!(r.headers.get("x-internal-debug").is_none());
    assert_eq!(r.headers["x-request-id"], "req-42");
    assert!(r.headers.get("signature").is_none());
    settle().await;
    let co = outcomes(f.co_gw());
    let ve = outcomes(f.ve_gw());
    let (a, b) = (co.last().unwrap(), ve.last().unwrap());
    assert_eq!(a.crossing, b.crossing);
    let digest = a
        .response_digest
        .clone()
        .expect("company logged the digest");
    assert_eq!(
        Some(digest.clone()),
        b.response_digest,
        "both logs hold one digest"
    );
    assert_eq!(
        digest,
        fedgate::federation::httpsig::content_digest(&r.body)
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_independent_verifier_accepts_the_vendors_signature() {
    let f = federation().await;
    let k = fedgate::files::read_signing_key(&f.co.dir.join("keys/gateway.key")).unwrap();
    let agr = f.co_gw().gateway.trust.get().agreements[0].agr();
    let now = fedgate::time::now();
    let claims = fedgate::federation::FederationClaims {
        iss: "spiffe://company.com/gateway".into(),
        aud: "spiffe://vendor.example/gateway".into(),
        sub: None,
        act: fedgate::federation::Actor {
            sub: "spiffe://company.com/agent/planning/p1".into(),
            act: None,
        },
        tgt: ANALYTICS.into(),
        scope: "analytics:run".into(),
        txn: "task-httpsig".into(),
        agr,
        chn: "d".into(),
        dep: 2,
        cnf: None,
        iat: now,
        nbf: now,
        exp: now + 300,
        jti: fedgate::crypto::random_id(),
    };
    let token = fedgate::federation::mint_token(&k, &claims).unwrap();
    let auth = format!("Bearer {token}");
    let url = format!(
        "https://{}/ingress/analytics/run?quarter=q3",
        f.ve.federation
    );
    let c = gateway_client(&f.co, &f.ve);
    let r = call(
        &c,
        Method::POST,
        &url,
        &[("Authorization", auth.as_str())],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let bundle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.ve.bundles().join("vendor.example.json")).unwrap(),
    )
    .unwrap();
    let kid = f.ve_gw().gateway.keys.signing().kid().to_string();
    let jwk = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap()
        .clone();
    let mut headers = serde_json::Map::new();
    for (n, v) in r.headers.iter() {
        headers.insert(n.to_string(), v.to_str().unwrap().into());
    }
    let case = serde_json::json!({
        "request": {"method": "POST", "url": url, "headers": {"Authorization": auth}},
        "response": {"status": 200, "headers": headers, "body_b64": fedgate::crypto::b64std(&r.body)},
        "jwk": jwk,
        "keyid": kid,
    });
    let path = f.tmp.path().join("case.json");
    std::fs::write(&path, case.to_string()).unwrap();
    let (code, out, err) = peers::run(
        "verify_httpsig.py",
        &[
            "--case",
            path.to_str().unwrap(),
            "--require",
            "@status",
            "--require",
            "content-digest",
            "--require",
            "fedgate-crossing",
            "--require",
            "\"@method\";req",
            "--require",
            "\"@path\";req",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["digest_verified"], true);
    // The same verifier refuses it once the body is changed.
    let mut bad = case.clone();
    bad["response"]["body_b64"] = fedgate::crypto::b64std(b"{\"status\":\"tampered\"}").into();
    std::fs::write(&path, bad.to_string()).unwrap();
    let (code, out, err) = peers::run("verify_httpsig.py", &["--case", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["valid"], false);
    let why = v["error"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        why.contains("digest"),
        "refused for the body, not for something else: {why}"
    );
    f.stop().await;
}

/// Replaces vendor.example's gateway by a stand-in holding its SVID and gateway key.
async fn stand_in(f: &mut Federation) -> hostile::Hostile {
    f.ve_gw.take().unwrap().shutdown().await;
    let identity = fedgate::server::tls::Identity {
        chain: fedgate::files::read_pem_certs(&f.ve.dir.join("gateway.pem")).unwrap(),
        key: fedgate::files::read_private_key_der(&f.ve.dir.join("keys/gateway-svid.key")).unwrap(),
    };
    let key = fedgate::files::read_signing_key(&f.ve.dir.join("keys/gateway.key")).unwrap();
    let l = std::net::TcpListener::bind(f.ve.federation).unwrap();
    hostile::start(l, identity, key).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_partners_answers_are_refused() {
    let mut f = federation().await;
    let ch = chain(&f);
    let h = stand_in(&mut f).await;
    // The control: a correctly signed answer from the stand-in passes.
    let r = egress(&f, &ch, "/analytics/run").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    settle().await;
    let cases = [
        (Tamper::SwapBody, "bad_response_signature"),
        (Tamper::ForeignKey, "bad_response_signature"),
        (Tamper::NoSignature, "bad_response_signature"),
        (Tamper::Replay, "bad_response_signature"),
        (Tamper::Large(70_000), "response_too_large"),
        (
            Tamper::Body("text/html".into(), "<b>hi</b>".into()),
            "response_invalid",
        ),
    ];
    for (t, want) in cases {
        h.set(t.clone());
        let before = outcomes(f.co_gw()).len();
        let r = egress(&f, &ch, "/analytics/run").await;
        assert_eq!(r.status, 502, "{t:?}");
        assert_eq!(
            r.reason(),
            want,
            "{t:?}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !String::from_utf8_lossy(&r.body).contains("\"result\""),
            "{t:?}: the body was delivered"
        );
        settle().await;
        let o = outcomes(f.co_gw());
        assert_eq!(o.len(), before + 1, "{t:?}");
        assert_eq!(
            o.last().unwrap().reason.as_deref(),
            Some(want),
            "{t:?}: audited"
        );
    }
    // A route with a schema: a correctly signed answer that breaks it is refused.
    h.set(Tamper::Body(
        "application/json".into(),
        "{\"status\":5}".into(),
    ));
    let r = egress(&f, &ch, "/checked/x").await;
    assert_eq!(r.reason(), "response_invalid");
    h.set(Tamper::Body(
        "application/json".into(),
        "{\"status\":\"ok\"}".into(),
    ));
    assert_eq!(egress(&f, &ch, "/checked/x").await.status, 200);
    // Partner-internal headers never cross, even correctly signed.
    h.set(Tamper::Headers(vec![
        ("set-cookie".into(), "s=1".into()),
        ("x-internal-debug".into(), "secret".into()),
    ]));
    let r = egress(&f, &ch, "/analytics/run").await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("set-cookie").is_none() && r.headers.get("x-internal-debug").is_none());
    // A stream whose trailers sign something else: cut before its last chunk.
    for honest in [true, false] {
        h.set(Tamper::Stream(honest));
        let c = agent_client(&f.co, "planning/p1", &f.co);
        let req = http::Request::builder()
            .method(Method::POST)
            .uri(format!("https://{}/egress/analytics/sse", f.co.internal))
            .header("Delegation-Chain", ch.as_str())
            .header("Fedgate-Target", ANALYTICS)
            .header("Fedgate-Scope", "analytics:run")
            .body(Body::from("{}"))
            .unwrap();
        let resp = c.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let mut broke = false;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            match frame {
                Ok(fr) => {
                    if let Ok(d) = fr.into_data() {
                        got.extend_from_slice(&d);
                    }
                }
                Err(_) => {
                    broke = true;
                    break;
                }
            }
        }
        let text = String::from_utf8_lossy(&got).to_string();
        if honest {
            assert!(!broke && text.contains("data: 1"), "{text}");
        } else {
            assert!(broke, "the forged stream ended cleanly: {text}");
            assert!(
                !text.contains("data: 1"),
                "the last chunk was released: {text}"
            );
            settle().await;
            let o = outcomes(f.co_gw());
            assert_eq!(
                o.last().unwrap().reason.as_deref(),
                Some("bad_response_signature")
            );
        }
    }
    h.stop();
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_rules_refuse_large_wrong_type_and_invalid_answers_from_the_real_vendor() {
    let f = federation().await;
    let ch = chain(&f);
    for (path, want) in [
        ("/analytics/big", "response_too_large"),
        ("/analytics/html", "response_invalid"),
        ("/checked/bad", "response_invalid"),
    ] {
        let r = egress(&f, &ch, path).await;
        assert_eq!(r.status, 502, "{path}");
        assert_eq!(r.reason(), want, "{path}");
    }
    assert_eq!(egress(&f, &ch, "/checked/good").await.status, 200);
    settle().await;
    // Each refused answer is audited with its reason (reconciliation: the test below).
    let co = outcomes(f.co_gw());
    let refused: Vec<_> = co
        .iter()
        .filter(|o| {
            o.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("response_"))
        })
        .collect();
    assert_eq!(refused.len(), 3);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sent_events_stream_flows_through_and_is_checked() {
    let f = federation().await;
    let ch = chain(&f);
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("https://{}/egress/analytics/sse", f.co.internal))
        .header("Delegation-Chain", ch.as_str())
        .header("Fedgate-Target", ANALYTICS)
        .header("Fedgate-Scope", "analytics:run")
        .body(Body::from("{}"))
        .unwrap();
    let t0 = Instant::now();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let mut got = Vec::new();
    let mut first_at = None;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.expect("the stream verifies and ends cleanly");
        if let Ok(d) = frame.into_data() {
            first_at.get_or_insert(t0.elapsed());
            got.extend_from_slice(&d);
        }
    }
    let total = t0.elapsed();
    let text = String::from_utf8(got).unwrap();
    assert_eq!(text.matches("data: event").count(), 3, "{text}");
    let first_at = first_at.unwrap();
    // The upstream produces its last event at ~800 ms: the first reached the agent before.
    assert!(
        first_at < Duration::from_millis(700),
        "first event after {first_at:?} (total {total:?})"
    );
    settle().await;
    let co = outcomes(f.co_gw());
    let ve = outcomes(f.ve_gw());
    let digest = fedgate::federation::httpsig::content_digest(text.as_bytes());
    assert_eq!(
        co.last().unwrap().response_digest.as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(
        ve.last().unwrap().response_digest.as_deref(),
        Some(digest.as_str())
    );
    f.stop().await;
}

/// Whatever the partner sends, it cannot pick a path that skips the checks: no body (204),
/// no length (chunked), repeated or encoded fields, a `created` at the ends of the range, a
/// slow head or a body that never ends. Its gateway's own denials reach the agent as they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_partner_cannot_choose_a_path_around_the_checks() {
    let mut f = federation_with(|f| {
        set_limit(&f.co, "partner_timeout", "1s");
        set_limit(&f.co, "response_timeout", "2s");
        set_limit(&f.co, "max_response_bytes", 65_536);
    })
    .await;
    let ch = chain(&f);
    let h = stand_in(&mut f).await;
    let empty = fedgate::federation::httpsig::content_digest(b"");
    let cases: Vec<(Tamper, &str, u16, &str)> = vec![
        (Tamper::Bodiless(true), "/analytics/run", 204, ""),
        (
            Tamper::Bodiless(false),
            "/analytics/run",
            502,
            "bad_response_signature",
        ),
        (
            Tamper::DuplicateType,
            "/analytics/run",
            502,
            "bad_response_signature",
        ),
        (
            Tamper::Created(i64::MIN),
            "/analytics/run",
            502,
            "bad_response_signature",
        ),
        (
            Tamper::Created(i64::MAX),
            "/analytics/run",
            502,
            "bad_response_signature",
        ),
        (Tamper::Encoded, "/analytics/run", 502, "response_invalid"),
        (Tamper::Chunked(true), "/analytics/run", 200, ""),
        (
            Tamper::Chunked(false),
            "/analytics/run",
            502,
            "bad_response_signature",
        ),
        (
            Tamper::ChunkedLarge(70_000),
            "/analytics/run",
            502,
            "response_too_large",
        ),
        (Tamper::Denial, "/analytics/run", 429, "rate_limited"),
        (Tamper::Denial, "/checked/x", 429, "rate_limited"),
        (
            Tamper::SlowHead(Duration::from_millis(1500)),
            "/analytics/run",
            504,
            "partner_unavailable",
        ),
        (
            Tamper::StalledBody,
            "/analytics/run",
            502,
            "partner_unavailable",
        ),
    ];
    for (t, path, status, reason) in cases {
        h.set(t.clone());
        let before = outcomes(f.co_gw()).len();
        let t0 = Instant::now();
        let r = egress(&f, &ch, path).await;
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status.as_u16(), status, "{t:?}: {body}");
        assert_eq!(r.reason(), reason, "{t:?}: {body}");
        assert!(
            t0.elapsed() < Duration::from_secs(4),
            "{t:?}: {:?}",
            t0.elapsed()
        );
        if status == 502 {
            assert!(
                !body.contains("\"result\""),
                "{t:?}: the answer was delivered: {body}"
            );
        }
        assert!(r.headers.get("content-encoding").is_none(), "{t:?}");
        settle().await;
        let o = outcomes(f.co_gw());
        assert_eq!(o.len(), before + 1, "{t:?}: one outcome");
        let last = o.last().unwrap();
        match (status, &t) {
            (204, _) => {
                assert_eq!(last.response_digest.as_deref(), Some(empty.as_str()));
                assert!(r.body.is_empty());
            }
            (200, _) => {
                assert_eq!(body, "{\"status\":\"done\",\"result\":\"chunked\"}\n");
                assert_eq!(
                    last.response_digest.as_deref(),
                    Some(fedgate::federation::httpsig::content_digest(&r.body).as_str())
                );
                // The digest the agent sees is the one the gateway verified.
                assert_eq!(
                    r.headers["content-digest"],
                    last.response_digest.clone().unwrap().as_str()
                );
            }
            (429, _) => assert_eq!(last.status, Some(429), "{t:?}"),
            _ => assert_eq!(last.reason.as_deref(), Some(reason), "{t:?}"),
        }
    }
    // On a route that streams, an unsigned, an oversize and a never-ending stream are each cut
    // before their last chunk, and audited with their reason.
    for (t, reason) in [
        (Tamper::StreamUnsigned, "bad_response_signature"),
        (Tamper::StreamLarge(100_000), "response_too_large"),
        (Tamper::StreamStalled, "partner_unavailable"),
    ] {
        h.set(t.clone());
        let before = outcomes(f.co_gw()).len();
        let c = agent_client(&f.co, "planning/p1", &f.co);
        let req = http::Request::builder()
            .method(Method::POST)
            .uri(format!("https://{}/egress/analytics/sse", f.co.internal))
            .header("Delegation-Chain", ch.as_str())
            .header("Fedgate-Target", ANALYTICS)
            .header("Fedgate-Scope", "analytics:run")
            .body(Body::from("{}"))
            .unwrap();
        let t0 = Instant::now();
        let resp = c.request(req).await.unwrap();
        let mut body = resp.into_body();
        let mut got = Vec::new();
        let mut broke = false;
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            match frame {
                Ok(fr) => {
                    if let Ok(d) = fr.into_data() {
                        got.extend_from_slice(&d);
                    }
                }
                Err(_) => {
                    broke = true;
                    break;
                }
            }
        }
        assert!(broke, "{t:?}: the stream ended cleanly");
        assert!(t0.elapsed() < Duration::from_secs(4), "{t:?}");
        assert!(got.len() <= 65_536, "{t:?}: {} bytes passed", got.len());
        if t == Tamper::StreamUnsigned {
            assert!(!String::from_utf8_lossy(&got).contains("data: 1"));
        }
        settle().await;
        let o = outcomes(f.co_gw());
        assert_eq!(o.len(), before + 1, "{t:?}");
        assert_eq!(o.last().unwrap().reason.as_deref(), Some(reason), "{t:?}");
    }
    h.stop();
    f.stop().await;
}

/// The real vendor signs a 204 (no body) in headers and both logs hold the empty body's
/// digest; a stream the company refuses still leaves the vendor an outcome record with the
/// digest of what it sent; the vendor's own denials (here: the target revoked) reach the agent
/// as they are, even on a route whose rules they would not meet; and an auditor's
/// reconciliation names exactly the refused answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_refused_streams_and_partner_denials_from_the_real_vendor() {
    let mut f = federation().await;
    let ch = chain(&f);
    let r = egress(&f, &ch, "/analytics/nocontent").await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    settle().await;
    let empty = fedgate::federation::httpsig::content_digest(b"");
    let (a, b) = (outcomes(f.co_gw()), outcomes(f.ve_gw()));
    assert_eq!(
        a.last().unwrap().response_digest.as_deref(),
        Some(empty.as_str())
    );
    assert_eq!(
        b.last().unwrap().response_digest.as_deref(),
        Some(empty.as_str())
    );
    // 300 kB chunked from the upstream: the company refuses it past the route's 64 KiB.
    let r = egress(&f, &ch, "/analytics/hugestream").await;
    assert_eq!(r.reason(), "response_too_large");
    let crossing = r.json()["crossing"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ve = outcomes(f.ve_gw());
    let v = ve
        .iter()
        .find(|o| o.crossing == crossing)
        .expect("the vendor logged an outcome for the refused stream");
    assert!(v.response_digest.is_some(), "{v:?}");
    // The vendor revokes its analytics agent: its denial (403 revoked, no receipt) reaches the
    // agent on the schema route, not as response_invalid.
    let admin = admin_client(&f.ve);
    let resp = call(
        &admin,
        Method::POST,
        &format!("https://{}/v1/revoke", f.ve.admin),
        &[("Content-Type", "application/json")],
        serde_json::json!({"kind": "agent", "value": ANALYTICS}).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status, 200);
    let r = egress(&f, &ch, "/checked/good").await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.reason(), "revoked");
    settle().await;
    // The auditor's view: exports of both logs, reconciled.
    let co = f.co_gw.take().unwrap();
    let ve = f.ve_gw.take().unwrap();
    co.shutdown().await;
    ve.shutdown().await;
    let bin = env!("CARGO_BIN_EXE_fedgate");
    for d in [&f.co, &f.ve] {
        let o = std::process::Command::new(bin)
            .args(["audit", "export", "--data-dir"])
            .arg(d.dir.join("data"))
            .arg("--out")
            .arg(d.dir.join("audit.jsonl"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let o = std::process::Command::new(bin)
        .args(["audit", "reconcile", "--json", "--bundles"])
        .arg(f.co.bundles())
        .arg(f.co.dir.join("audit.jsonl"))
        .arg(f.ve.dir.join("audit.jsonl"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let bad: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| {
            !["matched", "pending", "refused", "failed", "unanswered"]
                .contains(&x["kind"].as_str().unwrap())
        })
        .map(|x| {
            (
                x["kind"].as_str().unwrap().to_string(),
                x["crossing"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(bad, vec![("response_refused".to_string(), crossing)], "{v}");
    f.stop().await;
}
