//! Request hygiene at the boundary (pure): which headers never cross, which paths are
//! unambiguous, whether a delegation chain is smuggled anywhere but `Delegation-Chain`, and the
//! request each direction builds from what it received — the egress request to the partner and
//! the ingress request to the upstream. No I/O: the handlers and the fuzz targets call these.

use std::collections::HashSet;

use aho_corasick::AhoCorasick;
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Longest request path accepted at ingress.
pub const MAX_PATH_BYTES: usize = 2048;

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

/// Whether `n` (lower case) is a hop-by-hop header.
pub fn is_hop_by_hop(n: &str) -> bool {
    HOP_BY_HOP.contains(&n)
}

/// Whether `n` (lower case) is an identity or routing header.
pub fn is_forwarding(n: &str) -> bool {
    FORWARDING.contains(&n) || FORWARDING_PREFIXES.iter().any(|p| n.starts_with(p))
}

/// The header names a `Connection` header lists, read as bytes: a value that is not visible
/// ASCII still names what it names (a non-ASCII byte must not switch stripping off).
pub fn connection_named(headers: &HeaderMap) -> HashSet<Vec<u8>> {
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

/// Longest value of any one request header but `Delegation-Chain` (which may carry a whole
/// chain, `chain::MAX_CHAIN_BYTES`): tokens, certificates-in-headers and cookies fit in
/// 8 KiB, the limit nginx and most proxies apply per header line.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

/// Why a request's framing or head is refused before any handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingProblem {
    /// The body's length is ambiguous (request smuggling): reason `malformed`, 400.
    #[error("ambiguous message framing: {0}")]
    Ambiguous(&'static str),
    /// One header is larger than its limit: reason `too_large`, 431.
    #[error("header {0} is larger than {1} bytes")]
    TooLarge(String, usize),
}

/// Whether a request head is one every hop reads the same way: at most one `Content-Length`,
/// never both `Content-Length` and `Transfer-Encoding`, `Transfer-Encoding` only `chunked`,
/// and no header longer than its limit.
pub fn framing_problem(h: &HeaderMap) -> Option<FramingProblem> {
    let cl = h.get_all(http::header::CONTENT_LENGTH).iter().count();
    let te: Vec<&HeaderValue> = h.get_all(http::header::TRANSFER_ENCODING).iter().collect();
    if cl > 1 {
        return Some(FramingProblem::Ambiguous("more than one Content-Length"));
    }
    if cl == 1 && !te.is_empty() {
        return Some(FramingProblem::Ambiguous(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    if te.len() > 1
        || te
            .iter()
            .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Some(FramingProblem::Ambiguous(
            "a Transfer-Encoding other than chunked",
        ));
    }
    for (n, v) in h {
        let limit = if n.as_str() == "delegation-chain" {
            crate::chain::MAX_CHAIN_BYTES
        } else {
            MAX_HEADER_VALUE_BYTES
        };
        if v.len() > limit {
            return Some(FramingProblem::TooLarge(n.as_str().to_string(), limit));
        }
    }
    None
}

/// Markers shorter than this are not searched for: a short string would be found in innocent
/// data, and every link and signature of a real chain is far longer.
const MIN_MARKER: usize = 24;

/// What identifies a delegation chain inside a request: the chain, every link and every link's
/// signature (a link is useless without it), each verbatim and as base64 (standard and URL-safe
/// alphabets, at each of the three byte alignments a copy inside a larger encoded blob can
/// have). Searched in the data as sent, percent-decoded, and with whitespace and
/// quoted-printable soft line breaks removed (MIME bodies wrap base64 and quoted-printable
/// parts at 76 columns), so a chain copied into a query, a header, a JSON field, a form, or a
/// base64 or quoted-printable multipart part is found. Not found: a chain deliberately
/// transformed otherwise (encrypted, compressed, re-encoded by hand) — see docs/threat-model.md.
pub struct Markers {
    finder: Option<AhoCorasick>,
}

fn b64_forms(m: &[u8], out: &mut Vec<Vec<u8>>) {
    use base64::Engine as _;
    for skip in 0..3 {
        if m.len() <= skip {
            break;
        }
        for engine in [
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            let e = engine.encode(&m[skip..]);
            // The last characters depend on what follows the marker in the blob.
            let keep = e.len().saturating_sub(4);
            if keep >= MIN_MARKER {
                out.push(e.as_bytes()[..keep].to_vec());
            }
        }
    }
}

impl Markers {
    pub fn of(chain: &str) -> Markers {
        let mut raw: Vec<&str> = vec![chain];
        for link in chain.split(crate::chain::SEPARATOR) {
            raw.push(link);
            if let Some(sig) = link.rsplit('.').next() {
                raw.push(sig);
            }
        }
        let mut pats: Vec<Vec<u8>> = Vec::new();
        for m in raw {
            if m.len() >= MIN_MARKER {
                pats.push(m.as_bytes().to_vec());
                b64_forms(m.as_bytes(), &mut pats);
            }
        }
        pats.sort();
        pats.dedup();
        Markers {
            finder: if pats.is_empty() {
                None
            } else {
                AhoCorasick::new(&pats).ok()
            },
        }
    }

    fn hit(&self, data: &[u8]) -> bool {
        match &self.finder {
            Some(f) => f.is_match(data),
            // No marker long enough to search for: a chain that short is not a chain.
            None => false,
        }
    }

    /// Whether `data` carries the chain in any of the forms above.
    pub fn found_in(&self, data: &[u8]) -> bool {
        if self.hit(data) {
            return true;
        }
        if data.contains(&b'%') && self.hit(&percent_decode(data)) {
            return true;
        }
        if data.iter().any(|b| b.is_ascii_whitespace()) {
            let squeezed = unwrap_lines(data);
            if self.hit(&squeezed) {
                return true;
            }
            if squeezed.contains(&b'%') && self.hit(&percent_decode(&squeezed)) {
                return true;
            }
        }
        false
    }

    /// Whether any header value carries the chain.
    pub fn in_headers(&self, headers: &HeaderMap) -> bool {
        headers.iter().any(|(_, v)| self.found_in(v.as_bytes()))
    }
}

/// `data` without ASCII whitespace and without quoted-printable soft line breaks (`=` at the
/// end of a line).
fn unwrap_lines(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b == b'=' && data.get(i + 1) == Some(&b'\n') {
            i += 2;
            continue;
        }
        if b == b'=' && data.get(i + 1) == Some(&b'\r') && data.get(i + 2) == Some(&b'\n') {
            i += 3;
            continue;
        }
        if !b.is_ascii_whitespace() {
            out.push(b);
        }
        i += 1;
    }
    out
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

/// Why a request path cannot be matched against routes without ambiguity, or `None` when it
/// can. The accepted form is one that every upstream reads the same way: no dot segments, no
/// empty segments, no backslashes, no `;` path parameters (Tomcat, Spring and Jetty cut a path
/// at `;` or resolve `..;/`), no control characters, and percent-escapes only for bytes that
/// must be escaped (never for unreserved characters, `/`, `\`, `.`, `%` or `;`, so no
/// double-encoding and no second spelling of the same path). The path is matched and
/// forwarded exactly as received.
pub fn path_problem(p: &str) -> Option<&'static str> {
    if !p.starts_with('/') {
        return Some("the path must start with /");
    }
    if p.len() > MAX_PATH_BYTES {
        return Some("the path is too long");
    }
    if p.contains("//") {
        return Some("empty path segment");
    }
    if p.split('/').any(|s| s == "." || s == "..") {
        return Some("dot segment");
    }
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
                    return Some("bad percent-escape");
                };
                let must_not_escape = v.is_ascii_alphanumeric()
                    || matches!(v, b'-' | b'.' | b'_' | b'~' | b'/' | b'\\' | b'%' | b';');
                if must_not_escape || v < 0x20 || v == 0x7f {
                    return Some("percent-escape of a character that must appear as itself");
                }
                i += 3;
                continue;
            }
            b';' => return Some("path parameters (;) are not accepted"),
            b'\\' => return Some("backslash in the path"),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => {}
            b'-' | b'.' | b'_' | b'~' | b'/' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*'
            | b'+' | b',' | b'=' | b':' | b'@' => {}
            _ => return Some("a character that must be percent-encoded"),
        }
        i += 1;
    }
    None
}

/// Why the egress refuses to send a request on (reason `malformed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EgressProblem {
    #[error("the path is not in canonical form: {0}")]
    Path(&'static str),
    #[error("the query is too long")]
    Query,
    #[error("a request body with Content-Encoding {0:?} cannot be checked for internal credentials; send it unencoded")]
    Encoded(String),
    #[error("the request carries the delegation chain outside Delegation-Chain")]
    Smuggled,
}

/// What an agent sent to `/egress/...`, as the egress sees it.
pub struct EgressRequest<'a> {
    /// The path after `/egress` (`/` when empty).
    pub path: &'a str,
    /// The raw query without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// The agent's `Delegation-Chain`.
    pub chain: &'a str,
    /// `[strip] extra_headers`.
    pub strip_extra: &'a [HeaderName],
}

/// The headers the egress sends to the partner (the federation token is added after), or why
/// the request may not leave. Nothing internal crosses: credentials, hop-by-hop and
/// `Connection`-named headers, identity and routing headers and the extra list are stripped;
/// a body the gateway cannot read as sent (any `Content-Encoding` but `identity`) is refused;
/// and the chain found anywhere else (path, query, a remaining header, the body) refuses the
/// request.
pub fn prepare_egress(r: &EgressRequest<'_>) -> Result<HeaderMap, EgressProblem> {
    if let Some(why) = path_problem(r.path) {
        return Err(EgressProblem::Path(why));
    }
    if r.query.len() > MAX_PATH_BYTES {
        return Err(EgressProblem::Query);
    }
    for v in r.headers.get_all(http::header::CONTENT_ENCODING) {
        let coded = v
            .as_bytes()
            .split(|b| *b == b',')
            .map(|c| c.trim_ascii())
            .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case(b"identity"));
        if coded {
            return Err(EgressProblem::Encoded(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let out = strip_headers(r.headers, r.strip_extra);
    let m = Markers::of(r.chain);
    if m.found_in(r.body)
        || m.found_in(r.query.as_bytes())
        || m.found_in(r.path.as_bytes())
        || m.in_headers(&out)
    {
        return Err(EgressProblem::Smuggled);
    }
    Ok(out)
}

/// The headers the ingress sends to the upstream: the partner's headers stripped (as at egress,
/// plus `[strip] ingress_headers`), the crossing link as the only credential, and the
/// gateway's own `Forwarded` naming the partner's address. `None` if the link or the address
/// cannot be a header value (they always can: base64url and an IP address).
pub fn prepare_ingress(
    headers: &HeaderMap,
    strip_ingress: &[HeaderName],
    link: &str,
    remote: std::net::SocketAddr,
) -> Option<HeaderMap> {
    let mut out = strip_headers(headers, strip_ingress);
    out.insert(
        HeaderName::from_static("delegation-chain"),
        HeaderValue::from_str(link).ok()?,
    );
    out.insert(
        http::header::FORWARDED,
        HeaderValue::from_str(&format!("for=\"{remote}\";proto=https")).ok()?,
    );
    Some(out)
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
    fn finds_smuggled_chains_in_every_plain_encoding() {
        use base64::Engine as _;
        let chain = "aaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbb.ssssssssssssssssssssssssssssssssssssssss~cccccccccccccccccccccccccc.dddddddddddddddddddddddddd.tttttttttttttttttttttttttttttttttttttttt";
        let m = Markers::of(chain);
        assert!(m.found_in(b"{\"x\":\"cccccccccccccccccccccccccc.dddddddddddddddddddddddddd.tttttttttttttttttttttttttttttttttttttttt\"}"));
        assert!(m.found_in(b"sig=ssssssssssssssssssssssssssssssssssssssss"));
        assert!(m.found_in(b"q=%61aaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbb.ssssssssssssssssssssssssssssssssssssssss"));
        assert!(!m.found_in(b"{\"x\":\"harmless\"}"));
        assert!(m.in_headers(&hm(&[("X-Smuggle", chain)])));
        assert!(!m.in_headers(&hm(&[("Accept", "*/*")])));
        assert!(!m.found_in(b"%"));
        assert!(!m.found_in(b"%4"));
        // Base64 at every alignment, in both alphabets, wrapped at 76 columns as MIME does.
        for prefix in ["", "x", "xy"] {
            for engine in [
                &base64::engine::general_purpose::STANDARD,
                &base64::engine::general_purpose::URL_SAFE,
            ] {
                let enc = engine.encode(format!("{prefix}{{\"chain\":\"{chain}\"}}"));
                let wrapped: Vec<String> = enc
                    .as_bytes()
                    .chunks(76)
                    .map(|c| String::from_utf8(c.to_vec()).unwrap())
                    .collect();
                let body = format!(
                    "--b\r\nContent-Type: application/json\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
                    wrapped.join("\r\n")
                );
                assert!(m.found_in(body.as_bytes()), "{prefix:?}");
            }
        }
        // Quoted-printable with soft line breaks.
        let (first, rest) = chain.split_at(70);
        let qp =
            format!("Content-Transfer-Encoding: quoted-printable\r\n\r\n{first}=\r\n{rest}\r\n");
        assert!(m.found_in(qp.as_bytes()));
        // A long innocent base64 body is not a hit.
        let innocent = base64::engine::general_purpose::STANDARD.encode(vec![7u8; 4096]);
        assert!(!m.found_in(innocent.as_bytes()));
    }

    #[test]
    fn ambiguous_framing_and_oversized_headers() {
        assert_eq!(framing_problem(&hm(&[("content-length", "2")])), None);
        assert_eq!(
            framing_problem(&hm(&[("transfer-encoding", "chunked")])),
            None
        );
        for bad in [
            vec![("content-length", "2"), ("content-length", "2")],
            vec![("content-length", "2"), ("transfer-encoding", "chunked")],
            vec![("transfer-encoding", "gzip, chunked")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
        ] {
            assert!(
                matches!(
                    framing_problem(&hm(&bad)),
                    Some(FramingProblem::Ambiguous(_))
                ),
                "{bad:?}"
            );
        }
        let big = "a".repeat(MAX_HEADER_VALUE_BYTES + 1);
        assert!(matches!(
            framing_problem(&hm(&[("x-big", &big)])),
            Some(FramingProblem::TooLarge(..))
        ));
        assert_eq!(framing_problem(&hm(&[("delegation-chain", &big)])), None);
    }

    #[test]
    fn egress_refuses_encoded_bodies_and_smuggled_chains() {
        let chain = "aaaaaaaaaaaaaaaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbb.ssssssssssssssssssssssssssssssssssssssss";
        let h = hm(&[("Content-Encoding", "gzip"), ("Accept", "*/*")]);
        let r = |h: &HeaderMap, body: &[u8], path: &str| {
            prepare_egress(&EgressRequest {
                path,
                query: "",
                headers: h,
                body,
                chain,
                strip_extra: &[],
            })
        };
        assert!(matches!(r(&h, b"", "/a"), Err(EgressProblem::Encoded(_))));
        let h = hm(&[("Content-Encoding", "identity"), ("Accept", "*/*")]);
        assert!(r(&h, b"{}", "/a").is_ok());
        assert_eq!(r(&h, chain.as_bytes(), "/a"), Err(EgressProblem::Smuggled));
        assert!(matches!(r(&h, b"", "/a/../b"), Err(EgressProblem::Path(_))));
        let out = prepare_ingress(
            &hm(&[("Delegation-Chain", "theirs"), ("Forwarded", "for=1.2.3.4")]),
            &[],
            "our.link.sig",
            "127.0.0.1:9".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(out.get_all("delegation-chain").iter().count(), 1);
        assert_eq!(out["delegation-chain"], "our.link.sig");
        assert_eq!(out["forwarded"], "for=\"127.0.0.1:9\";proto=https");
    }

    #[test]
    fn canonical_paths() {
        for ok in [
            "/analytics/run",
            "/a",
            "/a/b.c/d-e",
            "/a/%20b",
            "/caf%C3%A9",
            "/a:b@c/x,y",
        ] {
            assert_eq!(path_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            "a",
            "//x",
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/a%2fb",
            "/a%2E%2e/b",
            "/a\\b",
            "/x%00",
            "/analytics/..;/admin",
            "/analytics;jsessionid=1/x",
            "/%252e%252e/admin",
            "/a%25",
            "/%61nalytics",
            "/a%3bb",
            "/a%5cb",
            "/a%zz",
            "/a%4",
            "/a b",
            "/a\u{7f}",
            "/é",
        ] {
            assert!(path_problem(bad).is_some(), "{bad}");
        }
    }
}
