//! Structure-aware: the requests the egress and the ingress build from what they received
//! (`fedgate::hygiene::prepare_egress`, `prepare_ingress`). Arbitrary methods' worth of paths,
//! queries, headers and bodies, with the agent's chain planted (or not) in one of them, verbatim
//! or base64. Checked against an oracle written independently of the code: nothing internal in
//! what leaves, a planted chain never leaves, and the ingress's credential is exactly its own.
#![no_main]
use arbitrary::Arbitrary;
use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Plant {
    Nowhere,
    Header(String),
    Query,
    Body { prefix: Vec<u8>, base64: bool, wrap: bool },
}

#[derive(Arbitrary, Debug)]
struct Input {
    path: String,
    query: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// Link parts: the chain is `h.p.s~h.p.s...` of these, padded to a realistic length.
    links: Vec<(u64, u64)>,
    plant: Plant,
    extra: Vec<String>,
}

fn never_crosses(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "proxy-authorization"
            | "cookie"
            | "delegation-chain"
            | "connection"
            | "keep-alive"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "forwarded"
            | "x-real-ip"
            | "x-original-url"
            | "x-http-method-override"
            | "host"
            | "content-length"
    ) || name.starts_with("fedgate-")
        || name.starts_with("x-forwarded-")
        || name.contains('_')
}

fuzz_target!(|inp: Input| {
    if inp.links.is_empty() || inp.links.len() > 8 {
        return;
    }
    let chain: String = inp
        .links
        .iter()
        .map(|(a, b)| format!("eyJ{a:020}hdr.eyJ{b:024}payload.sig{a:016x}{b:016x}sig"))
        .collect::<Vec<_>>()
        .join("~");
    let mut headers = HeaderMap::new();
    for (n, v) in inp.headers.iter().take(64) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) {
            headers.append(n, v);
        }
    }
    // Mostly paths that start right, so the checks after the path are reached.
    let path = format!("/{}", inp.path);
    let mut query = inp.query.clone();
    let mut body = inp.body.clone();
    let planted = match &inp.plant {
        Plant::Nowhere => false,
        Plant::Header(n) => match (HeaderName::from_bytes(n.as_bytes()), HeaderValue::from_str(&chain)) {
            (Ok(n), Ok(v)) => {
                headers.append(n, v);
                true
            }
            _ => false,
        },
        Plant::Query => {
            query.push_str("&c=");
            query.push_str(&chain);
            true
        }
        Plant::Body { prefix, base64, wrap } => {
            let mut blob = prefix.clone();
            blob.extend_from_slice(chain.as_bytes());
            let enc = if *base64 {
                let e = base64::engine::general_purpose::STANDARD.encode(&blob);
                if *wrap {
                    e.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\r\n").into_bytes()
                } else {
                    e.into_bytes()
                }
            } else {
                blob
            };
            body.extend_from_slice(&enc);
            true
        }
    };
    let extra: Vec<HeaderName> = inp
        .extra
        .iter()
        .filter_map(|e| HeaderName::from_bytes(e.as_bytes()).ok())
        .collect();
    let r = fedgate::hygiene::prepare_egress(&fedgate::hygiene::EgressRequest {
        path: &path,
        query: &query,
        headers: &headers,
        body: &body,
        chain: &chain,
        strip_extra: &extra,
    });
    if let Ok(out) = &r {
        assert!(!planted || matches!(inp.plant, Plant::Header(ref n) if never_crosses(&n.to_ascii_lowercase()) || extra.iter().any(|e| e.as_str() == n.to_ascii_lowercase())),
            "a planted chain left: {:?}", inp.plant);
        for (n, v) in out {
            assert!(!never_crosses(n.as_str()), "{n} crossed");
            assert!(!extra.contains(n), "{n} (extra) crossed");
            assert!(!v.as_bytes().windows(chain.len()).any(|w| w == chain.as_bytes()));
        }
        assert!(fedgate::hygiene::path_problem(&path).is_none());
    }
    if let Some(out) = fedgate::hygiene::prepare_ingress(&headers, &extra, "our.link.sig", "127.0.0.1:1".parse().unwrap()) {
        assert_eq!(out.get_all("delegation-chain").iter().count(), 1);
        assert_eq!(out["delegation-chain"], "our.link.sig");
        assert_eq!(out.get_all("forwarded").iter().count(), 1);
        for (n, _) in &out {
            let s = n.as_str();
            assert!(s == "delegation-chain" || s == "forwarded" || !never_crosses(s), "{s} crossed at ingress");
        }
    }
});
