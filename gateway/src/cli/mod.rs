//! Command-line verbs (clap), one file per noun. Exit codes (SPEC section 9): 0 success or
//! valid, 1 verified-invalid / denied / discrepancies found, 2 usage or I/O error.

use clap::{Parser, Subcommand};

mod admin_client;
mod agreement;
mod audit;
mod bundle;
mod chain;
mod demo;
pub mod init;
mod revoke;
pub(crate) mod serve;
mod svid;
mod tiles;
mod token;

/// A verb's failure: what to print and which exit code.
#[derive(Debug)]
pub enum CliError {
    /// Exit 2: bad usage, unreadable input, I/O.
    Usage(String),
    /// Exit 1: the input was read and is invalid / denied.
    Invalid(String),
}

impl CliError {
    pub fn code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Invalid(_) => 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(m) | CliError::Invalid(m) => f.write_str(m),
        }
    }
}

pub(crate) fn usage(e: impl std::fmt::Display) -> CliError {
    CliError::Usage(e.to_string())
}

pub type CliResult = Result<i32, CliError>;

#[derive(Parser, Debug)]
#[command(
    name = "fedgate",
    version,
    about = "Boundary gateway for zero-trust delegation between organizations' AI agents"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a development trust domain: CA, gateway/IdP/audit keys, SVIDs, bundle, config.
    Init(init::InitArgs),
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Delegation chains: issue, extend, verify, inspect.
    #[command(subcommand)]
    Chain(chain::ChainCmd),
    /// X509-SVIDs.
    #[command(subcommand)]
    Svid(svid::SvidCmd),
    /// Trust bundles.
    #[command(subcommand)]
    Bundle(bundle::BundleCmd),
    /// Federation agreements: lint, hash, sign, verify, explain.
    #[command(subcommand)]
    Agreement(agreement::AgreementCmd),
    /// Federation tokens.
    #[command(subcommand)]
    Token(token::TokenCmd),
    /// The shared audit log: export, verify, reconcile.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Revoke a token, task, agent or principal through a running gateway (propagated to partners).
    Revoke(revoke::RevokeArgs),
    /// Stage a gateway key rotation for a running gateway.
    Rotate(revoke::RotateArgs),
    /// Run two domains on loopback with fresh keys and walk the story end to end.
    Demo(demo::DemoArgs),
}

/// Parses arguments and runs; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    run(cli)
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> i32 {
    crate::crypto::install_provider();
    let result = match cli.command {
        Command::Init(a) => init::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Chain(c) => chain::run(c),
        Command::Svid(c) => svid::run(c),
        Command::Bundle(c) => bundle::run(c),
        Command::Agreement(c) => agreement::run(c),
        Command::Token(c) => token::run(c),
        Command::Audit(c) => audit::run(c),
        Command::Revoke(a) => revoke::revoke(a),
        Command::Rotate(a) => revoke::rotate(a),
        Command::Demo(a) => demo::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fedgate: {e}");
            e.code()
        }
    }
}

/// Parses an optional `--at RFC3339` into epoch seconds, defaulting to now.
pub(crate) fn at_or_now(at: &Option<String>) -> Result<i64, CliError> {
    match at {
        Some(s) => crate::time::parse_rfc3339(s).map_err(usage),
        None => Ok(crate::time::now()),
    }
}

/// Prints JSON (pretty) to stdout.
pub(crate) fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Loads a bundle directory or fails with exit 2 listing every bad file.
pub(crate) fn load_bundles(dir: &std::path::Path) -> Result<crate::spiffe::BundleSet, CliError> {
    crate::files::load_bundle_dir(dir).map_err(|p| CliError::Usage(p.join("\n")))
}
