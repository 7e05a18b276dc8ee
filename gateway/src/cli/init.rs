//! `fedgate init`: a development trust domain in one directory (`crate::provision`).

use std::path::PathBuf;

use clap::Args;

use super::{usage, CliResult};
use crate::provision::{provision, DomainSpec};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The trust domain, e.g. company.com.
    #[arg(long)]
    pub trust_domain: String,
    /// Output directory (must not exist, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// An agent to issue an X509-SVID for, as type/instance (repeatable).
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Internal listener address written to gateway.toml.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub internal: String,
    /// Federation listener address written to gateway.toml.
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub federation: String,
    /// Admin listener address written to gateway.toml.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin: String,
    /// Also accept admin requests from loopback without a client certificate.
    #[arg(long)]
    pub admin_loopback: bool,
}

impl InitArgs {
    pub fn spec(&self) -> DomainSpec {
        DomainSpec {
            trust_domain: self.trust_domain.clone(),
            out: self.out.clone(),
            agents: self.agents.clone(),
            internal: self.internal.clone(),
            federation: self.federation.clone(),
            admin: self.admin.clone(),
            admin_loopback: self.admin_loopback,
        }
    }
}

pub fn run(args: InitArgs) -> CliResult {
    let dir = provision(&args.spec(), crate::time::now()).map_err(usage)?;
    let td = &args.trust_domain;
    println!("initialized trust domain {td} in {}", dir.display());
    println!("  bundle:  {}/bundles/{td}.json", dir.display());
    println!("  CA:      {}/ca.pem", dir.display());
    println!(
        "  gateway: {}/gateway.pem (spiffe://{td}/gateway)",
        dir.display()
    );
    println!("  config:  {}/gateway.toml", dir.display());
    for a in &args.agents {
        println!(
            "  agent:   {}/agents/{a}.pem (spiffe://{td}/agent/{a})",
            dir.display()
        );
    }
    println!(
        "private keys are under {}/keys/ and agents/ (mode 0600)",
        dir.display()
    );
    Ok(0)
}
