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
    let (code, _, _) = peers::run("verify_httpsig.py", &["--case", path.to_str().unwrap()]);
    assert_eq!(code, 1);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_partners_answers_are_refused() {
    let mut f = federation().await;
    let ch = chain(&f);
    // Replace vendor.example's gateway by a stand-in holding its SVID and gateway key.
    f.ve_gw.take().unwrap().shutdown().await;
    let identity = fedgate::server::tls::Identity {
        chain: fedgate::files::read_pem_certs(&f.ve.dir.join("gateway.pem")).unwrap(),
        key: fedgate::files::read_private_key_der(&f.ve.dir.join("keys/gateway-svid.key")).unwrap(),
    };
    let key = fedgate::files::read_signing_key(&f.ve.dir.join("keys/gateway.key")).unwrap();
    let l = std::net::TcpListener::bind(f.ve.federation).unwrap();
    let h = hostile::start(l, identity, key).await.unwrap();
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
    // Reconcile reports the refused answers as the partner's, and nothing else.
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
