//! Forwarding hygiene: which request headers never cross the boundary, the check that a chain
//! is not smuggled in a header, query or body, and streaming bodies with limits.

use std::collections::HashSet;

use axum::body::Body;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::{BodyExt, Limited};

/// Hop-by-hop headers (RFC 9110 section 7.6.1 and the legacy ones proxies still see).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Internal credentials that never leave, whatever the request.
const CREDENTIALS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "delegation-chain",
];

/// Identity and routing headers a peer may not set for the next hop: who the client is, which
/// URL or method it "really" asked for, its certificate. Upstreams (and proxies in front of
/// them) trust these, so they never cross the gateway in either direction; ingress sets its own
/// `Forwarded`. Headers with `_` in their name go too: many upstreams read `X_Forwarded_For`
/// as `X-Forwarded-For`.
const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-ssl",
    "x-forwarded-client-cert",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-original-url",
    "x-original-uri",
    "x-original-host",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-client-cert",
    "x-ssl-client-cert",
    "ssl-client-cert",
    "client-cert",
    "client-cert-chain",
    "x-client-verify",
    "x-client-s-dn",
    "x-client-i-dn",
    "via",
];

/// Name prefixes of identity and routing headers (proxies and TLS terminators each have their
/// own spellings: `X-Forwarded-Uri`, `X-SSL-Client-Verify`, `X-Envoy-Original-Path`,
/// `X-Original-Method`, `X-ARR-ClientCert`, ...).
const FORWARDING_PREFIXES: &[&str] = &[
    "x-forwarded-",
    "x-envoy-",
    "x-ssl-",
    "x-original-",
    "x-arr-",
];

fn is_forwarding(n: &str) -> bool {
    FORWARDING.contains(&n) || FORWARDING_PREFIXES.iter().any(|p| n.starts_with(p))
}

/// The header names a `Connection` header lists, read as bytes: a value that is not visible
/// ASCII still names what it names (a non-ASCII byte must not switch stripping off).
fn connection_named(headers: &HeaderMap) -> HashSet<Vec<u8>> {
    let mut named = HashSet::new();
    for v in headers.get_all(http::header::CONNECTION) {
        for n in v.as_bytes().split(|b| *b == b',') {
            let n = n.trim_ascii().to_ascii_lowercase();
            if !n.is_empty() {
                named.insert(n);
            }
        }
    }
    named
}

/// Removes hop-by-hop headers, headers named by `Connection`, every internal credential, every
/// `Fedgate-*` header, identity and routing headers (`FORWARDING`, and any name with `_`) and
/// the configured extra list. Header names are case-insensitive (the `http` crate lower-cases
/// them); every value of a repeated header goes.
pub fn strip_headers(headers: &HeaderMap, extra: &[HeaderName]) -> HeaderMap {
    let named = connection_named(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        let n = name.as_str();
        let drop = HOP_BY_HOP.contains(&n)
            || CREDENTIALS.contains(&n)
            || is_forwarding(n)
            || n.contains('_')
            || n.starts_with("fedgate-")
            || n == "host"
            || n == "content-length"
            || named.contains(n.as_bytes())
            || extra.iter().any(|e| e == name);
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Response headers passed back: hop-by-hop ones and those named by `Connection` removed.
pub fn strip_response_headers(headers: &HeaderMap) -> HeaderMap {
    let named = connection_named(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        let n = name.as_str();
        if !(HOP_BY_HOP.contains(&n) || named.contains(n.as_bytes()) || n == "content-length") {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The strings that identify a chain: every link, and every link's signature (a link cannot be
/// used without it). Percent-decoded input is also searched.
pub fn chain_markers(chain: &str) -> Vec<String> {
    let mut v = vec![chain.to_string()];
    for link in chain.split(crate::chain::SEPARATOR) {
        v.push(link.to_string());
        if let Some(sig) = link.rsplit('.').next() {
            if sig.len() >= 32 {
                v.push(sig.to_string());
            }
        }
    }
    v
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 3 <= s.len() {
            if let Some(b) =
                crate::crypto::hex_decode(std::str::from_utf8(&s[i + 1..i + 3]).unwrap_or("zz"))
            {
                out.push(b[0]);
                i += 3;
                continue;
            }
        }
        out.push(if s[i] == b'+' { b' ' } else { s[i] });
        i += 1;
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && hay.len() >= needle.len()
        && hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether `data` (or its percent-decoding) carries any marker.
pub fn carries(data: &[u8], markers: &[String]) -> bool {
    if markers.iter().any(|m| contains(data, m.as_bytes())) {
        return true;
    }
    if data.contains(&b'%') {
        let d = percent_decode(data);
        return markers.iter().any(|m| contains(&d, m.as_bytes()));
    }
    false
}

/// Whether any remaining header value carries a marker.
pub fn headers_carry(headers: &HeaderMap, markers: &[String]) -> bool {
    headers.iter().any(|(_, v)| carries(v.as_bytes(), markers))
}

/// Reads a whole request body, refusing more than `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    read_body_within(body, limit, std::time::Duration::from_secs(3600)).await
}

/// Reads a whole request body within `timeout` (slow-body attacks), refusing more than
/// `limit` bytes.
pub async fn read_body_within(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, BodyError> {
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await;
    let Ok(read) = read else {
        return Err(BodyError::Read(
            "the request body did not arrive in time".into(),
        ));
    };
    match read {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(BodyError::TooLarge)
            } else {
                Err(BodyError::Read(e.to_string()))
            }
        }
    }
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Read(String),
    /// The shared buffering budget stayed exhausted for the whole time limit.
    Busy,
}

/// Reads a whole request body within `timeout` and `limit`, taking from `budget` one permit per
/// byte as the bytes arrive (a body only holds what it really buffers). The permits are
/// returned with the bytes and released when dropped.
pub async fn read_body_budgeted(
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
    budget: &std::sync::Arc<tokio::sync::Semaphore>,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), BodyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(BodyError::Read(
                    "the request body did not arrive in time".into(),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(BodyError::Read(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(d) = frame.into_data() else { continue };
        if d.is_empty() {
            continue;
        }
        if buf.len() + d.len() > limit {
            return Err(BodyError::TooLarge);
        }
        let n = u32::try_from(d.len()).map_err(|_| BodyError::TooLarge)?;
        let p = match tokio::time::timeout_at(deadline, budget.clone().acquire_many_owned(n)).await
        {
            Ok(Ok(p)) => p,
            _ => return Err(BodyError::Busy),
        };
        match held.as_mut() {
            Some(h) => h.merge(p),
            None => held = Some(p),
        }
        buf.extend_from_slice(&d);
    }
    Ok((buf.freeze(), held))
}

/// Wraps a streaming body so that more than `limit` bytes end it with an error.
pub fn limit_body<B>(body: B, limit: usize) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Body::new(Limited::new(body, limit))
}

/// A request body passed on without its trailers: a peer's trailers are headers too, and
/// nothing filters them, so they do not cross.
pub fn without_trailers(body: Body) -> Body {
    Body::new(NoTrailers(body))
}

struct NoTrailers(Body);

impl http_body::Body for NoTrailers {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        loop {
            match std::pin::Pin::new(&mut self.0).poll_frame(cx) {
                std::task::Poll::Ready(Some(Ok(f))) if f.is_trailers() => continue,
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

pub fn header(value: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_every_credential_spelling() {
        let h = hm(&[
            ("AUTHORIZATION", "Bearer internal"),
            ("authorization", "Basic x"),
            ("Proxy-Authorization", "x"),
            ("Cookie", "session=1"),
            ("cookie", "other=2"),
            ("Delegation-Chain", "a.b.c"),
            ("Fedgate-Target", "x"),
            ("FEDGATE-scope", "y"),
            ("Connection", "X-Secret-Hop, keep-alive"),
            ("x-secret-hop", "s"),
            ("X-Api-Key", "k"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("Accept", "application/json"),
            ("X-Request-Id", "r1"),
        ]);
        let out = strip_headers(&h, &[HeaderName::from_static("x-api-key")]);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["accept", "x-request-id"]);
    }

    #[tokio::test]
    async fn request_trailers_never_cross() {
        let mut t = HeaderMap::new();
        t.insert("x-smuggled", HeaderValue::from_static("secret"));
        let with = http_body_util::Full::new(Bytes::from_static(b"data"))
            .map_err(|e| match e {})
            .with_trailers(async move { Some(Ok::<_, std::convert::Infallible>(t)) });
        let body = Body::new(with);
        let c = without_trailers(body).collect().await.unwrap();
        assert!(c.trailers().is_none());
        assert_eq!(c.to_bytes(), Bytes::from_static(b"data"));
    }

    #[test]
    fn strips_identity_and_routing_headers() {
        let h = hm(&[
            ("X-Forwarded-For", "10.0.0.1"),
            ("Forwarded", "for=10.0.0.1"),
            ("X-Real-IP", "10.0.0.1"),
            ("X-Forwarded-Client-Cert", "Hash=x"),
            ("X-Original-URL", "/admin"),
            ("X-Rewrite-URL", "/admin"),
            ("X-HTTP-Method-Override", "DELETE"),
            ("X_Forwarded_For", "10.0.0.1"),
            ("X-SSL-Client-Verify", "SUCCESS"),
            ("X-SSL-Client-S-DN", "CN=admin"),
            ("X-Client-Verify", "SUCCESS"),
            ("X-ARR-ClientCert", "MII"),
            ("X-Forwarded-Uri", "/admin"),
            ("X-Forwarded-Scheme", "https"),
            ("X-Forwarded-Method", "DELETE"),
            ("X-Original-Method", "DELETE"),
            ("X-Envoy-Original-Path", "/admin"),
            ("X-Forwarded-By", "proxy"),
            ("Via", "1.1 proxy"),
            ("Accept", "*/*"),
        ]);
        let out = strip_headers(&h, &[]);
        assert_eq!(
            out.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["accept"]
        );
    }

    #[test]
    fn a_non_ascii_connection_value_still_strips_what_it_names() {
        let mut h = hm(&[("x-internal-token", "secret"), ("accept", "*/*")]);
        h.append(
            http::header::CONNECTION,
            HeaderValue::from_bytes(b"x-internal-token, \xe9t\xe9").unwrap(),
        );
        let out = strip_headers(&h, &[]);
        assert_eq!(
            out.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["accept"]
        );
        let out = strip_response_headers(&h);
        assert!(out.get("x-internal-token").is_none());
    }

    #[test]
    fn finds_smuggled_chains() {
        let chain = "aaaa.bbbb.ssssssssssssssssssssssssssssssssssssssss~cccc.dddd.tttttttttttttttttttttttttttttttttttttttt";
        let m = chain_markers(chain);
        assert!(carries(
            b"{\"x\":\"cccc.dddd.tttttttttttttttttttttttttttttttttttttttt\"}",
            &m
        ));
        assert!(carries(b"sig=ssssssssssssssssssssssssssssssssssssssss", &m));
        assert!(carries(
            b"q=%61aaa.bbbb.ssssssssssssssssssssssssssssssssssssssss",
            &m
        ));
        assert!(!carries(b"{\"x\":\"harmless\"}", &m));
        assert!(headers_carry(&hm(&[("X-Smuggle", chain)]), &m));
        assert!(!headers_carry(&hm(&[("Accept", "*/*")]), &m));
        assert!(!carries(b"%", &m));
        assert!(!carries(b"%4", &m));
    }
}
