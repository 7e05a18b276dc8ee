//! The two-domain demo (`fedgate demo`) and the setup the examples share: company.com and
//! vendor.example created with `fedgate init`, bundles exchanged, an agreement signed by both,
//! recording upstream services, and both gateways running on free loopback ports. Then the
//! story of the background article, with the attacks it warns about, each step checked.

pub mod hostile;
pub mod mcp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::server::tls::{client_config, Identity, MtlsConnector, SpiffeServerVerifier};
use crate::server::trust::{Trust, TrustHandle};
use crate::server::{Listeners, Running};
use crate::spiffe::SpiffeId;

pub const COMPANY: &str = "company.com";
pub const VENDOR: &str = "vendor.example";

/// The agreement of the demo, naming the real ports.
pub fn agreement(co_fed: SocketAddr, ve_fed: SocketAddr, now: i64) -> String {
    let from = crate::time::format_rfc3339(now - 86_400);
    let until = crate::time::format_rfc3339(now + 365 * 86_400);
    format!(
        r#"# The demo agreement between company.com and vendor.example, signed by both gateways.
id = "company-vendor-analytics"
version = 1
valid_from = {from}
valid_until = {until}
max_chain_depth = 5
max_token_ttl = "15m"
clock_skew = "30s"

[[domains]]
trust_domain = "company.com"
gateway_id = "spiffe://company.com/gateway"
gateway_url = "https://{co_fed}"
bundle_endpoint = "https://{co_fed}/bundle"
disclosure = {{ principal = "pseudonymous", chain = "digest" }}

[[domains]]
trust_domain = "vendor.example"
gateway_id = "spiffe://vendor.example/gateway"
gateway_url = "https://{ve_fed}"
bundle_endpoint = "https://{ve_fed}/bundle"
disclosure = {{ principal = "none", chain = "digest" }}

# company.com's planning agents may delegate analytics work to vendor.example's analytics
# agents; customer PII only with a human's explicit, fresh approval.
[[flows]]
from = "spiffe://company.com/agent/planning/*"
to = "spiffe://vendor.example/agent/analytics/*"
max_scope = ["analytics:*", "pii:customers:read"]
requires_approval = ["pii:*"]
approval_max_age = "1h"

[[flows.routes]]
method = "POST"
path = "/analytics/*"
scope = "analytics:*"

[[flows.routes]]
method = "GET"
path = "/customers/*"
scope = "pii:customers:read"

# vendor.example's analytics agents may report results back to company.com's report agents.
[[flows]]
from = "spiffe://vendor.example/agent/analytics/*"
to = "spiffe://company.com/agent/report/*"
max_scope = ["analytics:report-back"]

[[flows.routes]]
method = "POST"
path = "/reports/*"
scope = "analytics:report-back"

# company.com's planning agents may call vendor.example's MCP tool server, but only its
# summarize tool: each JSON-RPC tools/call is matched to the route of its tool.
[[flows]]
from = "spiffe://company.com/agent/planning/*"
to = "spiffe://vendor.example/agent/tools/*"
max_scope = ["mcp:tools/*"]

[[flows.routes]]
method = "*"
path = "/mcp"
scope = "mcp:tools/summarize"
protocol = "mcp"
response = {{ stream = true }}
"#
    )
}

/// What an upstream service received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A loopback upstream that records requests and answers as `name`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

pub async fn upstream(name: &'static str) -> Result<Upstream, String> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |req: http::Request<Body>| {
        let s = s.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = http_body_util::BodyExt::collect(body)
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            if let Ok(mut v) = s.lock() {
                v.push(Seen {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    headers: parts.headers.clone(),
                    body,
                });
            }
            axum::Json(
                serde_json::json!({"service": name, "path": parts.uri.path(), "status": "done"}),
            )
        }
    });
    let addr = serve_loopback(app).await?;
    Ok(Upstream { addr, seen })
}

/// Serves `app` on a fresh loopback port for the rest of the process; returns its address.
pub async fn serve_loopback(app: axum::Router) -> Result<SocketAddr, String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    Ok(addr)
}

/// One domain of the demo.
pub struct Domain {
    pub td: String,
    pub dir: PathBuf,
    pub internal: SocketAddr,
    pub federation: SocketAddr,
    pub admin: SocketAddr,
}

impl Domain {
    /// The SPIFFE ID `spiffe://<td><path>`; an invalid path is an error, never a stand-in ID.
    pub fn id(&self, path: &str) -> Result<SpiffeId, String> {
        let raw = format!("spiffe://{}{path}", self.td);
        SpiffeId::parse(&raw).map_err(|e| format!("{raw}: {e}"))
    }
    pub fn gateway_id(&self) -> Result<SpiffeId, String> {
        self.id("/gateway")
    }
}

fn init_domain(
    root: &Path,
    td: &str,
    agents: &[&str],
    l: &Listeners,
    upstream: (&str, SocketAddr),
) -> Result<Domain, String> {
    let (i, f, a) = l.addrs().map_err(|e| e.to_string())?;
    let dir = root.join(td);
    let args = crate::provision::DomainSpec {
        trust_domain: td.into(),
        out: dir.clone(),
        agents: agents.iter().map(|s| s.to_string()).collect(),
        internal: i.to_string(),
        federation: f.to_string(),
        admin: a.to_string(),
        admin_loopback: true,
    };
    crate::provision::provision(&args, crate::time::now()).map_err(|e| e.to_string())?;
    let cfgp = dir.join("gateway.toml");
    let mut cfg = std::fs::read_to_string(&cfgp)
        .map_err(|e| e.to_string())?
        .replace("upstreams = []\n", "");
    cfg.push_str(&format!(
        "\n[[upstreams]]\ntarget = \"spiffe://{td}/agent/{}\"\nurl = \"http://{}\"\n",
        upstream.0, upstream.1
    ));
    std::fs::write(&cfgp, cfg).map_err(|e| e.to_string())?;
    Ok(Domain {
        td: td.into(),
        dir,
        internal: i,
        federation: f,
        admin: a,
    })
}

/// The running federation.
pub struct Federation {
    pub company: Domain,
    pub vendor: Domain,
    pub co: Option<Running>,
    pub ve: Option<Running>,
    pub reports: Upstream,
    pub analytics: Upstream,
    /// vendor.example's MCP tool server.
    pub tools: Upstream,
}

/// Creates both domains under `root`, signs the agreement and starts both gateways.
pub async fn start(root: &Path) -> Result<Federation, String> {
    crate::crypto::install_provider();
    let co_l = Listeners::loopback().map_err(|e| e.to_string())?;
    let ve_l = Listeners::loopback().map_err(|e| e.to_string())?;
    let reports = upstream("company reports").await?;
    let analytics = upstream("vendor analytics").await?;
    let tools = mcp::tools().await?;
    let company = init_domain(
        root,
        COMPANY,
        &["planning/p1", "inventory/i1", "report/r1"],
        &co_l,
        ("report/*", reports.addr),
    )?;
    let vendor = init_domain(
        root,
        VENDOR,
        &["analytics/a1"],
        &ve_l,
        ("analytics/*", analytics.addr),
    )?;
    // The MCP tool server behind vendor.example, as an MCP upstream (server/protocol/).
    let vcfg = vendor.dir.join("gateway.toml");
    let mut text = std::fs::read_to_string(&vcfg).map_err(|e| e.to_string())?;
    text.push_str(&format!(
        "\n[[upstreams]]\ntarget = \"spiffe://{VENDOR}/agent/tools/*\"\nurl = \"http://{}\"\nprotocol = \"mcp\"\nresource = \"{}\"\n",
        tools.addr,
        mcp::RESOURCE
    ));
    std::fs::write(&vcfg, text).map_err(|e| e.to_string())?;
    // Exchange bundles (the bundle endpoints keep them fresh afterwards).
    for (from, to) in [(&company, &vendor), (&vendor, &company)] {
        std::fs::copy(
            from.dir.join(format!("bundles/{}.json", from.td)),
            to.dir.join(format!("bundles/{}.json", from.td)),
        )
        .map_err(|e| e.to_string())?;
    }
    let text = agreement(company.federation, vendor.federation, crate::time::now());
    let a = crate::agreement::Agreement::parse(&text).map_err(|e| format!("{e:?}"))?;
    let mut sigs = Vec::new();
    for d in [&company, &vendor] {
        let key = crate::files::read_signing_key(&d.dir.join("keys/gateway.key"))
            .map_err(|e| e.to_string())?;
        sigs.push((
            d.td.clone(),
            crate::agreement::sign_agreement(&a.hash, &key).map_err(|e| e.to_string())?,
        ));
    }
    for d in [&company, &vendor] {
        let ad = d.dir.join("agreements");
        std::fs::write(ad.join(format!("{}.toml", a.id)), &text).map_err(|e| e.to_string())?;
        for (td, s) in &sigs {
            std::fs::write(ad.join(crate::agreement::signature_file_name(&a.id, td)), s)
                .map_err(|e| e.to_string())?;
        }
    }
    let co = start_one(&company, co_l).await?;
    let ve = start_one(&vendor, ve_l).await?;
    Ok(Federation {
        company,
        vendor,
        co: Some(co),
        ve: Some(ve),
        reports,
        analytics,
        tools,
    })
}

async fn start_one(d: &Domain, l: Listeners) -> Result<Running, String> {
    let cfg = crate::server::config::load(&d.dir.join("gateway.toml")).map_err(|p| p.join("; "))?;
    crate::server::start(cfg, Some(l))
        .await
        .map_err(|p| p.join("; "))
}

impl Federation {
    pub async fn stop(&mut self) {
        if let Some(r) = self.co.take() {
            r.shutdown().await;
        }
        if let Some(r) = self.ve.take() {
            r.shutdown().await;
        }
    }
}

pub type TlsClient = Client<MtlsConnector, Body>;

/// An mTLS client presenting `cert`/`key` to `server`, checked with `trust_dir`'s bundles.
pub fn client(
    cert: &Path,
    key: &Path,
    server: SpiffeId,
    trust_dir: &Path,
) -> Result<TlsClient, String> {
    let id = Identity {
        chain: crate::files::read_pem_certs(cert).map_err(|e| e.to_string())?,
        key: crate::files::read_private_key_der(key).map_err(|e| e.to_string())?,
    };
    let bundles =
        crate::files::load_bundle_dir(&trust_dir.join("bundles")).map_err(|p| p.join("; "))?;
    let trust = Arc::new(TrustHandle::new(Trust::with_bundles(bundles)));
    let v = Arc::new(SpiffeServerVerifier::exact(trust, server));
    let cfg = client_config(Some(&id), v).map_err(|e| e.to_string())?;
    Ok(Client::builder(TokioExecutor::new()).build(MtlsConnector::new(cfg)))
}

/// `agent` (`type/instance`) of `d` talking to the gateway of `server`.
pub fn agent_client(d: &Domain, agent: &str, server: &Domain) -> Result<TlsClient, String> {
    client(
        &d.dir.join(format!("agents/{agent}.pem")),
        &d.dir.join(format!("agents/{agent}.key")),
        server.gateway_id()?,
        &d.dir,
    )
}

pub struct Reply {
    pub status: u16,
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
    /// `allowed` for 2xx, else the reason code.
    pub fn outcome(&self) -> String {
        if (200..300).contains(&self.status) {
            "allowed".into()
        } else {
            let r = self.reason();
            if r.is_empty() {
                format!("HTTP {}", self.status)
            } else {
                r
            }
        }
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
    let resp = tokio::time::timeout(Duration::from_secs(20), c.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

/// The RFC 8693 form for exchanging `chain` for a token to `audience`.
pub fn exchange_form(chain: &str, audience: &str, scope: &str) -> String {
    serde_urlencoded::to_string([
        ("grant_type", crate::server::egress::GRANT_TYPE),
        ("subject_token", chain),
        (
            "subject_token_type",
            crate::server::egress::SUBJECT_TOKEN_TYPE,
        ),
        ("audience", audience),
        ("scope", scope),
    ])
    .unwrap_or_default()
}

/// RFC 8693 token exchange at `internal` (a gateway's internal listener): the access token.
pub async fn exchange(
    c: &TlsClient,
    internal: SocketAddr,
    chain: &str,
    audience: &str,
    scope: &str,
) -> Result<String, String> {
    let form = exchange_form(chain, audience, scope);
    let r = call(
        c,
        Method::POST,
        &format!("https://{internal}/v1/token"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    )
    .await?;
    match r.json()["access_token"].as_str() {
        Some(t) if r.status == 200 => Ok(t.to_string()),
        _ => Err(format!(
            "token exchange refused: {}",
            String::from_utf8_lossy(&r.body)
        )),
    }
}

/// One step of the story.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub n: usize,
    pub name: String,
    pub expected: String,
    pub got: String,
    pub ok: bool,
    pub detail: String,
}

struct Story {
    steps: Vec<Step>,
    live: bool,
}

impl Story {
    fn record(&mut self, name: &str, expected: &str, got: &str, detail: String) {
        let ok = expected == got;
        let n = self.steps.len() + 1;
        if self.live {
            println!(
                "[{}] {n:>2}. {name}: {got} — {detail}",
                if ok { " ok " } else { "FAIL" }
            );
        }
        self.steps.push(Step {
            n,
            name: name.into(),
            expected: expected.into(),
            got: got.into(),
            ok,
            detail,
        });
    }
}

const IDP_SCOPE: &[&str] = &[
    "infrastructure:review",
    "cloud:read",
    "reports:write",
    "analytics:*",
];

/// Plays the story against a running federation. `live` prints each step as it happens.
pub async fn run_story(fed: &mut Federation, keep: &Path, live: bool) -> Result<Vec<Step>, String> {
    let mut st = Story {
        steps: vec![],
        live,
    };
    let co = &fed.company;
    let ve = &fed.vendor;
    let now = crate::time::now();
    let idp_key =
        crate::files::read_signing_key(&co.dir.join("keys/idp.key")).map_err(|e| e.to_string())?;
    let idp = co.id("/idp")?;
    let planning = co.id("/agent/planning/p1")?;
    let inventory = co.id("/agent/inventory/i1")?;
    let analytics = "spiffe://vendor.example/agent/analytics/a1";
    let scope = |s: &[&str]| crate::scope::ScopeSet::parse_list(s).map_err(|e| e.to_string());

    // 1. Alice asks the planning agent for the quarterly infrastructure review.
    let chain = crate::chain::issue(
        &idp_key,
        &idp,
        "alice@company.com",
        &planning,
        &scope(IDP_SCOPE)?,
        "quarterly-infra-review",
        now,
        3600,
    )
    .map_err(|e| e.to_string())?;
    st.record(
        "Alice asks planning for the quarterly infrastructure review",
        "issued",
        "issued",
        format!(
            "company.com's IdP signs alice@company.com -> planning with [{}]",
            IDP_SCOPE.join(" ")
        ),
    );

    // 2. Planning delegates to inventory, inside company.com.
    let pk = crate::files::read_signing_key(&co.dir.join("agents/planning/p1.key"))
        .map_err(|e| e.to_string())?;
    let pc: Vec<Vec<u8>> = crate::files::read_pem_certs(&co.dir.join("agents/planning/p1.pem"))
        .map_err(|e| e.to_string())?
        .iter()
        .map(|c| c.to_vec())
        .collect();
    let inv_chain = crate::chain::extend(
        &chain,
        &pk,
        &pc,
        &planning,
        &inventory,
        &scope(&["cloud:read"])?,
        now,
        1800,
    )
    .map_err(|e| e.to_string())?;
    let bundles =
        crate::files::load_bundle_dir(&co.dir.join("bundles")).map_err(|p| p.join("; "))?;
    let v = crate::chain::UnverifiedChain::parse(&inv_chain).and_then(|c| {
        c.verify(
            &bundles,
            &crate::chain::Policy::default(),
            &crate::chain::NoRevocations,
            now,
        )
    });
    let got = match &v {
        Ok(_) => "valid".to_string(),
        Err(e) => e.reason().code().to_string(),
    };
    st.record("planning delegates to inventory (local)", "valid", &got, "the chain alice -> planning -> inventory verifies with scope [cloud:read]; nothing crosses".into());

    // 3. Planning delegates to vendor.example's analytics agent: a crossing.
    let pcl = agent_client(co, "planning/p1", co)?;
    let leaks = [
        ("Authorization", "Bearer internal-api-key-123"),
        ("Cookie", "sso=internal-session"),
        ("X-Api-Key", "internal-key-456"),
        ("Proxy-Authorization", "Basic aW50ZXJuYWw="),
    ];
    let mut h = vec![
        ("Delegation-Chain", chain.as_str()),
        ("Fedgate-Target", analytics),
        ("Fedgate-Scope", "analytics:* cloud:read reports:write"),
        ("Content-Type", "application/json"),
    ];
    h.extend_from_slice(&leaks);
    let url = format!("https://{}/egress/analytics/quarterly-review", co.internal);
    let r = call(&pcl, Method::POST, &url, &h, r#"{"quarter":"Q3"}"#).await?;
    let seen = fed
        .analytics
        .seen
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    let link = seen
        .last()
        .and_then(|s| s.headers.get("delegation-chain"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let link_scope = crate::jose::parse_compact(&link)
        .ok()
        .and_then(|c| serde_json::from_slice::<crate::chain::LinkClaims>(&c.payload).ok())
        .map(|c| c.scope.join(" "))
        .unwrap_or_default();
    st.record(
        "planning delegates to vendor analytics (crossing)",
        "allowed",
        &r.outcome(),
        format!("requested [analytics:* cloud:read reports:write]; the agreement let [{link_scope}] cross; analytics received one crossing link and nothing else"),
    );

    // 4. Credential smuggling: what the vendor saw of the internal credentials.
    let leaked: Vec<&str> = leaks
        .iter()
        .filter(|(k, v)| {
            seen.last()
                .map(|s| {
                    s.headers
                        .get(*k)
                        .map(|x| x.as_bytes() == v.as_bytes())
                        .unwrap_or(false)
                })
                .unwrap_or(true)
        })
        .map(|(k, _)| *k)
        .collect();
    let got = if leaked.is_empty() && !seen.is_empty() {
        "stripped"
    } else {
        "leaked"
    };
    st.record("internal credentials sent along with the crossing", "stripped", got, format!("Authorization, Cookie, X-Api-Key and Proxy-Authorization never reached vendor.example{}", if leaked.is_empty() { String::new() } else { format!(" (leaked: {leaked:?})") }));
    let link1 = chain.split('~').nth(1).unwrap_or("");
    let hb = [
        ("Delegation-Chain", chain.as_str()),
        ("Fedgate-Target", analytics),
        ("Fedgate-Scope", "analytics:*"),
    ];
    let r = call(
        &pcl,
        Method::POST,
        &url,
        &hb,
        format!("{{\"smuggled\":\"{link1}\"}}"),
    )
    .await?;
    st.record(
        "the chain smuggled in a request body",
        "malformed",
        &r.outcome(),
        "a body carrying the internal chain is refused before anything leaves".into(),
    );

    // 5. Analytics writes back to company reports: the reverse crossing.
    let acl = agent_client(ve, "analytics/a1", ve)?;
    let h = [
        ("Delegation-Chain", link.as_str()),
        ("Fedgate-Target", "spiffe://company.com/agent/report/r1"),
        ("Fedgate-Scope", "analytics:report-back"),
    ];
    let r = call(
        &acl,
        Method::POST,
        &format!("https://{}/egress/reports/quarterly-review", ve.internal),
        &h,
        r#"{"findings":42}"#,
    )
    .await?;
    st.record("analytics writes back to company reports (reverse crossing)", "allowed", &r.outcome(), "analytics presents the crossing link it received; report gets [analytics:report-back] for the same task".into());

    // 6. A compromised planning agent widens its own scope.
    let last = chain.rsplit('~').next().unwrap_or("");
    let prev: crate::chain::LinkClaims = crate::jose::parse_compact(last)
        .ok()
        .and_then(|c| serde_json::from_slice(&c.payload).ok())
        .ok_or("chain")?;
    let widen = crate::chain::LinkClaims {
        iss: planning.to_string(),
        sub: planning.to_string(),
        sub_type: "agent".into(),
        dlg: Some(planning.to_string()),
        scope: vec!["analytics:*".into(), "cloud:*".into(), "billing:*".into()],
        task: prev.task.clone(),
        iat: now,
        exp: prev.exp,
        prev: Some(crate::chain::link_hash(last)),
        jti: crate::crypto::random_id(),
        crossing: None,
        dep: None,
        agr: None,
        prn: None,
    };
    let wl = crate::chain::mint_link(crate::chain::LinkSigner::X5c(&pk, &pc), &widen)
        .map_err(|e| e.to_string())?;
    let wide = format!("{chain}~{wl}");
    let h = [
        ("Delegation-Chain", wide.as_str()),
        ("Fedgate-Target", analytics),
        ("Fedgate-Scope", "billing:*"),
    ];
    let r = call(&pcl, Method::POST, &url, &h, "{}").await?;
    st.record(
        "a compromised planning agent widens its own scope",
        "scope_escalation",
        &r.outcome(),
        "it signs itself [analytics:* cloud:* billing:*]; the chain verifier sees the scope grow"
            .into(),
    );

    // 7. PII without a fresh approval; then with one.
    let stale_chain = {
        let l0 = crate::chain::LinkClaims {
            iss: idp.to_string(),
            sub: "alice@company.com".into(),
            sub_type: "human".into(),
            dlg: None,
            scope: vec!["analytics:*".into(), "pii:customers:read".into()],
            task: "customer-churn".into(),
            iat: now - 7200,
            exp: now + 3600,
            prev: None,
            jti: crate::crypto::random_id(),
            crossing: None,
            dep: None,
            agr: None,
            prn: None,
        };
        let s0 = crate::chain::mint_link(crate::chain::LinkSigner::Kid(&idp_key), &l0)
            .map_err(|e| e.to_string())?;
        let l1 = crate::chain::LinkClaims {
            sub: planning.to_string(),
            sub_type: "agent".into(),
            dlg: Some("alice@company.com".into()),
            prev: Some(crate::chain::link_hash(&s0)),
            jti: crate::crypto::random_id(),
            ..l0
        };
        format!(
            "{s0}~{}",
            crate::chain::mint_link(crate::chain::LinkSigner::Kid(&idp_key), &l1)
                .map_err(|e| e.to_string())?
        )
    };
    let purl = format!("https://{}/egress/customers/acme", co.internal);
    let h = [
        ("Delegation-Chain", stale_chain.as_str()),
        ("Fedgate-Target", analytics),
        ("Fedgate-Scope", "pii:customers:read"),
    ];
    let r = call(&pcl, Method::GET, &purl, &h, "").await?;
    st.record(
        "customer PII with Alice's approval from two hours ago",
        "approval_required",
        &r.outcome(),
        "pii:* needs a human grant naming the scope within the last hour".into(),
    );
    let fresh = crate::chain::issue(
        &idp_key,
        &idp,
        "alice@company.com",
        &planning,
        &scope(&["pii:customers:read"])?,
        "customer-churn",
        now,
        600,
    )
    .map_err(|e| e.to_string())?;
    let h = [
        ("Delegation-Chain", fresh.as_str()),
        ("Fedgate-Target", analytics),
        ("Fedgate-Scope", "pii:customers:read"),
    ];
    let r = call(&pcl, Method::GET, &purl, &h, "").await?;
    st.record(
        "customer PII with Alice's fresh, explicit approval",
        "allowed",
        &r.outcome(),
        "the same request, approved a moment ago for exactly pii:customers:read".into(),
    );

    // 8. A replayed token.
    let token = exchange(&pcl, co.internal, &chain, analytics, "analytics:*")
        .await
        .unwrap_or_default();
    let direct = agent_client(co, "planning/p1", ve)?;
    let iurl = format!(
        "https://{}/ingress/analytics/quarterly-review",
        ve.federation
    );
    let auth = format!("Bearer {token}");
    let bearer = [("Authorization", auth.as_str())];
    let first = call(&direct, Method::POST, &iurl, &bearer, "{}").await?;
    st.record(
        "planning exchanges its chain for a token and calls analytics directly",
        "allowed",
        &first.outcome(),
        "RFC 8693 token exchange; the token is bound to planning's certificate (cnf)".into(),
    );
    let again = call(&direct, Method::POST, &iurl, &bearer, "{}").await?;
    st.record(
        "the same token replayed",
        "replayed",
        &again.outcome(),
        "vendor.example remembers every token id until it expires, across restarts".into(),
    );
    let stolen = agent_client(co, "inventory/i1", ve)?;
    let r = call(&stolen, Method::POST, &iurl, &bearer, "{}").await?;
    st.record(
        "the token stolen by another agent",
        "issuer_mismatch",
        &r.outcome(),
        "bound to planning's certificate, useless to anyone else".into(),
    );

    // 8a. MCP: planning's MCP client calls vendor.example's tool server through its gateway,
    // with no Fedgate-Scope: the gateway reads the tool name from the JSON-RPC body. The
    // agreement routes summarize only; delete_records is refused in JSON-RPC's own shape.
    let mcp_chain = crate::chain::issue(
        &idp_key,
        &idp,
        "alice@company.com",
        &planning,
        &scope(&["mcp:tools/*"])?,
        "vendor-mcp-tools",
        now,
        3600,
    )
    .map_err(|e| e.to_string())?;
    let murl = format!("https://{}/egress/mcp", co.internal);
    let mh = [
        ("Delegation-Chain", mcp_chain.as_str()),
        ("Fedgate-Target", "spiffe://vendor.example/agent/tools/t1"),
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let tool_call = |name: &str, id: u32| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{name}","arguments":{{"text":"quarterly infrastructure review"}}}}}}"#
        )
    };
    let ok = call(&pcl, Method::POST, &murl, &mh, tool_call("summarize", 1)).await?;
    let no = call(
        &pcl,
        Method::POST,
        &murl,
        &mh,
        tool_call("delete_records", 2),
    )
    .await?;
    let jv = |b: &Bytes| serde_json::from_slice::<serde_json::Value>(b).unwrap_or_default();
    let okj = jv(&ok.body);
    let noj = jv(&no.body);
    let summarized = okj["result"]["content"][0]["text"]
        .as_str()
        .is_some_and(|t| t.starts_with("Summary"));
    let refused = noj["error"]["data"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let tseen = fed.tools.seen.lock().map(|v| v.clone()).unwrap_or_default();
    let aud = tseen
        .last()
        .and_then(|s| s.headers.get("authorization"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| crate::jose::parse_compact(t).ok())
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c.payload).ok())
        .and_then(|c| c["aud"].as_str().map(String::from))
        .unwrap_or_default();
    let reached_delete = tseen
        .iter()
        .any(|s| String::from_utf8_lossy(&s.body).contains("delete_records"));
    let got = format!(
        "{}, {}",
        if summarized && ok.status == 200 {
            "allowed"
        } else {
            "failed"
        },
        if reached_delete {
            "reached the server"
        } else {
            refused.as_str()
        }
    );
    st.record(
        "planning calls vendor.example's MCP tools",
        "allowed, route_denied",
        &got,
        format!(
            "summarize crosses, delete_records is refused: no Fedgate-Scope, the gateway maps tools/call to mcp:tools/<name>; the MCP server got a token for {aud} only, never the federation token; the refusal is a JSON-RPC error (code {})",
            noj["error"]["code"]
        ),
    );

    // 8b. A tampered answer: vendor.example's gateway replaced by a compromised stand-in that
    // holds its keys, signs one body and sends another. company.com refuses it before planning
    // sees a byte of it.
    if let Some(r) = fed.ve.take() {
        r.shutdown().await;
    }
    let identity = Identity {
        chain: crate::files::read_pem_certs(&ve.dir.join("gateway.pem"))
            .map_err(|e| e.to_string())?,
        key: crate::files::read_private_key_der(&ve.dir.join("keys/gateway-svid.key"))
            .map_err(|e| e.to_string())?,
    };
    let vkey = crate::files::read_signing_key(&ve.dir.join("keys/gateway.key"))
        .map_err(|e| e.to_string())?;
    let hl = std::net::TcpListener::bind(ve.federation).map_err(|e| e.to_string())?;
    let h = hostile::start(hl, identity, vkey).await?;
    h.set(hostile::Tamper::SwapBody);
    let th = [
        ("Delegation-Chain", chain.as_str()),
        ("Fedgate-Target", analytics),
        ("Fedgate-Scope", "analytics:*"),
    ];
    let r = call(&pcl, Method::POST, &url, &th, "{}").await?;
    h.stop();
    // Refused, and not a byte of the stand-in's answer reached planning.
    let got = if String::from_utf8_lossy(&r.body).contains("\"result\"") {
        "delivered".to_string()
    } else {
        r.outcome()
    };
    st.record(
        "a tampered answer from a compromised vendor.example gateway",
        "bad_response_signature",
        &got,
        "the answer's RFC 9421 signature covers another body than the one sent: 502, nothing delivered".into(),
    );
    // The stand-in's listener closes as its task winds down: retry the bind for a moment.
    let mut bound = Listeners::bind(ve.internal, ve.federation, ve.admin);
    for _ in 0..40 {
        if bound.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        bound = Listeners::bind(ve.internal, ve.federation, ve.admin);
    }
    let l = bound.map_err(|e| e.to_string())?;
    fed.ve = Some(start_one(ve, l).await?);

    // 9. Revoke the planning agent: locally at once, at the partner within seconds.
    let token2 = exchange(&pcl, co.internal, &chain, analytics, "analytics:run")
        .await
        .unwrap_or_default();
    let admin = client(
        &co.dir.join("admin.pem"),
        &co.dir.join("keys/admin.key"),
        co.gateway_id()?,
        &co.dir,
    )?;
    let body = serde_json::json!({"kind": "agent", "value": planning.as_str()}).to_string();
    call(
        &admin,
        Method::POST,
        &format!("https://{}/v1/revoke", co.admin),
        &[("Content-Type", "application/json")],
        body,
    )
    .await?;
    let h = [
        ("Delegation-Chain", chain.as_str()),
        ("Fedgate-Target", analytics),
        ("Fedgate-Scope", "analytics:*"),
    ];
    let r = call(&pcl, Method::POST, &url, &h, "{}").await?;
    st.record(
        "the planning agent is revoked at company.com",
        "revoked",
        &r.outcome(),
        "fedgate revoke --agent spiffe://company.com/agent/planning/p1".into(),
    );
    let auth2 = format!("Bearer {token2}");
    let bearer2 = [("Authorization", auth2.as_str())];
    let started = std::time::Instant::now();
    let mut got = String::new();
    while started.elapsed() < Duration::from_secs(3) {
        let r = call(&direct, Method::POST, &iurl, &bearer2, "{}").await?;
        got = r.outcome();
        if got == "revoked" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    st.record(
        "its token, issued before the revocation, at vendor.example",
        "revoked",
        &got,
        format!(
            "a signed revocation notice reached vendor.example after {} ms",
            started.elapsed().as_millis()
        ),
    );

    // 9b. Witnessing: each gateway cosigns the other's latest checkpoint; then company.com
    // presents vendor.example's witness a rewritten history, which is refused as a fork.
    let (got, detail) = witness_each_other(fed).await?;
    st.record(
        "each gateway cosigns the other's checkpoint",
        "cosigned",
        &got,
        detail,
    );
    let (got, detail) = present_fork(fed).await?;
    st.record(
        "company.com shows the vendor's witness a rewritten history",
        "checkpoint_fork",
        &got,
        detail,
    );

    // 10. Audit: both logs exported, verified and reconciled; a tampered copy fails.
    fed.stop().await;
    let auditor = keep.join("auditor");
    std::fs::create_dir_all(auditor.join("bundles")).map_err(|e| e.to_string())?;
    for d in [&fed.company, &fed.vendor] {
        std::fs::copy(
            d.dir.join(format!("bundles/{}.json", d.td)),
            auditor.join(format!("bundles/{}.json", d.td)),
        )
        .map_err(|e| e.to_string())?;
    }
    let mut exports = Vec::new();
    for d in [&fed.company, &fed.vendor] {
        let (recs, note) = crate::store::log::export(&d.dir.join("data/audit"), |_, _| {})
            .map_err(|e| e.to_string())?;
        let mut data = Vec::new();
        for r in &recs {
            data.extend_from_slice(r);
            data.push(b'\n');
        }
        let out = d.dir.join("audit.jsonl");
        std::fs::write(&out, &data).map_err(|e| e.to_string())?;
        // The checkpoint with the partner's cosignature when it has one, and the witness file.
        let note = crate::server::lifecycle::cosigned_note(&d.dir.join("data"), &note);
        std::fs::write(d.dir.join("audit.jsonl.checkpoint"), &note).map_err(|e| e.to_string())?;
        let witness = crate::server::lifecycle::export_witness(&d.dir.join("data"));
        std::fs::write(
            d.dir.join("audit.jsonl.witness"),
            serde_json::to_string_pretty(&witness).unwrap_or_default(),
        )
        .map_err(|e| e.to_string())?;
        exports.push((data, note, recs.len()));
    }
    let abund =
        crate::files::load_bundle_dir(&auditor.join("bundles")).map_err(|p| p.join("; "))?;
    let e_co = crate::audit::export::verify(&exports[0].0, &exports[0].1, &abund);
    let e_ve = crate::audit::export::verify(&exports[1].0, &exports[1].1, &abund);
    let (got, detail) = match (&e_co, &e_ve) {
        (Ok(a), Ok(b)) => {
            let rep = crate::audit::reconcile::reconcile(
                a,
                b,
                abund.get_str(COMPANY).ok_or("bundle")?,
                abund.get_str(VENDOR).ok_or("bundle")?,
                30,
                &Default::default(),
            );
            let matched = rep.summary.get("matched").copied().unwrap_or(0);
            // The one discrepancy the story made on purpose: the refused, tampered answer.
            let bad: Vec<&str> = rep
                .findings
                .iter()
                .map(|f| f.kind)
                .filter(|k| !["matched", "pending", "refused", "failed", "unanswered"].contains(k))
                .collect();
            let got = if bad == ["response_refused"] {
                "the tampered answer only"
            } else if bad.is_empty() {
                "clean"
            } else {
                "discrepancies"
            };
            (got.to_string(), format!("{} + {} records verify against their signed checkpoints; {matched} crossings matched on both sides; found: {}", exports[0].2, exports[1].2, if bad.is_empty() { "nothing".to_string() } else { bad.join(", ") }))
        }
        (a, b) => (
            "tampered".into(),
            format!("{:?} {:?}", a.as_ref().err(), b.as_ref().err()),
        ),
    };
    st.record(
        "both audit logs exported and reconciled",
        "the tampered answer only",
        &got,
        detail,
    );
    // A tampered copy of vendor's log: one allow turned into a deny.
    let text = String::from_utf8_lossy(&exports[1].0).to_string();
    let tampered = text.replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1);
    let got = match (
        crate::audit::export::verify(tampered.as_bytes(), &exports[1].1, &abund),
        e_co,
    ) {
        (Err(e), Ok(_)) => (
            if e.message.contains("changed") || e.message.contains("tampered") {
                "tampered"
            } else {
                "rejected"
            },
            e.to_string(),
        ),
        (Ok(_), _) => ("accepted", String::new()),
        (Err(e), Err(_)) => ("rejected", e.to_string()),
    };
    st.record(
        "a tampered copy of vendor.example's log",
        "tampered",
        got.0,
        got.1,
    );
    Ok(st.steps)
}

/// Waits (bounded) until each gateway holds the partner's valid cosignature of its latest
/// checkpoint.
async fn witness_each_other(fed: &Federation) -> Result<(String, String), String> {
    let (Some(co), Some(ve)) = (fed.co.as_ref(), fed.ve.as_ref()) else {
        return Err("gateways not running".into());
    };
    let deadline = std::time::Instant::now() + crate::server::lifecycle::WITNESS_INTERVAL * 4;
    loop {
        let mut done = Vec::new();
        for (g, partner) in [(co, VENDOR), (ve, COMPANY)] {
            let gw = &g.gateway;
            let note = gw.log.checkpoint_now().map_err(|e| e.to_string())?;
            let cosigned = crate::server::lifecycle::cosigned_note(&gw.cfg.data_dir, &note);
            let bundle = gw
                .trust
                .get()
                .bundles
                .get_str(partner)
                .cloned()
                .ok_or("no partner bundle")?;
            let name = crate::witness::witness_name(partner);
            let ok = bundle
                .keys_with_role(crate::spiffe::KeyRole::Audit)
                .any(|k| {
                    matches!(
                        crate::witness::verify_cosignature(
                            &cosigned,
                            &name,
                            k.key.raw(),
                            crate::time::now() as u64
                        ),
                        Ok(Some(_))
                    )
                });
            let size = crate::audit::checkpoint::peek(&note)
                .map(|c| c.size)
                .unwrap_or(0);
            done.push((gw.cfg.trust_domain.to_string(), partner, size, ok));
        }
        if done.iter().all(|d| d.3) {
            let detail = done
                .iter()
                .map(|(td, p, n, _)| {
                    format!("{td}'s checkpoint of {n} records carries {p}'s cosignature")
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(("cosigned".into(), detail));
        }
        if std::time::Instant::now() > deadline {
            return Ok(("not cosigned".into(), format!("{done:?}")));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// company.com's operator rewrites one record of its history, extends it by one, signs the
/// new head with its audit key and submits it to vendor.example's witness with a consistency
/// proof from the size the witness cosigned: the witness refuses it as a fork, audits it and
/// keeps the evidence.
async fn present_fork(fed: &Federation) -> Result<(String, String), String> {
    use crate::audit::merkle::{leaf_hash, MerkleTree};
    let (Some(co), Some(ve)) = (fed.co.as_ref(), fed.ve.as_ref()) else {
        return Err("gateways not running".into());
    };
    let gw = &co.gateway;
    let note = crate::files::read_text_limited(
        &crate::server::lifecycle::cosigned_path(&gw.cfg.data_dir, VENDOR),
        crate::audit::checkpoint::MAX_NOTE_BYTES,
    )
    .map_err(|e| e.to_string())?;
    let cosigned = crate::audit::checkpoint::peek(&note).map_err(|e| e.to_string())?;
    let mut forked = MerkleTree::new();
    for i in 0..cosigned.size {
        let leaf = if i == 1 {
            leaf_hash(b"a rewritten record")
        } else {
            gw.log.leaf(i).ok_or("leaf")?
        };
        forked.push(leaf);
    }
    forked.push(leaf_hash(b"one more"));
    let size = cosigned.size + 1;
    let head = crate::audit::Checkpoint {
        origin: cosigned.origin.clone(),
        size,
        root: forked.root(size).ok_or("root")?,
    };
    let key = crate::files::read_signing_key(&fed.company.dir.join("keys/audit.key"))
        .map_err(|e| e.to_string())?;
    let body = crate::witness::AddCheckpoint {
        old: cosigned.size,
        proof: forked
            .consistency_proof(cosigned.size, size)
            .ok_or("proof")?,
        checkpoint: head.sign(&key).map_err(|e| e.to_string())?,
    }
    .encode();
    let client = gw.partner_client(&fed.vendor.gateway_id()?)?;
    let uri: http::Uri = format!(
        "https://{}/v1/witness/add-checkpoint",
        fed.vendor.federation
    )
    .parse()
    .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let req = http::Request::post(uri)
        .body(axum::body::Body::from(body))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let forks = ve
        .gateway
        .metrics
        .get("fedgate_witness_forks_total", &[("partner", COMPANY)]);
    let evidence = std::fs::read_dir(crate::server::witness::evidence_dir(&ve.gateway))
        .map(|d| d.count())
        .unwrap_or(0);
    let got = if (status == 409 || status == 422) && forks >= 1 && evidence >= 1 {
        "checkpoint_fork"
    } else {
        "accepted"
    };
    Ok((
        got.into(),
        format!(
            "the witness answered {status}; {VENDOR} audited a witness record (checkpoint_fork), counts fedgate_witness_forks_total = {forks} and keeps {evidence} evidence file(s) in data/witness/evidence"
        ),
    ))
}

/// The final table.
pub fn table(steps: &[Step]) -> String {
    let w = steps
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(10)
        .min(64);
    let mut s = format!(
        "\n  {:>2}  {:<w$}  {:<18}  {:<18}\n",
        "#", "step", "expected", "got"
    );
    s.push_str(&format!(
        "  {:>2}  {:<w$}  {:<18}  {:<18}\n",
        "--",
        "-".repeat(w),
        "-".repeat(18),
        "-".repeat(18)
    ));
    for st in steps {
        let name: String = st.name.chars().take(w).collect();
        s.push_str(&format!(
            "  {:>2}  {:<w$}  {:<18}  {:<18}{}\n",
            st.n,
            name,
            st.expected,
            st.got,
            if st.ok { "" } else { "  <-- FAIL" }
        ));
    }
    let passed = steps.iter().filter(|s| s.ok).count();
    s.push_str(&format!(
        "\n  {passed} of {} steps behaved as expected\n",
        steps.len()
    ));
    s
}
