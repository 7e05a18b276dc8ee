//! `fedgate audit export | verify | reconcile`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{load_bundles, print_json, usage, CliError, CliResult};
use crate::audit::export::{self, Export};
use crate::audit::reconcile::{self, Previous};
use crate::spiffe::BundleSet;

/// Largest export read back (JSON Lines); about 1.5 M records of typical size.
pub const MAX_EXPORT_BYTES: usize = 2 * 1024 * 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Export the log of record: FILE (JSON Lines) and FILE.checkpoint.
    Export {
        /// The gateway's data_dir (or its audit/ subdirectory).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an export: canonical records in order, hashing to the signed checkpoint.
    ///
    /// With --url instead of LOG: a live log through its C2SP tiles on the admin listener
    /// (the checkpoint and its cosignatures, the root from the tiles, and on request an
    /// inclusion proof, a consistency proof from an earlier checkpoint, or every record).
    Verify {
        #[arg(long)]
        bundles: PathBuf,
        #[arg(required_unless_present = "url")]
        log: Option<PathBuf>,
        /// The gateway's admin URL (e.g. https://127.0.0.1:9090): verify the live log.
        #[arg(long, conflicts_with = "log")]
        url: Option<String>,
        /// With --url: an `fedgate init` directory whose admin identity to present.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// With --url: admin X509-SVID and key (instead of --dir).
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// With --url: prove that record SEQ is in the tree (repeatable).
        #[arg(long)]
        inclusion: Vec<u64>,
        /// With --url: prove that the live tree extends this earlier signed checkpoint.
        #[arg(long)]
        since: Option<PathBuf>,
        /// With --url: fetch every entry bundle and check every record.
        #[arg(long)]
        full: bool,
        #[arg(long)]
        json: bool,
    },
    /// Match domains' exports crossing by crossing and report discrepancies. Give LOCAL then
    /// PARTNER, and for a domain that runs several replicas every replica's export (exports are
    /// grouped by the domain their checkpoint names; the first file's domain is the local one;
    /// with more than two domains every pair with the local domain is reconciled).
    Reconcile {
        #[arg(long)]
        bundles: PathBuf,
        #[arg(required = true, num_args = 2..)]
        exports: Vec<PathBuf>,
        /// Clock difference tolerated between the two records of a crossing.
        #[arg(long, default_value = "30s")]
        skew: String,
        /// An earlier checkpoint of the local log (repeatable): the log must extend it.
        #[arg(long = "previous-local")]
        previous_local: Vec<PathBuf>,
        /// An earlier checkpoint of the partner's log (repeatable).
        #[arg(long = "previous-partner")]
        previous_partner: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

fn checkpoint_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".checkpoint");
    PathBuf::from(s)
}

/// `FILE.witness`: the cosigned and witnessed checkpoints an export carries.
fn witness_path(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_owned();
    s.push(".witness");
    PathBuf::from(s)
}

/// The notes of one kind (`cosigned` or `witnessed`) in an export's witness file.
fn witness_notes(log: &Path, which: &str) -> Vec<String> {
    crate::files::read_text_limited(&witness_path(log), MAX_WITNESS_BYTES)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get(which).and_then(|a| a.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.as_str().map(String::from))
        .collect()
}

/// Largest witness file read: a few notes per partner.
const MAX_WITNESS_BYTES: usize = 1024 * 1024;

/// What the cosignatures say about an export: its own checkpoint and the cosigned ones it
/// carries, plus (reconcile) the partner-held ones.
fn assess_export(
    e: &Export,
    note: &str,
    extra: &[String],
    set: &BundleSet,
) -> Option<crate::witness::Witnessing> {
    let lb = set.get_str(&e.domain)?;
    let partners: Vec<&crate::spiffe::Bundle> = set
        .iter()
        .filter(|b| b.trust_domain.as_str() != e.domain)
        .map(|b| b.as_ref())
        .collect();
    let mut notes = vec![note.to_string()];
    notes.extend(extra.iter().cloned());
    Some(crate::witness::assess(
        &e.leaves,
        &e.checkpoint.origin,
        &notes,
        lb,
        &partners,
        crate::time::now().max(0) as u64,
    ))
}

/// Reads and verifies an export.
pub fn load_export(
    log: &Path,
    bundles: &BundleSet,
) -> Result<Result<Export, export::ExportError>, CliError> {
    let data = crate::files::read_limited(log, MAX_EXPORT_BYTES).map_err(usage)?;
    let note = crate::files::read_text_limited(
        &checkpoint_path(log),
        crate::audit::checkpoint::MAX_NOTE_BYTES,
    )
    .map_err(usage)?;
    Ok(export::verify(&data, &note, bundles))
}

/// The domain an export's checkpoint names, read without verifying anything.
fn export_domain(log: &Path) -> Option<String> {
    let note = crate::files::read_text_limited(
        &checkpoint_path(log),
        crate::audit::checkpoint::MAX_NOTE_BYTES,
    )
    .ok()?;
    let cp = crate::audit::checkpoint::peek(&note).ok()?;
    crate::audit::checkpoint::parse_origin(&cp.origin).map(|(d, _)| d.to_string())
}

fn previous(
    paths: &[PathBuf],
    bundles: &BundleSet,
) -> Result<Vec<crate::audit::Checkpoint>, CliError> {
    let mut v = Vec::new();
    for p in paths {
        let note = crate::files::read_text_limited(p, crate::audit::checkpoint::MAX_NOTE_BYTES)
            .map_err(usage)?;
        let peek = crate::audit::checkpoint::peek(&note)
            .map_err(|e| usage(format!("{}: {e}", p.display())))?;
        let td = crate::audit::checkpoint::parse_origin(&peek.origin)
            .map(|(d, _)| d)
            .unwrap_or("");
        let b = bundles
            .get_str(td)
            .ok_or_else(|| usage(format!("{}: no bundle for {td}", p.display())))?;
        let cp = crate::audit::checkpoint::verify_with_bundle(&note, b)
            .map_err(|e| CliError::Invalid(format!("{}: {e}", p.display())))?;
        v.push(cp);
    }
    Ok(v)
}

pub fn run(cmd: AuditCmd) -> CliResult {
    match cmd {
        AuditCmd::Export { data_dir, out } => {
            let dir = if data_dir.join("audit").is_dir() {
                data_dir.join("audit")
            } else {
                data_dir.clone()
            };
            let data_root = if dir == data_dir {
                data_dir.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                data_dir.clone()
            };
            let mut announced = false;
            let (records, note) = crate::store::log::export(&dir, |i, n| {
                if n > 100_000 {
                    announced = true;
                    eprintln!("exporting: {i} of {n} records");
                }
            })
            .map_err(usage)?;
            let mut data = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
            for r in &records {
                data.extend_from_slice(r);
                data.push(b'\n');
            }
            crate::files::write_atomic(&out, &data, 0o644).map_err(usage)?;
            // The checkpoint with every cosignature held for it, and the cosigned and
            // witnessed checkpoints beside it.
            let note = crate::server::lifecycle::cosigned_note(&data_root, &note);
            crate::files::write_atomic(&checkpoint_path(&out), note.as_bytes(), 0o644)
                .map_err(usage)?;
            let witness = crate::server::lifecycle::export_witness(&data_root);
            crate::files::write_atomic(
                &witness_path(&out),
                serde_json::to_string_pretty(&witness)
                    .unwrap_or_default()
                    .as_bytes(),
                0o644,
            )
            .map_err(usage)?;
            if announced {
                eprintln!("exporting: done");
            }
            println!(
                "exported {} records to {} (checkpoint {})",
                records.len(),
                out.display(),
                checkpoint_path(&out).display()
            );
            Ok(0)
        }
        AuditCmd::Verify {
            bundles,
            log,
            url,
            dir,
            cert,
            key,
            inclusion,
            since,
            full,
            json,
        } => {
            let set = load_bundles(&bundles)?;
            if let Some(url) = url {
                let conn = super::admin_client::AdminConn {
                    admin_url: url,
                    dir,
                    bundles: cert.as_ref().map(|_| bundles.clone()),
                    cert,
                    key,
                };
                return super::tiles::verify_live(
                    &conn,
                    &set,
                    &inclusion,
                    since.as_deref(),
                    full,
                    json,
                );
            }
            let log = log.ok_or_else(|| usage("give LOG or --url"))?;
            match load_export(&log, &set)? {
                Ok(e) => {
                    let note = crate::files::read_text_limited(
                        &checkpoint_path(&log),
                        crate::audit::checkpoint::MAX_NOTE_BYTES,
                    )
                    .map_err(usage)?;
                    let w = assess_export(&e, &note, &witness_notes(&log, "cosigned"), &set)
                        .unwrap_or_default();
                    let forked = !w.forked.is_empty();
                    if json {
                        print_json(
                            &serde_json::json!({"valid": !forked, "domain": e.domain, "records": e.records.len(), "root": crate::crypto::b64std(&e.checkpoint.root), "first_bad_record": null, "witness": w}),
                        );
                    } else {
                        println!(
                            "{}: {} records of {} hash to the signed checkpoint",
                            log.display(),
                            e.records.len(),
                            e.domain
                        );
                        for (td, size, t) in &w.cosigned_by {
                            println!(
                                "  witnessed: {td} cosigned the first {size} records at {}",
                                crate::time::format_rfc3339(*t as i64)
                            );
                        }
                        println!(
                            "  unwitnessed: {} records after the last cosigned checkpoint",
                            w.unwitnessed
                        );
                        for f in &w.forked {
                            println!("  FORKED: {f}");
                        }
                        for b in &w.beyond {
                            println!("  note: {b}");
                        }
                    }
                    Ok(if forked { 1 } else { 0 })
                }
                Err(err) => {
                    if json {
                        print_json(
                            &serde_json::json!({"valid": false, "first_bad_record": err.record, "message": err.message}),
                        );
                        Ok(1)
                    } else {
                        Err(CliError::Invalid(format!("{}: {err}", log.display())))
                    }
                }
            }
        }
        AuditCmd::Reconcile {
            bundles,
            exports,
            skew,
            previous_local,
            previous_partner,
            json,
        } => {
            let set = load_bundles(&bundles)?;
            let skew = crate::time::parse_duration(&skew).map_err(usage)?;
            let prev = Previous {
                local: previous(&previous_local, &set)?,
                partner: previous(&previous_partner, &set)?,
            };
            // Group by domain, in order of first appearance; a tampered export is a finding
            // of its domain (named by its checkpoint when that much parses).
            let mut sides: Vec<(String, Vec<Export>, Vec<reconcile::Finding>)> = Vec::new();
            for path in &exports {
                let loaded = load_export(path, &set)?;
                let domain = match &loaded {
                    Ok(e) => e.domain.clone(),
                    Err(_) => export_domain(path).unwrap_or_else(|| path.display().to_string()),
                };
                let at = match sides.iter().position(|(d, _, _)| *d == domain) {
                    Some(i) => i,
                    None => {
                        sides.push((domain.clone(), vec![], vec![]));
                        sides.len() - 1
                    }
                };
                match loaded {
                    Ok(e) => sides[at].1.push(e),
                    Err(e) => sides[at]
                        .2
                        .push(reconcile::tampered(&domain, e.to_string())),
                }
            }
            if sides.len() < 2 {
                return Err(usage("give the exports of at least two domains"));
            }
            // What each side's witness holds of the other's log, and what each log's partners
            // cosigned: a checkpoint the records do not hash to is a fork.
            let mut witness_findings: Vec<(String, reconcile::Finding)> = Vec::new();
            let mut witness_status: Vec<reconcile::WitnessStatus> = Vec::new();
            for path in &exports {
                let Ok(Ok(e)) = load_export(path, &set) else {
                    continue;
                };
                let Ok(note) = crate::files::read_text_limited(
                    &checkpoint_path(path),
                    crate::audit::checkpoint::MAX_NOTE_BYTES,
                ) else {
                    continue;
                };
                let mut extra = witness_notes(path, "cosigned");
                for other in exports.iter().filter(|o| *o != path) {
                    extra.extend(witness_notes(other, "witnessed"));
                }
                let Some(w) = assess_export(&e, &note, &extra, &set) else {
                    continue;
                };
                for f in &w.forked {
                    witness_findings.push((
                        e.domain.clone(),
                        reconcile::Finding {
                            kind: "forked",
                            direction: e.domain.clone(),
                            crossing: None,
                            fields: vec![],
                            detail: f.clone(),
                        },
                    ));
                }
                witness_status.push(reconcile::WitnessStatus {
                    domain: e.domain.clone(),
                    records: e.records.len() as u64,
                    cosigned_by: w.cosigned_by.clone(),
                    unwitnessed: w.unwitnessed,
                });
            }
            let mut reports = Vec::new();
            let (local, others) = sides.split_at(1);
            let (ld, lexp, lbad) = &local[0];
            for (pd, pexp, pbad) in others {
                let mut bad: Vec<reconcile::Finding> = lbad.iter().chain(pbad).cloned().collect();
                let r = if bad.is_empty() {
                    let lb = set
                        .get_str(ld)
                        .ok_or_else(|| usage(format!("no bundle for {ld}")))?;
                    let pb = set
                        .get_str(pd)
                        .ok_or_else(|| usage(format!("no bundle for {pd}")))?;
                    reconcile::reconcile_sides(lexp, pexp, lb, pb, skew, &prev)
                } else {
                    reconcile::report(ld.clone(), pd.clone(), std::mem::take(&mut bad))
                };
                let mut findings = r.findings;
                for (d, f) in &witness_findings {
                    if d == ld || d == pd {
                        findings.push(f.clone());
                    }
                }
                let mut r = reconcile::report(r.local, r.partner, findings);
                r.witness = witness_status
                    .iter()
                    .filter(|w| w.domain == *ld || w.domain == *pd)
                    .cloned()
                    .collect();
                reports.push(r);
            }
            let clean = reports.iter().all(|r| r.clean);
            if json {
                if reports.len() == 1 {
                    print_json(&serde_json::to_value(&reports[0]).unwrap_or_default());
                } else {
                    print_json(&serde_json::to_value(&reports).unwrap_or_default());
                }
            } else {
                for r in &reports {
                    print!("{}", r.table());
                }
            }
            Ok(if clean { 0 } else { 1 })
        }
    }
}
