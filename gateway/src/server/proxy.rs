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

/// Removes hop-by-hop headers, headers named by `Connection`, every internal credential, every
/// `Fedgate-*` header and the configured extra list. Header names are case-insensitive (the
/// `http` crate lower-cases them); every value of a repeated header goes.
pub fn strip_headers(headers: &HeaderMap, extra: &[HeaderName]) -> HeaderMap {
    let mut named: HashSet<String> = HashSet::new();
    for v in headers.get_all(http::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            for n in s.split(',') {
                let n = n.trim().to_ascii_lowercase();
                if !n.is_empty() {
                    named.insert(n);
                }
            }
        }
    }
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        let n = name.as_str();
        let drop = HOP_BY_HOP.contains(&n)
            || CREDENTIALS.contains(&n)
            || n.starts_with("fedgate-")
            || n == "host"
            || n == "content-length"
            || named.contains(n)
            || extra.iter().any(|e| e == name);
        if !drop {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Response headers passed back: hop-by-hop ones and those named by `Connection` removed.
pub fn strip_response_headers(headers: &HeaderMap) -> HeaderMap {
    let mut named: HashSet<String> = HashSet::new();
    for v in headers.get_all(http::header::CONNECTION) {
        if let Ok(s) = v.to_str() {
            named.extend(s.split(',').map(|n| n.trim().to_ascii_lowercase()));
        }
    }
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers.iter() {
        let n = name.as_str();
        if !(HOP_BY_HOP.contains(&n) || named.contains(n) || n == "content-length") {
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
    match Limited::new(body, limit).collect().await {
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
}

/// Wraps a streaming body so that more than `limit` bytes end it with an error.
pub fn limit_body<B>(body: B, limit: usize) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Body::new(Limited::new(body, limit))
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
