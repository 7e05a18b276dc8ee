//! `fedgate svid verify`: validate an X509-SVID (PEM, leaf first, then intermediates).

use std::path::PathBuf;

use clap::Subcommand;

use super::{at_or_now, load_bundles, print_json, usage, CliError, CliResult};
use crate::spiffe::{verify_svid, SvidUsage};

#[derive(Subcommand, Debug)]
pub enum SvidCmd {
    /// Validate an X509-SVID against the bundles and print its SPIFFE ID.
    Verify {
        #[arg(long)]
        bundles: PathBuf,
        /// PEM file: leaf first, then intermediates (a private key block may be present).
        #[arg(long)]
        cert: PathBuf,
        /// Validate at this RFC 3339 time instead of now.
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: SvidCmd) -> CliResult {
    match cmd {
        SvidCmd::Verify {
            bundles,
            cert,
            at,
            json,
        } => {
            let now = at_or_now(&at)?;
            let set = load_bundles(&bundles)?;
            let certs = crate::files::read_pem_certs(&cert).map_err(usage)?;
            match verify_svid(&certs, &set, now, SvidUsage::Any) {
                Ok(v) => {
                    if json {
                        print_json(&serde_json::json!({
                            "valid": true,
                            "spiffe_id": v.id.as_str(),
                            "not_after": crate::time::format_rfc3339(v.not_after),
                            "reason": null,
                            "message": null,
                        }));
                    } else {
                        println!("{}", v.id);
                    }
                    Ok(0)
                }
                Err(e) => {
                    if json {
                        print_json(&serde_json::json!({
                            "valid": false,
                            "spiffe_id": null,
                            "reason": e.reason().code(),
                            "message": e.to_string(),
                        }));
                        Ok(1)
                    } else {
                        Err(CliError::Invalid(format!(
                            "{}: invalid X509-SVID ({}): {e}",
                            cert.display(),
                            e.reason()
                        )))
                    }
                }
            }
        }
    }
}
