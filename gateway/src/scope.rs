//! Scopes (SPEC section 4): strings of 1–256 bytes from `[A-Za-z0-9_.:/*-]`, where a trailing
//! `*` makes a prefix pattern. P covers Q when Q = P, or P ends in `*` and Q (its own trailing
//! `*` dropped) starts with P's stem. Sets: A ⊆ B when every member of A is covered by some
//! member of B; intersection keeps the largest set covered by both, never more than asked.

use std::fmt;

/// Longest scope string (SPEC section 4).
pub const MAX_SCOPE_BYTES: usize = 256;
/// Most scopes in one set: a chain link carries 1–64 (SPEC section 3), and agreements and
/// requests are held to the same bound so coverage checks stay small (quadratic in this).
pub const MAX_SCOPES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    #[error("empty scope")]
    Empty,
    #[error("scope longer than {MAX_SCOPE_BYTES} bytes")]
    TooLong,
    #[error("scope {0:?} has a character outside [A-Za-z0-9_.:/*-]")]
    BadChar(String),
    #[error("scope {0:?} has '*' other than as its last character")]
    MisplacedWildcard(String),
    #[error("more than {MAX_SCOPES} scopes")]
    TooMany,
    #[error("no scopes")]
    NoScopes,
}

/// One scope or scope pattern, valid by construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

fn scope_char_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'/' | b'*' | b'-')
}

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, ScopeError> {
        if s.is_empty() {
            return Err(ScopeError::Empty);
        }
        if s.len() > MAX_SCOPE_BYTES {
            return Err(ScopeError::TooLong);
        }
        if !s.bytes().all(scope_char_ok) {
            return Err(ScopeError::BadChar(s.chars().take(64).collect()));
        }
        if let Some(i) = s.find('*') {
            if i != s.len() - 1 {
                return Err(ScopeError::MisplacedWildcard(s.to_string()));
            }
        }
        Ok(Scope(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.ends_with('*')
    }

    /// The part a pattern matches on: the string without its trailing `*`.
    fn stem(&self) -> &str {
        self.0.strip_suffix('*').unwrap_or(&self.0)
    }

    /// Whether `self` covers `other` (SPEC section 4).
    pub fn covers(&self, other: &Scope) -> bool {
        if self.0 == other.0 {
            return true;
        }
        self.is_wildcard() && other.stem().starts_with(self.stem())
    }

    /// The largest pattern covered by both, if any. For prefix patterns and exact strings the
    /// common part is always one of the two (or nothing).
    pub fn meet(&self, other: &Scope) -> Option<Scope> {
        if self.covers(other) {
            Some(other.clone())
        } else if other.covers(self) {
            Some(self.clone())
        } else {
            None
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of scopes, kept sorted and without members covered by other members, so equal sets
/// compare equal and serialize identically.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct ScopeSet(Vec<Scope>);

impl ScopeSet {
    /// Builds a normalized set; the input may be empty (use [`ScopeSet::parse_nonempty`] where
    /// the spec asks for at least one).
    pub fn from_scopes(mut v: Vec<Scope>) -> Result<ScopeSet, ScopeError> {
        if v.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
        v.sort();
        v.dedup();
        // Drop members covered by another member: they add nothing to the set's meaning.
        let keep: Vec<Scope> = v
            .iter()
            .filter(|s| !v.iter().any(|o| o != *s && o.covers(s)))
            .cloned()
            .collect();
        Ok(ScopeSet(keep))
    }

    pub fn parse_list<S: AsRef<str>>(items: &[S]) -> Result<ScopeSet, ScopeError> {
        if items.len() > MAX_SCOPES {
            return Err(ScopeError::TooMany);
        }
        let v = items
            .iter()
            .map(|s| Scope::parse(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_scopes(v)
    }

    pub fn parse_nonempty<S: AsRef<str>>(items: &[S]) -> Result<ScopeSet, ScopeError> {
        if items.is_empty() {
            return Err(ScopeError::NoScopes);
        }
        Self::parse_list(items)
    }

    /// Space-separated (OAuth `scope` form). Empty input is an empty set.
    pub fn parse_spaced(s: &str) -> Result<ScopeSet, ScopeError> {
        let items: Vec<&str> = s.split(' ').filter(|x| !x.is_empty()).collect();
        Self::parse_list(&items)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some member covers `s`.
    pub fn covers(&self, s: &Scope) -> bool {
        self.0.iter().any(|m| m.covers(s))
    }

    /// `self ⊆ other`: every member of self is covered by some member of other.
    pub fn is_subset_of(&self, other: &ScopeSet) -> bool {
        self.0.iter().all(|s| other.covers(s))
    }

    /// Intersection by coverage: every pattern covered by a member of both sets, normalized.
    pub fn intersect(&self, other: &ScopeSet) -> ScopeSet {
        let mut out = Vec::new();
        for a in &self.0 {
            for b in &other.0 {
                if let Some(m) = a.meet(b) {
                    out.push(m);
                }
            }
        }
        // Both inputs have at most MAX_SCOPES members, but the pairwise meets can exceed it;
        // normalization removes covered members and the result is never wider than either side.
        out.sort();
        out.dedup();
        let keep: Vec<Scope> = out
            .iter()
            .filter(|s| !out.iter().any(|o| o != *s && o.covers(s)))
            .cloned()
            .collect();
        ScopeSet(keep)
    }

    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }

    /// Space-separated (OAuth `scope` form).
    pub fn to_spaced(&self) -> String {
        let mut s = String::new();
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(&m.0);
        }
        s
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_spaced())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).unwrap()
    }
    fn set(x: &[&str]) -> ScopeSet {
        ScopeSet::parse_list(x).unwrap()
    }

    #[test]
    fn parse_rules() {
        assert!(Scope::parse("cloud:read").is_ok());
        assert!(Scope::parse("a-b_c.d:e/f*").is_ok());
        assert!(Scope::parse("*").is_ok());
        assert_eq!(Scope::parse(""), Err(ScopeError::Empty));
        assert_eq!(Scope::parse(&"a".repeat(257)), Err(ScopeError::TooLong));
        assert!(Scope::parse(&"a".repeat(256)).is_ok());
        assert!(matches!(Scope::parse("a b"), Err(ScopeError::BadChar(_))));
        assert!(matches!(Scope::parse("é"), Err(ScopeError::BadChar(_))));
        assert!(matches!(
            Scope::parse("a*b"),
            Err(ScopeError::MisplacedWildcard(_))
        ));
        assert!(matches!(
            Scope::parse("**"),
            Err(ScopeError::MisplacedWildcard(_))
        ));
        assert_eq!(
            ScopeSet::parse_nonempty::<&str>(&[]),
            Err(ScopeError::NoScopes)
        );
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        assert_eq!(ScopeSet::parse_list(&many), Err(ScopeError::TooMany));
    }

    #[test]
    fn coverage_examples_from_the_spec() {
        assert!(s("cloud:*").covers(&s("cloud:read")));
        assert!(s("cloud:*").covers(&s("cloud:read:x")));
        assert!(s("ec2:Describe*").covers(&s("ec2:DescribeInstances")));
        assert!(s("ec2:Describe*").covers(&s("ec2:DescribeX*")));
        assert!(!s("ec2:Describe*").covers(&s("ec2:Delete")));
        assert!(!s("ec2:Describe*").covers(&s("ec2:Desc*")));
        assert!(!s("cloud:read").covers(&s("cloud:*")));
        assert!(!s("cloud:read").covers(&s("cloud:read:x")));
        assert!(s("*").covers(&s("anything:at:all*")));
    }

    #[test]
    fn set_operations() {
        let held = set(&["analytics:*", "reports:write"]);
        assert!(set(&["analytics:run"]).is_subset_of(&held));
        assert!(!set(&["analytics:run", "pii:read"]).is_subset_of(&held));
        let max = set(&["analytics:run", "analytics:read:*", "pii:customers:read"]);
        assert_eq!(
            set(&["analytics:*"]).intersect(&max),
            set(&["analytics:run", "analytics:read:*"])
        );
        assert_eq!(
            set(&["analytics:read:x"]).intersect(&max),
            set(&["analytics:read:x"])
        );
        assert!(set(&["billing:read"]).intersect(&max).is_empty());
        assert_eq!(set(&["a:*", "a:b"]), set(&["a:*"]));
        assert_eq!(ScopeSet::parse_spaced(" a  b ").unwrap().to_spaced(), "a b");
    }

    fn arb_scope() -> impl Strategy<Value = Scope> {
        // A small alphabet so that prefixes and collisions are common.
        ("[ab:]{1,4}", proptest::bool::ANY).prop_map(|(stem, wild)| {
            Scope::parse(&if wild { format!("{stem}*") } else { stem }).unwrap()
        })
    }

    fn arb_set() -> impl Strategy<Value = ScopeSet> {
        proptest::collection::vec(arb_scope(), 0..6).prop_map(|v| ScopeSet::from_scopes(v).unwrap())
    }

    proptest! {
        #[test]
        fn subset_is_reflexive(a in arb_set()) {
            prop_assert!(a.is_subset_of(&a));
        }

        #[test]
        fn subset_is_transitive(a in arb_set(), b in arb_set(), c in arb_set()) {
            if a.is_subset_of(&b) && b.is_subset_of(&c) {
                prop_assert!(a.is_subset_of(&c));
            }
        }

        #[test]
        fn intersection_is_covered_by_both_and_never_grows(a in arb_set(), b in arb_set()) {
            let i = a.intersect(&b);
            prop_assert!(i.is_subset_of(&a));
            prop_assert!(i.is_subset_of(&b));
            // Anything covered by both sides is covered by the intersection (it is the largest).
            for x in a.iter().chain(b.iter()) {
                if a.covers(x) && b.covers(x) {
                    prop_assert!(i.covers(x), "{x} lost from {a} ∩ {b} = {i}");
                }
            }
        }

        #[test]
        fn wildcard_never_covers_a_sibling(stem in "[a-z]{1,6}", sib in "[a-z]{1,6}") {
            let p = Scope::parse(&format!("ec2:{stem}*")).unwrap();
            let q = Scope::parse(&format!("ec2:{sib}")).unwrap();
            prop_assert_eq!(p.covers(&q), sib.starts_with(&stem));
        }

        #[test]
        fn coverage_matches_string_semantics(p in arb_scope(), q in arb_scope()) {
            // P covers Q iff every concrete string Q can stand for is one P stands for.
            let ps = p.as_str().strip_suffix('*');
            let qs = q.as_str().strip_suffix('*');
            let expect = match (ps, qs) {
                (None, None) => p == q,
                (None, Some(_)) => false,
                (Some(pst), None) => q.as_str().starts_with(pst),
                (Some(pst), Some(qst)) => qst.starts_with(pst),
            };
            prop_assert_eq!(p.covers(&q), expect);
        }
    }
}
