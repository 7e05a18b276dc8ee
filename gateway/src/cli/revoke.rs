//! `fedgate revoke` (through a running gateway's admin listener) and `fedgate rotate`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::{load_bundles, usage, CliError, CliResult};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["jti", "task", "agent", "principal"])))]
pub struct RevokeArgs {
    /// The gateway's admin URL, e.g. https://127.0.0.1:9090
    #[arg(long)]
    pub admin_url: String,
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
    /// An `fedgate init` directory: uses admin.pem, keys/admin.key and bundles/ (default: the
    /// current directory, unless --cert/--key/--bundles are given).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Admin X509-SVID (instead of --dir).
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[arg(long)]
    pub bundles: Option<PathBuf>,
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
    let (cert, key, bundles) = match (&a.dir, &a.cert, &a.key, &a.bundles) {
        (d, None, None, None) => {
            let d = d.clone().unwrap_or_else(|| PathBuf::from("."));
            (
                d.join("admin.pem"),
                d.join("keys/admin.key"),
                d.join("bundles"),
            )
        }
        (None, Some(c), Some(k), Some(b)) => (c.clone(), k.clone(), b.clone()),
        _ => return Err(usage(
            "give --dir (default: the current directory), or all of --cert, --key and --bundles",
        )),
    };
    let set = load_bundles(&bundles)?;
    let chain = crate::files::read_pem_certs(&cert).map_err(usage)?;
    let leaf = x509_parser::parse_x509_certificate(&chain[0])
        .map_err(|e| usage(e.to_string()))?
        .1;
    let me = crate::spiffe::svid::leaf_spiffe_id(&leaf).map_err(|e| usage(e.to_string()))?;
    let id = crate::server::tls::Identity {
        chain,
        key: crate::files::read_private_key_der(&key).map_err(usage)?,
    };
    let trust = Arc::new(crate::server::trust::TrustHandle::new(
        crate::server::trust::Trust::with_bundles(set),
    ));
    let verifier = Arc::new(crate::server::tls::SpiffeServerVerifier::in_domain(
        trust,
        me.trust_domain(),
    ));
    let cfg = crate::server::tls::client_config(Some(&id), verifier).map_err(usage)?;
    let body = serde_json::json!({"kind": kind, "value": value, "until": until}).to_string();
    let url = format!("{}/v1/revoke", a.admin_url.trim_end_matches('/'));
    crate::crypto::install_provider();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(usage)?;
    let target = url.clone();
    let (status, text) = rt
        .block_on(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build::<_, axum::body::Body>(crate::server::tls::MtlsConnector::new(cfg));
            let req = http::Request::post(&target)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(body))
                .map_err(|e| e.to_string())?;
            let resp =
                tokio::time::timeout(std::time::Duration::from_secs(15), client.request(req))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| format!("{e:?}"))?;
            let status = resp.status();
            let b = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, String::from_utf8_lossy(&b).to_string()))
        })
        .map_err(|e| usage(format!("{url}: {e}")))?;
    if status.is_success() {
        println!("{text}");
        Ok(0)
    } else {
        Err(CliError::Invalid(format!(
            "the gateway refused ({status}): {text}"
        )))
    }
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
