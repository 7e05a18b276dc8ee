//! A stand-in for a faulty or hostile partner gateway, for the demo and the tests: it holds the
//! partner's gateway SVID and signing key (as a compromised gateway would) and answers every
//! `/ingress` request itself, with a response that is wrong in a chosen way. The sending
//! gateway must refuse each of them (`bad_response_signature`, `response_too_large`, ...)
//! before its agent sees the body.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};

use crate::federation::httpsig::{self, Covered, CROSSING_HEADER};
use crate::jose::SigningKey;
use crate::server::tls::Identity;

/// How the stand-in's answer is wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum Tamper {
    /// A correct, signed answer (the control).
    None,
    /// Signs one body and sends another.
    SwapBody,
    /// Signs with a key that is not in the partner's bundle.
    ForeignKey,
    /// Sends no signature at all.
    NoSignature,
    /// Sends the signature (and digest) of an earlier crossing's answer.
    Replay,
    /// A correctly signed answer of this many bytes.
    Large(usize),
    /// A correctly signed answer with this content type and body.
    Body(String, String),
    /// A correctly signed answer with these extra headers.
    Headers(Vec<(String, String)>),
    /// A stream (no length) whose trailers sign other content than what was sent (`false`), or
    /// the content sent (`true`).
    Stream(bool),
    /// A server-sent-events stream with no trailers (nothing signed).
    StreamUnsigned,
    /// A correctly signed server-sent-events stream of this many bytes.
    StreamLarge(usize),
    /// A server-sent-events stream that sends one event and never ends.
    StreamStalled,
    /// A 204 without a body, signed in headers (`true`) or not signed at all (`false`).
    Bodiless(bool),
    /// Two `Content-Type` lines; the signature covers the first.
    DuplicateType,
    /// A correct answer whose signature's `created` parameter is replaced by this value.
    Created(i64),
    /// The partner gateway's own signed denial (429 `rate_limited`), naming a crossing id of its
    /// own (it refused before it read the token).
    Denial,
    /// A JSON answer without a length (chunked): trailers sign it (`true`), or there are no
    /// trailers at all (`false`).
    Chunked(bool),
    /// A chunked JSON answer of this many bytes, correctly signed in trailers.
    ChunkedLarge(usize),
    /// The head of a correct answer only after this long.
    SlowHead(std::time::Duration),
    /// The head at once, then a body that never ends.
    StalledBody,
    /// A correctly signed answer with `Content-Encoding: gzip`.
    Encoded,
}

struct Shared {
    key: SigningKey,
    foreign: SigningKey,
    tamper: Mutex<Tamper>,
    /// The last answer's signature fields, for `Replay`.
    last: Mutex<Option<(String, String, String, String)>>,
    /// How many requests it answered.
    answered: Mutex<usize>,
}

/// A running stand-in.
pub struct Hostile {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Hostile {
    pub fn set(&self, t: Tamper) {
        if let Ok(mut g) = self.shared.tamper.lock() {
            *g = t;
        }
    }

    pub fn answered(&self) -> usize {
        self.shared.answered.lock().map(|g| *g).unwrap_or(0)
    }

    /// Stops accepting and closes every connection (a client's pooled connection must not
    /// outlive the stand-in).
    pub fn stop(self) {
        self.task.abort();
        if let Ok(mut c) = self.conns.lock() {
            for h in c.drain(..) {
                h.abort();
            }
        }
    }
}

fn jti_of(authorization: &str) -> String {
    let token = authorization.strip_prefix("Bearer ").unwrap_or("");
    crate::jose::parse_compact(token)
        .ok()
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c.payload).ok())
        .and_then(|v| v["jti"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Frames with a pause before each data frame (a stream as an upstream produces it).
struct Frames(
    std::collections::VecDeque<http_body::Frame<Bytes>>,
    Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        let s = self.1.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep(std::time::Duration::from_millis(100)))
        });
        if s.as_mut().poll(cx).is_pending() {
            return std::task::Poll::Pending;
        }
        self.1 = None;
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// How a chunked answer's trailers are.
#[derive(Clone, Copy, PartialEq)]
enum Trailers {
    /// Signing what was sent.
    Honest,
    /// Signing other content.
    Forged,
    /// None at all.
    Missing,
}

#[allow(clippy::too_many_arguments)]
fn answer_stream(
    s: &Shared,
    req: &Request<Body>,
    crossing: &str,
    receipt: &str,
    authorization: &str,
    content_type: &'static str,
    chunks: Vec<Bytes>,
    trailers: Trailers,
) -> Response<Body> {
    let mut all = Vec::new();
    for c in &chunks {
        all.extend_from_slice(c);
    }
    if trailers == Trailers::Forged {
        all.extend_from_slice(b"data: forged\n\n");
    }
    let digest = httpsig::content_digest(&all);
    let c = Covered {
        status: 200,
        content_type,
        content_digest: &digest,
        crossing,
        receipt: Some(receipt),
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        authorization,
        digest_in_trailer: true,
    };
    let (input, sig) = httpsig::sign(&s.key, &c, crate::time::now()).unwrap_or_default();
    let mut t = HeaderMap::new();
    for (n, v) in [
        ("content-digest", digest),
        ("signature-input", input),
        ("signature", sig),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            t.insert(n, v);
        }
    }
    let mut frames: std::collections::VecDeque<http_body::Frame<Bytes>> =
        chunks.into_iter().map(http_body::Frame::data).collect();
    if trailers != Trailers::Missing {
        frames.push_back(http_body::Frame::trailers(t));
    }
    let mut r = Response::new(Body::new(Frames(frames, None)));
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    if trailers != Trailers::Missing {
        h.insert(
            "trailer",
            HeaderValue::from_static("content-digest, signature-input, signature"),
        );
    }
    if let Ok(v) = HeaderValue::from_str(receipt) {
        h.insert("fedgate-receipt", v);
    }
    if let Ok(v) = HeaderValue::from_str(crossing) {
        h.insert(CROSSING_HEADER, v);
    }
    r
}

fn answer(s: &Shared, req: &Request<Body>) -> Response<Body> {
    if let Ok(mut n) = s.answered.lock() {
        *n += 1;
    }
    let tamper = s.tamper.lock().map(|t| t.clone()).unwrap_or(Tamper::None);
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let crossing = jti_of(&authorization);
    let receipt = crate::federation::receipt::mint_receipt(
        &s.key,
        &crate::federation::receipt::ReceiptClaims {
            crossing: crossing.clone(),
            seq: 0,
            leaf: crate::crypto::b64url(&[0u8; 32]),
            iat: crate::time::now(),
            replica: None,
        },
    )
    .unwrap_or_default();
    let sse = || {
        vec![
            Bytes::from_static(b"data: 0\n\n"),
            Bytes::from_static(b"data: 1\n\n"),
        ]
    };
    let json = || {
        vec![
            Bytes::from_static(b"{\"status\":\"done\","),
            Bytes::from_static(b"\"result\":\"chunked\"}"),
            Bytes::from_static(b"\n"),
        ]
    };
    match &tamper {
        Tamper::Stream(honest) => {
            let t = if *honest {
                Trailers::Honest
            } else {
                Trailers::Forged
            };
            return answer_stream(
                s,
                req,
                &crossing,
                &receipt,
                &authorization,
                "text/event-stream",
                sse(),
                t,
            );
        }
        Tamper::StreamLarge(n) => {
            let ev = Bytes::from(format!("data: {}\n\n", "x".repeat(4000)));
            let chunks = vec![ev; n / 4008 + 1];
            return answer_stream(
                s,
                req,
                &crossing,
                &receipt,
                &authorization,
                "text/event-stream",
                chunks,
                Trailers::Honest,
            );
        }
        Tamper::StreamStalled => {
            let mut r = Response::new(Body::new(Stalled(Some(Bytes::from_static(
                b"data: 0\n\ndata: 1\n\n",
            )))));
            let h = r.headers_mut();
            h.insert(
                "content-type",
                HeaderValue::from_static("text/event-stream"),
            );
            if let Ok(v) = HeaderValue::from_str(&receipt) {
                h.insert("fedgate-receipt", v);
            }
            if let Ok(v) = HeaderValue::from_str(&crossing) {
                h.insert(CROSSING_HEADER, v);
            }
            return r;
        }
        Tamper::StreamUnsigned => {
            return answer_stream(
                s,
                req,
                &crossing,
                &receipt,
                &authorization,
                "text/event-stream",
                sse(),
                Trailers::Missing,
            );
        }
        Tamper::Chunked(signed) => {
            let t = if *signed {
                Trailers::Honest
            } else {
                Trailers::Missing
            };
            return answer_stream(
                s,
                req,
                &crossing,
                &receipt,
                &authorization,
                "application/json",
                json(),
                t,
            );
        }
        Tamper::ChunkedLarge(n) => {
            let chunks = vec![
                Bytes::from(vec![b' '; n / 2]),
                Bytes::from(vec![b' '; n - n / 2]),
            ];
            return answer_stream(
                s,
                req,
                &crossing,
                &receipt,
                &authorization,
                "application/json",
                chunks,
                Trailers::Honest,
            );
        }
        Tamper::Denial => return denial(s, req, &authorization),
        _ => {}
    }
    let status = match tamper {
        Tamper::Bodiless(_) => StatusCode::NO_CONTENT,
        _ => StatusCode::OK,
    };
    let (content_type, body): (String, Bytes) = match &tamper {
        Tamper::Bodiless(_) => ("application/json".into(), Bytes::new()),
        Tamper::Large(n) => ("application/json".into(), Bytes::from(vec![b' '; *n])),
        Tamper::Body(t, b) => (t.clone(), Bytes::from(b.clone())),
        _ => (
            "application/json".into(),
            Bytes::from_static(b"{\"status\":\"done\",\"result\":42}"),
        ),
    };
    let signed_body: Bytes = match tamper {
        Tamper::SwapBody => Bytes::from_static(b"{\"status\":\"done\",\"result\":0}"),
        _ => body.clone(),
    };
    let digest = httpsig::content_digest(&signed_body);
    let c = Covered {
        status: status.as_u16(),
        content_type: &content_type,
        content_digest: &digest,
        crossing: &crossing,
        receipt: Some(&receipt),
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        authorization: &authorization,
        digest_in_trailer: false,
    };
    let signer = if tamper == Tamper::ForeignKey {
        &s.foreign
    } else {
        &s.key
    };
    let (mut input, mut sig) = httpsig::sign(signer, &c, crate::time::now()).unwrap_or_default();
    let mut digest_header = digest.clone();
    if tamper == Tamper::Replay {
        if let Ok(last) = s.last.lock() {
            if let Some((i, sg, d, _)) = last.clone() {
                input = i;
                sig = sg;
                digest_header = d;
            }
        }
    } else if let Ok(mut last) = s.last.lock() {
        *last = Some((input.clone(), sig.clone(), digest.clone(), crossing.clone()));
    }
    if let Tamper::Created(t) = tamper {
        if let Some(i) = input.find("created=") {
            let end = input[i..].find(';').map_or(input.len(), |e| i + e);
            input = format!("{}created={t}{}", &input[..i], &input[end..]);
        }
    }
    let mut h = HeaderMap::new();
    let mut put = |n: &str, v: &str| {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(n, v);
        }
    };
    put("content-type", &content_type);
    put("fedgate-receipt", &receipt);
    put(CROSSING_HEADER, &crossing);
    if tamper == Tamper::Encoded {
        put("content-encoding", "gzip");
    }
    if tamper != Tamper::NoSignature && tamper != Tamper::Bodiless(false) {
        put("content-digest", &digest_header);
        put("signature-input", &input);
        put("signature", &sig);
    }
    if let Tamper::Headers(extra) = &tamper {
        for (n, v) in extra {
            put(n, v);
        }
    }
    if tamper == Tamper::DuplicateType {
        h.append("content-type", HeaderValue::from_static("text/html"));
    }
    let body = if tamper == Tamper::StalledBody {
        Body::new(Stalled(Some(body)))
    } else {
        Body::from(body)
    };
    let mut r = Response::new(body);
    *r.status_mut() = status;
    *r.headers_mut() = h;
    r
}

/// A body that sends its first bytes and then never ends.
struct Stalled(Option<Bytes>);

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(b) => {
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b.slice(..b.len() / 2)))))
            }
            None => std::task::Poll::Pending,
        }
    }
}

/// The partner gateway's own denial, signed, under a crossing id it made up.
fn denial(s: &Shared, req: &Request<Body>, authorization: &str) -> Response<Body> {
    let crossing = crate::crypto::random_id();
    let body = serde_json::json!({"error": "rate limited", "reason": "rate_limited", "crossing": crossing})
        .to_string();
    let digest = httpsig::content_digest(body.as_bytes());
    let c = Covered {
        status: 429,
        content_type: "application/json",
        content_digest: &digest,
        crossing: &crossing,
        receipt: None,
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query().unwrap_or(""),
        authorization,
        digest_in_trailer: false,
    };
    let (input, sig) = httpsig::sign(&s.key, &c, crate::time::now()).unwrap_or_default();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = r.headers_mut();
    for (n, v) in [
        ("content-type", "application/json".to_string()),
        (CROSSING_HEADER, crossing.clone()),
        ("content-digest", digest),
        ("signature-input", input),
        ("signature", sig),
    ] {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(n, v);
        }
    }
    r
}

/// Serves the stand-in on `listener` with the partner's gateway SVID (`identity`), signing with
/// the partner's gateway key `key`.
pub async fn start(
    listener: std::net::TcpListener,
    identity: Identity,
    key: SigningKey,
) -> Result<Hostile, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let l = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let cfg = rustls::ServerConfig::builder_with_provider(crate::server::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| e.to_string())?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let (foreign, _) = SigningKey::generate_p256().map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared {
        key,
        foreign,
        tamper: Mutex::new(Tamper::None),
        last: Mutex::new(None),
        answered: Mutex::new(0),
    });
    let s2 = shared.clone();
    let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
    let c2 = conns.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let s = s2.clone();
            let h = tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let _ = http_body_util::BodyExt::collect(body).await;
                        let req = Request::from_parts(parts, Body::empty());
                        let slow = match s.tamper.lock().map(|t| t.clone()) {
                            Ok(Tamper::SlowHead(d)) => Some(d),
                            _ => None,
                        };
                        if let Some(d) = slow {
                            tokio::time::sleep(d).await;
                        }
                        Ok::<_, std::convert::Infallible>(answer(&s, &req))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
            if let Ok(mut c) = c2.lock() {
                c.retain(|h| !h.is_finished());
                c.push(h);
            }
        }
    });
    Ok(Hostile {
        addr,
        shared,
        task,
        conns,
    })
}
