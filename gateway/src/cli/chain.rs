//! `fedgate chain issue | extend | verify | inspect`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::{at_or_now, load_bundles, print_json, usage, CliError, CliResult};
use crate::chain::{self, NoRevocations, Policy, UnverifiedChain};
use crate::scope::ScopeSet;
use crate::spiffe::SpiffeId;

/// Largest chain file read; larger files are reported as `too_large`, not as I/O errors.
const MAX_CHAIN_FILE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum ChainCmd {
    /// As the domain's IdP: print the chain L0~L1 (the human's grant and the human → agent link).
    Issue {
        /// An `fedgate init` directory (reads gateway.toml and keys/idp.key).
        #[arg(long)]
        dir: PathBuf,
        /// The human principal, e.g. alice@company.com.
        #[arg(long)]
        human: String,
        /// The agent receiving the delegation (SPIFFE ID).
        #[arg(long)]
        to: String,
        /// Space-separated scopes.
        #[arg(long)]
        scope: String,
        /// Task (correlation) id.
        #[arg(long)]
        task: String,
        /// Lifetime, e.g. 1h.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// As the holder agent: print the chain with one more link.
    Extend {
        #[arg(long)]
        chain: PathBuf,
        /// The holder's X509-SVID (PEM, leaf first).
        #[arg(long)]
        cert: PathBuf,
        /// The holder's PKCS#8 private key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        to: String,
        #[arg(long)]
        scope: String,
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Verify a chain against the bundles.
    Verify {
        #[arg(long)]
        bundles: PathBuf,
        #[arg(long)]
        chain: PathBuf,
        /// Verify at this RFC 3339 time instead of now.
        #[arg(long)]
        at: Option<String>,
        /// Accept human grants only from this IdP (repeatable; default: any spiffe://<td>/idp).
        #[arg(long)]
        idp: Vec<String>,
        /// Accept crossing links only from this gateway (repeatable; default: spiffe://<td>/gateway).
        #[arg(long)]
        gateway: Vec<String>,
        #[arg(long, default_value_t = chain::DEFAULT_MAX_LINKS)]
        max_links: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print a chain in readable JSON (nothing is verified).
    Inspect {
        #[arg(long)]
        chain: PathBuf,
    },
}

fn read_chain(path: &Path) -> Result<String, CliError> {
    let bytes = crate::files::read_limited(path, MAX_CHAIN_FILE_BYTES).map_err(|e| match e {
        crate::files::FileError::TooLarge { .. } => CliError::Invalid(format!("too_large: {e}")),
        other => usage(other),
    })?;
    let s = String::from_utf8(bytes)
        .map_err(|_| CliError::Invalid(format!("malformed: {}: not UTF-8", path.display())))?;
    Ok(s.trim().to_string())
}

fn scopes(s: &str) -> Result<ScopeSet, CliError> {
    let set = ScopeSet::parse_spaced(s).map_err(|e| usage(format!("--scope: {e}")))?;
    if set.is_empty() {
        return Err(usage("--scope: at least one scope"));
    }
    Ok(set)
}

fn ttl(s: &str) -> Result<i64, CliError> {
    let t = crate::time::parse_duration(s).map_err(usage)?;
    if t <= 0 {
        return Err(usage("--ttl must be positive"));
    }
    Ok(t)
}

fn ids(list: &[String], what: &str) -> Result<Option<Vec<SpiffeId>>, CliError> {
    if list.is_empty() {
        return Ok(None);
    }
    list.iter()
        .map(|s| SpiffeId::parse(s).map_err(|e| usage(format!("--{what} {s}: {e}"))))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub fn run(cmd: ChainCmd) -> CliResult {
    match cmd {
        ChainCmd::Issue {
            dir,
            human,
            to,
            scope,
            task,
            ttl: t,
        } => {
            let cfg_text = crate::files::read_text_limited(
                &dir.join("gateway.toml"),
                crate::server::config::MAX_CONFIG_BYTES,
            )
            .map_err(usage)?;
            let cfg = crate::server::config::GatewayConfig::parse(&cfg_text).map_err(usage)?;
            let td = crate::spiffe::TrustDomain::parse(&cfg.trust_domain).map_err(usage)?;
            let idp = match &cfg.idp_id {
                Some(i) => SpiffeId::parse(i).map_err(usage)?,
                None => td.id_with_path("/idp").map_err(usage)?,
            };
            let key = crate::files::read_signing_key(&dir.join("keys/idp.key")).map_err(usage)?;
            let agent = SpiffeId::parse(&to).map_err(|e| usage(format!("--to: {e}")))?;
            let c = chain::issue(
                &key,
                &idp,
                &human,
                &agent,
                &scopes(&scope)?,
                &task,
                crate::time::now(),
                ttl(&t)?,
            )
            .map_err(usage)?;
            println!("{c}");
            Ok(0)
        }
        ChainCmd::Extend {
            chain: file,
            cert,
            key,
            to,
            scope,
            ttl: t,
        } => {
            let raw = read_chain(&file)?;
            let certs = crate::files::read_pem_certs(&cert).map_err(usage)?;
            let leaf = x509_parser::parse_x509_certificate(&certs[0])
                .map_err(|e| usage(format!("{}: {e}", cert.display())))?
                .1;
            let holder = crate::spiffe::svid::leaf_spiffe_id(&leaf)
                .map_err(|e| usage(format!("{}: {e}", cert.display())))?;
            let sk = crate::files::read_signing_key(&key).map_err(usage)?;
            let to = SpiffeId::parse(&to).map_err(|e| usage(format!("--to: {e}")))?;
            let der: Vec<Vec<u8>> = certs.iter().map(|c| c.to_vec()).collect();
            let c = chain::extend(
                &raw,
                &sk,
                &der,
                &holder,
                &to,
                &scopes(&scope)?,
                crate::time::now(),
                ttl(&t)?,
            )
            .map_err(usage)?;
            println!("{c}");
            Ok(0)
        }
        ChainCmd::Verify {
            bundles,
            chain: file,
            at,
            idp,
            gateway,
            max_links,
            json,
        } => {
            let now = at_or_now(&at)?;
            let set = load_bundles(&bundles)?;
            if max_links == 0 || max_links > chain::MAX_LINKS_HARD {
                return Err(usage(format!(
                    "--max-links must be 1..={}",
                    chain::MAX_LINKS_HARD
                )));
            }
            let policy = Policy {
                max_links,
                idps: ids(&idp, "idp")?,
                gateways: ids(&gateway, "gateway")?,
                ..Policy::default()
            };
            let raw = match read_chain(&file) {
                Ok(r) => r,
                Err(CliError::Invalid(m)) => {
                    let reason = if m.starts_with("too_large") {
                        "too_large"
                    } else {
                        "malformed"
                    };
                    return report(json, Err((reason.to_string(), None, m)));
                }
                Err(e) => return Err(e),
            };
            let result = UnverifiedChain::parse(&raw)
                .and_then(|c| c.verify(&set, &policy, &NoRevocations, now))
                .map_err(|e| (e.reason().code().to_string(), e.link, e.to_string()));
            report(json, result)
        }
        ChainCmd::Inspect { chain: file } => {
            let raw = read_chain(&file)?;
            match chain::inspect(&raw) {
                Ok(v) => {
                    print_json(&v);
                    Ok(0)
                }
                Err(m) => Err(CliError::Invalid(m)),
            }
        }
    }
}

type VerifyResult = Result<chain::VerifiedChain, (String, Option<usize>, String)>;

fn report(json: bool, r: VerifyResult) -> CliResult {
    match r {
        Ok(v) => {
            if json {
                print_json(&serde_json::json!({
                    "valid": true,
                    "holder": v.holder.as_str(),
                    "scope": v.scope.to_strings(),
                    "reason": null,
                    "link": null,
                    "message": null,
                    "task": v.task,
                    "principal": v.root_principal(),
                    "depth": v.depth,
                    "expires": crate::time::format_rfc3339(v.expires),
                    "digest": v.digest,
                }));
            } else {
                println!(
                    "valid: holder {} scope [{}] task {} depth {} expires {}",
                    v.holder,
                    v.scope,
                    v.task,
                    v.depth,
                    crate::time::format_rfc3339(v.expires)
                );
            }
            Ok(0)
        }
        Err((reason, link, message)) => {
            if json {
                print_json(&serde_json::json!({
                    "valid": false,
                    "holder": null,
                    "scope": [],
                    "reason": reason,
                    "link": link,
                    "message": message,
                }));
            } else {
                println!("invalid ({reason}): {message}");
            }
            Ok(1)
        }
    }
}
