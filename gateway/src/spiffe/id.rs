//! SPIFFE IDs and trust domain names, exactly as the SPIFFE-ID standard defines them: scheme
//! `spiffe://`, a lowercase trust domain of `[a-z0-9.-_]`, path segments of `[A-Za-z0-9.-_]`,
//! no empty, `.` or `..` segments, no trailing slash, no query, fragment, port, userinfo or
//! percent-encoding, at most 2048 bytes. Values of these types are valid by construction.

use std::fmt;

/// The SPIFFE-ID standard's maximum length of a whole ID, in bytes.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;
/// The SPIFFE-ID standard's maximum length of a trust domain name (a DNS-like name), in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

const SCHEME: &str = "spiffe://";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("scheme must be exactly \"spiffe://\"")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain must be lowercase")]
    UppercaseTrustDomain,
    #[error("port is not allowed in a SPIFFE ID")]
    Port,
    #[error("userinfo is not allowed in a SPIFFE ID")]
    UserInfo,
    #[error("percent-encoding is not allowed in a SPIFFE ID")]
    PercentEncoded,
    #[error("query is not allowed in a SPIFFE ID")]
    Query,
    #[error("fragment is not allowed in a SPIFFE ID")]
    Fragment,
    #[error("trust domain contains a character outside [a-z0-9.-_] at byte {0}")]
    BadTrustDomainChar(usize),
    #[error("path contains a character outside [A-Za-z0-9.-_] at byte {0}")]
    BadPathChar(usize),
    #[error("path has an empty segment")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path has a trailing slash")]
    TrailingSlash,
    #[error("longer than {0} bytes")]
    TooLong(usize),
}

fn td_char_ok(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-' || b == b'_'
}

fn path_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'
}

/// Names the first offending byte of a trust domain with the most specific error.
fn td_error(b: u8, at: usize) -> IdError {
    match b {
        b'A'..=b'Z' => IdError::UppercaseTrustDomain,
        b':' => IdError::Port,
        b'@' => IdError::UserInfo,
        b'%' => IdError::PercentEncoded,
        b'?' => IdError::Query,
        b'#' => IdError::Fragment,
        _ => IdError::BadTrustDomainChar(at),
    }
}

fn path_error(b: u8, at: usize) -> IdError {
    match b {
        b'%' => IdError::PercentEncoded,
        b'?' => IdError::Query,
        b'#' => IdError::Fragment,
        _ => IdError::BadPathChar(at),
    }
}

fn check_trust_domain(td: &str, offset: usize) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(IdError::TooLong(MAX_TRUST_DOMAIN_BYTES));
    }
    for (i, &b) in td.as_bytes().iter().enumerate() {
        if !td_char_ok(b) {
            return Err(td_error(b, offset + i));
        }
    }
    Ok(())
}

fn check_path(path: &str, offset: usize) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/' (the caller split on it).
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'/' && !path_char_ok(b) {
            return Err(path_error(b, offset + i));
        }
    }
    if path.ends_with('/') {
        return Err(if path == "/" {
            IdError::EmptySegment
        } else {
            IdError::TrailingSlash
        });
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() {
            return Err(IdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(IdError::DotSegment);
        }
    }
    Ok(())
}

/// A trust domain name, such as `company.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`company.com`) or a trust-domain SPIFFE ID
    /// (`spiffe://company.com`).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.contains("://") {
            let id = SpiffeId::parse(s)?;
            if !id.path().is_empty() {
                return Err(IdError::BadTrustDomainChar(SCHEME.len() + id.td_len));
            }
            return Ok(id.trust_domain());
        }
        check_trust_domain(s, 0)?;
        Ok(TrustDomain(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `spiffe://<td>`
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }

    /// `spiffe://<td><path>`; the path is checked.
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, IdError> {
        SpiffeId::parse(&format!("{SCHEME}{}{}", self.0, path))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SPIFFE ID, such as `spiffe://company.com/agent/planning/abc123`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: String,
    td_len: usize,
}

impl SpiffeId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_BYTES {
            return Err(IdError::TooLong(MAX_SPIFFE_ID_BYTES));
        }
        let rest = s.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td, SCHEME.len())?;
        check_path(path, SCHEME.len() + td.len())?;
        Ok(SpiffeId {
            full: s.to_string(),
            td_len: td.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn trust_domain_str(&self) -> &str {
        &self.full[SCHEME.len()..SCHEME.len() + self.td_len]
    }

    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_string())
    }

    pub fn in_domain(&self, td: &TrustDomain) -> bool {
        self.trust_domain_str() == td.as_str()
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.full[SCHEME.len() + self.td_len..]
    }

    /// For `spiffe://td/agent/<type>/<instance>`, the agent type.
    pub fn agent_type(&self) -> Option<&str> {
        let mut segs = self.path().strip_prefix("/agent/")?.split('/');
        segs.next().filter(|s| !s.is_empty())
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A SPIFFE ID pattern of an agreement or config: an exact SPIFFE ID, or a SPIFFE ID prefix
/// ending in `*` (`spiffe://company.com/agent/planning/*`). The part before `*` must itself be a
/// valid SPIFFE ID prefix, so a pattern can never match outside its trust domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdPattern {
    text: String,
    prefix: bool,
    td: TrustDomain,
}

impl IdPattern {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if let Some(stem) = s.strip_suffix('*') {
            // The stem must be `spiffe://td/...` ending in '/', or a full valid ID prefix.
            let probe = if stem.ends_with('/') {
                format!("{stem}x")
            } else {
                stem.to_string()
            };
            let id = SpiffeId::parse(&probe)?;
            if stem.len() <= SCHEME.len() + id.td_len {
                // `spiffe://td*` would let the pattern extend the trust domain name itself.
                return Err(IdError::BadTrustDomainChar(stem.len()));
            }
            if stem.contains('*') {
                return Err(IdError::BadPathChar(stem.find('*').unwrap_or(0)));
            }
            Ok(IdPattern {
                text: s.to_string(),
                prefix: true,
                td: id.trust_domain(),
            })
        } else {
            let id = SpiffeId::parse(s)?;
            Ok(IdPattern {
                text: s.to_string(),
                prefix: false,
                td: id.trust_domain(),
            })
        }
    }

    pub fn matches(&self, id: &SpiffeId) -> bool {
        if self.prefix {
            id.as_str().starts_with(&self.text[..self.text.len() - 1])
        } else {
            id.as_str() == self.text
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_prefix(&self) -> bool {
        self.prefix
    }
}

impl fmt::Display for IdPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for ok in [
            "spiffe://company.com",
            "spiffe://company.com/agent/planning/abc123",
            "spiffe://a-b_c.d/Path/With.Dots-and_underscores",
            "spiffe://1/2",
            "spiffe://x/..a/.b/a..",
        ] {
            let id = SpiffeId::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(id.as_str(), ok);
        }
        let id = SpiffeId::parse("spiffe://company.com/agent/planning/abc").unwrap();
        assert_eq!(id.trust_domain_str(), "company.com");
        assert_eq!(id.path(), "/agent/planning/abc");
        assert_eq!(id.agent_type(), Some("planning"));
        assert_eq!(
            SpiffeId::parse("spiffe://c/idp").unwrap().agent_type(),
            None
        );
    }

    #[test]
    fn rejects_each_rule() {
        use IdError::*;
        let cases: &[(&str, IdError)] = &[
            ("", Empty),
            ("http://company.com/x", WrongScheme),
            ("SPIFFE://company.com/x", WrongScheme),
            ("spiffe:/company.com", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///path", MissingTrustDomain),
            ("spiffe://Company.com/x", UppercaseTrustDomain),
            ("spiffe://company.com:8443/x", Port),
            ("spiffe://user@company.com/x", UserInfo),
            ("spiffe://company%2ecom/x", PercentEncoded),
            ("spiffe://company.com/a%20b", PercentEncoded),
            ("spiffe://company.com/a?x=1", Query),
            ("spiffe://company.com/a#frag", Fragment),
            ("spiffe://company.com/", EmptySegment),
            ("spiffe://company.com//a", EmptySegment),
            ("spiffe://company.com/a//b", EmptySegment),
            ("spiffe://company.com/a/./b", DotSegment),
            ("spiffe://company.com/a/..", DotSegment),
            ("spiffe://company.com/a/", TrailingSlash),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(want), "{input}");
        }
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(MAX_TRUST_DOMAIN_BYTES);
        assert!(TrustDomain::parse(&td).is_ok());
        assert_eq!(
            TrustDomain::parse(&format!("{td}a")),
            Err(IdError::TooLong(255))
        );
        let base = "spiffe://x/";
        let ok = format!("{base}{}", "a".repeat(MAX_SPIFFE_ID_BYTES - base.len()));
        assert!(SpiffeId::parse(&ok).is_ok());
        let long = format!("{ok}a");
        assert_eq!(SpiffeId::parse(&long), Err(IdError::TooLong(2048)));
    }

    /// Every byte 0..=255 in trust-domain position and in path position: exactly the characters
    /// of the standard's alphabets are accepted.
    #[test]
    fn byte_sweep() {
        for b in 0u8..=255 {
            let td_ok = b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
            let path_ok = b.is_ascii_alphanumeric() || b"-._".contains(&b);
            // Bytes >= 0x80 cannot form a &str alone; build a lossy-free string where possible.
            let bytes_td = [b"spiffe://a".as_slice(), &[b], b"b"].concat();
            let bytes_path = [b"spiffe://td/a".as_slice(), &[b], b"b"].concat();
            match (
                std::str::from_utf8(&bytes_td),
                std::str::from_utf8(&bytes_path),
            ) {
                (Ok(td_s), Ok(path_s)) => {
                    // '/' in trust-domain position ends the trust domain: `spiffe://a/b` is valid.
                    assert_eq!(
                        SpiffeId::parse(td_s).is_ok(),
                        td_ok || b == b'/',
                        "td byte {b:#04x}"
                    );
                    // '/' in path position just makes two segments: valid.
                    let want = path_ok || b == b'/';
                    assert_eq!(SpiffeId::parse(path_s).is_ok(), want, "path byte {b:#04x}");
                    assert_eq!(
                        TrustDomain::parse(&format!("a{}b", b as char)).is_ok(),
                        td_ok
                    );
                }
                _ => {
                    // Non-UTF-8 input never reaches the parser as &str; the UTF-8 encoding of
                    // the same code point must be rejected.
                    let ch = char::from(b);
                    let td_s = format!("spiffe://a{ch}b");
                    let path_s = format!("spiffe://td/a{ch}b");
                    assert!(SpiffeId::parse(&td_s).is_err(), "td byte {b:#04x}");
                    assert!(SpiffeId::parse(&path_s).is_err(), "path byte {b:#04x}");
                }
            }
        }
    }

    #[test]
    fn trust_domain_forms() {
        assert_eq!(
            TrustDomain::parse("spiffe://company.com").unwrap().as_str(),
            "company.com"
        );
        assert!(TrustDomain::parse("spiffe://company.com/x").is_err());
        assert!(TrustDomain::parse("").is_err());
        let td = TrustDomain::parse("company.com").unwrap();
        assert_eq!(
            td.id_with_path("/gateway").unwrap().as_str(),
            "spiffe://company.com/gateway"
        );
        assert!(td.id_with_path("/bad path").is_err());
    }

    #[test]
    fn patterns() {
        let p = IdPattern::parse("spiffe://company.com/agent/planning/*").unwrap();
        assert!(p.matches(&SpiffeId::parse("spiffe://company.com/agent/planning/a1").unwrap()));
        assert!(!p.matches(&SpiffeId::parse("spiffe://company.com/agent/plan/a1").unwrap()));
        assert!(!p.matches(&SpiffeId::parse("spiffe://company.com.evil/agent/planning/a").unwrap()));
        assert_eq!(p.trust_domain().as_str(), "company.com");
        let exact = IdPattern::parse("spiffe://company.com/gateway").unwrap();
        assert!(exact.matches(&SpiffeId::parse("spiffe://company.com/gateway").unwrap()));
        assert!(!exact.matches(&SpiffeId::parse("spiffe://company.com/gateway2").unwrap()));
        for bad in [
            "spiffe://company*",
            "spiffe://*",
            "spiffe://c.com/a*/b*",
            "spiffe://c.com/*/x",
            "x*",
        ] {
            assert!(IdPattern::parse(bad).is_err(), "{bad}");
        }
        // A prefix that ends mid-segment is allowed and stays inside the trust domain.
        assert!(IdPattern::parse("spiffe://c.com/agent/plan*").is_ok());
    }
}
