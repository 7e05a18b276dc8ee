//! `fedgate revoke` (through a running gateway's admin listener) and `fedgate rotate`.

use std::path::PathBuf;

use clap::Args;

use super::admin_client::AdminConn;
use super::{usage, CliError, CliResult};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "task", "agent", "principal"])))]
pub struct RevokeArgs {
    #[command(flatten)]
    pub conn: AdminConn,
    #[arg(long)]
    pub jti: Option<String>,
    #[arg(long)]
    pub task: Option<String>,
    #[arg(long)]
    pub agent: Option<String>,
    #[arg(long)]
    pub principal: Option<String>,
    /// Revoke until this RFC 3339 time (default: for good).
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    /// The gateway's data_dir: the new key goes under keys/ there and rotation.json tells the
    /// running gateway to publish it, then sign with it after lifecycle.key_prepublish.
    #[arg(long, conflicts_with = "config", required_unless_present = "config")]
    pub data_dir: Option<PathBuf>,
    /// The gateway's config instead: with `[state] backend = "postgres"` the rotation is
    /// staged in the shared store for every replica (copy the new key file to each replica, at
    /// the same path, before it activates).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

pub fn revoke(a: RevokeArgs) -> CliResult {
    let (kind, value) = match (&a.jti, &a.task, &a.agent, &a.principal) {
        (Some(v), _, _, _) => ("jti", v.clone()),
        (_, Some(v), _, _) => ("task", v.clone()),
        (_, _, Some(v), _) => ("agent", v.clone()),
        (_, _, _, Some(v)) => ("principal", v.clone()),
        _ => return Err(usage("one of --jti, --task, --agent, --principal")),
    };
    let until = match &a.until {
        Some(t) => crate::time::parse_rfc3339(t).map_err(usage)?,
        None => 0,
    };
    let body = serde_json::json!({"kind": kind, "value": value, "until": until});
    println!("{}", a.conn.post_json("/v1/revoke", &body)?.ok()?);
    Ok(0)
}

pub fn rotate(a: RotateArgs) -> CliResult {
    let (kid, path) = match (&a.data_dir, &a.config) {
        (Some(d), _) => crate::server::lifecycle::stage_rotation(d).map_err(usage)?,
        (None, Some(c)) => {
            let cfg = crate::server::config::load(c).map_err(|p| usage(p.join("; ")))?;
            match &cfg.state {
                crate::server::config::StateChoice::Sled => {
                    crate::server::lifecycle::stage_rotation(&cfg.data_dir).map_err(usage)?
                }
                crate::server::config::StateChoice::Postgres(o) => {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(usage)?;
                    let o = o.clone();
                    let dir = cfg.data_dir.join("keys");
                    let secret = crate::server::config::read_pseudonym_key(&cfg.pseudonym_key)
                        .map_err(usage)?;
                    rt.block_on(async move {
                        use crate::store::StateBackend;
                        crate::crypto::install_provider();
                        let st = crate::store::postgres::PgState::connect(
                            o,
                            &secret,
                            crate::store::postgres::Opener::Tool,
                        )
                        .await
                            .map_err(usage)?;
                        let prev = st.rotation().await.map_err(usage)?;
                        let (kid, path, text) =
                            crate::server::lifecycle::new_rotation(&dir, prev.as_deref())
                                .map_err(usage)?;
                        if !st
                            .save_rotation(prev.as_deref(), &text)
                            .await
                            .map_err(usage)?
                        {
                            return Err(usage("the rotation state changed meanwhile; try again"));
                        }
                        println!("the key file must be at this path on every replica before it activates");
                        Ok::<_, CliError>((kid, path))
                    })?
                }
            }
        }
        (None, None) => return Err(usage("give --data-dir or --config")),
    };
    println!("staged new gateway key {kid} at {}", path.display());
    println!("the running gateway publishes it in its bundle now and signs with it after lifecycle.key_prepublish;");
    println!("the old key stays published until every token it signed has expired.");
    Ok(0)
}
