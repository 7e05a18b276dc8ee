//! Audit records (SPEC section 8): one per crossing decision (allow or deny, both directions),
//! a second one for its outcome, and one per revocation notice. Stored and exported as RFC 8785
//! canonical JSON; the leaf hash covers exactly those bytes.
//!
//! Beyond the fields SPEC section 8 lists, a record carries `kind`, `mode`, `authenticated`
//! and `prev` (the leaf hash of the record before it, so a damaged record is pinpointed by the
//! next one), and outcome or revocation details.

use serde::{Deserialize, Serialize};

use super::merkle::{leaf_hash, Hash};

/// Record format version.
pub const RECORD_VERSION: u32 = 1;
/// Largest canonical record: every field is bounded (scopes, ids), so this only stops bugs. One
/// byte under 64 KiB, so every record fits a C2SP entry bundle's uint16 length prefix.
pub const MAX_RECORD_BYTES: usize = crate::audit::tiles::MAX_ENTRY_BYTES;

/// Fields are declared in the lexicographic order of their JSON names, and every value is a
/// string, integer, boolean, null, array or (for `revocation`) an object with sorted keys, so
/// serde_json's compact output *is* the RFC 8785 form (its string escaping is JCS's); a test
/// checks this against the general canonicalizer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub agreement: Option<String>,
    /// Inbound: whether the token's signature verified (only authenticated crossings are
    /// expected in the partner's log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<bool>,
    pub chain_digest: Option<String>,
    /// Witness records (`kind = "witness"`): the partner checkpoint concerned and the one
    /// cosigned before (an object with sorted keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<serde_json::Value>,
    /// The federation token's `jti` (a fresh id for denials without an authentic token).
    pub crossing: String,
    /// `allow` or `deny`.
    pub decision: String,
    pub depth: Option<u64>,
    /// `outbound` or `inbound`.
    pub direction: String,
    pub domain: String,
    /// `decision`, `outcome`, `revocation`, `agreement` (a proposal, acceptance or
    /// rejection of an agreement version) or `witness` (a partner checkpoint refused as a fork).
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Agreement records: the step and the version it concerns (an object with sorted keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<serde_json::Value>,
    /// `egress`, `token_exchange`, `ingress` (and for notices `notice`, `admin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub partner: Option<String>,
    /// The mTLS peer that sent the request (who presented it, which is not always the token's
    /// actor: a stolen token presented by another agent names the thief here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// base64url leaf hash of the previous record (empty for seq 0).
    pub prev: String,
    pub principal: Option<String>,
    /// An MCP or A2A crossing: `{"name": "mcp"|"a2a", "methods": [...], "tools": [...],
    /// "task": "<A2A task id>"}` (members only when known; sorted keys, strings only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<serde_json::Value>,
    pub reason: Option<String>,
    /// Outcome records of egress: the partner's `Fedgate-Receipt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_valid: Option<bool>,
    /// Outcome records: the decision record's seq.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "ref")]
    pub ref_seq: Option<u64>,
    /// Outcome records: the RFC 9530 `Content-Digest` of the response body (as sent by the
    /// receiver, as received by the sender), so the two domains can compare what was answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_digest: Option<String>,
    /// Revocation records: what was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<serde_json::Value>,
    pub scope_granted: Vec<String>,
    pub scope_requested: Vec<String>,
    pub seq: u64,
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub target: Option<String>,
    pub time: String,
    pub token_exp: Option<i64>,
    pub txn: Option<String>,
    pub v: u32,
}

impl Record {
    /// A decision record with the common fields set; the log sets `seq`, `prev`, `v`.
    pub fn decision(domain: &str, direction: &str, crossing: &str, allow: bool) -> Record {
        Record {
            v: RECORD_VERSION,
            time: crate::time::format_rfc3339_millis(crate::time::now_millis()),
            domain: domain.to_string(),
            kind: "decision".into(),
            direction: direction.into(),
            crossing: crossing.into(),
            decision: if allow { "allow" } else { "deny" }.into(),
            ..Default::default()
        }
    }

    /// The canonical bytes the leaf hash covers.
    pub fn canonical(&self) -> Result<Vec<u8>, String> {
        let b = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        if b.len() > MAX_RECORD_BYTES {
            return Err(format!("record larger than {MAX_RECORD_BYTES} bytes"));
        }
        Ok(b)
    }

    /// Parses canonical bytes back, checking they are canonical.
    pub fn from_canonical(bytes: &[u8]) -> Result<Record, String> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err("record too large".into());
        }
        let r: Record = serde_json::from_slice(bytes).map_err(|e| format!("not a record: {e}"))?;
        let again = r.canonical()?;
        if again != bytes {
            return Err("record is not in canonical form".into());
        }
        Ok(r)
    }

    pub fn leaf(bytes: &[u8]) -> Hash {
        leaf_hash(bytes)
    }

    pub fn is_allow(&self) -> bool {
        self.decision == "allow"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path (serde_json of sorted fields) equals the general RFC 8785 canonicalizer.
    #[test]
    fn fast_canonical_form_is_jcs() {
        let mut r = Record::decision("company.com", "inbound", "c\u{1}\"x/é", false);
        r.reason = Some("revoked".into());
        r.scope_requested = vec!["a:*".into(), "b".into()];
        r.depth = Some(3);
        r.token_exp = Some(-5);
        r.ref_seq = Some(9);
        r.status = Some(200);
        r.receipt_valid = Some(true);
        r.revocation =
            Some(serde_json::json!({"value": "v", "kind": "agent", "until": 0, "domain": "d"}));
        r.authenticated = Some(false);
        r.mode = Some("ingress".into());
        r.latency_ms = Some(12);
        r.response_digest = Some("sha-256=:x:".into());
        r.peer = Some("spiffe://a/b".into());
        r.receipt = Some("r\n".into());
        let jcs = crate::jcs::canonicalize(&serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(r.canonical().unwrap()).unwrap(),
            String::from_utf8(jcs).unwrap()
        );
        let d = Record::default();
        assert_eq!(
            d.canonical().unwrap(),
            crate::jcs::canonicalize(&serde_json::to_value(&d).unwrap()).unwrap()
        );
    }

    #[test]
    fn canonical_round_trip_and_strictness() {
        let mut r = Record::decision("company.com", "outbound", "jti-1", true);
        r.seq = 3;
        r.scope_granted = vec!["analytics:*".into()];
        r.reason = None;
        let b = r.canonical().unwrap();
        let s = String::from_utf8(b.clone()).unwrap();
        assert!(
            s.starts_with("{\"agreement\":null,\"chain_digest\":null,\"crossing\":\"jti-1\""),
            "{s}"
        );
        assert!(!s.contains("\"mode\""), "absent extras are omitted");
        assert_eq!(Record::from_canonical(&b).unwrap(), r);
        // Whitespace or reordering is not canonical; unknown fields are refused.
        let pretty = serde_json::to_vec_pretty(&r).unwrap();
        assert!(Record::from_canonical(&pretty).is_err());
        let extra = s.replacen('{', "{\"zzz\":1,", 1);
        assert!(Record::from_canonical(extra.as_bytes()).is_err());
    }
}
