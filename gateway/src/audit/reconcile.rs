//! Reconciliation of two domains' verified exports (pure): every crossing one side allowed
//! outbound is matched, by crossing id, with the other side's inbound record, field by field;
//! receipts are checked against the partner's log; clocks are compared; and the logs themselves
//! are checked against earlier checkpoints (append-only).
//!
//! Kinds: `matched`; `missing_in_partner` (sent, never logged by the receiver);
//! `missing_in_local` (the receiver logged an authentic token the sender never logged);
//! `field_mismatch` (which fields); `receipt_invalid` (does not verify with the partner's
//! bundle); `receipt_mismatch` (its leaf is not in the partner's log at its seq);
//! `unreceipted` (the partner allowed it but the sender kept no valid receipt); `clock_skew`;
//! `unused` (a token from token exchange never presented) and `refused` (the receiver denied a
//! token the sender issued, e.g. revoked meanwhile), both informational; and for a whole log
//! `tampered` and `not_append_only`. A receiver's denial is a `field_mismatch` on `decision`
//! only when the sender holds the receiver's signed receipt that it was allowed.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::checkpoint::Checkpoint;
use super::export::Export;
use super::merkle::root_of;
use super::record::Record;
use crate::crypto::b64url;
use crate::spiffe::Bundle;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub kind: &'static str,
    /// `<sender> -> <receiver>` (or the log's domain for log-level findings).
    pub direction: String,
    pub crossing: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub local: String,
    pub partner: String,
    pub clean: bool,
    pub summary: BTreeMap<&'static str, usize>,
    pub findings: Vec<Finding>,
}

/// Kinds that are not discrepancies.
const BENIGN: &[&str] = &["matched", "unused", "refused"];

/// Earlier checkpoints an auditor holds, to prove the logs only grew.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    pub local: Vec<Checkpoint>,
    pub partner: Vec<Checkpoint>,
}

fn append_only(e: &Export, prev: &[Checkpoint], findings: &mut Vec<Finding>) {
    for p in prev {
        let ok = p.origin == e.checkpoint.origin
            && p.size <= e.records.len() as u64
            && root_of(&e.leaves[..p.size as usize]) == p.root;
        if !ok {
            findings.push(Finding {
                kind: "not_append_only",
                direction: e.domain.clone(),
                crossing: None,
                fields: vec![],
                detail: format!(
                    "{}'s log does not extend its earlier checkpoint of size {} (history rewritten or forked)",
                    e.domain, p.size
                ),
            });
        }
    }
}

fn decisions<'a>(e: &'a Export, direction: &str, partner: &str) -> Vec<&'a Record> {
    e.records
        .iter()
        .filter(|r| {
            r.kind == "decision"
                && r.direction == direction
                && r.partner.as_deref() == Some(partner)
        })
        .collect()
}

/// The token-level fields both sides record, compared.
fn mismatched(out: &Record, inb: &Record) -> Vec<String> {
    let mut f = Vec::new();
    let pairs: [(&str, Option<&str>, Option<&str>); 6] = [
        ("target", out.target.as_deref(), inb.target.as_deref()),
        (
            "agreement",
            out.agreement.as_deref(),
            inb.agreement.as_deref(),
        ),
        ("txn", out.txn.as_deref(), inb.txn.as_deref()),
        (
            "principal",
            out.principal.as_deref(),
            inb.principal.as_deref(),
        ),
        (
            "chain_digest",
            out.chain_digest.as_deref(),
            inb.chain_digest.as_deref(),
        ),
        ("source", out.source.as_deref(), inb.source.as_deref()),
    ];
    for (name, a, b) in pairs {
        if a != b {
            f.push(name.to_string());
        }
    }
    if out.scope_granted != inb.scope_requested {
        f.push("scope".into());
    }
    if out.depth != inb.depth {
        f.push("depth".into());
    }
    if out.token_exp != inb.token_exp {
        f.push("token_exp".into());
    }
    f
}

fn millis(t: &str) -> Option<i64> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|d| (d.unix_timestamp_nanos() / 1_000_000) as i64)
}

fn one_direction(
    x: &Export,
    y: &Export,
    y_bundle: &Bundle,
    skew_ms: i64,
    findings: &mut Vec<Finding>,
) {
    let dir = format!("{} -> {}", x.domain, y.domain);
    let outs: Vec<&Record> = decisions(x, "outbound", &y.domain)
        .into_iter()
        .filter(|r| r.is_allow())
        .collect();
    let mut inbound: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in decisions(y, "inbound", &x.domain) {
        if r.authenticated == Some(true) {
            inbound.entry(r.crossing.as_str()).or_default().push(r);
        }
    }
    let outcomes: HashMap<&str, &Record> = x
        .records
        .iter()
        .filter(|r| r.kind == "outcome" && r.direction == "outbound")
        .map(|r| (r.crossing.as_str(), r))
        .collect();
    let mut seen_out = std::collections::HashSet::new();
    for out in outs {
        seen_out.insert(out.crossing.as_str());
        let c = Some(out.crossing.clone());
        let Some(ins) = inbound.get(out.crossing.as_str()) else {
            let (kind, detail) = if out.mode.as_deref() == Some("token_exchange") {
                (
                    "unused",
                    "a token issued by token exchange was never presented".to_string(),
                )
            } else {
                (
                    "missing_in_partner",
                    format!(
                        "{} forwarded it, {} has no record of it",
                        x.domain, y.domain
                    ),
                )
            };
            findings.push(Finding {
                kind,
                direction: dir.clone(),
                crossing: c,
                fields: vec![],
                detail,
            });
            continue;
        };
        let first = ins[0];
        let mut fields = mismatched(out, first);
        if !first.is_allow() {
            // The receiver refused a token the sender issued: its own checks at work (revoked,
            // route, policy...), not a disagreement — unless the sender holds the receiver's
            // signed receipt saying it was allowed.
            let receipted = outcomes
                .get(out.crossing.as_str())
                .and_then(|o| o.receipt.as_deref())
                .and_then(|r| crate::federation::receipt::verify_receipt(r, y_bundle).ok())
                .map(|rc| rc.crossing == out.crossing)
                .unwrap_or(false);
            if receipted {
                fields.push("decision".into());
            }
            if fields.is_empty() {
                let reason = first.reason.clone().unwrap_or_default();
                findings.push(Finding {
                    kind: "refused",
                    direction: dir.clone(),
                    crossing: c,
                    fields: vec![],
                    detail: format!("{} refused it ({reason})", y.domain),
                });
                continue;
            }
        }
        let extra_allows = ins[1..].iter().filter(|r| r.is_allow()).count();
        if extra_allows > 0 {
            fields.push("replay_accepted".into());
        }
        if !fields.is_empty() {
            let detail = format!(
                "{} and {} disagree on {}",
                x.domain,
                y.domain,
                fields.join(", ")
            );
            findings.push(Finding {
                kind: "field_mismatch",
                direction: dir.clone(),
                crossing: c,
                fields,
                detail,
            });
            continue;
        }
        // Receipts: egress crossings carry the partner's receipt in the outcome record.
        if out.mode.as_deref() == Some("egress") {
            match outcomes
                .get(out.crossing.as_str())
                .and_then(|o| o.receipt.as_deref())
            {
                None => {
                    findings.push(Finding {
                        kind: "unreceipted",
                        direction: dir.clone(),
                        crossing: c,
                        fields: vec![],
                        detail: format!("{} allowed it but {} kept no receipt", y.domain, x.domain),
                    });
                    continue;
                }
                Some(receipt) => {
                    match crate::federation::receipt::verify_receipt(receipt, y_bundle) {
                        Err(e) => {
                            findings.push(Finding {
                                kind: "receipt_invalid",
                                direction: dir.clone(),
                                crossing: c,
                                fields: vec![],
                                detail: format!(
                                    "the receipt does not verify with {}'s bundle: {e}",
                                    y.domain
                                ),
                            });
                            continue;
                        }
                        Ok(rc) => {
                            let at = y.records.get(rc.seq as usize);
                            let leaf_ok = y
                                .leaves
                                .get(rc.seq as usize)
                                .map(|l| b64url(l) == rc.leaf)
                                .unwrap_or(false);
                            if rc.crossing != out.crossing
                                || !leaf_ok
                                || at.map(|r| r.crossing != out.crossing).unwrap_or(true)
                            {
                                findings.push(Finding { kind: "receipt_mismatch", direction: dir.clone(), crossing: c, fields: vec![], detail: format!("the receipt names record {} of {}'s log, which is not this crossing's record", rc.seq, y.domain) });
                                continue;
                            }
                        }
                    }
                }
            }
        }
        if let (Some(a), Some(b)) = (millis(&out.time), millis(&first.time)) {
            if (a - b).abs() > skew_ms {
                findings.push(Finding {
                    kind: "clock_skew",
                    direction: dir.clone(),
                    crossing: c,
                    fields: vec![],
                    detail: format!(
                        "the two records are {} ms apart (allowed {skew_ms} ms)",
                        (a - b).abs()
                    ),
                });
                continue;
            }
        }
        let replays = ins.len() - 1;
        let detail = if replays > 0 {
            format!("matched; {replays} replay(s) refused by {}", y.domain)
        } else {
            "matched".to_string()
        };
        findings.push(Finding {
            kind: "matched",
            direction: dir.clone(),
            crossing: c,
            fields: vec![],
            detail,
        });
    }
    let mut missing: Vec<&&str> = inbound.keys().filter(|k| !seen_out.contains(**k)).collect();
    missing.sort();
    for c in missing {
        findings.push(Finding {
            kind: "missing_in_local",
            direction: dir.clone(),
            crossing: Some(c.to_string()),
            fields: vec![],
            detail: format!(
                "{} logged an authentic token from {} that {} never logged issuing",
                y.domain, x.domain, x.domain
            ),
        });
    }
}

/// Reconciles two verified exports. `skew` is the tolerated clock difference in seconds.
pub fn reconcile(
    local: &Export,
    partner: &Export,
    local_bundle: &Bundle,
    partner_bundle: &Bundle,
    skew: i64,
    previous: &Previous,
) -> Report {
    let mut findings = Vec::new();
    append_only(local, &previous.local, &mut findings);
    append_only(partner, &previous.partner, &mut findings);
    one_direction(local, partner, partner_bundle, skew * 1000, &mut findings);
    one_direction(partner, local, local_bundle, skew * 1000, &mut findings);
    report(local.domain.clone(), partner.domain.clone(), findings)
}

/// Builds the report (also used when a log is tampered and nothing can be matched).
pub fn report(local: String, partner: String, findings: Vec<Finding>) -> Report {
    let mut summary: BTreeMap<&'static str, usize> = BTreeMap::new();
    for f in &findings {
        *summary.entry(f.kind).or_insert(0) += 1;
    }
    let clean = findings.iter().all(|f| BENIGN.contains(&f.kind));
    Report {
        local,
        partner,
        clean,
        summary,
        findings,
    }
}

/// A log-level `tampered` finding.
pub fn tampered(domain: &str, detail: String) -> Finding {
    Finding {
        kind: "tampered",
        direction: domain.to_string(),
        crossing: None,
        fields: vec![],
        detail,
    }
}

impl Report {
    /// A table for people.
    pub fn table(&self) -> String {
        let mut s = format!("reconciliation of {} and {}\n\n", self.local, self.partner);
        s.push_str(&format!("  {:<20} {:>7}\n", "kind", "count"));
        s.push_str(&format!("  {:<20} {:>7}\n", "-".repeat(20), "-".repeat(7)));
        for (k, n) in &self.summary {
            s.push_str(&format!("  {k:<20} {n:>7}\n"));
        }
        let bad: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| !BENIGN.contains(&f.kind))
            .collect();
        if !bad.is_empty() {
            s.push_str("\ndiscrepancies:\n");
            for f in bad {
                s.push_str(&format!(
                    "  {:<18} {:<34} {}  {}\n",
                    f.kind,
                    f.direction,
                    f.crossing.as_deref().unwrap_or("-"),
                    f.detail
                ));
            }
        }
        s.push_str(if self.clean {
            "\nresult: clean\n"
        } else {
            "\nresult: DISCREPANCIES FOUND\n"
        });
        s
    }
}
