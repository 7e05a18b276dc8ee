//! `fedgate serve --config FILE`: validate the config (every problem listed, exit 2, before any
//! port is bound), then run the gateway until SIGTERM.

use std::path::PathBuf;

use clap::Args;

use super::{CliError, CliResult};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long)]
    pub config: PathBuf,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FEDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run(args: ServeArgs) -> CliResult {
    let cfg = crate::server::config::load(&args.config)
        .map_err(|p| CliError::Usage(format!("invalid config:\n  {}", p.join("\n  "))))?;
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(e.to_string()))?;
    rt.block_on(crate::server::run_until_signal(cfg))
        .map_err(|p| CliError::Usage(format!("cannot start:\n  {}", p.join("\n  "))))?;
    Ok(0)
}
