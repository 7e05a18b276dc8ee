//! A two-domain federation for integration tests: company.com and vendor.example initialized
//! with `fedgate init`, their bundles exchanged, a signed agreement naming the real loopback
//! ports, recording upstream services, and both gateways running with real TLS on
//! `127.0.0.1:0` and real sled in a temp dir.
#![allow(dead_code)]

pub mod peers;
pub mod pg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use fedgate::server::tls::{client_config, Identity, MtlsConnector, SpiffeServerVerifier};
use fedgate::server::trust::{Trust, TrustHandle};
use fedgate::server::{Listeners, Running};
use fedgate::spiffe::{SpiffeId, TrustDomain};
use http::{HeaderMap, Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const CO: &str = "company.com";
pub const VE: &str = "vendor.example";

/// The demo's agreement (flows planning -> analytics and analytics -> report) with these ports.
pub fn agreement_text(co_fed: SocketAddr, ve_fed: SocketAddr, now: i64) -> String {
    fedgate::demo::agreement(co_fed, ve_fed, now)
}

pub use fedgate::demo::Upstream;

/// A plain-HTTP loopback upstream that records every request.
pub async fn upstream() -> Upstream {
    fedgate::demo::upstream("test upstream").await.unwrap()
}

pub struct Domain {
    pub td: String,
    pub dir: PathBuf,
    pub internal: SocketAddr,
    pub federation: SocketAddr,
    pub admin: SocketAddr,
}

impl Domain {
    pub fn config(&self) -> PathBuf {
        self.dir.join("gateway.toml")
    }
    pub fn bundles(&self) -> PathBuf {
        self.dir.join("bundles")
    }
    pub fn agent_pem(&self, a: &str) -> PathBuf {
        self.dir.join(format!("agents/{a}.pem"))
    }
    pub fn agent_key(&self, a: &str) -> PathBuf {
        self.dir.join(format!("agents/{a}.key"))
    }
    pub fn id(&self, path: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://{}{path}", self.td)).unwrap()
    }
    pub fn gateway_id(&self) -> SpiffeId {
        self.id("/gateway")
    }
}

pub struct Federation {
    pub tmp: tempfile::TempDir,
    pub co: Domain,
    pub ve: Domain,
    pub co_gw: Option<Running>,
    pub ve_gw: Option<Running>,
    pub co_up: Upstream,
    pub ve_up: Upstream,
}

fn init_domain(
    root: &Path,
    td: &str,
    agents: &[&str],
    l: &Listeners,
    upstreams: &[(&str, SocketAddr)],
) -> Domain {
    let (i, f, a) = l.addrs().unwrap();
    let dir = root.join(td);
    let args = fedgate::provision::DomainSpec {
        trust_domain: td.into(),
        out: dir.clone(),
        agents: agents.iter().map(|s| s.to_string()).collect(),
        internal: i.to_string(),
        federation: f.to_string(),
        admin: a.to_string(),
        admin_loopback: true,
    };
    fedgate::provision::provision(&args, fedgate::time::now()).unwrap();
    let mut cfg = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    cfg = cfg.replace("upstreams = []\n", "");
    for (pat, addr) in upstreams {
        cfg.push_str(&format!(
            "\n[[upstreams]]\ntarget = \"spiffe://{td}/agent/{pat}\"\nurl = \"http://{addr}\"\n"
        ));
    }
    // Fast lifecycle for tests.
    cfg = cfg.replace("key_prepublish = \"30s\"", "key_prepublish = \"2s\"");
    std::fs::write(dir.join("gateway.toml"), cfg).unwrap();
    Domain {
        td: td.into(),
        dir,
        internal: i,
        federation: f,
        admin: a,
    }
}

pub fn sign_into(agreement: &str, domains: &[&Domain]) {
    let a = fedgate::agreement::Agreement::parse(agreement).unwrap();
    let mut sigs = Vec::new();
    for d in domains {
        let key = fedgate::files::read_signing_key(&d.dir.join("keys/gateway.key")).unwrap();
        sigs.push((
            d.td.clone(),
            fedgate::agreement::sign_agreement(&a.hash, &key).unwrap(),
        ));
    }
    for d in domains {
        let ad = d.dir.join("agreements");
        std::fs::write(ad.join(format!("{}.toml", a.id)), agreement).unwrap();
        for (td, s) in &sigs {
            std::fs::write(
                ad.join(fedgate::agreement::signature_file_name(&a.id, td)),
                s,
            )
            .unwrap();
        }
    }
}

impl Federation {
    /// Both domains initialized, bundles exchanged, agreement signed; gateways not started.
    pub async fn prepare() -> (Federation, Listeners, Listeners) {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("FEDGATE_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .try_init();
        fedgate::crypto::install_provider();
        let tmp = tempfile::tempdir().unwrap();
        let co_l = Listeners::loopback().unwrap();
        let ve_l = Listeners::loopback().unwrap();
        let co_up = upstream().await;
        let ve_up = upstream().await;
        let co = init_domain(
            tmp.path(),
            CO,
            &["planning/p1", "inventory/i1", "report/r1"],
            &co_l,
            &[("report/*", co_up.addr)],
        );
        let ve = init_domain(
            tmp.path(),
            VE,
            &["analytics/a1", "worker/w1"],
            &ve_l,
            &[("analytics/*", ve_up.addr)],
        );
        std::fs::copy(
            co.bundles().join("company.com.json"),
            ve.bundles().join("company.com.json"),
        )
        .unwrap();
        std::fs::copy(
            ve.bundles().join("vendor.example.json"),
            co.bundles().join("vendor.example.json"),
        )
        .unwrap();
        let text = agreement_text(co.federation, ve.federation, fedgate::time::now());
        sign_into(&text, &[&co, &ve]);
        (
            Federation {
                tmp,
                co,
                ve,
                co_gw: None,
                ve_gw: None,
                co_up,
                ve_up,
            },
            co_l,
            ve_l,
        )
    }

    pub async fn start() -> Federation {
        let (mut f, co_l, ve_l) = Self::prepare().await;
        f.co_gw = Some(start_gateway(&f.co, co_l).await);
        f.ve_gw = Some(start_gateway(&f.ve, ve_l).await);
        f
    }

    pub fn co_gw(&self) -> &Running {
        self.co_gw.as_ref().unwrap()
    }
    pub fn ve_gw(&self) -> &Running {
        self.ve_gw.as_ref().unwrap()
    }

    /// Restarts vendor.example's gateway on the same ports.
    pub async fn restart_vendor(&mut self) {
        if let Some(r) = self.ve_gw.take() {
            r.shutdown().await;
        }
        let l = Listeners::bind(self.ve.internal, self.ve.federation, self.ve.admin).unwrap();
        self.ve_gw = Some(start_gateway(&self.ve, l).await);
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.co_gw.take() {
            r.shutdown().await;
        }
        if let Some(r) = self.ve_gw.take() {
            r.shutdown().await;
        }
    }
}

pub async fn start_gateway(d: &Domain, l: Listeners) -> Running {
    let cfg = fedgate::server::config::load(&d.config()).unwrap_or_else(|p| panic!("{p:?}"));
    fedgate::server::start(cfg, Some(l))
        .await
        .unwrap_or_else(|p| panic!("{p:?}"))
}

/// Every bundle in `d`'s bundle directory.
pub fn trust_of(d: &Domain) -> Arc<TrustHandle> {
    let bundles = fedgate::files::load_bundle_dir(&d.bundles()).unwrap();
    Arc::new(TrustHandle::new(Trust::with_bundles(bundles)))
}

pub type TlsClient = Client<MtlsConnector, Body>;

/// An mTLS client presenting `cert`/`key`, accepting only `server` (checked with `trust_from`'s
/// bundles).
pub fn client(cert: &Path, key: &Path, server: SpiffeId, trust_from: &Domain) -> TlsClient {
    let id = Identity {
        chain: fedgate::files::read_pem_certs(cert).unwrap(),
        key: fedgate::files::read_private_key_der(key).unwrap(),
    };
    let v = Arc::new(SpiffeServerVerifier::exact(trust_of(trust_from), server));
    Client::builder(TokioExecutor::new())
        .build(MtlsConnector::new(client_config(Some(&id), v).unwrap()))
}

/// An mTLS client without a client certificate.
pub fn anonymous_client(server: SpiffeId, trust_from: &Domain) -> TlsClient {
    let v = Arc::new(SpiffeServerVerifier::exact(trust_of(trust_from), server));
    Client::builder(TokioExecutor::new()).build(MtlsConnector::new(client_config(None, v).unwrap()))
}

/// A client for `agent` (`type/instance`) of domain `d`, talking to `server_domain`'s gateway.
pub fn agent_client(d: &Domain, agent: &str, server_domain: &Domain) -> TlsClient {
    client(
        &d.agent_pem(agent),
        &d.agent_key(agent),
        server_domain.gateway_id(),
        d,
    )
}

pub fn gateway_client(d: &Domain, server_domain: &Domain) -> TlsClient {
    client(
        &d.dir.join("gateway.pem"),
        &d.dir.join("keys/gateway-svid.key"),
        server_domain.gateway_id(),
        d,
    )
}

pub fn admin_client(d: &Domain) -> TlsClient {
    client(
        &d.dir.join("admin.pem"),
        &d.dir.join("keys/admin.key"),
        d.gateway_id(),
        d,
    )
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn reason(&self) -> String {
        self.json()["reason"].as_str().unwrap_or("").to_string()
    }
}

pub async fn call(
    c: &TlsClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Reply, String> {
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Body::from(body.into())).map_err(|e| e.to_string())?;
    let resp = c.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// Issues `L0~L1` from `d`'s IdP to `agent` with `scope`.
pub fn issue_chain(d: &Domain, human: &str, agent: &str, scope: &[&str], task: &str) -> String {
    let key = fedgate::files::read_signing_key(&d.dir.join("keys/idp.key")).unwrap();
    fedgate::chain::issue(
        &key,
        &d.id("/idp"),
        human,
        &d.id(&format!("/agent/{agent}")),
        &fedgate::scope::ScopeSet::parse_list(scope).unwrap(),
        task,
        fedgate::time::now(),
        3600,
    )
    .unwrap()
}

/// The agent's key and SVID chain, to extend chains as that agent.
pub fn agent_keys(d: &Domain, agent: &str) -> (fedgate::jose::SigningKey, Vec<Vec<u8>>) {
    let key = fedgate::files::read_signing_key(&d.agent_key(agent)).unwrap();
    let certs = fedgate::files::read_pem_certs(&d.agent_pem(agent))
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect();
    (key, certs)
}

pub fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

/// The audit records of a running gateway, parsed.
pub fn records(r: &Running) -> Vec<fedgate::audit::Record> {
    let n = r.gateway.log.size();
    r.gateway
        .log
        .read(0, n)
        .unwrap()
        .iter()
        .map(|b| fedgate::audit::Record::from_canonical(b).unwrap())
        .collect()
}

/// Edits `d`'s gateway.toml as a TOML table (before its gateway starts, or before a reload).
pub fn edit_config(d: &Domain, edit: impl FnOnce(&mut toml::Table)) {
    let text = std::fs::read_to_string(d.config()).unwrap();
    let mut t: toml::Table = toml::from_str(&text).unwrap();
    edit(&mut t);
    std::fs::write(d.config(), toml::to_string(&t).unwrap()).unwrap();
}

/// Sets `[limits] key = value` in `d`'s config.
pub fn set_limit(d: &Domain, key: &str, value: impl Into<toml::Value>) {
    let value = value.into();
    edit_config(d, |t| {
        let limits = t
            .entry("limits")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        if let toml::Value::Table(l) = limits {
            l.insert(key.to_string(), value);
        }
    });
}

impl Federation {
    /// Both gateways started after `edit` adjusted the prepared domains (configs, files).
    pub async fn start_with(edit: impl FnOnce(&Federation)) -> Federation {
        let (mut f, co_l, ve_l) = Self::prepare().await;
        edit(&f);
        f.co_gw = Some(start_gateway(&f.co, co_l).await);
        f.ve_gw = Some(start_gateway(&f.ve, ve_l).await);
        f
    }
}
