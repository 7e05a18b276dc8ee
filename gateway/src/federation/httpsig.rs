//! Signed responses (pure): the receiving gateway signs every response it returns for a
//! crossing with RFC 9421 HTTP Message Signatures, keyed by its gateway key, over the status,
//! the content type, the RFC 9530 `Content-Digest` of the body exactly as sent, the crossing id
//! and receipt, and the request it answers (`;req`: method, path, query and the federation
//! token); the sending gateway checks the signature against the partner's bundle before the
//! agent gets the body. A streamed response (chunked, server-sent events) carries the digest
//! and the signature in trailers instead (`"content-digest";tr`), computed once the body has
//! been sent (docs/spec-notes.md, "Signed responses").
//!
//! Only the one form fedgate writes is accepted: label `fedgate`, exactly these components in
//! this order, parameters `created`, `keyid`, `alg`, `tag`. A verifier rebuilds the signature
//! base from its *own* copy of the request, so a signature made for another crossing, another
//! request or another body never verifies.

use crate::crypto::{b64std, b64std_decode, sha256};
use crate::jose::{Alg, SigningKey};
use crate::spiffe::{Bundle, KeyRole};
use crate::time::Instant;

/// The signature's label and `tag`.
pub const LABEL: &str = "fedgate";
/// The response header naming the crossing (the federation token's `jti`).
pub const CROSSING_HEADER: &str = "fedgate-crossing";
/// A signature's `created` may be this far from the verifier's clock.
pub const MAX_CLOCK_SKEW: i64 = 300;
/// Longest signature header value accepted.
const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The response and request values a signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Covered<'a> {
    pub status: u16,
    pub content_type: &'a str,
    /// The `Content-Digest` field value (`sha-256=:…:`).
    pub content_digest: &'a str,
    pub crossing: &'a str,
    /// The receipt of an allowed crossing (`Fedgate-Receipt`); a denial has none and its
    /// signature does not cover one.
    pub receipt: Option<&'a str>,
    /// The request it answers, as the sending gateway sent it.
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query without `?` (empty when there is none).
    pub query: &'a str,
    /// The request's `Authorization` field value (`Bearer <federation token>`).
    pub authorization: &'a str,
    /// The digest travels in a trailer (streamed response).
    pub digest_in_trailer: bool,
}

/// Why a response signature is refused (reason `bad_response_signature`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigError {
    #[error("no response signature")]
    Missing,
    #[error("malformed signature fields: {0}")]
    Malformed(String),
    #[error("the signature covers something other than fedgate's components")]
    WrongComponents,
    #[error("signed by a key that is not a gateway key of the partner: {0}")]
    WrongKey(String),
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the signature was created at {0}, too far from now")]
    Stale(Instant),
    #[error("the body does not match its Content-Digest")]
    DigestMismatch,
}

/// `sha-256=:<base64>:` of `body` (RFC 9530).
pub fn content_digest(body: &[u8]) -> String {
    digest_value(&sha256(body))
}

/// The `Content-Digest` value of a SHA-256 digest.
pub fn digest_value(d: &[u8; 32]) -> String {
    format!("sha-256=:{}:", b64std(d))
}

/// The SHA-256 member of a `Content-Digest` value, if there is exactly one.
pub fn parse_content_digest(v: &str) -> Option<[u8; 32]> {
    let mut found = None;
    for member in v.split(',') {
        let m = member.trim();
        if let Some(b) = m
            .strip_prefix("sha-256=:")
            .and_then(|r| r.strip_suffix(':'))
        {
            if found.is_some() {
                return None;
            }
            let raw = b64std_decode(b)?;
            found = Some(<[u8; 32]>::try_from(raw.as_slice()).ok()?);
        }
    }
    found
}

fn alg_id(a: Alg) -> &'static str {
    match a {
        Alg::Es256 => "ecdsa-p256-sha256",
        Alg::EdDsa => "ed25519",
    }
}

fn components(c: &Covered<'_>) -> String {
    let digest = if c.digest_in_trailer {
        "\"content-digest\";tr"
    } else {
        "\"content-digest\""
    };
    let receipt = if c.receipt.is_some() {
        " \"fedgate-receipt\""
    } else {
        ""
    };
    format!(
        "(\"@status\" \"content-type\" {digest} \"{CROSSING_HEADER}\"{receipt} \"@method\";req \"@path\";req \"@query\";req \"authorization\";req)"
    )
}

/// The `@signature-params` value (also the `Signature-Input` member value).
pub fn signature_params(c: &Covered<'_>, created: Instant, keyid: &str, alg: Alg) -> String {
    format!(
        "{};created={created};keyid=\"{keyid}\";alg=\"{}\";tag=\"{LABEL}\"",
        components(c),
        alg_id(alg)
    )
}

fn field(v: &str) -> Result<&str, SigError> {
    let v = v.trim_matches(|c| c == ' ' || c == '\t');
    if v.bytes()
        .any(|b| b == b'\n' || b == b'\r' || !(0x20..0x7f).contains(&b))
    {
        return Err(SigError::Malformed(
            "a covered value is not printable ASCII".into(),
        ));
    }
    Ok(v)
}

/// The RFC 9421 signature base of a fedgate response.
pub fn signature_base(c: &Covered<'_>, params: &str) -> Result<String, SigError> {
    let digest = if c.digest_in_trailer {
        "\"content-digest\";tr"
    } else {
        "\"content-digest\""
    };
    let receipt = match c.receipt {
        Some(r) => format!("\"fedgate-receipt\": {}\n", field(r)?),
        None => String::new(),
    };
    Ok(format!(
        "\"@status\": {}\n\"content-type\": {}\n{digest}: {}\n\"{CROSSING_HEADER}\": {}\n{receipt}\"@method\";req: {}\n\"@path\";req: {}\n\"@query\";req: ?{}\n\"authorization\";req: {}\n\"@signature-params\": {params}",
        c.status,
        field(c.content_type)?,
        field(c.content_digest)?,
        field(c.crossing)?,
        field(c.method)?,
        field(if c.path.is_empty() { "/" } else { c.path })?,
        field(c.query)?,
        field(c.authorization)?,
    ))
}

/// Signs a response: the `Signature-Input` and `Signature` field values.
pub fn sign(
    key: &SigningKey,
    c: &Covered<'_>,
    created: Instant,
) -> Result<(String, String), SigError> {
    let params = signature_params(c, created, key.kid(), key.alg());
    let base = signature_base(c, &params)?;
    let sig = key
        .sign_raw(base.as_bytes())
        .map_err(|e| SigError::Malformed(e.to_string()))?;
    Ok((
        format!("{LABEL}={params}"),
        format!("{LABEL}=:{}:", b64std(&sig)),
    ))
}

/// The value of dictionary member `label` of an RFC 8941 dictionary (top-level commas split
/// members; commas inside strings or parentheses do not).
fn member<'v>(dict: &'v str, label: &str) -> Option<&'v str> {
    let mut depth = 0i32;
    let mut in_str = false;
    let mut esc = false;
    let mut start = 0;
    let bytes = dict.as_bytes();
    let mut out = None;
    let mut check = |seg: &'v str| -> bool {
        let seg = seg.trim();
        if let Some(v) = seg.strip_prefix(label).and_then(|r| r.strip_prefix('=')) {
            if out.is_some() {
                return false;
            }
            out = Some(v);
        }
        true
    };
    for (i, &b) in bytes.iter().enumerate() {
        if in_str {
            if esc {
                esc = false;
            } else if b == b'\\' {
                esc = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'(' => depth += 1,
            b')' => depth -= 1,
            b',' if depth == 0 => {
                if !check(&dict[start..i]) {
                    return None;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if !check(&dict[start..]) {
        return None;
    }
    out
}

fn param<'v>(params: &'v str, name: &str) -> Option<&'v str> {
    params
        .split(';')
        .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// Verifies a partner's response signature (`Signature-Input`, `Signature`) against its
/// bundle and the values *we* know (our request, the body digest we computed): the covered
/// components, label and parameters must be fedgate's exact form, the key a gateway key of the
/// partner, `created` within `MAX_CLOCK_SKEW` of `now`, and the signature must verify.
pub fn verify(
    bundle: &Bundle,
    c: &Covered<'_>,
    signature_input: Option<&str>,
    signature: Option<&str>,
    now: Instant,
) -> Result<(), SigError> {
    let (Some(input), Some(sig)) = (signature_input, signature) else {
        return Err(SigError::Missing);
    };
    if input.len() > MAX_HEADER_BYTES || sig.len() > MAX_HEADER_BYTES {
        return Err(SigError::Malformed("signature fields too large".into()));
    }
    let params = member(input, LABEL)
        .ok_or_else(|| SigError::Malformed("no fedgate member in Signature-Input".into()))?;
    let sig = member(sig, LABEL)
        .ok_or_else(|| SigError::Malformed("no fedgate member in Signature".into()))?;
    let sig = sig
        .strip_prefix(':')
        .and_then(|s| s.strip_suffix(':'))
        .and_then(b64std_decode)
        .ok_or_else(|| SigError::Malformed("Signature is not a byte sequence".into()))?;
    let expected_components = components(c);
    let rest = params
        .strip_prefix(&expected_components)
        .ok_or(SigError::WrongComponents)?;
    let created: Instant = param(rest, "created")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| SigError::Malformed("no created".into()))?;
    let keyid = param(rest, "keyid")
        .and_then(|v| v.strip_prefix('"')?.strip_suffix('"'))
        .ok_or_else(|| SigError::Malformed("no keyid".into()))?;
    let key = bundle
        .jwt_key(keyid, KeyRole::Gateway)
        .map_err(|e| SigError::WrongKey(e.to_string()))?;
    // The parameters must be exactly the ones we write (so the base we rebuild is the one that
    // was signed).
    let canonical = signature_params(c, created, keyid, key.alg());
    if canonical != params {
        return Err(SigError::Malformed(
            "unexpected signature parameters (alg, tag or order)".into(),
        ));
    }
    // `created` is the partner's number: no arithmetic on it may overflow.
    if created.abs_diff(now) > MAX_CLOCK_SKEW.unsigned_abs() {
        return Err(SigError::Stale(created));
    }
    let base = signature_base(c, &canonical)?;
    key.verify(key.alg(), base.as_bytes(), &sig)
        .map_err(|_| SigError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered<'a>(digest: &'a str, crossing: &'a str) -> Covered<'a> {
        Covered {
            status: 200,
            content_type: "application/json",
            content_digest: digest,
            crossing,
            receipt: Some("r.e.c"),
            method: "POST",
            path: "/ingress/analytics/run",
            query: "",
            authorization: "Bearer t.o.k",
            digest_in_trailer: false,
        }
    }

    #[test]
    fn digest_values() {
        // RFC 9530: SHA-256 of {"hello": "world"}.
        assert_eq!(
            content_digest(b"{\"hello\": \"world\"}"),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        let d = parse_content_digest(
            "sha-512=:AAAA:, sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        )
        .unwrap();
        assert_eq!(d, sha256(b"{\"hello\": \"world\"}"));
        assert!(parse_content_digest("sha-256=:AAAA:").is_none());
        assert!(parse_content_digest("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:").is_none());
    }

    /// The base for the research note's worked example shape, with the RFC 9421 section 2.5
    /// layout: one line per component, `@signature-params` last, no trailing newline.
    #[test]
    fn base_layout() {
        let c = covered("sha-256=:x:", "c1");
        let p = signature_params(&c, 1_700_000_000, "k1", Alg::EdDsa);
        let b = signature_base(&c, &p).unwrap();
        assert!(b.starts_with("\"@status\": 200\n\"content-type\": application/json\n"));
        assert!(b.contains("\n\"@query\";req: ?\n"));
        assert!(b.ends_with("tag=\"fedgate\""));
        assert!(!b.ends_with('\n'));
        let t = Covered {
            digest_in_trailer: true,
            ..c
        };
        assert!(
            signature_base(&t, &signature_params(&t, 1, "k", Alg::Es256))
                .unwrap()
                .contains("\"content-digest\";tr: sha-256=:x:")
        );
    }

    #[test]
    fn sign_and_verify_and_every_tamper() {
        let d = crate::devkit::DevDomain::new("vendor.example", 1_800_000_000).unwrap();
        let digest = content_digest(b"{\"ok\":true}");
        let c = covered(&digest, "crossing-1");
        let now = 1_800_000_000;
        let (input, sig) = sign(&d.gateway_key, &c, now).unwrap();
        assert!(input.starts_with("fedgate=(\"@status\""));
        verify(&d.bundle, &c, Some(&input), Some(&sig), now + 5).unwrap();
        // Another crossing, another body, another request, another token: all refused.
        let other = content_digest(b"{\"ok\":false}");
        for bad in [
            covered(&digest, "crossing-2"),
            covered(&other, "crossing-1"),
            Covered {
                path: "/ingress/other",
                ..c.clone()
            },
            Covered {
                authorization: "Bearer x.y.z",
                ..c.clone()
            },
            Covered {
                status: 500,
                ..c.clone()
            },
        ] {
            assert_eq!(
                verify(&d.bundle, &bad, Some(&input), Some(&sig), now),
                Err(SigError::BadSignature)
            );
        }
        assert_eq!(
            verify(&d.bundle, &c, None, Some(&sig), now),
            Err(SigError::Missing)
        );
        assert!(matches!(
            verify(&d.bundle, &c, Some(&input), Some(&sig), now + 10_000),
            Err(SigError::Stale(_))
        ));
        // A hostile `created` at the ends of the range is stale, never an overflow.
        for created in [i64::MIN, i64::MAX] {
            let forged = input.replace(&format!("created={now}"), &format!("created={created}"));
            assert_ne!(forged, input);
            assert!(matches!(
                verify(&d.bundle, &c, Some(&forged), Some(&sig), now),
                Err(SigError::Stale(_))
            ));
        }
        // Signed with a key of another role (the IdP's), or not in the bundle.
        let (i2, s2) = sign(&d.idp_key, &c, now).unwrap();
        assert!(matches!(
            verify(&d.bundle, &c, Some(&i2), Some(&s2), now),
            Err(SigError::WrongKey(_))
        ));
        let (k3, _) = SigningKey::generate_p256().unwrap();
        let (i3, s3) = sign(&k3, &c, now).unwrap();
        assert!(matches!(
            verify(&d.bundle, &c, Some(&i3), Some(&s3), now),
            Err(SigError::WrongKey(_))
        ));
        // Other components, or a reordered parameter list.
        let fewer = input.replace(" \"authorization\";req", "");
        assert_eq!(
            verify(&d.bundle, &c, Some(&fewer), Some(&sig), now),
            Err(SigError::WrongComponents)
        );
        let reordered = input.replace(
            &format!(";created={now};keyid=\"{}\"", d.gateway_key.kid()),
            &format!(";keyid=\"{}\";created={now}", d.gateway_key.kid()),
        );
        assert_ne!(reordered, input);
        assert!(verify(&d.bundle, &c, Some(&reordered), Some(&sig), now).is_err());
        // A denial's signature (no receipt) does not pass as an allowed response's.
        let denial = Covered {
            receipt: None,
            ..c.clone()
        };
        let (di, ds) = sign(&d.gateway_key, &denial, now).unwrap();
        verify(&d.bundle, &denial, Some(&di), Some(&ds), now).unwrap();
        assert!(verify(&d.bundle, &c, Some(&di), Some(&ds), now).is_err());
        let wrong_tag = input.replace("tag=\"fedgate\"", "tag=\"other\"");
        assert!(verify(&d.bundle, &c, Some(&wrong_tag), Some(&sig), now).is_err());
        // Other members in the dictionaries are ignored; two fedgate members are refused.
        let with_other = format!("other=(\"@status\");created=1, {input}");
        assert!(verify(&d.bundle, &c, Some(&with_other), Some(&sig), now).is_ok());
        let twice = format!("{input}, {input}");
        assert!(verify(&d.bundle, &c, Some(&twice), Some(&sig), now).is_err());
    }
}
