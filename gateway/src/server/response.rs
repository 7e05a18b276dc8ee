//! Responses across the boundary. The receiving gateway signs every response it returns on
//! `/ingress` (RFC 9421, `federation::httpsig`) and records the body's digest in its outcome
//! record; the sending gateway treats the partner as untrusted: it verifies that signature
//! against the partner's bundle before the agent gets the body, enforces the route's response
//! rules (content types, size, JSON Schema), lets only an allow-list of headers through, and
//! records the digest of what it received, so the two logs can be compared.
//!
//! A body with a known length is read whole (within the limit and the time limit), checked,
//! then delivered. A streamed body (no length, or server-sent events) is passed on as it comes,
//! one chunk behind: the signature and digest arrive in trailers, and the last chunk is
//! released only once they verify; if they do not, the stream is cut with an error, so the
//! agent never sees a complete body that was not signed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
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

/// Response headers a partner may send on to the agent (besides a route's `allow_headers`):
/// representation metadata and caching, nothing that sets state in the agent (cookies),
/// authenticates, routes, or describes the partner's internals.
const ALLOWED: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "content-digest",
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

fn is_streamed(h: &HeaderMap) -> bool {
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

// ---- the receiving side ----

/// The request values a response signature covers, captured before the handler runs.
#[derive(Clone)]
struct Answering {
    method: String,
    path: String,
    query: String,
    authorization: String,
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
    };
    let mut resp = next.run(req).await;
    let pending = resp.extensions_mut().remove::<PendingOutcome>();
    // Unauthenticated refusals are not signed: nobody verifies them, and signing would turn
    // every anonymous request into a signature's worth of CPU.
    if !authenticated {
        return resp;
    }
    if !resp.headers().contains_key(http::header::CONTENT_TYPE) {
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(DEFAULT_TYPE),
        );
    }
    if is_streamed(resp.headers()) {
        return sign_streamed(gw, answering, resp, pending);
    }
    let (mut parts, body) = resp.into_parts();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(gw.cfg.upstream_timeout as u64),
        super::proxy::read_body(body, gw.cfg.max_body_bytes),
    )
    .await;
    let bytes = match read {
        Ok(Ok(b)) => b,
        failure => {
            let why = match failure {
                Ok(Err(super::proxy::BodyError::TooLarge)) => "the upstream's answer is too large",
                _ => "the upstream's answer did not arrive whole",
            };
            let crossing = header_str(&parts.headers, CROSSING_HEADER).unwrap_or_default();
            if let Some(PendingOutcome(mut o)) = pending {
                o.status = Some(502);
                o.reason = Some(Reason::PartnerUnavailable.code().into());
                super::append_later(&gw, o);
            }
            let d = Denial::new(Reason::PartnerUnavailable, why, &crossing).into_response();
            // The replacement is signed like any other answer (as a denial: no receipt).
            let (p2, b2) = d.into_parts();
            let bytes = super::proxy::read_body(b2, 64 * 1024)
                .await
                .unwrap_or_default();
            return sign_buffered(&gw, &answering, p2, bytes);
        }
    };
    if let Some(PendingOutcome(mut o)) = pending {
        o.response_digest = Some(httpsig::content_digest(&bytes));
        super::append_later(&gw, o);
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    sign_buffered(&gw, &answering, parts, bytes)
}

fn sign_buffered(
    gw: &Gateway,
    a: &Answering,
    mut parts: http::response::Parts,
    body: Bytes,
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
    Response::from_parts(parts, Body::from(body))
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

/// A streamed response being signed: passes data on, hashes it, and ends with trailers
/// carrying the digest and the signature.
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
        let d = self.hasher.clone().finish();
        let mut raw = [0u8; 32];
        raw.copy_from_slice(d.as_ref());
        let digest = httpsig::digest_value(&raw);
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
        if let Some(PendingOutcome(mut o)) = self.pending.take() {
            o.response_digest = Some(digest);
            super::append_later(&self.gw, o);
        }
        t
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
    pub max_bytes: usize,
    pub deadline: tokio::time::Instant,
}

/// Why a partner's response is refused.
type Refusal = (Reason, String);

/// Checks a partner's response and builds the agent's; completes and appends `outcome`
/// (status, reason, response digest) once the verdict is known.
pub async fn deliver(
    gw: Arc<Gateway>,
    e: Expected,
    resp: http::Response<hyper::body::Incoming>,
    outcome: Record,
) -> Response {
    let (parts, body) = resp.into_parts();
    if let Some(ct) = header_str(&parts.headers, "content-type") {
        if !e.rules.allows_type(&ct) {
            let m = format!("content type {ct} is not allowed on this route");
            return refuse(&gw, &e, outcome, Reason::ResponseInvalid, m, None);
        }
    } else if !e.rules.content_types.is_empty() {
        let m = "no content type, and the route allows only some".to_string();
        return refuse(&gw, &e, outcome, Reason::ResponseInvalid, m, None);
    }
    // The same rule as the signer's: a known length is read whole and signed in headers; no
    // length (or an event stream) is streamed and signed in trailers.
    if is_streamed(&parts.headers) {
        if e.rules.schema.is_some() {
            let m = "a streamed response cannot be checked against the route's schema".to_string();
            return refuse(&gw, &e, outcome, Reason::ResponseInvalid, m, None);
        }
        return deliver_streamed(gw, e, parts, body, outcome);
    }
    // Refuse what is too large before reading it.
    if let Some(n) = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if n > e.max_bytes {
            let m = format!("{n} bytes, more than the {} allowed", e.max_bytes);
            return refuse(&gw, &e, outcome, Reason::ResponseTooLarge, m, None);
        }
    }
    let read = tokio::time::timeout_at(
        e.deadline,
        http_body_util::BodyExt::collect(http_body_util::Limited::new(body, e.max_bytes)),
    )
    .await;
    let bytes = match read {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(x))
            if x.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            let m = format!("more than the {} bytes allowed", e.max_bytes);
            return refuse(&gw, &e, outcome, Reason::ResponseTooLarge, m, None);
        }
        Ok(Err(x)) => {
            let m = format!("the partner's answer broke off: {x}");
            return refuse(&gw, &e, outcome, Reason::PartnerUnavailable, m, None);
        }
        Err(_) => {
            let m = "the partner's answer did not arrive in time".to_string();
            return refuse(&gw, &e, outcome, Reason::PartnerUnavailable, m, None);
        }
    };
    let digest = httpsig::content_digest(&bytes);
    if let Err((r, m)) = check_signature(&e, &parts, &parts.headers, &digest, false) {
        return refuse(&gw, &e, outcome, r, m, Some(digest));
    }
    if let Some(schema) = &e.rules.schema {
        let json: Result<serde_json::Value, _> = serde_json::from_slice(&bytes);
        let verdict = match json {
            Ok(v) => schema.check(&v),
            Err(x) => Err(format!("not JSON: {x}")),
        };
        if let Err(m) = verdict {
            return refuse(
                &gw,
                &e,
                outcome,
                Reason::ResponseInvalid,
                format!("the body breaks the route's schema: {m}"),
                Some(digest),
            );
        }
    }
    let mut o = outcome;
    o.status = Some(parts.status.as_u16());
    o.response_digest = Some(digest);
    finish_outcome(&gw, o, &parts.headers, &e);
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = parts.status;
    *out.headers_mut() = agent_headers(&parts.headers, &e.rules);
    out
}

/// Verifies the partner's signature: over `digest` (what we computed) with the signature
/// fields from `fields` (headers, or trailers for a stream).
fn check_signature(
    e: &Expected,
    parts: &http::response::Parts,
    fields: &HeaderMap,
    digest: &str,
    in_trailer: bool,
) -> Result<(), Refusal> {
    let sent = header_str(fields, "content-digest").unwrap_or_default();
    match (
        httpsig::parse_content_digest(&sent),
        httpsig::parse_content_digest(digest),
    ) {
        (Some(a), Some(b)) if crate::crypto::ct_eq(&a, &b) => {}
        (None, _) => {
            return Err((
                Reason::BadResponseSignature,
                "no Content-Digest for the body".into(),
            ))
        }
        _ => {
            return Err((
                Reason::BadResponseSignature,
                "the body does not match its Content-Digest".into(),
            ))
        }
    }
    let content_type = header_str(&parts.headers, "content-type").unwrap_or_default();
    let crossing = header_str(&parts.headers, CROSSING_HEADER).unwrap_or_default();
    if crossing != e.crossing {
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
        crossing: &e.crossing,
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

/// The headers the agent gets: the allow-list and the route's extras, nothing else.
pub fn agent_headers(partner: &HeaderMap, rules: &ResponseRules) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(partner.len());
    for (name, value) in partner.iter() {
        let n = name.as_str();
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
        let d = self.hasher.clone().finish();
        let mut raw = [0u8; 32];
        raw.copy_from_slice(d.as_ref());
        httpsig::digest_value(&raw)
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
                        continue;
                    };
                    match check_signature(&self.expected, &parts, &trailers, &digest, true) {
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
