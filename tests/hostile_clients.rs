//! Hostile clients on every listener (issue 17): oversized and countless headers, request
//! smuggling, non-UTF-8 header values, chains hidden in compressed or multipart bodies, HTTP/2
//! rapid reset, and a hundred thousand connections opened and abandoned. Each asserts what the
//! client gets, that nothing reached an upstream, and that the gateway still serves and its
//! memory stays bounded. (Slowloris and half-open TLS: `security_review::d03`; slow bodies:
//! `security_review::r02`.)

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fedgate::server::tls::{client_config, Identity, SpiffeServerVerifier};
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ANALYTICS: &str = "spiffe://vendor.example/agent/analytics/a1";

/// The tests of this file run one at a time: two of them measure the process's memory.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn identity(cert: &std::path::Path, key: &std::path::Path) -> Identity {
    Identity {
        chain: fedgate::files::read_pem_certs(cert).unwrap(),
        key: fedgate::files::read_private_key_der(key).unwrap(),
    }
}

/// A TLS connection to `at` presenting `id`, checking the server is `server_domain`'s gateway.
async fn tls(
    at: SocketAddr,
    id: Option<&Identity>,
    trust: &Domain,
    server_domain: &Domain,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let v = Arc::new(SpiffeServerVerifier::exact(
        trust_of(trust),
        server_domain.gateway_id(),
    ));
    let mut cfg = client_config(id, v).unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(at).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Writes `req` and reads what comes back until the server closes or goes quiet.
async fn exchange(
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    req: &[u8],
) -> String {
    let _ = s.write_all(req).await;
    let _ = s.flush().await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && out.len() > 12 {
                    // The head arrived; give a body a moment, then stop.
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
                    {
                        out.extend_from_slice(&buf[..n]);
                    }
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn status_of(resp: &str) -> Option<u16> {
    resp.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn seen(f: &Federation) -> usize {
    f.ve_up.seen.lock().unwrap().len()
}

fn chain(f: &Federation) -> String {
    issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-hostile",
    )
}

async fn crossing_works(f: &Federation, ch: &str) {
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/egress/analytics/run", f.co.internal),
        &[
            ("Delegation-Chain", ch),
            ("Fedgate-Target", ANALYTICS),
            ("Fedgate-Scope", "analytics:run"),
        ],
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// A 70 KiB header, and 10,000 headers, on each of the three listeners: 431 (or the connection
/// closed), never a 2xx, and the gateway serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_countless_headers_are_refused_on_every_listener() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Federation::start().await;
    let ch = chain(&f);
    let agent = identity(
        &f.co.agent_pem("planning/p1"),
        &f.co.agent_key("planning/p1"),
    );
    let admin = identity(
        &f.co.dir.join("admin.pem"),
        &f.co.dir.join("keys/admin.key"),
    );
    let partner = identity(
        &f.ve.dir.join("gateway.pem"),
        &f.ve.dir.join("keys/gateway-svid.key"),
    );
    let big = format!("X-Big: {}\r\n", "a".repeat(70 * 1024));
    let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (name, at, id, path) in [
        ("internal", f.co.internal, &agent, "/egress/analytics/run"),
        ("federation", f.co.federation, &partner, "/bundle"),
        ("admin", f.co.admin, &admin, "/healthz"),
    ] {
        for (what, extra) in [("a 70 KiB header", &big), ("10,000 headers", &many)] {
            let trust = if name == "federation" { &f.ve } else { &f.co };
            let mut s = tls(at, Some(id), trust, &f.co, b"http/1.1").await;
            let req = format!("GET {path} HTTP/1.1\r\nHost: gw\r\n{extra}\r\n");
            let resp = exchange(&mut s, req.as_bytes()).await;
            let st = status_of(&resp);
            assert!(
                st.is_none() || st == Some(431) || st == Some(400),
                "{name}, {what}: {}",
                resp.lines().next().unwrap_or("")
            );
        }
    }
    crossing_works(&f, &ch).await;
    f.stop().await;
}

/// Request smuggling at the egress. Both `Content-Length` and `Transfer-Encoding`: the body is
/// read as chunked (RFC 9112 section 6.3) and the connection closed after the one answer, so
/// the request hidden after the body is never read. Two different `Content-Length`s, a
/// `Transfer-Encoding` that is not (only) chunked: 400 before any handler runs. Nothing hidden
/// reaches the partner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_is_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Federation::start().await;
    let ch = chain(&f);
    let agent = identity(
        &f.co.agent_pem("planning/p1"),
        &f.co.agent_key("planning/p1"),
    );
    let head = |path: &str| {
        format!(
            "POST /egress/analytics/{path} HTTP/1.1\r\nHost: gw\r\nDelegation-Chain: {ch}\r\nFedgate-Target: {ANALYTICS}\r\nFedgate-Scope: analytics:run\r\n"
        )
    };
    let hidden = head("smuggled") + "Content-Length: 0\r\n\r\n";
    let before = seen(&f);
    // CL and TE: one answer, then the connection closes; the hidden request is never served.
    let mut s = tls(f.co.internal, Some(&agent), &f.co, &f.co, b"http/1.1").await;
    let req = format!(
        "{}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
        head("front")
    );
    let resp = exchange(&mut s, req.as_bytes()).await;
    let mut rest = [0u8; 4096];
    let more = tokio::time::timeout(Duration::from_secs(2), s.read(&mut rest)).await;
    assert!(
        matches!(more, Ok(Ok(0)) | Ok(Err(_))),
        "the connection stays open after an ambiguous request: {more:?}"
    );
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    for (what, rest) in [
        (
            "two Content-Lengths",
            "Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}".to_string(),
        ),
        (
            "TE not chunked",
            format!("Transfer-Encoding: gzip\r\n\r\n{{}}{hidden}"),
        ),
        (
            "TE chunked, then another coding",
            format!("Transfer-Encoding: chunked, identity\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n{hidden}"),
        ),
    ] {
        let mut s = tls(f.co.internal, Some(&agent), &f.co, &f.co, b"http/1.1").await;
        let resp = exchange(&mut s, format!("{}{rest}", head("front")).as_bytes()).await;
        let st = status_of(&resp);
        assert!(
            st.is_none() || st == Some(400),
            "{what}: {}",
            resp.lines().next().unwrap_or("")
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paths: Vec<String> = f.ve_up.seen.lock().unwrap()[before..]
        .iter()
        .map(|x| x.path.clone())
        .collect();
    assert!(
        paths.iter().all(|p| p == "/analytics/front"),
        "only the front request may cross: {paths:?}"
    );
    assert!(paths.len() <= 1, "{paths:?}");
    crossing_works(&f, &ch).await;
    f.stop().await;
}

/// A `Delegation-Chain` that is not UTF-8, a gzip-encoded body, and a chain hidden in a
/// base64 multipart part: each refused `malformed` and audited, nothing forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_bytes_and_hidden_chains_are_refused_and_audited() {
    let _one = ONE_AT_A_TIME.lock().await;
    use base64::Engine as _;
    let f = Federation::start().await;
    let ch = chain(&f);
    let before = seen(&f);
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let send = |headers: Vec<(http::HeaderName, http::HeaderValue)>, body: Vec<u8>| {
        let c = c.clone();
        let url = format!("https://{}/egress/analytics/run", f.co.internal);
        async move {
            let mut b = http::Request::builder().method(Method::POST).uri(url);
            for (k, v) in headers {
                b = b.header(k, v);
            }
            let resp = c
                .request(b.body(axum::body::Body::from(body)).unwrap())
                .await
                .unwrap();
            let st = resp.status().as_u16();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (
                st,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    let hv = |s: &str| http::HeaderValue::from_str(s).unwrap();
    let std_headers = |chain: http::HeaderValue| {
        vec![
            (http::HeaderName::from_static("delegation-chain"), chain),
            (
                http::HeaderName::from_static("fedgate-target"),
                hv(ANALYTICS),
            ),
            (
                http::HeaderName::from_static("fedgate-scope"),
                hv("analytics:run"),
            ),
        ]
    };
    let mut bad = ch.as_bytes().to_vec();
    bad.extend_from_slice(b"\xff\xfe");
    let (st, v) = send(
        std_headers(http::HeaderValue::from_bytes(&bad).unwrap()),
        b"{}".to_vec(),
    )
    .await;
    assert_eq!(
        (st, v["reason"].as_str()),
        (400, Some("malformed")),
        "non-UTF-8: {v}"
    );
    let mut h = std_headers(hv(&ch));
    h.push((http::header::CONTENT_ENCODING, hv("gzip")));
    let (st, v) = send(h, vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0]).await;
    assert_eq!(
        (st, v["reason"].as_str()),
        (400, Some("malformed")),
        "gzip: {v}"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{{\"c\":\"{ch}\"}}"));
    let wrapped: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let body = format!(
        "--b\r\nContent-Type: application/json\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        wrapped.join("\r\n")
    );
    let mut h = std_headers(hv(&ch));
    h.push((
        http::header::CONTENT_TYPE,
        hv("multipart/form-data; boundary=b"),
    ));
    let (st, v) = send(h, body.into_bytes()).await;
    assert_eq!(
        (st, v["reason"].as_str()),
        (400, Some("malformed")),
        "multipart: {v}"
    );
    assert_eq!(seen(&f), before, "nothing was forwarded");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let denials = records(f.co_gw())
        .into_iter()
        .filter(|r| r.decision == "deny" && r.reason.as_deref() == Some("malformed"))
        .count();
    assert_eq!(denials, 3, "each refusal is audited");
    f.stop().await;
}

/// 10,000 HTTP/2 streams opened and reset at once on one connection (the "rapid reset"
/// flood): the gateway closes the connection or shrugs it off, its memory does not grow with
/// the flood, and the next crossing goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_bounded() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Federation::start().await;
    let ch = chain(&f);
    crossing_works(&f, &ch).await;
    let rss0 = rss_kib();
    let partner = identity(
        &f.co.dir.join("gateway.pem"),
        &f.co.dir.join("keys/gateway-svid.key"),
    );
    let s = tls(f.ve.federation, Some(&partner), &f.co, &f.ve, b"h2").await;
    let (mut client, conn) = h2::client::handshake(s).await.unwrap();
    let driver = tokio::spawn(conn);
    let t0 = Instant::now();
    let mut sent = 0;
    let mut closed = false;
    for _ in 0..10_000 {
        if futures_ready(&mut client).await.is_err() {
            closed = true;
            break;
        }
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("https://{}/bundle", f.ve.federation))
            .body(())
            .unwrap();
        match client.send_request(req, true) {
            Ok((resp, _)) => {
                // Dropping the response future resets the stream at once.
                drop(resp);
                sent += 1;
            }
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    let grew = rss_kib().saturating_sub(rss0);
    eprintln!(
        "rapid reset: {sent} streams opened and reset in {:?}; connection closed by the gateway: {closed}; RSS +{grew} KiB",
        t0.elapsed()
    );
    assert!(grew < 64 * 1024, "RSS grew by {grew} KiB");
    crossing_works(&f, &ch).await;
    f.stop().await;
}

async fn futures_ready(c: &mut h2::client::SendRequest<bytes::Bytes>) -> Result<(), h2::Error> {
    std::future::poll_fn(|cx| c.poll_ready(cx)).await
}

/// A hundred thousand connections to the federation listener, each closed with a reset
/// (`SO_LINGER 0`) right after it opened, some after half a ClientHello: no connection is left
/// behind, memory does not grow with them, and a partner's crossing goes through afterwards.
/// (`FEDGATE_ABANDONED` overrides the count.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_thousand_abandoned_connections_leave_nothing_behind() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n: usize = std::env::var("FEDGATE_ABANDONED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let f = Federation::start().await;
    let ch = chain(&f);
    crossing_works(&f, &ch).await;
    let at = f.co.federation;
    let rss0 = rss_kib();
    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut hs = Vec::new();
    for _ in 0..64 {
        let next = next.clone();
        hs.push(tokio::spawn(async move {
            let mut failed = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return failed;
                }
                match tokio::net::TcpStream::connect(at).await {
                    Ok(mut s) => {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                        if i % 4 == 0 {
                            // Half a ClientHello.
                            let _ = s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await;
                        }
                        drop(s);
                    }
                    Err(_) => failed += 1,
                }
            }
        }));
    }
    let mut failed = 0;
    for h in hs {
        failed += h.await.unwrap();
    }
    let took = t0.elapsed();
    // The gateway notices each reset within its handshake timeout at the latest.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counts = loop {
        let c = f
            .co_gw()
            .gateway
            .connections(fedgate::server::tls::ListenerKind::Federation)
            .counts();
        if c.total <= 2 || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let grew = rss_kib().saturating_sub(rss0);
    eprintln!(
        "{n} connections opened and reset in {took:?} ({failed} connects failed); left open: {}; RSS +{grew} KiB",
        counts.total
    );
    assert!(counts.total <= 2, "{counts:?}");
    assert!(failed < n / 100, "{failed} connects failed");
    assert!(grew < 128 * 1024, "RSS grew by {grew} KiB");
    crossing_works(&f, &ch).await;
    f.stop().await;
}
