//! `fedgate agreement lint | hash | sign | verify | explain | diff`, and through a running
//! gateway's admin listener `propose | proposals | accept | reject | terminate`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::admin_client::AdminConn;
use super::{at_or_now, load_bundles, print_json, usage, CliError, CliResult};
use crate::agreement::{self, decide_among, Agreement, CrossingRequest, Direction};
use crate::chain::{LinkClaims, LinkSummary, NoRevocations, Policy, SignerKind, UnverifiedChain};
use crate::scope::ScopeSet;
use crate::spiffe::{SpiffeId, TrustDomain};

#[derive(Subcommand, Debug)]
pub enum AgreementCmd {
    /// Validate agreement files; print every problem with its key path.
    Lint {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Print the agreement hash (sha256 of the RFC 8785 canonical JSON).
    Hash { file: PathBuf },
    /// Sign an agreement with this domain's gateway key: writes <file stem>.<td>.sig next to it.
    Sign {
        #[arg(long)]
        agreement: PathBuf,
        /// The gateway signing key (PKCS#8 PEM), e.g. keys/gateway.key of `fedgate init`.
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        trust_domain: String,
        /// Check that the key is a jwt-svid authority of the domain's bundle in this directory.
        #[arg(long)]
        bundles: Option<PathBuf>,
    },
    /// Check both domains' signatures of an agreement.
    Verify {
        #[arg(long)]
        bundles: PathBuf,
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a hypothetical outbound crossing and say why it is allowed or denied.
    Explain {
        #[arg(long)]
        agreement: PathBuf,
        /// The presenting agent's chain.
        #[arg(long)]
        chain: PathBuf,
        /// The target agent in the partner domain.
        #[arg(long)]
        target: String,
        /// Requested scopes, space-separated.
        #[arg(long)]
        scope: String,
        #[arg(long)]
        at: Option<String>,
        /// Verify the chain against these bundles first (otherwise its claims are read as given).
        #[arg(long)]
        bundles: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// What tightened and what loosened from OLD to NEW, one line each.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Sign a new version with this gateway's key and send it to the partner gateway.
    Propose {
        #[command(flatten)]
        conn: AdminConn,
        file: PathBuf,
    },
    /// List proposals sent and received, with what each changes.
    Proposals {
        #[command(flatten)]
        conn: AdminConn,
        #[arg(long)]
        json: bool,
    },
    /// Countersign a received proposal (`<id>@<hash>`); both gateways install it.
    Accept {
        #[command(flatten)]
        conn: AdminConn,
        agr: String,
    },
    /// Reject a received proposal (`<id>@<hash>`) and tell the partner.
    Reject {
        #[command(flatten)]
        conn: AdminConn,
        agr: String,
    },
    /// Terminate every version of an agreement, here and (by a signed notice) at the partner.
    Terminate {
        #[command(flatten)]
        conn: AdminConn,
        id: String,
    },
}

fn read_agreement_text(path: &Path) -> Result<String, CliError> {
    crate::files::read_text_limited(path, agreement::MAX_AGREEMENT_BYTES).map_err(usage)
}

fn parse(path: &Path) -> Result<Agreement, CliError> {
    let text = read_agreement_text(path)?;
    Agreement::parse(&text).map_err(|issues| {
        CliError::Invalid(format!(
            "{} does not lint clean:\n{}",
            path.display(),
            issues
                .iter()
                .map(|i| format!("  {i}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })
}

pub fn run(cmd: AgreementCmd) -> CliResult {
    match cmd {
        AgreementCmd::Lint { files, json } => {
            let mut bad = false;
            let mut results = Vec::new();
            for f in &files {
                let text = read_agreement_text(f)?;
                match Agreement::parse(&text) {
                    Ok(a) => {
                        if !json {
                            println!(
                                "{}: ok ({}, {} flows, {})",
                                f.display(),
                                a.id,
                                a.flows.len(),
                                a.hash
                            );
                        }
                        results.push(serde_json::json!({"file": f, "ok": true, "id": a.id, "hash": a.hash.as_str(), "issues": []}));
                    }
                    Err(issues) => {
                        bad = true;
                        if !json {
                            println!("{}: {} problem(s)", f.display(), issues.len());
                            for i in &issues {
                                println!("  {i}");
                            }
                        }
                        let is: Vec<_> = issues
                            .iter()
                            .map(|i| serde_json::json!({"path": i.path, "message": i.message}))
                            .collect();
                        results.push(serde_json::json!({"file": f, "ok": false, "issues": is}));
                    }
                }
            }
            if json {
                print_json(&serde_json::Value::Array(results));
            }
            Ok(if bad { 1 } else { 0 })
        }
        AgreementCmd::Diff { old, new, json } => {
            let (o, n) = (parse(&old)?, parse(&new)?);
            let changes = agreement::diff::diff(&o, &n);
            if json {
                print_json(&serde_json::json!({
                    "old": o.agr(),
                    "new": n.agr(),
                    "changes": changes,
                }));
            } else if changes.is_empty() {
                println!("no change in terms ({} → {})", o.agr(), n.agr());
            } else {
                for c in &changes {
                    println!("{c}");
                }
            }
            Ok(0)
        }
        AgreementCmd::Propose { conn, file } => {
            let text = read_agreement_text(&file)?;
            parse(&file)?;
            let ans = conn.call(
                http::Method::POST,
                "/v1/agreements/proposals",
                Some(("application/toml", text.into_bytes())),
            )?;
            println!("{}", ans.ok()?);
            Ok(0)
        }
        AgreementCmd::Proposals { conn, json } => {
            let text = conn
                .call(http::Method::GET, "/v1/agreements/proposals", None)?
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| CliError::Invalid(format!("the gateway's answer: {e}")))?;
            if json {
                print_json(&v);
                return Ok(0);
            }
            let list = v["proposals"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no proposals");
            }
            for p in list {
                println!(
                    "{} v{} {} {} ({}, partner {})",
                    p["agr"].as_str().unwrap_or("?"),
                    p["version"],
                    p["direction"].as_str().unwrap_or("?"),
                    p["status"].as_str().unwrap_or("?"),
                    crate::time::format_rfc3339(p["at"].as_i64().unwrap_or(0)),
                    p["partner"].as_str().unwrap_or("?"),
                );
                for c in p["changes"].as_array().cloned().unwrap_or_default() {
                    println!("  {}", c.as_str().unwrap_or("?"));
                }
            }
            Ok(0)
        }
        AgreementCmd::Accept { conn, agr } => {
            let ans = conn.post_json(
                "/v1/agreements/proposals/accept",
                &serde_json::json!({"agr": agr}),
            )?;
            println!("{}", ans.ok()?);
            Ok(0)
        }
        AgreementCmd::Reject { conn, agr } => {
            let ans = conn.post_json(
                "/v1/agreements/proposals/reject",
                &serde_json::json!({"agr": agr}),
            )?;
            println!("{}", ans.ok()?);
            Ok(0)
        }
        AgreementCmd::Terminate { conn, id } => {
            let ans = conn.post_json("/v1/agreements/terminate", &serde_json::json!({"id": id}))?;
            println!("{}", ans.ok()?);
            Ok(0)
        }
        AgreementCmd::Hash { file } => {
            let a = parse(&file)?;
            println!("{}", a.hash);
            Ok(0)
        }
        AgreementCmd::Sign {
            agreement: file,
            key,
            trust_domain,
            bundles,
        } => {
            let a = parse(&file)?;
            let td = TrustDomain::parse(&trust_domain)
                .map_err(|e| usage(format!("--trust-domain: {e}")))?;
            if a.domain(&td).is_none() {
                return Err(usage(format!("{td} is not a domain of agreement {}", a.id)));
            }
            let sk = crate::files::read_signing_key(&key).map_err(usage)?;
            if let Some(dir) = bundles {
                let set = load_bundles(&dir)?;
                let b = set
                    .get(&td)
                    .ok_or_else(|| usage(format!("no bundle for {td} in {}", dir.display())))?;
                if b.jwt_key(sk.kid(), crate::spiffe::KeyRole::Gateway) != Ok(sk.public()) {
                    return Err(usage(format!(
                        "the key (kid {}) is not a gateway key of {td}'s bundle",
                        sk.kid()
                    )));
                }
            }
            let sig = agreement::sign_agreement(&a.hash, &sk).map_err(usage)?;
            // Next to the file, named by its stem: each version file has its own signatures.
            let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or(&a.id);
            let out = file
                .parent()
                .unwrap_or(Path::new("."))
                .join(agreement::signature_file_name(stem, td.as_str()));
            crate::files::write_atomic(&out, format!("{sig}\n").as_bytes(), 0o644)
                .map_err(usage)?;
            println!("{}", out.display());
            Ok(0)
        }
        AgreementCmd::Verify {
            bundles,
            file,
            json,
        } => {
            let set = load_bundles(&bundles)?;
            let a = parse(&file)?;
            let mut ok = true;
            let mut sigs = Vec::new();
            for d in &a.domains {
                let td = d.trust_domain.as_str();
                let p = crate::files::signature_path(&file, &a.id, td);
                let status = match crate::files::read_text_limited(&p, crate::jose::MAX_JWS_BYTES) {
                    Err(e) => Err(format!("missing: {e}")),
                    Ok(sig) => match set.get(&d.trust_domain) {
                        None => Err(format!("no bundle for {td}")),
                        Some(b) => {
                            agreement::verify_signature(&sig, &a.hash, b).map_err(|e| e.to_string())
                        }
                    },
                };
                ok &= status.is_ok();
                if !json {
                    match &status {
                        Ok(()) => println!("{td}: signature valid ({})", p.display()),
                        Err(e) => println!("{td}: INVALID: {e}"),
                    }
                }
                sigs.push(serde_json::json!({"trust_domain": td, "valid": status.is_ok(), "message": status.err()}));
            }
            let now = crate::time::now();
            let window = if now < a.valid_from {
                "not yet valid"
            } else if now >= a.valid_until {
                "expired"
            } else {
                "in force"
            };
            if json {
                print_json(
                    &serde_json::json!({"valid": ok, "id": a.id, "hash": a.hash.as_str(), "window": window, "signatures": sigs}),
                );
            } else {
                println!(
                    "{} {} ({}): {}",
                    a.id,
                    a.hash,
                    window,
                    if ok {
                        "both signatures valid"
                    } else {
                        "NOT VALID"
                    }
                );
            }
            Ok(if ok { 0 } else { 1 })
        }
        AgreementCmd::Explain {
            agreement: file,
            chain,
            target,
            scope,
            at,
            bundles,
            json,
        } => {
            let now = at_or_now(&at)?;
            let a = parse(&file)?;
            let raw = crate::files::read_text_limited(&chain, crate::chain::MAX_CHAIN_BYTES)
                .map_err(usage)?;
            let raw = raw.trim();
            let target = SpiffeId::parse(&target).map_err(|e| usage(format!("--target: {e}")))?;
            let requested =
                ScopeSet::parse_spaced(&scope).map_err(|e| usage(format!("--scope: {e}")))?;
            let (summary, verified_note) = match &bundles {
                Some(dir) => {
                    let set = load_bundles(dir)?;
                    match UnverifiedChain::parse(raw)
                        .and_then(|c| c.verify(&set, &Policy::default(), &NoRevocations, now))
                    {
                        Ok(v) => {
                            let Some(holder) = v.holder.agent().cloned() else {
                                return explain_out(
                                    json,
                                    false,
                                    Some("not_holder"),
                                    "a chain held by a human cannot be presented",
                                    None,
                                );
                            };
                            (
                                ChainFacts {
                                    holder,
                                    scope: v.scope,
                                    depth: v.depth,
                                    expires: v.expires,
                                    links: v.links,
                                },
                                "chain verified",
                            )
                        }
                        Err(e) => {
                            return explain_out(
                                json,
                                false,
                                Some(e.reason().code()),
                                &format!("the chain does not verify: {e}"),
                                None,
                            )
                        }
                    }
                }
                None => (
                    facts_unverified(raw).map_err(CliError::Invalid)?,
                    "chain claims read without verifying signatures (pass --bundles to verify)",
                ),
            };
            let local = summary.holder.trust_domain();
            let req = CrossingRequest {
                direction: Direction::Outbound,
                local: &local,
                actor: &summary.holder,
                target: &target,
                requested: &requested,
                held: &summary.scope,
                depth: summary.depth,
                expires: summary.expires,
                links: &summary.links,
                now,
            };
            let t0 = std::time::Instant::now();
            let d = decide_among([&a], &req);
            let record =
                crate::agreement::DecisionRecord::new(&req, &d, t0.elapsed().as_nanos() as u64);
            let details = serde_json::json!({
                "agreement": d.agr,
                "flow": d.flow,
                "granted": d.granted.to_strings(),
                "token_exp": if d.allow { Some(crate::time::format_rfc3339(d.token_exp)) } else { None },
                "holder": summary.holder.as_str(),
                "held": summary.scope.to_strings(),
                "depth": summary.depth,
                "note": verified_note,
                "decision_record": serde_json::to_value(&record).unwrap_or_default(),
            });
            explain_out(
                json,
                d.allow,
                d.reason.map(|r| r.code()),
                &d.message,
                Some(details),
            )
        }
    }
}

fn explain_out(
    json: bool,
    allow: bool,
    reason: Option<&str>,
    message: &str,
    details: Option<serde_json::Value>,
) -> CliResult {
    if json {
        let mut v = serde_json::json!({"allow": allow, "reason": reason, "message": message});
        if let Some(d) = details {
            v["details"] = d;
        }
        print_json(&v);
    } else {
        println!("{}: {message}", if allow { "ALLOW" } else { "DENY" });
        if let Some(r) = reason {
            println!("  reason: {r}");
        }
        if let Some(d) = details {
            for k in [
                "agreement",
                "flow",
                "granted",
                "token_exp",
                "holder",
                "held",
                "depth",
                "note",
            ] {
                if !d[k].is_null() {
                    println!("  {k}: {}", d[k]);
                }
            }
        }
    }
    Ok(if allow { 0 } else { 1 })
}

struct ChainFacts {
    holder: SpiffeId,
    scope: ScopeSet,
    depth: usize,
    expires: i64,
    links: Vec<LinkSummary>,
}

/// What the chain claims, without checking any signature (for hypothetical explanations).
fn facts_unverified(raw: &str) -> Result<ChainFacts, String> {
    let mut links = Vec::new();
    let mut dep = 0usize;
    let mut last: Option<LinkClaims> = None;
    let mut expires = i64::MAX;
    for (i, l) in raw.split(crate::chain::SEPARATOR).enumerate() {
        let c = crate::jose::parse_compact(l).map_err(|e| format!("link {i}: {e}"))?;
        let cl: LinkClaims =
            serde_json::from_slice(&c.payload).map_err(|e| format!("link {i}: {e}"))?;
        let scope = ScopeSet::parse_nonempty(&cl.scope).map_err(|e| format!("link {i}: {e}"))?;
        if i == 0 {
            dep = cl.dep.unwrap_or(0) as usize;
        }
        let signer = if c.header.x5c.is_some() {
            SignerKind::Agent
        } else if cl.iss.ends_with("/idp") {
            SignerKind::Idp
        } else {
            SignerKind::Gateway
        };
        expires = expires.min(cl.exp);
        links.push(LinkSummary {
            iss: cl.iss.clone(),
            sub: cl.sub.clone(),
            signer,
            scope,
            iat: cl.iat,
            exp: cl.exp,
            jti: cl.jti.clone(),
        });
        last = Some(cl);
    }
    let last = last.ok_or("empty chain")?;
    let holder =
        SpiffeId::parse(&last.sub).map_err(|_| "the chain's holder is not an agent".to_string())?;
    let scope = links.last().map(|l| l.scope.clone()).unwrap_or_default();
    Ok(ChainFacts {
        holder,
        scope,
        depth: dep + links.len(),
        expires,
        links,
    })
}
