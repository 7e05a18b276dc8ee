//! The operator's mTLS client for a running gateway's admin listener, shared by the verbs
//! that act through it (`revoke`, `agreement propose | proposals | accept | reject |
//! terminate`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{load_bundles, usage, CliError};

/// How long the CLI waits for the gateway's answer (an accept includes a call to the partner).
const ADMIN_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer the CLI reads (a proposal list holds whole agreements).
const MAX_ADMIN_ANSWER_BYTES: usize = 8 * 1024 * 1024;

/// Where the admin listener is and which admin identity to present.
#[derive(Args, Debug, Clone)]
pub struct AdminConn {
    /// The gateway's admin URL, e.g. https://127.0.0.1:9090
    #[arg(long)]
    pub admin_url: String,
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

/// One answer of the admin listener.
pub struct Answer {
    pub status: http::StatusCode,
    pub text: String,
    /// The body as it came (tiles are binary).
    pub bytes: Vec<u8>,
}

impl Answer {
    /// The body, or the refusal as an error (exit 1) carrying what the gateway said.
    pub fn ok(self) -> Result<String, CliError> {
        if self.status.is_success() {
            Ok(self.text)
        } else {
            Err(CliError::Invalid(format!(
                "the gateway refused ({}): {}",
                self.status, self.text
            )))
        }
    }
}

impl AdminConn {
    fn files(&self) -> Result<(PathBuf, PathBuf, PathBuf), CliError> {
        match (&self.dir, &self.cert, &self.key, &self.bundles) {
            (d, None, None, None) => {
                let d = d.clone().unwrap_or_else(|| PathBuf::from("."));
                Ok((
                    d.join("admin.pem"),
                    d.join("keys/admin.key"),
                    d.join("bundles"),
                ))
            }
            (None, Some(c), Some(k), Some(b)) => Ok((c.clone(), k.clone(), b.clone())),
            _ => Err(usage(
                "give --dir (default: the current directory), or all of --cert, --key and --bundles",
            )),
        }
    }

    /// Sends one request (`body` with its content type) and reads the whole answer.
    pub fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Answer, CliError> {
        let (cert, key, bundles) = self.files()?;
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
        crate::crypto::install_provider();
        let cfg = crate::server::tls::client_config(Some(&id), verifier).map_err(usage)?;
        let url = format!("{}{path}", self.admin_url.trim_end_matches('/'));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(usage)?;
        let target = url.clone();
        rt.block_on(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build::<_, axum::body::Body>(crate::server::tls::MtlsConnector::new(cfg));
            let mut req = http::Request::builder().method(method).uri(&target);
            let body = match body {
                Some((ct, b)) => {
                    req = req.header(http::header::CONTENT_TYPE, ct);
                    axum::body::Body::from(b)
                }
                None => axum::body::Body::empty(),
            };
            let req = req.body(body).map_err(|e| e.to_string())?;
            let resp = tokio::time::timeout(ADMIN_CALL_TIMEOUT, client.request(req))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| format!("{e:?}"))?;
            let status = resp.status();
            let b = http_body_util::Limited::new(resp.into_body(), MAX_ADMIN_ANSWER_BYTES);
            let b = http_body_util::BodyExt::collect(b)
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>(Answer {
                status,
                text: String::from_utf8_lossy(&b).to_string(),
                bytes: b.to_vec(),
            })
        })
        .map_err(|e| usage(format!("{url}: {e}")))
    }

    /// A JSON POST.
    pub fn post_json(&self, path: &str, v: &serde_json::Value) -> Result<Answer, CliError> {
        self.call(
            http::Method::POST,
            path,
            Some(("application/json", v.to_string().into_bytes())),
        )
    }
}
