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
    Verify {
        #[arg(long)]
        bundles: PathBuf,
        log: PathBuf,
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
            crate::files::write_atomic(&checkpoint_path(&out), note.as_bytes(), 0o644)
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
        AuditCmd::Verify { bundles, log, json } => {
            let set = load_bundles(&bundles)?;
            match load_export(&log, &set)? {
                Ok(e) => {
                    if json {
                        print_json(
                            &serde_json::json!({"valid": true, "domain": e.domain, "records": e.records.len(), "root": crate::crypto::b64std(&e.checkpoint.root), "first_bad_record": null}),
                        );
                    } else {
                        println!(
                            "{}: {} records of {} hash to the signed checkpoint",
                            log.display(),
                            e.records.len(),
                            e.domain
                        );
                    }
                    Ok(0)
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
