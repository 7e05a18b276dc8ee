//! `fedgate bundle inspect`: validate a bundle file and print its authorities.
//! `fedgate bundle assign-roles`: give the keys of a bundle written before keys had roles
//! (wave 1) their roles, from the private keys this gateway holds.

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
    /// Give every role-less key of the local bundle its role, by matching it against the
    /// private keys this gateway holds (signing and staged rotation keys: gateway; the audit
    /// key: audit; the IdP key: idp). Writes the bundle with its sequence raised, so partners
    /// take it at their next refresh. Exit 1 if a key is left without a role.
    AssignRoles {
        #[arg(long)]
        config: PathBuf,
        /// The domain's IdP key (default: keys/idp.key beside the config, if present).
        #[arg(long)]
        idp_key: Option<PathBuf>,
    },
}

/// Private key files looked at under the data directory's `keys/` (staged rotation keys):
/// more is not a gateway's key directory.
const MAX_ROTATION_KEY_FILES: usize = 64;

fn assign_roles(config: &std::path::Path, idp_key: Option<PathBuf>) -> CliResult {
    use crate::spiffe::KeyRole;
    let cfg = crate::server::config::load(config).map_err(|p| usage(p.join("; ")))?;
    let base = config.parent().unwrap_or(std::path::Path::new("."));
    let mut held: Vec<(KeyRole, PathBuf)> = vec![
        (KeyRole::Gateway, cfg.signing_key.clone()),
        (KeyRole::Audit, cfg.audit_key.clone()),
    ];
    match idp_key {
        Some(p) => held.push((KeyRole::Idp, p)),
        None => {
            let p = base.join("keys/idp.key");
            if p.exists() {
                held.push((KeyRole::Idp, p));
            }
        }
    }
    let mut staged_count = 0;
    if let Ok(rd) = std::fs::read_dir(cfg.data_dir.join("keys")) {
        let mut staged: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
            .collect();
        staged.sort();
        if staged.len() > MAX_ROTATION_KEY_FILES {
            return Err(usage(format!(
                "{}: more than {MAX_ROTATION_KEY_FILES} key files",
                cfg.data_dir.join("keys").display()
            )));
        }
        staged_count = staged.len();
        held.extend(staged.into_iter().map(|p| (KeyRole::Gateway, p)));
    }
    let configured = held.len() - staged_count;
    let mut keys = Vec::new();
    for (i, (role, path)) in held.into_iter().enumerate() {
        match crate::files::read_signing_key(&path) {
            Ok(k) => keys.push((role, k.public().clone(), path)),
            Err(e) if i < configured => return Err(usage(e)),
            // Something else in the rotation directory: not a key of ours.
            Err(e) => eprintln!("skipping {}: {e}", path.display()),
        }
    }
    let file = cfg.bundles_dir.join(format!("{}.json", cfg.trust_domain));
    let data = crate::files::read_limited(&file, crate::spiffe::bundle::MAX_BUNDLE_BYTES)
        .map_err(usage)?;
    let mut b = Bundle::parse(cfg.trust_domain.clone(), &data)
        .map_err(|e| CliError::Invalid(format!("{}: invalid bundle: {e}", file.display())))?;
    let mut changed = 0;
    let mut left = 0;
    let authorities: Vec<_> = b
        .jwt
        .iter()
        .map(|a| (a.kid.clone(), a.key.clone(), a.role))
        .collect();
    for (kid, key, role) in authorities {
        if let Some(r) = role {
            println!("kid {kid}: {} (unchanged)", r.as_str());
            continue;
        }
        let roles: Vec<KeyRole> = keys
            .iter()
            .filter(|(_, k, _)| *k == key)
            .map(|(r, _, _)| *r)
            .collect();
        match roles.as_slice() {
            [r] if b.set_role(&kid, *r) => {
                println!("kid {kid}: {}", r.as_str());
                changed += 1;
            }
            [] => {
                println!("kid {kid}: no private key here matches it; left without a role (it verifies nothing)");
                left += 1;
            }
            _ => {
                println!("kid {kid}: left as it is (one key held for several roles, or a role member fedgate does not know)");
                left += 1;
            }
        }
    }
    if changed > 0 {
        b.sequence = Some(b.sequence.unwrap_or(0) + 1);
        crate::files::write_atomic(&file, b.to_json().as_bytes(), 0o644).map_err(usage)?;
        println!(
            "wrote {} (spiffe_sequence {})",
            file.display(),
            b.sequence.unwrap_or(0)
        );
    }
    Ok(if left > 0 { 1 } else { 0 })
}

pub fn run(cmd: BundleCmd) -> CliResult {
    match cmd {
        BundleCmd::AssignRoles { config, idp_key } => assign_roles(&config, idp_key),
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
