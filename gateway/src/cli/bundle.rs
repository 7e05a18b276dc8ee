//! `fedgate bundle inspect`: validate a bundle file and print its authorities.

use std::path::PathBuf;

use clap::Subcommand;

use super::{print_json, usage, CliError, CliResult};
use crate::spiffe::{Bundle, TrustDomain};

#[derive(Subcommand, Debug)]
pub enum BundleCmd {
    /// Validate a SPIFFE bundle file and print its authorities.
    Inspect {
        file: PathBuf,
        /// Trust domain of the bundle (default: the file name without .json).
        #[arg(long)]
        trust_domain: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: BundleCmd) -> CliResult {
    match cmd {
        BundleCmd::Inspect {
            file,
            trust_domain,
            json,
        } => {
            let td_name = match trust_domain {
                Some(t) => t,
                None => file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or("")
                    .to_string(),
            };
            let td = TrustDomain::parse(&td_name).map_err(|e| {
                usage(format!(
                    "trust domain {td_name:?} (from --trust-domain or the file name): {e}"
                ))
            })?;
            let data = crate::files::read_limited(&file, crate::spiffe::bundle::MAX_BUNDLE_BYTES)
                .map_err(|e| match e {
                crate::files::FileError::TooLarge { .. } => CliError::Invalid(e.to_string()),
                other => usage(other),
            })?;
            match Bundle::parse(td, &data) {
                Ok(b) => {
                    if json {
                        let mut s = b.summary();
                        s["valid"] = true.into();
                        print_json(&s);
                    } else {
                        println!("valid bundle for {}", b.trust_domain);
                        println!(
                            "  spiffe_sequence: {}",
                            b.sequence.map(|s| s.to_string()).unwrap_or("-".into())
                        );
                        println!(
                            "  spiffe_refresh_hint: {}",
                            b.refresh_hint
                                .map(|s| format!("{s}s"))
                                .unwrap_or("-".into())
                        );
                        let s = b.summary();
                        for a in s["x509_authorities"].as_array().into_iter().flatten() {
                            println!(
                                "  x509-svid authority: {} (sha256 {}, until {})",
                                a["subject"].as_str().unwrap_or("?"),
                                a["sha256"].as_str().unwrap_or("?"),
                                a["not_after"].as_str().unwrap_or("?")
                            );
                        }
                        for a in &b.jwt {
                            println!(
                                "  jwt-svid authority: kid {} ({}, role {})",
                                a.kid,
                                a.key.alg().as_str(),
                                a.role.map(|r| r.as_str()).unwrap_or("none")
                            );
                        }
                        for sk in &b.skipped {
                            println!("  skipped: {sk}");
                        }
                    }
                    Ok(0)
                }
                Err(e) => {
                    if json {
                        print_json(&serde_json::json!({"valid": false, "message": e.to_string()}));
                        Ok(1)
                    } else {
                        Err(CliError::Invalid(format!(
                            "{}: invalid bundle: {e}",
                            file.display()
                        )))
                    }
                }
            }
        }
    }
}
