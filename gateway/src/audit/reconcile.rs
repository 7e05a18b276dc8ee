//! Reconciliation of two domains' verified exports (pure): every crossing one side allowed
//! outbound is matched, by crossing id, with the other side's inbound record, field by field;
//! receipts are checked against the partner's log; clocks are compared; and the logs themselves
//! are checked against earlier checkpoints (append-only). A domain running several replicas
//! has one export per replica; a side is the union of them, and a receipt names the replica
//! whose log holds its record.
//!
//! Kinds: `matched`; `missing_in_partner` (sent, never logged by the receiver);
//! `missing_in_local` (the receiver logged an authentic token the sender never logged);
//! `field_mismatch` (which fields); `receipt_invalid` (does not verify with the partner's
//! bundle); `receipt_mismatch` (its leaf is not in the partner's log at its seq);
//! `unreceipted` (the partner allowed it but the sender kept no valid receipt); `clock_skew`;
//! `unconfirmed` (a token issued for direct use by token exchange, expired, of which the
//! partner has no record: never presented, or presented and not logged — the sender cannot
//! tell, so an auditor must); `pending` (the same while the token may still be presented) and
//! `refused` (the receiver denied a token the sender issued, e.g. revoked meanwhile), both
//! informational; and for a whole log `tampered` and `not_append_only`. Every record the
//! receiver holds of a crossing counts: an allow anywhere is what the receiver did (a denial
//! of a leaked token presented first from the wrong certificate does not hide a later allowed
//! use), and more than one allow is `replay_accepted`. A receiver's denial is a
//! `field_mismatch` on `decision` only when the sender holds the receiver's signed receipt
//! that it was allowed.

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
    /// Per domain, what the partners' cosignatures cover (informational; a checkpoint the
    /// records do not hash to is a `forked` finding instead).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub witness: Vec<WitnessStatus>,
}

/// How much of one domain's exported log a partner witnessed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WitnessStatus {
    pub domain: String,
    pub records: u64,
    /// `(witness domain, tree size, cosignature time)`.
    pub cosigned_by: Vec<(String, u64, u64)>,
    /// Records after the last cosigned checkpoint.
    pub unwitnessed: u64,
}

/// Kinds that are not discrepancies.
const BENIGN: &[&str] = &["matched", "pending", "refused", "failed", "unanswered"];

/// Earlier checkpoints an auditor holds, to prove the logs only grew.
#[derive(Debug, Clone, Default)]
pub struct Previous {
    pub local: Vec<Checkpoint>,
    pub partner: Vec<Checkpoint>,
}

/// Each earlier checkpoint must be extended by the export of the same log (origin).
fn append_only(side: &[Export], prev: &[Checkpoint], findings: &mut Vec<Finding>) {
    for p in prev {
        let e = side.iter().find(|e| e.checkpoint.origin == p.origin);
        let ok = e.is_some_and(|e| {
            p.size <= e.records.len() as u64 && root_of(&e.leaves[..p.size as usize]) == p.root
        });
        if !ok {
            let domain = side.first().map(|e| e.domain.clone()).unwrap_or_default();
            findings.push(Finding {
                kind: "not_append_only",
                direction: domain.clone(),
                crossing: None,
                fields: vec![],
                detail: format!(
                    "{} ({}) does not extend its earlier checkpoint of size {} (history rewritten or forked)",
                    domain, p.origin, p.size
                ),
            });
        }
    }
}

fn decisions<'a>(side: &'a [Export], direction: &str, partner: &str) -> Vec<&'a Record> {
    side.iter()
        .flat_map(|e| e.records.iter())
        .filter(|r| {
            r.kind == "decision"
                && r.direction == direction
                && r.partner.as_deref() == Some(partner)
        })
        .collect()
}

/// A side's domain name (all its exports are of one domain).
fn side_domain(side: &[Export]) -> String {
    side.first().map(|e| e.domain.clone()).unwrap_or_default()
}

/// Whether an outcome says the partner never answered (nothing reached the agent): then a
/// missing receipt, or a missing record at the partner, is what such a failure looks like.
fn partner_failed(o: Option<&&Record>) -> bool {
    o.is_some_and(|o| {
        o.receipt.is_none()
            && matches!(o.status, Some(502) | Some(504))
            && o.reason.as_deref() == Some("partner_unavailable")
    })
}

/// Whether the sender refused the partner's answer on its own checks.
fn refused_answer(o: Option<&&Record>) -> bool {
    o.is_some_and(|o| {
        matches!(
            o.reason.as_deref(),
            Some("bad_response_signature" | "response_too_large" | "response_invalid")
        )
    })
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
    x: &[Export],
    y: &[Export],
    y_bundle: &Bundle,
    skew_ms: i64,
    findings: &mut Vec<Finding>,
) {
    let (xd, yd) = (side_domain(x), side_domain(y));
    let dir = format!("{xd} -> {yd}");
    let outs: Vec<&Record> = decisions(x, "outbound", &yd)
        .into_iter()
        .filter(|r| r.is_allow())
        .collect();
    let mut inbound: HashMap<&str, Vec<&Record>> = HashMap::new();
    for r in decisions(y, "inbound", &xd) {
        if r.authenticated == Some(true) {
            inbound.entry(r.crossing.as_str()).or_default().push(r);
        }
    }
    let outcomes: HashMap<&str, &Record> = x
        .iter()
        .flat_map(|e| e.records.iter())
        .filter(|r| r.kind == "outcome" && r.direction == "outbound")
        .map(|r| (r.crossing.as_str(), r))
        .collect();
    // The latest time the receiver's exports cover: a token issued for direct use that expired
    // before it and left no record there was never (visibly) used.
    let y_latest = y
        .iter()
        .flat_map(|e| e.records.iter())
        .filter_map(|r| millis(&r.time))
        .max();
    // The receiver's outcome records, for the digest of what it answered.
    let answered: HashMap<&str, &Record> = y
        .iter()
        .flat_map(|e| e.records.iter())
        .filter(|r| {
            r.kind == "outcome"
                && r.direction == "inbound"
                && r.partner.as_deref() == Some(xd.as_str())
        })
        .map(|r| (r.crossing.as_str(), r))
        .collect();
    let mut seen_out = std::collections::HashSet::new();
    for out in outs {
        seen_out.insert(out.crossing.as_str());
        let c = Some(out.crossing.clone());
        let Some(ins) = inbound.get(out.crossing.as_str()) else {
            let (kind, detail) = if out.mode.as_deref() == Some("token_exchange") {
                let expired = match (out.token_exp, y_latest) {
                    (Some(exp), Some(latest)) => {
                        exp.saturating_add(skew_ms / 1000).saturating_mul(1000) < latest
                    }
                    _ => false,
                };
                if expired {
                    (
                        "unconfirmed",
                        format!(
                            "a token issued for direct use expired with no record of it at {yd}: never presented, or presented and not logged"
                        ),
                    )
                } else {
                    (
                        "pending",
                        "a token issued for direct use has not been presented yet".to_string(),
                    )
                }
            } else if refused_answer(outcomes.get(out.crossing.as_str())) {
                let why = outcomes
                    .get(out.crossing.as_str())
                    .and_then(|o| o.reason.as_deref())
                    .unwrap_or("");
                (
                    "response_refused",
                    format!("{yd} has no record of it, yet answered, and {xd} refused the answer ({why})"),
                )
            } else if partner_failed(outcomes.get(out.crossing.as_str())) {
                (
                    "failed",
                    format!("the partner did not answer (connection failed or timed out) and {yd} has no record of it"),
                )
            } else {
                (
                    "missing_in_partner",
                    format!("{xd} forwarded it, {yd} has no record of it"),
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
        // What the receiver did is what any of its records says it allowed; a denial counts
        // only when it never allowed the crossing at all.
        let allows: Vec<&&Record> = ins.iter().filter(|r| r.is_allow()).collect();
        let first: &Record = allows.first().map(|r| **r).unwrap_or(ins[0]);
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
                    detail: format!("{yd} refused it ({reason})"),
                });
                continue;
            }
        }
        if allows.len() > 1 {
            findings.push(Finding {
                kind: "replay_accepted",
                direction: dir.clone(),
                crossing: c,
                fields: vec![],
                detail: format!("{yd} allowed this token {} times", allows.len()),
            });
            continue;
        }
        if !fields.is_empty() {
            let detail = format!("{xd} and {yd} disagree on {}", fields.join(", "));
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
                // The partner allowed it, and the sender refused its answer (bad signature, too
                // large, invalid): the partner's upstream acted, the agent got nothing.
                None if refused_answer(outcomes.get(out.crossing.as_str())) => {
                    let why = outcomes
                        .get(out.crossing.as_str())
                        .and_then(|o| o.reason.as_deref())
                        .unwrap_or("");
                    findings.push(Finding {
                        kind: "response_refused",
                        direction: dir.clone(),
                        crossing: c,
                        fields: vec![],
                        detail: format!("{yd} allowed it, and {xd} refused its answer ({why})"),
                    });
                    continue;
                }
                None if partner_failed(outcomes.get(out.crossing.as_str())) => {
                    findings.push(Finding {
                        kind: "unanswered",
                        direction: dir.clone(),
                        crossing: c,
                        fields: vec![],
                        detail: format!("{yd} allowed it but its answer never arrived (connection failed or timed out)"),
                    });
                    continue;
                }
                None => {
                    findings.push(Finding {
                        kind: "unreceipted",
                        direction: dir.clone(),
                        crossing: c,
                        fields: vec![],
                        detail: format!("{yd} allowed it but {xd} kept no receipt"),
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
                                    "the receipt does not verify with {yd}'s bundle: {e}"
                                ),
                            });
                            continue;
                        }
                        Ok(rc) => {
                            // The log the receipt names: the replica's (or the only one).
                            let log = y.iter().find(|e| e.replica == rc.replica);
                            let at = log.and_then(|e| e.records.get(rc.seq as usize));
                            let leaf_ok = log
                                .and_then(|e| e.leaves.get(rc.seq as usize))
                                .map(|l| b64url(l) == rc.leaf)
                                .unwrap_or(false);
                            if rc.crossing != out.crossing
                                || !leaf_ok
                                || at.map(|r| r.crossing != out.crossing).unwrap_or(true)
                            {
                                let which = rc
                                    .replica
                                    .as_deref()
                                    .map(|r| format!(" (replica {r})"))
                                    .unwrap_or_default();
                                findings.push(Finding { kind: "receipt_mismatch", direction: dir.clone(), crossing: c, fields: vec![], detail: format!("the receipt names record {} of {yd}'s log{which}, which is not this crossing's record", rc.seq) });
                                continue;
                            }
                        }
                    }
                }
            }
        }
        // The sender verified an answer: the receiver must have logged what it sent.
        if let (Some(got), Some(r)) = (
            outcomes
                .get(out.crossing.as_str())
                .and_then(|r| r.response_digest.as_deref()),
            answered.get(out.crossing.as_str()),
        ) {
            if r.response_digest.is_none() {
                findings.push(Finding {
                    kind: "response_unlogged",
                    direction: dir.clone(),
                    crossing: c,
                    fields: vec!["response_digest".into()],
                    detail: format!("{xd} logged receiving {got}; {yd}'s outcome names no answer"),
                });
                continue;
            }
        }
        // What the receiver says it answered is what the sender received.
        if let (Some(sent), Some(got)) = (
            answered
                .get(out.crossing.as_str())
                .and_then(|r| r.response_digest.as_deref()),
            outcomes
                .get(out.crossing.as_str())
                .and_then(|r| r.response_digest.as_deref()),
        ) {
            if sent != got {
                findings.push(Finding {
                    kind: "response_mismatch",
                    direction: dir.clone(),
                    crossing: c,
                    fields: vec!["response_digest".into()],
                    detail: format!("{yd} logged answering {sent}, {xd} logged receiving {got}"),
                });
                continue;
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
            format!("matched; {replays} replay(s) refused by {yd}")
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
                "{yd} logged an authentic token from {xd} that {xd} never logged issuing"
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
    reconcile_sides(
        std::slice::from_ref(local),
        std::slice::from_ref(partner),
        local_bundle,
        partner_bundle,
        skew,
        previous,
    )
}

/// Reconciles two domains, each given as the exports of all its replicas' logs (one export
/// for a domain that runs one gateway).
pub fn reconcile_sides(
    local: &[Export],
    partner: &[Export],
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
    report(side_domain(local), side_domain(partner), findings)
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
        witness: vec![],
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
        for w in &self.witness {
            let by: Vec<String> = w
                .cosigned_by
                .iter()
                .map(|(d, n, _)| format!("{d} up to {n}"))
                .collect();
            s.push_str(&format!(
                "\nwitness: {} ({} records): cosigned by {}; {} unwitnessed\n",
                w.domain,
                w.records,
                if by.is_empty() {
                    "nobody".to_string()
                } else {
                    by.join(", ")
                },
                w.unwitnessed
            ));
        }
        s.push_str(if self.clean {
            "\nresult: clean\n"
        } else {
            "\nresult: DISCREPANCIES FOUND\n"
        });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::merkle::leaf_hash;

    fn export(domain: &str, mut records: Vec<Record>) -> Export {
        let mut leaves = Vec::new();
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = i as u64;
            leaves.push(leaf_hash(&r.canonical().unwrap()));
        }
        Export {
            domain: domain.into(),
            replica: None,
            checkpoint: Checkpoint {
                origin: crate::audit::origin_of(domain),
                size: records.len() as u64,
                root: root_of(&leaves),
            },
            records,
            leaves,
        }
    }

    fn out(crossing: &str, mode: &str, exp: i64, time: &str) -> Record {
        let mut r = Record::decision("company.com", "outbound", crossing, true);
        r.mode = Some(mode.into());
        r.partner = Some("vendor.example".into());
        r.token_exp = Some(exp);
        r.time = time.into();
        r
    }

    fn inb(crossing: &str, allow: bool, exp: i64, time: &str) -> Record {
        let mut r = Record::decision("vendor.example", "inbound", crossing, allow);
        r.mode = Some("ingress".into());
        r.partner = Some("company.com".into());
        r.authenticated = Some(true);
        r.token_exp = Some(exp);
        r.time = time.into();
        if !allow {
            r.reason = Some("issuer_mismatch".into());
        }
        r
    }

    fn run(a: &Export, b: &Export) -> Report {
        let d = crate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        let v = crate::devkit::DevDomain::new("vendor.example", 1_800_000_000).unwrap();
        reconcile(a, b, &d.bundle, &v.bundle, 5, &Previous::default())
    }

    fn kind_of<'a>(r: &'a Report, crossing: &str) -> Vec<&'a str> {
        r.findings
            .iter()
            .filter(|f| f.crossing.as_deref() == Some(crossing))
            .map(|f| f.kind)
            .collect()
    }

    const T: &str = "2027-01-15T08:00:00.000Z";
    const EXP: i64 = 1_800_000_600;

    /// A leaked `cnf` token presented first from the wrong certificate, then used for real: the
    /// receiver's later allow is what it did (the review found this reported as `refused`).
    #[test]
    fn an_allow_anywhere_counts_not_the_first_record() {
        let a = export("company.com", vec![out("x1", "token_exchange", EXP, T)]);
        let b = export(
            "vendor.example",
            vec![inb("x1", false, EXP, T), inb("x1", true, EXP, T)],
        );
        let r = run(&a, &b);
        assert_eq!(kind_of(&r, "x1"), vec!["matched"], "{r:?}");
    }

    #[test]
    fn more_than_one_allow_is_replay_accepted() {
        let a = export("company.com", vec![out("x2", "token_exchange", EXP, T)]);
        let b = export(
            "vendor.example",
            vec![inb("x2", true, EXP, T), inb("x2", true, EXP, T)],
        );
        let r = run(&a, &b);
        assert_eq!(kind_of(&r, "x2"), vec!["replay_accepted"]);
        assert!(!r.clean);
    }

    /// A token issued for direct use with no record at the partner is not benign once it has
    /// expired (the partner may simply not have logged it); before that it is pending.
    #[test]
    fn a_direct_mode_crossing_without_a_partner_record_is_not_benign() {
        let later = "2027-01-15T09:00:00.000Z"; // an hour after: the token has expired
        let mut other = inb("y", true, EXP, later);
        other.crossing = "unrelated".into();
        let a = export("company.com", vec![out("x3", "token_exchange", EXP, T)]);
        let b = export("vendor.example", vec![other.clone()]);
        let r = run(&a, &b);
        assert_eq!(kind_of(&r, "x3"), vec!["unconfirmed"]);
        assert!(!r.clean);
        let mut early = other;
        early.time = T.into();
        let b = export("vendor.example", vec![early]);
        let r = run(&a, &b);
        assert_eq!(kind_of(&r, "x3"), vec!["pending"]);
    }

    fn outcome(domain: &str, direction: &str, crossing: &str, digest: Option<&str>) -> Record {
        let mut r = Record::decision(domain, direction, crossing, true);
        r.kind = "outcome".into();
        r.partner = Some(
            if domain == "company.com" {
                "vendor.example"
            } else {
                "company.com"
            }
            .into(),
        );
        r.status = Some(200);
        r.response_digest = digest.map(String::from);
        r.time = T.into();
        r
    }

    /// The answer's digest: both logs must hold it and agree (issue 23).
    #[test]
    fn response_digests_must_be_logged_and_agree() {
        let d1 = "sha-256=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:";
        let d2 = "sha-256=:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB=:";
        let case = |sent: Option<&str>, got: Option<&str>| {
            let a = export(
                "company.com",
                vec![
                    out("r1", "token_exchange", EXP, T),
                    outcome("company.com", "outbound", "r1", got),
                ],
            );
            let b = export(
                "vendor.example",
                vec![
                    inb("r1", true, EXP, T),
                    outcome("vendor.example", "inbound", "r1", sent),
                ],
            );
            let r = run(&a, &b);
            (
                kind_of(&r, "r1")
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>(),
                r.clean,
            )
        };
        assert_eq!(
            case(Some(d1), Some(d1)),
            (vec!["matched".to_string()], true)
        );
        assert_eq!(
            case(Some(d1), Some(d2)),
            (vec!["response_mismatch".to_string()], false)
        );
        assert_eq!(
            case(None, Some(d1)),
            (vec!["response_unlogged".to_string()], false)
        );
    }

    /// `response_refused` names a partner that allowed the crossing and whose answer the sender
    /// refused; a refused answer to a crossing the partner denied is the partner's refusal.
    #[test]
    fn a_refused_answer_is_the_partners_only_if_it_allowed_the_crossing() {
        let mut o = outcome("company.com", "outbound", "r2", None);
        o.status = Some(502);
        o.reason = Some("bad_response_signature".into());
        let a = export("company.com", vec![out("r2", "egress", EXP, T), o]);
        let b = export("vendor.example", vec![inb("r2", true, EXP, T)]);
        let r = run(&a, &b);
        assert_eq!(kind_of(&r, "r2"), vec!["response_refused"]);
        assert!(!r.clean);
        let b = export("vendor.example", vec![inb("r2", false, EXP, T)]);
        let r = run(&a, &b);
        assert_eq!(kind_of(&r, "r2"), vec!["refused"]);
    }
}
