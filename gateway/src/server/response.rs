//! Responses across the boundary. The receiving gateway signs every response it returns on
//! `/ingress` (RFC 9421, `federation::httpsig`) and records the body's digest in its outcome
//! record; the sending gateway treats the partner as untrusted: it verifies that signature
//! against the partner's bundle before the agent gets the body, enforces the route's response
//! rules (content types, size, JSON Schema), lets only an allow-list of headers through, and
//! records the digest of what it received, so the two logs can be compared.
//!
//! The signer signs a body with a known length (or none: 204, 304, HEAD) in headers, and a body
//! without a length (chunked, server-sent events) in trailers once it has been sent. The
//! verifier reads every answer whole — within the size limit, the time limit and the shared
//! buffering budget — and checks it before the agent gets a byte, unless the route says
//! `stream = true`: then the answer passes on as it comes, one chunk behind, and the last chunk
//! is released only once the trailers verify (otherwise the stream is cut with an error, so the
//! agent never sees a complete body that was not signed). The partner cannot choose streaming:
//! only the agreement can.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use std::future::Future as _;

use http_body::{Frame, SizeHint};

use super::deny::Denial;
use super::state::Gateway;
use super::tls::ConnInfo;
use crate::agreement::ResponseRules;
use crate::audit::Record;
use crate::federation::httpsig::{self, Covered, CROSSING_HEADER};
use crate::reason::Reason;
use crate::spiffe::Bundle;

/// An outcome record the ingress handler leaves for the signing layer to complete with the
/// response digest and append.
#[derive(Clone)]
pub struct PendingOutcome(pub Record);

/// The trailers a streamed signed response ends with.
const TRAILERS: &str = "content-digest, signature-input, signature";
/// Content type given to a response that has none (the signature covers it).
const DEFAULT_TYPE: &str = "application/octet-stream";
/// The largest answer without a receipt the sender accepts: such an answer is the partner
/// gateway's own denial (`{"error","reason","crossing"}`), a few hundred bytes.
pub const MAX_DENIAL_BYTES: usize = 16 * 1024;
/// Fields a signature covers or carries: each must appear at most once (RFC 9421 would join
/// repeated lines, and a second line the signer never saw must not reach the agent) and be
/// visible ASCII.
const SINGLE: &[&str] = &[
    "content-type",
    "content-digest",
    "content-encoding",
    "signature",
    "signature-input",
    "fedgate-receipt",
    CROSSING_HEADER,
];

/// Response headers a partner may send on to the agent (besides a route's `allow_headers`):
/// representation metadata and caching, nothing that sets state in the agent (cookies),
/// authenticates, routes, or describes the partner's internals. `Content-Digest` is the
/// sender's own (of what it verified), never the partner's.
const ALLOWED: &[&str] = &[
    "content-type",
    "content-language",
    "content-disposition",
    "cache-control",
    "etag",
    "expires",
    "last-modified",
    "vary",
    "retry-after",
    "date",
    "fedgate-receipt",
    CROSSING_HEADER,
];

/// A response that cannot have a body (RFC 9110 section 6.4.1): signed and checked in headers
/// with the digest of the empty body.
fn bodiless(status: StatusCode, head: bool) -> bool {
    head || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
}

/// Whether the signer sends the body as a stream (signed in trailers).
fn unbounded(h: &HeaderMap) -> bool {
    let sse = h
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|t| t.to_ascii_lowercase().starts_with("text/event-stream"))
        .unwrap_or(false);
    sse || h.get(http::header::CONTENT_LENGTH).is_none()
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(String::from)
}

/// Every field of `SINGLE` appears at most once, as visible ASCII.
fn single_fields(h: &HeaderMap) -> Result<(), String> {
    for n in SINGLE {
        let mut values = h.get_all(*n).iter();
        if let Some(v) = values.next() {
            if values.next().is_some() {
                return Err(format!("{n} appears more than once"));
            }
            if v.to_str().is_err() {
                return Err(format!("{n} is not visible ASCII"));
            }
        }
    }
    Ok(())
}

fn base_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

// ---- the receiving side ----

/// The request values a response signature covers, captured before the handler runs.
#[derive(Clone)]
struct Answering {
    method: String,
    path: String,
    query: String,
    authorization: String,
    head: bool,
}

/// Middleware on `/ingress`: signs the handler's response (any response to an authenticated
/// peer, denials included) and completes the outcome record with the body's digest.
pub async fn sign_ingress(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let authenticated = req
        .extensions()
        .get::<ConnInfo>()
        .map(|c| c.peer.is_some())
        .unwrap_or(false);
    let answering = Answering {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        authorization: header_str(req.headers(), "authorization").unwrap_or_default(),
        head: req.method() == http::Method::HEAD,
    };
    let mut resp = next.run(req).await;
    let pending = resp.extensions_mut().remove::<PendingOutcome>();
    // Unauthenticated refusals are not signed: nobody verifies them, and signing would turn
    // every anonymous request into a signature's worth of CPU.
    if !authenticated {
        return resp;
    }
    let crossing = header_str(resp.headers(), CROSSING_HEADER).unwrap_or_default();
    // The upstream's answer must be one the signature can describe: one content type, in
    // visible ASCII. Anything else is replaced by a signed denial.
    if let Err(why) = single_fields(resp.headers()) {
        let why = format!("the upstream's answer is ambiguous: {why}");
        return signed_denial(
            &gw,
            &answering,
            &crossing,
            pending,
            Reason::PartnerUnavailable,
            &why,
        )
        .await;
    }
    if !resp.headers().contains_key(http::header::CONTENT_TYPE) {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(DEFAULT_TYPE),
        );
    }
    if !bodiless(resp.status(), answering.head) && unbounded(resp.headers()) {
        return sign_streamed(gw, answering, resp, pending);
    }
    let (mut parts, body) = resp.into_parts();
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(gw.cfg.upstream_timeout as u64);
    match super::proxy::read_whole(body, gw.cfg.max_body_bytes, deadline, &gw.buffer_budget).await {
        Ok(w) => {
            if let Some(PendingOutcome(mut o)) = pending {
                o.response_digest = Some(httpsig::content_digest(&w.bytes));
                super::append_later(&gw, o);
            }
            parts.headers.remove(http::header::CONTENT_LENGTH);
            sign_buffered(&gw, &answering, parts, w.bytes, w.permit)
        }
        Err(e) => {
            let (reason, why) = match e {
                super::proxy::BodyError::TooLarge => {
                    (Reason::TooLarge, "the upstream's answer is too large")
                }
                super::proxy::BodyError::Busy => (
                    Reason::RateLimited,
                    "the gateway is buffering too many answers; retry later",
                ),
                _ => (
                    Reason::PartnerUnavailable,
                    "the upstream's answer did not arrive whole",
                ),
            };
            signed_denial(&gw, &answering, &crossing, pending, reason, why).await
        }
    }
}

/// Replaces an answer the gateway cannot pass on by its own signed denial, and records the
/// outcome with the denial's status, reason and digest (what was really sent).
async fn signed_denial(
    gw: &Arc<Gateway>,
    a: &Answering,
    crossing: &str,
    pending: Option<PendingOutcome>,
    reason: Reason,
    why: &str,
) -> Response {
    let d = Denial::new(reason, why, crossing).into_response();
    let (p, b) = d.into_parts();
    let bytes = super::proxy::read_body(b, MAX_DENIAL_BYTES)
        .await
        .unwrap_or_default();
    if let Some(PendingOutcome(mut o)) = pending {
        o.status = Some(p.status.as_u16());
        o.reason = Some(reason.code().into());
        o.response_digest = Some(httpsig::content_digest(&bytes));
        super::append_later(gw, o);
    }
    sign_buffered(gw, a, p, bytes, None)
}

fn sign_buffered(
    gw: &Gateway,
    a: &Answering,
    mut parts: http::response::Parts,
    body: Bytes,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Response {
    let digest = httpsig::content_digest(&body);
    let crossing = header_str(&parts.headers, CROSSING_HEADER).unwrap_or_default();
    let receipt = header_str(&parts.headers, "fedgate-receipt");
    let content_type = header_str(&parts.headers, "content-type").unwrap_or_default();
    let key = gw.keys.signing();
    let c = Covered {
        status: parts.status.as_u16(),
        content_type: &content_type,
        content_digest: &digest,
        crossing: &crossing,
        receipt: receipt.as_deref(),
        method: &a.method,
        path: &a.path,
        query: &a.query,
        authorization: &a.authorization,
        digest_in_trailer: false,
    };
    match httpsig::sign(&key, &c, crate::time::now()) {
        Ok((input, sig)) => {
            for (n, v) in [
                ("content-digest", digest.as_str()),
                ("signature-input", input.as_str()),
                ("signature", sig.as_str()),
            ] {
                if let Ok(v) = HeaderValue::from_str(v) {
                    parts.headers.insert(n, v);
                }
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot sign a response"),
    }
    Response::from_parts(parts, super::proxy::body_holding(body, permit))
}

fn sign_streamed(
    gw: Arc<Gateway>,
    a: Answering,
    resp: Response,
    pending: Option<PendingOutcome>,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts
        .headers
        .insert(http::header::TRAILER, HeaderValue::from_static(TRAILERS));
    let s = SigningBody {
        inner: body,
        hasher: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        seen: 0,
        limit: gw.cfg.max_body_bytes,
        status: parts.status.as_u16(),
        crossing: header_str(&parts.headers, CROSSING_HEADER).unwrap_or_default(),
        receipt: header_str(&parts.headers, "fedgate-receipt"),
        content_type: header_str(&parts.headers, "content-type").unwrap_or_default(),
        answering: a,
        pending,
        gw,
        done: false,
    };
    Response::from_parts(parts, Body::new(s))
}

fn running_digest(h: &aws_lc_rs::digest::Context) -> String {
    let d = h.clone().finish();
    let mut raw = [0u8; 32];
    raw.copy_from_slice(d.as_ref());
    httpsig::digest_value(&raw)
}

/// A streamed response being signed: passes data on, hashes it, and ends with trailers
/// carrying the digest and the signature. Its outcome record is appended however the stream
/// ends: with the trailers, on an error (with its reason), or when dropped early (the sender
/// went away: 499), each time with the digest of what was sent.
struct SigningBody {
    inner: Body,
    hasher: aws_lc_rs::digest::Context,
    seen: usize,
    limit: usize,
    status: u16,
    crossing: String,
    receipt: Option<String>,
    content_type: String,
    answering: Answering,
    pending: Option<PendingOutcome>,
    gw: Arc<Gateway>,
    done: bool,
}

impl SigningBody {
    fn trailers(&mut self) -> HeaderMap {
        let digest = running_digest(&self.hasher);
        let a = &self.answering;
        let c = Covered {
            status: self.status,
            content_type: &self.content_type,
            content_digest: &digest,
            crossing: &self.crossing,
            receipt: self.receipt.as_deref(),
            method: &a.method,
            path: &a.path,
            query: &a.query,
            authorization: &a.authorization,
            digest_in_trailer: true,
        };
        let mut t = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&digest) {
            t.insert("content-digest", v);
        }
        match httpsig::sign(&self.gw.keys.signing(), &c, crate::time::now()) {
            Ok((input, sig)) => {
                if let (Ok(i), Ok(s)) = (HeaderValue::from_str(&input), HeaderValue::from_str(&sig))
                {
                    t.insert("signature-input", i);
                    t.insert("signature", s);
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot sign a streamed response"),
        }
        self.record(None, None);
        t
    }

    /// Appends the outcome (once): `status` overrides what was sent (499: the sender left).
    fn record(&mut self, reason: Option<Reason>, status: Option<u16>) {
        if let Some(PendingOutcome(mut o)) = self.pending.take() {
            o.response_digest = Some(running_digest(&self.hasher));
            if let Some(r) = reason {
                o.reason = Some(r.code().into());
            }
            if let Some(s) = status {
                o.status = Some(s);
            }
            super::append_later(&self.gw, o);
        }
    }
}

impl Drop for SigningBody {
    fn drop(&mut self) {
        self.record(None, Some(499));
    }
}

impl http_body::Body for SigningBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(f))) => match f.into_data() {
                    Ok(d) => {
                        self.seen += d.len();
                        if self.seen > self.limit {
                            self.done = true;
                            self.record(Some(Reason::TooLarge), Some(502));
                            return Poll::Ready(Some(Err(axum::Error::new(
                                "the upstream's stream is larger than the limit",
                            ))));
                        }
                        self.hasher.update(&d);
                        return Poll::Ready(Some(Ok(Frame::data(d))));
                    }
                    // The upstream's own trailers do not cross.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    self.record(Some(Reason::PartnerUnavailable), Some(502));
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    let t = self.trailers();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

// ---- the sending side ----

/// What the sending gateway expects of the partner's answer to one crossing.
pub struct Expected {
    pub crossing: String,
    /// The request as sent to the partner: method, path (with `/ingress`), raw query, and the
    /// `Authorization` value carrying the federation token.
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: String,
    pub partner: Arc<Bundle>,
    pub rules: ResponseRules,
    /// The route's `max_bytes`, never above the gateway's own `[limits] max_response_bytes`.
    pub max_bytes: usize,
    pub deadline: tokio::time::Instant,
    /// The JSON-RPC id of an MCP or A2A call: refusals answer in JSON-RPC's shape.
    pub rpc: Option<serde_json::Value>,
    /// An A2A call: the outcome records the task id the answer names.
    pub a2a: bool,
    /// An A2AAgentCard fetch: the card must verify against the partner's bundle, name this URL
    /// (the partner's boundary for the agent) and list only these skills (empty: any).
    pub card: Option<(String, Vec<String>)>,
}

/// Why a partner's response is refused.
type Refusal = (Reason, String);

/// The outcome record of a crossing whose answer is being checked: appended exactly once,
/// with the verdict, or — if the check is abandoned (the agent went away, a panic) — with 499.
struct Pending {
    gw: Arc<Gateway>,
    record: Option<Record>,
}

impl Pending {
    fn take(&mut self) -> Record {
        self.record.take().unwrap_or_default()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut o) = self.record.take() {
            o.status = Some(499);
            super::append_later(&self.gw, o);
        }
    }
}

/// Checks a partner's response and builds the agent's; completes and appends `outcome`
/// (status, reason, response digest) once the verdict is known.
pub async fn deliver(
    gw: Arc<Gateway>,
    e: Expected,
    resp: http::Response<hyper::body::Incoming>,
    outcome: Record,
) -> Response {
    let mut pending = Pending {
        gw: gw.clone(),
        record: Some(outcome),
    };
    let (parts, body) = resp.into_parts();
    macro_rules! refuse {
        ($reason:expr, $msg:expr, $digest:expr) => {
            return refuse(&gw, &e, pending.take(), $reason, $msg, $digest)
        };
    }
    if let Err(m) = single_fields(&parts.headers) {
        refuse!(Reason::BadResponseSignature, m, None);
    }
    let Some(ct) = header_str(&parts.headers, "content-type") else {
        // The honest signer always sends one (the signature covers it).
        refuse!(
            Reason::BadResponseSignature,
            "the answer has no Content-Type".into(),
            None
        );
    };
    if let Some(enc) = header_str(&parts.headers, "content-encoding") {
        if !enc.trim().eq_ignore_ascii_case("identity") {
            let m = format!("the answer is encoded ({enc}); fedgate asks partners for identity");
            refuse!(Reason::ResponseInvalid, m, None);
        }
    }
    // An answer with a receipt is the partner's upstream speaking, under the route's rules; one
    // without is the partner gateway's own denial, which has one shape.
    let answer = parts.headers.contains_key("fedgate-receipt");
    let bodiless = bodiless(parts.status, e.method == "HEAD");
    let (rules, limit) = if answer {
        // A type describes a body: an answer without one (204, 304, HEAD) has none to check.
        if !bodiless && !e.rules.allows_type(&ct) {
            let m = format!("content type {ct} is not allowed on this route");
            refuse!(Reason::ResponseInvalid, m, None);
        }
        (e.rules.clone(), e.max_bytes)
    } else {
        if parts.status.as_u16() < 400 || base_type(&ct) != "application/json" {
            let m = format!(
                "an answer without a receipt must be the partner gateway's denial (JSON, 4xx or 5xx), not {} {ct}",
                parts.status.as_u16()
            );
            refuse!(Reason::ResponseInvalid, m, None);
        }
        (
            ResponseRules::default(),
            MAX_DENIAL_BYTES.min(e.max_bytes.max(1)),
        )
    };
    if answer
        && rules.stream
        && e.card.is_none()
        && !bodiless
        && parts.headers.get(http::header::CONTENT_LENGTH).is_none()
    {
        let o = pending.take();
        return deliver_streamed(gw, e, parts, body, o);
    }
    // Refuse what is too large before reading it.
    if let Some(n) = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if n > limit && !bodiless {
            let m = format!("{n} bytes, more than the {limit} allowed");
            refuse!(Reason::ResponseTooLarge, m, None);
        }
    }
    let read = super::proxy::read_whole(body, limit, e.deadline, &gw.buffer_budget).await;
    let whole = match read {
        Ok(w) => w,
        Err(super::proxy::BodyError::TooLarge) => {
            refuse!(
                Reason::ResponseTooLarge,
                format!("more than the {limit} bytes allowed"),
                None
            );
        }
        Err(super::proxy::BodyError::Busy) => {
            let m = "the gateway is buffering too many answers; the partner's answer was dropped"
                .to_string();
            refuse!(Reason::RateLimited, m, None);
        }
        Err(super::proxy::BodyError::TimedOut) => {
            let m = "the partner's answer did not arrive in time".to_string();
            refuse!(Reason::PartnerUnavailable, m, None);
        }
        Err(super::proxy::BodyError::Read(x)) => {
            let m = format!("the partner's answer broke off: {x}");
            refuse!(Reason::PartnerUnavailable, m, None);
        }
    };
    let digest = httpsig::content_digest(&whole.bytes);
    // The signature travels in headers (a body with a length, or none) or in trailers (a
    // chunked body), never in both.
    let in_headers = parts.headers.contains_key("signature-input");
    let checked = match (&whole.trailers, in_headers) {
        (Some(t), true) if t.contains_key("signature-input") || t.contains_key("signature") => {
            Err((
                Reason::BadResponseSignature,
                "signature fields in both headers and trailers".to_string(),
            ))
        }
        (Some(t), false) => single_fields(t)
            .map_err(|m| (Reason::BadResponseSignature, format!("trailers: {m}")))
            .and_then(|_| check_signature(&e, &parts, t, &digest, true, answer)),
        _ => check_signature(&e, &parts, &parts.headers, &digest, false, answer),
    };
    if let Err((r, m)) = checked {
        refuse!(r, m, Some(digest));
    }
    if let Some(schema) = &rules.schema {
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&whole.bytes);
        let verdict = match json {
            Ok(v) => schema.check(&v),
            Err(x) => Err(format!("not JSON: {x}")),
        };
        if let Err(m) = verdict {
            refuse!(
                Reason::ResponseInvalid,
                format!("the body breaks the route's schema: {m}"),
                Some(digest)
            );
        }
    }
    if let (true, Some((url, skills))) = (answer, &e.card) {
        if parts.status.is_success() {
            let card: Result<serde_json::Value, _> = serde_json::from_slice(&whole.bytes);
            let verdict = match card {
                Ok(c) => crate::server::protocol::a2a::verify_card(&c, &e.partner, url, skills),
                Err(x) => Err(format!("not JSON: {x}")),
            };
            if let Err(m) = verdict {
                refuse!(
                    Reason::ResponseInvalid,
                    format!("the partner's AgentCard is refused: {m}"),
                    Some(digest)
                );
            }
        }
    }
    let mut o = pending.take();
    o.status = Some(parts.status.as_u16());
    o.response_digest = Some(digest.clone());
    if e.a2a && answer {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&whole.bytes) {
            if let Some(task) = crate::server::protocol::a2a::task_in_response(&v) {
                let p = o
                    .protocol
                    .get_or_insert_with(|| serde_json::json!({"name": "a2a"}));
                p["task"] = serde_json::Value::String(task);
            }
        }
    }
    finish_outcome(&gw, o, &parts.headers, &e);
    let mut headers = agent_headers(&parts.headers, &rules);
    if let Ok(v) = HeaderValue::from_str(&digest) {
        headers.insert("content-digest", v);
    }
    let mut out = Response::new(super::proxy::body_holding(whole.bytes, whole.permit));
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    out
}

/// Verifies the partner's signature: over `digest` (what we computed) with the signature
/// fields from `fields` (headers, or trailers for a stream). An answer (with a receipt) must
/// name this crossing; a denial may name another id (the partner gateway refused before it
/// read the token), since the signature covers our own request and token either way.
fn check_signature(
    e: &Expected,
    parts: &http::response::Parts,
    fields: &HeaderMap,
    digest: &str,
    in_trailer: bool,
    answer: bool,
) -> Result<(), Refusal> {
    let sent = header_str(fields, "content-digest").unwrap_or_default();
    if sent.is_empty() {
        return Err((
            Reason::BadResponseSignature,
            "no Content-Digest for the body".into(),
        ));
    }
    if !crate::crypto::ct_eq(sent.as_bytes(), digest.as_bytes()) {
        return Err((
            Reason::BadResponseSignature,
            "the body does not match its Content-Digest".into(),
        ));
    }
    let content_type = header_str(&parts.headers, "content-type").unwrap_or_default();
    let crossing = header_str(&parts.headers, CROSSING_HEADER).unwrap_or_default();
    if answer && crossing != e.crossing {
        return Err((
            Reason::BadResponseSignature,
            format!("the answer names crossing {crossing:?}, not this one"),
        ));
    }
    let receipt = header_str(&parts.headers, "fedgate-receipt");
    let c = Covered {
        status: parts.status.as_u16(),
        content_type: &content_type,
        content_digest: digest,
        crossing: &crossing,
        receipt: receipt.as_deref(),
        method: &e.method,
        path: &e.path,
        query: &e.query,
        authorization: &e.authorization,
        digest_in_trailer: in_trailer,
    };
    httpsig::verify(
        &e.partner,
        &c,
        header_str(fields, "signature-input").as_deref(),
        header_str(fields, "signature").as_deref(),
        crate::time::now(),
    )
    .map_err(|x| (Reason::BadResponseSignature, x.to_string()))
}

/// The headers the agent gets: the allow-list and the route's extras, less anything the
/// partner's `Connection` names; nothing else.
pub fn agent_headers(partner: &HeaderMap, rules: &ResponseRules) -> HeaderMap {
    let named = crate::hygiene::connection_named(partner);
    let mut out = HeaderMap::with_capacity(partner.len());
    for (name, value) in partner.iter() {
        let n = name.as_str();
        if named.contains(n.as_bytes()) {
            continue;
        }
        if ALLOWED.contains(&n) || rules.allow_headers.iter().any(|a| a == n) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn refuse(
    gw: &Arc<Gateway>,
    e: &Expected,
    mut outcome: Record,
    reason: Reason,
    message: String,
    digest: Option<String>,
) -> Response {
    tracing::warn!(crossing = %e.crossing, reason = %reason, detail = %message, "partner response refused");
    gw.metrics.inc(
        "fedgate_partner_responses_refused_total",
        &[("reason", reason.code())],
    );
    outcome.status = Some(reason.http_status());
    outcome.reason = Some(reason.code().into());
    outcome.response_digest = digest;
    super::append_later(gw, outcome);
    Denial::new(reason, message, &e.crossing)
        .described()
        .rpc(e.rpc.as_ref())
        .into_response()
}
/// Keeps the partner's receipt (verified) in the outcome record and appends it.
fn finish_outcome(gw: &Arc<Gateway>, mut o: Record, headers: &HeaderMap, e: &Expected) {
    if let Some(receipt) = header_str(headers, "fedgate-receipt") {
        let valid = crate::federation::receipt::verify_receipt(&receipt, &e.partner)
            .map(|c| c.crossing == e.crossing)
            .unwrap_or(false);
        if !valid {
            tracing::warn!(crossing = %e.crossing, "partner receipt does not verify");
        }
        o.receipt = Some(receipt);
        o.receipt_valid = Some(valid);
    }
    super::append_later(gw, o);
}

fn deliver_streamed(
    gw: Arc<Gateway>,
    e: Expected,
    parts: http::response::Parts,
    body: hyper::body::Incoming,
    outcome: Record,
) -> Response {
    // The partner's digest is not passed on: the agent gets a stream that is checked at its
    // end, and no digest we have not verified.
    let headers = agent_headers(&parts.headers, &e.rules);
    let status = parts.status;
    let v = VerifyingBody {
        inner: body,
        held: None,
        hasher: aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256),
        seen: 0,
        parts: Some(parts),
        expected: e,
        outcome: Some(outcome),
        gw,
        state: Stream::Flowing,
        sleep: None,
    };
    let mut out = Response::new(Body::new(v));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

#[derive(PartialEq)]
enum Stream {
    Flowing,
    /// Verified: the held chunk goes out, then the end.
    Releasing,
    Done,
}

/// A partner's stream on its way to the agent, one chunk behind: the held chunk is released
/// when the next arrives, and the last only once the trailers' signature verifies.
struct VerifyingBody {
    inner: hyper::body::Incoming,
    held: Option<Bytes>,
    hasher: aws_lc_rs::digest::Context,
    seen: usize,
    parts: Option<http::response::Parts>,
    expected: Expected,
    outcome: Option<Record>,
    gw: Arc<Gateway>,
    state: Stream,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl VerifyingBody {
    fn fail(&mut self, reason: Reason, m: String, digest: Option<String>) -> axum::Error {
        self.state = Stream::Done;
        self.held = None;
        if let Some(mut o) = self.outcome.take() {
            tracing::warn!(crossing = %self.expected.crossing, reason = %reason, detail = %m, "partner stream refused");
            self.gw.metrics.inc(
                "fedgate_partner_responses_refused_total",
                &[("reason", reason.code())],
            );
            o.status = Some(reason.http_status());
            o.reason = Some(reason.code().into());
            o.response_digest = digest;
            super::append_later(&self.gw, o);
        }
        axum::Error::new(format!("{reason}: {m}"))
    }

    fn digest(&self) -> String {
        running_digest(&self.hasher)
    }
}

impl http_body::Body for VerifyingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            match self.state {
                Stream::Done => return Poll::Ready(None),
                Stream::Releasing => {
                    return match self.held.take() {
                        Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                        None => {
                            self.state = Stream::Done;
                            Poll::Ready(None)
                        }
                    };
                }
                Stream::Flowing => {}
            }
            let deadline = self.expected.deadline;
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if sleep.as_mut().poll(cx).is_ready() {
                let m = "the partner's stream did not end in time".to_string();
                return Poll::Ready(Some(Err(self.fail(Reason::PartnerUnavailable, m, None))));
            }
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(x))) => {
                    let m = format!("the partner's stream broke off: {x}");
                    return Poll::Ready(Some(Err(self.fail(Reason::PartnerUnavailable, m, None))));
                }
                Poll::Ready(Some(Ok(f))) => {
                    if f.is_data() {
                        let Ok(d) = f.into_data() else { continue };
                        self.seen += d.len();
                        if self.seen > self.expected.max_bytes {
                            let m =
                                format!("more than the {} bytes allowed", self.expected.max_bytes);
                            return Poll::Ready(Some(Err(self.fail(
                                Reason::ResponseTooLarge,
                                m,
                                None,
                            ))));
                        }
                        self.hasher.update(&d);
                        let prev = self.held.replace(d);
                        if let Some(p) = prev {
                            return Poll::Ready(Some(Ok(Frame::data(p))));
                        }
                        continue;
                    }
                    let Ok(trailers) = f.into_trailers() else {
                        continue;
                    };
                    let digest = self.digest();
                    let Some(parts) = self.parts.take() else {
                        let m = "a second trailer section".to_string();
                        return Poll::Ready(Some(Err(self.fail(
                            Reason::BadResponseSignature,
                            m,
                            Some(digest),
                        ))));
                    };
                    let checked = single_fields(&trailers)
                        .map_err(|m| (Reason::BadResponseSignature, format!("trailers: {m}")))
                        .and_then(|_| {
                            check_signature(&self.expected, &parts, &trailers, &digest, true, true)
                        });
                    match checked {
                        Ok(()) => {
                            if let Some(mut o) = self.outcome.take() {
                                o.status = Some(parts.status.as_u16());
                                o.response_digest = Some(digest);
                                finish_outcome(&self.gw, o, &parts.headers, &self.expected);
                            }
                            self.state = Stream::Releasing;
                            continue;
                        }
                        Err((r, m)) => {
                            return Poll::Ready(Some(Err(self.fail(r, m, Some(digest)))));
                        }
                    }
                }
                Poll::Ready(None) => {
                    let digest = self.digest();
                    let m = "the stream ended without a signature".to_string();
                    return Poll::Ready(Some(Err(self.fail(
                        Reason::BadResponseSignature,
                        m,
                        Some(digest),
                    ))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == Stream::Done
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for VerifyingBody {
    fn drop(&mut self) {
        // The agent went away before the end: the outcome still goes to the log.
        // (499: the agent closed the request, nginx's convention.)
        if let Some(mut o) = self.outcome.take() {
            o.status = Some(499);
            super::append_later(&self.gw, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_agent_gets_only_the_allow_list_less_what_connection_names() {
        let partner = hm(&[
            ("connection", "cache-control, x-request-id"),
            ("cache-control", "no-store"),
            ("x-request-id", "r1"),
            ("etag", "\"v1\""),
            ("set-cookie", "s=1"),
            ("content-digest", "sha-256=:AAAA:"),
            ("content-encoding", "gzip"),
            ("x-internal-debug", "secret"),
            ("alt-svc", "h3=\":443\""),
        ]);
        let rules = ResponseRules {
            allow_headers: vec!["x-request-id".into()],
            ..Default::default()
        };
        let out = agent_headers(&partner, &rules);
        assert_eq!(
            out.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["etag"]
        );
    }

    #[test]
    fn covered_fields_must_be_single_and_visible_ascii() {
        assert!(single_fields(&hm(&[("content-type", "application/json")])).is_ok());
        assert!(single_fields(&hm(&[
            ("content-type", "application/json"),
            ("content-type", "text/html")
        ]))
        .is_err());
        assert!(
            single_fields(&hm(&[("fedgate-crossing", "a"), ("fedgate-crossing", "b")])).is_err()
        );
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_bytes(b"application/json\xe9").unwrap(),
        );
        assert!(single_fields(&h).is_err());
    }

    #[test]
    fn bodiless_statuses() {
        assert!(bodiless(StatusCode::NO_CONTENT, false));
        assert!(bodiless(StatusCode::NOT_MODIFIED, false));
        assert!(bodiless(StatusCode::OK, true));
        assert!(!bodiless(StatusCode::OK, false));
        assert!(!bodiless(StatusCode::NOT_FOUND, false));
    }
}
