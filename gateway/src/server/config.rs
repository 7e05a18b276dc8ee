//! The gateway config (`gateway.toml`, SPEC section 7): typed, unknown keys refused, then
//! `validate()` lists every problem with its key so a bad config exits 2 before any port is
//! bound. Relative paths are relative to the config file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::spiffe::{IdPattern, SpiffeId, TrustDomain};

/// Largest config file read.
pub const MAX_CONFIG_BYTES: usize = 1024 * 1024;

fn default_max_links() -> usize {
    crate::chain::DEFAULT_MAX_LINKS
}
fn default_skew() -> String {
    "30s".into()
}
fn default_body_limit() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
/// A partner gateway's answer must begin (its head: time to first byte) within this: it
/// verifies a token, writes a durable record and calls its upstream, all bounded by its own
/// upstream timeout (10 s by default), so a partner slower than that is down, not busy.
pub const DEFAULT_PARTNER_TIMEOUT: &str = "10s";
fn default_partner_timeout() -> String {
    DEFAULT_PARTNER_TIMEOUT.into()
}
fn default_upstream_timeout() -> String {
    "10s".into()
}
fn default_prepublish() -> String {
    "30s".into()
}
fn default_watch() -> bool {
    true
}

/// Default cap on request and response bodies crossing the gateway: agent calls carry JSON,
/// not bulk data; larger transfers should not ride on a delegation.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

// Connection and request limits: the defaults an edge proxy ships (Envoy's edge profile), each a
// `[limits]` key. Every listener applies them on its own.

/// A TLS handshake that takes longer is dropped: an honest peer needs milliseconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT: &str = "5s";
/// Request headers must arrive within this (HTTP/1 slowloris; also bounds an idle keep-alive
/// connection waiting for its next request).
pub const DEFAULT_HEADER_TIMEOUT: &str = "10s";
/// A request body must arrive within this once its headers have (slow-body attacks).
pub const DEFAULT_BODY_TIMEOUT: &str = "30s";
/// A connection with no request in flight is closed after this (HTTP/2 included).
pub const DEFAULT_IDLE_TIMEOUT: &str = "60s";
/// The same for connections without a client certificate (bundle fetches, refused callers).
pub const DEFAULT_UNAUTH_IDLE_TIMEOUT: &str = "10s";
/// Open connections per listener: bounded file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections per authenticated peer (its SPIFFE ID): one peer cannot take the listener.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 256;
/// Connections not (yet) authenticated by a client certificate, per listener: when full, the
/// oldest is closed to make room, so a flood cannot lock out a partner's new handshake.
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 512;
/// Unauthenticated connections per source address (same eviction).
pub const DEFAULT_MAX_UNAUTHENTICATED_PER_IP: usize = 64;
/// Largest request head (HTTP/1 header buffer, HTTP/2 header list): agent requests carry a
/// chain of at most 64 KiB in one header, so this leaves room for it and little else.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 96 * 1024;
/// Most request headers (HTTP/1).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Concurrent HTTP/2 streams per connection.
pub const DEFAULT_H2_MAX_STREAMS: u32 = 100;
/// HTTP/2 keep-alive ping interval (a dead peer is found within interval + 10 s).
pub const DEFAULT_H2_KEEPALIVE: &str = "20s";
/// Denials answered per second per source before it is rate-limited (`rate_limited`): a
/// partner or agent that keeps being refused cannot fill the audit log of record.
pub const DEFAULT_DENIALS_PER_SECOND: u32 = 20;
/// Burst of denials per source before the rate applies.
pub const DEFAULT_DENIAL_BURST: u32 = 100;
/// Request bodies the egress may buffer at once, summed over all requests (each is read whole
/// to look for smuggled chains): bounded memory under many large uploads.
pub const DEFAULT_MAX_BUFFERED_BYTES: usize = 64 * 1024 * 1024;
/// hyper's smallest header buffer.
const MIN_HEADER_BYTES: usize = 8192;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub trust_domain: String,
    pub gateway_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_id: Option<String>,
    pub data_dir: PathBuf,
    pub bundles_dir: PathBuf,
    pub agreements_dir: PathBuf,
    pub listen: Listen,
    pub tls: Tls,
    pub keys: Keys,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub strip: Strip,
    #[serde(default)]
    pub policy: PolicyCfg,
    #[serde(default)]
    pub chain: ChainCfg,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    #[serde(default)]
    pub state: StateCfg,
}

/// Where the gateway keeps its state besides the audit log: embedded sled (one gateway) or a
/// PostgreSQL database shared by several replicas of one domain.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateCfg {
    #[serde(default)]
    pub backend: Backend,
    /// `postgres://user:password@host:port/db` (prefer `url_file`: it keeps the password out
    /// of the config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the URL (relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout: Option<String>,
    /// This replica's name: its audit log is `<td>/fedgate-audit/<replica>`. Required with
    /// PostgreSQL (every replica needs its own log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// PEM CA certificates of the database server: TLS to PostgreSQL is used exactly when set
    /// (and required unless the server is on loopback or a Unix socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for StateCfg {
    // The URL may carry a password: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCfg")
            .field("backend", &self.backend)
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("url_file", &self.url_file)
            .field("pool_size", &self.pool_size)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sled,
    Postgres,
}

/// Default connections to PostgreSQL per replica.
pub const DEFAULT_PG_POOL: usize = 16;
/// Default PostgreSQL statement timeout: a crossing waits on at most one statement.
pub const DEFAULT_PG_STATEMENT_TIMEOUT: &str = "2s";
/// Longest URL file read.
const MAX_URL_FILE_BYTES: usize = 4096;
use crate::audit::checkpoint::MAX_REPLICA_BYTES;

/// The validated state choice.
#[derive(Clone)]
pub enum StateChoice {
    Sled,
    Postgres(crate::store::postgres::PgOptions),
}

impl std::fmt::Debug for StateChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateChoice::Sled => f.write_str("Sled"),
            StateChoice::Postgres(o) => write!(f, "Postgres({o:?})"),
        }
    }
}

pub use crate::audit::checkpoint::valid_replica;

/// The pseudonym key file holds hex; anything larger is not a key.
const MAX_PSEUDONYM_KEY_FILE: usize = 4096;
/// Fewer bytes than this would make pseudonyms (and the state integrity key derived from it)
/// guessable.
const MIN_PSEUDONYM_KEY_BYTES: usize = 32;

/// Reads the domain's pseudonym key (hex, at least 32 bytes).
pub fn read_pseudonym_key(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let text = zeroize::Zeroizing::new(
        crate::files::read_text_limited(path, MAX_PSEUDONYM_KEY_FILE).map_err(|e| e.to_string())?,
    );
    crate::crypto::hex_decode(text.trim())
        .filter(|k| k.len() >= MIN_PSEUDONYM_KEY_BYTES)
        .map(zeroize::Zeroizing::new)
        .ok_or_else(|| {
            format!(
                "{}: expected at least {MIN_PSEUDONYM_KEY_BYTES} bytes of hex",
                path.display()
            )
        })
}

fn state_choice(
    s: &StateCfg,
    td: Option<&TrustDomain>,
    abs: &dyn Fn(&Path) -> PathBuf,
    p: &mut Vec<String>,
) -> StateChoice {
    if let Some(r) = &s.replica {
        if !valid_replica(r) {
            p.push(format!(
                "state.replica: 1-{MAX_REPLICA_BYTES} characters of [a-z0-9-], not starting with -"
            ));
        }
    }
    if s.backend == Backend::Sled {
        if s.url.is_some() || s.url_file.is_some() || s.ca.is_some() {
            p.push("state: url, url_file and ca are for backend = \"postgres\"".into());
        }
        return StateChoice::Sled;
    }
    let url = match (&s.url, &s.url_file) {
        (Some(u), None) => Some(u.clone()),
        (None, Some(f)) => match crate::files::read_text_limited(&abs(f), MAX_URL_FILE_BYTES) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                p.push(format!("state.url_file: {e}"));
                None
            }
        },
        _ => {
            p.push("state: backend = \"postgres\" needs exactly one of url and url_file".into());
            None
        }
    };
    let ca = match &s.ca {
        None => None,
        Some(c) => match crate::files::read_pem_certs(&abs(c)) {
            Ok(certs) if !certs.is_empty() => Some(certs),
            Ok(_) => {
                p.push("state.ca: no certificate in the file".into());
                None
            }
            Err(e) => {
                p.push(format!("state.ca: {e}"));
                None
            }
        },
    };
    if let Some(u) = &url {
        // The message never quotes the URL (it may hold a password).
        if let Err(m) = crate::store::postgres::parse_url(u, s.ca.is_some()) {
            p.push(format!("state.url: {m}"));
        }
    }
    let timeout = crate::time::parse_duration_millis(
        s.statement_timeout
            .as_deref()
            .unwrap_or(DEFAULT_PG_STATEMENT_TIMEOUT),
    )
    .map_err(|e| p.push(format!("state.statement_timeout: {e}")))
    .unwrap_or(2000);
    let pool = s.pool_size.unwrap_or(DEFAULT_PG_POOL);
    if pool == 0 || pool > 1024 {
        p.push("state.pool_size: must be 1..=1024".into());
    }
    let Some(replica) = s.replica.clone() else {
        p.push("state.replica: required with backend = \"postgres\" (each replica keeps its own audit log)".into());
        return StateChoice::Sled;
    };
    match (url, td) {
        (Some(url), Some(td)) => StateChoice::Postgres(crate::store::postgres::PgOptions {
            url,
            pool_size: pool,
            statement_timeout: std::time::Duration::from_millis(timeout.max(1)),
            ca,
            domain: td.to_string(),
            replica,
        }),
        _ => StateChoice::Sled,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub internal: String,
    pub federation: String,
    pub admin: String,
}

/// The gateway's own X509-SVID (served on every listener, presented to partners).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// The gateway's JWT signing key (federation tokens, crossing links, receipts, notices).
    pub signing: PathBuf,
    /// The Ed25519 audit checkpoint key.
    pub audit: PathBuf,
    /// The HMAC key for pseudonymous principals.
    pub pseudonym: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default)]
    pub ids: Vec<String>,
    /// Accept admin requests from loopback without a client certificate.
    #[serde(default)]
    pub allow_loopback: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub target: String,
    pub url: String,
    /// `http` (default), `mcp` or `a2a`: what the upstream speaks, so the gateway can map its
    /// calls to scopes and answer in its error shape (see `server/protocol/`).
    #[serde(default)]
    pub protocol: Option<String>,
    /// MCP only: the resource URL the MCP server identifies as (the `aud` of the token the
    /// gateway mints for it, RFC 8707). Default: the upstream URL followed by `/mcp`.
    #[serde(default)]
    pub resource: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Strip {
    /// Removed on egress, besides the fixed list.
    #[serde(default)]
    pub extra_headers: Vec<String>,
    /// Removed on ingress before an upstream sees the request, besides the fixed list.
    #[serde(default)]
    pub ingress_headers: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyCfg {
    #[serde(default)]
    pub rego: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChainCfg {
    #[serde(default = "default_max_links")]
    pub max_links: usize,
    #[serde(default = "default_skew")]
    pub clock_skew: String,
}

impl Default for ChainCfg {
    fn default() -> Self {
        ChainCfg {
            max_links: default_max_links(),
            clock_skew: default_skew(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub partner_timeout: String,
    pub upstream_timeout: String,
    pub handshake_timeout: String,
    pub header_timeout: String,
    pub body_timeout: String,
    pub idle_timeout: String,
    pub unauthenticated_idle_timeout: String,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_ip: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2_max_streams: u32,
    pub h2_keepalive: String,
    pub denials_per_second: u32,
    pub denial_burst: u32,
    pub max_buffered_bytes: usize,
    pub max_response_bytes: usize,
    pub response_timeout: String,
}

/// Largest partner response the egress accepts unless a route says otherwise: the same bound
/// as requests (agent calls carry JSON, not bulk data).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = DEFAULT_MAX_BODY_BYTES;
/// A partner's whole response (head and body, or the end of a stream) must arrive within this;
/// the head alone within `partner_timeout` (time to first byte).
pub const DEFAULT_RESPONSE_TIMEOUT: &str = "60s";

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: default_body_limit(),
            partner_timeout: default_partner_timeout(),
            upstream_timeout: default_upstream_timeout(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT.into(),
            header_timeout: DEFAULT_HEADER_TIMEOUT.into(),
            body_timeout: DEFAULT_BODY_TIMEOUT.into(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT.into(),
            unauthenticated_idle_timeout: DEFAULT_UNAUTH_IDLE_TIMEOUT.into(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_unauthenticated: DEFAULT_MAX_UNAUTHENTICATED,
            max_unauthenticated_per_ip: DEFAULT_MAX_UNAUTHENTICATED_PER_IP,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            h2_max_streams: DEFAULT_H2_MAX_STREAMS,
            h2_keepalive: DEFAULT_H2_KEEPALIVE.into(),
            denials_per_second: DEFAULT_DENIALS_PER_SECOND,
            denial_burst: DEFAULT_DENIAL_BURST,
            max_buffered_bytes: DEFAULT_MAX_BUFFERED_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT.into(),
        }
    }
}

/// The connection limits every listener applies (from `[limits]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    pub handshake_timeout: std::time::Duration,
    pub header_timeout: std::time::Duration,
    pub body_timeout: std::time::Duration,
    pub idle_timeout: std::time::Duration,
    pub unauthenticated_idle_timeout: std::time::Duration,
    pub max_connections: usize,
    pub max_connections_per_peer: usize,
    pub max_unauthenticated: usize,
    pub max_unauthenticated_per_ip: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2_max_streams: u32,
    pub h2_keepalive: std::time::Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        let mut p = Vec::new();
        conn_limits(&Limits::default(), &mut p)
    }
}

fn conn_limits(l: &Limits, p: &mut Vec<String>) -> ConnLimits {
    let ms = |name: &str, s: &str, p: &mut Vec<String>| -> std::time::Duration {
        match crate::time::parse_duration_millis(s) {
            Ok(0) => {
                p.push(format!("limits.{name}: must be positive"));
                std::time::Duration::from_secs(1)
            }
            Ok(v) => std::time::Duration::from_millis(v),
            Err(e) => {
                p.push(format!("limits.{name}: {e}"));
                std::time::Duration::from_secs(1)
            }
        }
    };
    let count = |name: &str, v: usize, p: &mut Vec<String>| {
        if v == 0 {
            p.push(format!("limits.{name}: must be positive"));
        }
        v.max(1)
    };
    if l.max_header_bytes < MIN_HEADER_BYTES || l.max_header_bytes > 1 << 20 {
        p.push(format!(
            "limits.max_header_bytes: must be {MIN_HEADER_BYTES}..=1MiB"
        ));
    }
    ConnLimits {
        handshake_timeout: ms("handshake_timeout", &l.handshake_timeout, p),
        header_timeout: ms("header_timeout", &l.header_timeout, p),
        body_timeout: ms("body_timeout", &l.body_timeout, p),
        idle_timeout: ms("idle_timeout", &l.idle_timeout, p),
        unauthenticated_idle_timeout: ms(
            "unauthenticated_idle_timeout",
            &l.unauthenticated_idle_timeout,
            p,
        ),
        max_connections: count("max_connections", l.max_connections, p),
        max_connections_per_peer: count("max_connections_per_peer", l.max_connections_per_peer, p),
        max_unauthenticated: count("max_unauthenticated", l.max_unauthenticated, p),
        max_unauthenticated_per_ip: count(
            "max_unauthenticated_per_ip",
            l.max_unauthenticated_per_ip,
            p,
        ),
        max_header_bytes: l.max_header_bytes.clamp(MIN_HEADER_BYTES, 1 << 20),
        max_headers: count("max_headers", l.max_headers, p),
        h2_max_streams: count("h2_max_streams", l.h2_max_streams as usize, p) as u32,
        h2_keepalive: ms("h2_keepalive", &l.h2_keepalive, p),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Lifecycle {
    /// How long a new gateway key is published before it signs anything (`fedgate rotate`).
    #[serde(default = "default_prepublish")]
    pub key_prepublish: String,
    /// Reload agreements, bundles, Rego and the strip list when their files change.
    #[serde(default = "default_watch")]
    pub watch: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            key_prepublish: default_prepublish(),
            watch: default_watch(),
        }
    }
}

/// A validated config with typed values and absolute paths.
#[derive(Debug, Clone)]
pub struct Validated {
    pub path: PathBuf,
    pub raw: GatewayConfig,
    pub trust_domain: TrustDomain,
    pub gateway_id: SpiffeId,
    pub idp_id: SpiffeId,
    pub admin_ids: Vec<SpiffeId>,
    pub internal: SocketAddr,
    pub federation: SocketAddr,
    pub admin: SocketAddr,
    pub data_dir: PathBuf,
    pub bundles_dir: PathBuf,
    pub agreements_dir: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub signing_key: PathBuf,
    pub audit_key: PathBuf,
    pub pseudonym_key: PathBuf,
    pub upstreams: Vec<(IdPattern, UpstreamUrl)>,
    pub strip_extra: Vec<String>,
    pub strip_ingress: Vec<String>,
    pub rego: Vec<PathBuf>,
    pub max_links: usize,
    pub clock_skew: i64,
    pub max_body_bytes: usize,
    pub partner_timeout: i64,
    pub upstream_timeout: i64,
    pub key_prepublish: i64,
    pub watch: bool,
    pub conn: ConnLimits,
    pub state: StateChoice,
    /// This replica's name (`[state] replica`), if any.
    pub replica: Option<String>,
    pub denials_per_second: u32,
    pub denial_burst: u32,
    pub max_buffered_bytes: usize,
    pub max_response_bytes: usize,
    pub response_timeout: std::time::Duration,
}

/// Where inbound crossings for a target go.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamUrl {
    pub url: String,
    pub tls: bool,
    pub authority: String,
    pub protocol: crate::server::protocol::Protocol,
    /// MCP: the audience of the resource token minted for the upstream.
    pub resource: Option<String>,
}

/// Parses an upstream URL: `http://` only to a loopback host (plain HTTP never leaves the
/// machine), or `https://` (mTLS with the gateway's SVID, server checked against the local
/// bundle).
pub fn parse_upstream_url(url: &str) -> Result<UpstreamUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("must start with http:// or https://".into());
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host[:port] without userinfo".into());
    }
    let host = if let Some(h) = authority.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    if !tls {
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .map(|ip| ip.is_loopback())
                .unwrap_or(false);
        if !loopback {
            return Err("plain http:// upstreams must be on loopback; use https:// (mTLS)".into());
        }
    }
    let base = url.trim_end_matches('/').to_string();
    Ok(UpstreamUrl {
        url: base,
        tls,
        authority: authority.to_string(),
        protocol: crate::server::protocol::Protocol::Http,
        resource: None,
    })
}

impl GatewayConfig {
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every value; returns all problems, each naming its key.
    pub fn validate(&self, path: &Path) -> Result<Validated, Vec<String>> {
        let mut p: Vec<String> = Vec::new();
        let abs = |x: &Path| crate::files::relative_to(path, x);
        let td = TrustDomain::parse(&self.trust_domain)
            .map_err(|e| p.push(format!("trust_domain: {e}")))
            .ok();
        let gateway_id = SpiffeId::parse(&self.gateway_id)
            .map_err(|e| p.push(format!("gateway_id: {e}")))
            .ok();
        let idp_src = match (&self.idp_id, &td) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(td)) => Some(format!("{}/idp", td.id_string())),
            _ => None,
        };
        let idp_id = idp_src.and_then(|s| {
            SpiffeId::parse(&s)
                .map_err(|e| p.push(format!("idp_id: {e}")))
                .ok()
        });
        if let (Some(td), Some(g)) = (&td, &gateway_id) {
            if !g.in_domain(td) {
                p.push("gateway_id: must be in the gateway's own trust_domain".into());
            }
        }
        if let (Some(td), Some(i)) = (&td, &idp_id) {
            if !i.in_domain(td) {
                p.push("idp_id: must be in the gateway's own trust_domain".into());
            }
        }
        let mut admin_ids = Vec::new();
        for (i, a) in self.admin.ids.iter().enumerate() {
            match SpiffeId::parse(a) {
                Ok(id) => {
                    if let Some(td) = &td {
                        if !id.in_domain(td) {
                            p.push(format!("admin.ids[{i}]: must be in the local trust domain"));
                        }
                    }
                    admin_ids.push(id)
                }
                Err(e) => p.push(format!("admin.ids[{i}]: {e}")),
            }
        }
        let addr = |name: &str, s: &str, p: &mut Vec<String>| -> Option<SocketAddr> {
            s.parse::<SocketAddr>()
                .map_err(|e| p.push(format!("listen.{name}: {e}")))
                .ok()
        };
        let internal = addr("internal", &self.listen.internal, &mut p);
        let federation = addr("federation", &self.listen.federation, &mut p);
        let admin = addr("admin", &self.listen.admin, &mut p);
        if let (Some(a), Some(b), Some(c)) = (internal, federation, admin) {
            let nonzero: Vec<_> = [a, b, c].into_iter().filter(|x| x.port() != 0).collect();
            let mut uniq = nonzero.clone();
            uniq.sort();
            uniq.dedup();
            if uniq.len() != nonzero.len() {
                p.push("listen: internal, federation and admin must use different ports".into());
            }
        }
        let mut upstreams = Vec::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let pat = IdPattern::parse(&u.target)
                .map_err(|e| p.push(format!("upstreams[{i}].target: {e}")))
                .ok();
            if let (Some(pat), Some(td)) = (&pat, &td) {
                if pat.trust_domain() != td {
                    p.push(format!(
                        "upstreams[{i}].target: must name agents of the local trust domain"
                    ));
                }
            }
            let mut url = parse_upstream_url(&u.url)
                .map_err(|e| p.push(format!("upstreams[{i}].url: {e}")))
                .ok();
            use crate::server::protocol::Protocol;
            let protocol = match u.protocol.as_deref().map(Protocol::parse) {
                None => Protocol::Http,
                Some(Some(pr)) => pr,
                Some(None) => {
                    p.push(format!(
                        "upstreams[{i}].protocol: must be \"http\", \"mcp\" or \"a2a\""
                    ));
                    Protocol::Http
                }
            };
            if u.resource.is_some() && protocol != Protocol::Mcp {
                p.push(format!(
                    "upstreams[{i}].resource: only for protocol = \"mcp\""
                ));
            }
            if let Some(r) = &u.resource {
                if parse_upstream_url(r).is_err() && !r.starts_with("https://") {
                    p.push(format!("upstreams[{i}].resource: must be an http(s) URL"));
                }
            }
            if let Some(url) = url.as_mut() {
                url.protocol = protocol;
                if protocol == Protocol::Mcp {
                    url.resource = Some(
                        u.resource
                            .clone()
                            .unwrap_or_else(|| format!("{}/mcp", url.url)),
                    );
                }
            }
            if let (Some(pat), Some(url)) = (pat, url) {
                upstreams.push((pat, url));
            }
        }
        let header_list = |key: &str, list: &[String], p: &mut Vec<String>| {
            let mut out = Vec::new();
            for (i, h) in list.iter().enumerate() {
                match http::HeaderName::from_bytes(h.as_bytes()) {
                    Ok(n) => out.push(n.as_str().to_string()),
                    Err(_) => p.push(format!("strip.{key}[{i}]: not a valid header name")),
                }
            }
            out
        };
        let strip_extra = header_list("extra_headers", &self.strip.extra_headers, &mut p);
        let strip_ingress = header_list("ingress_headers", &self.strip.ingress_headers, &mut p);
        let dur = |name: &str, s: &str, p: &mut Vec<String>| -> i64 {
            crate::time::parse_duration(s)
                .map_err(|e| p.push(format!("{name}: {e}")))
                .unwrap_or(0)
        };
        let clock_skew = dur("chain.clock_skew", &self.chain.clock_skew, &mut p);
        if clock_skew > crate::chain::MAX_CLOCK_SKEW {
            p.push(format!(
                "chain.clock_skew: at most {}s",
                crate::chain::MAX_CLOCK_SKEW
            ));
        }
        if self.chain.max_links == 0 || self.chain.max_links > crate::chain::MAX_LINKS_HARD {
            p.push(format!(
                "chain.max_links: must be 1..={}",
                crate::chain::MAX_LINKS_HARD
            ));
        }
        let partner_timeout = dur(
            "limits.partner_timeout",
            &self.limits.partner_timeout,
            &mut p,
        );
        let upstream_timeout = dur(
            "limits.upstream_timeout",
            &self.limits.upstream_timeout,
            &mut p,
        );
        if partner_timeout <= 0 {
            p.push("limits.partner_timeout: must be positive".into());
        }
        if upstream_timeout <= 0 {
            p.push("limits.upstream_timeout: must be positive".into());
        }
        if self.limits.max_body_bytes == 0 || self.limits.max_body_bytes > 1 << 30 {
            p.push("limits.max_body_bytes: must be 1..=1GiB".into());
        }
        let key_prepublish = dur(
            "lifecycle.key_prepublish",
            &self.lifecycle.key_prepublish,
            &mut p,
        );
        let conn = conn_limits(&self.limits, &mut p);
        let state = state_choice(&self.state, td.as_ref(), &abs, &mut p);
        if self.limits.denials_per_second == 0 || self.limits.denial_burst == 0 {
            p.push("limits.denials_per_second, limits.denial_burst: must be positive".into());
        }
        if self.limits.max_response_bytes == 0
            || self.limits.max_response_bytes > crate::agreement::MAX_RESPONSE_BYTES
        {
            p.push(format!(
                "limits.max_response_bytes: must be 1..={}",
                crate::agreement::MAX_RESPONSE_BYTES
            ));
        }
        let response_timeout = crate::time::parse_duration_millis(&self.limits.response_timeout)
            .map_err(|e| p.push(format!("limits.response_timeout: {e}")))
            .unwrap_or(60_000);
        if self.limits.max_buffered_bytes < self.limits.max_body_bytes
            || self.limits.max_buffered_bytes < self.limits.max_response_bytes
        {
            p.push("limits.max_buffered_bytes: must be at least limits.max_body_bytes and limits.max_response_bytes (one body must fit)".into());
        }
        if partner_timeout > 0 && (response_timeout as i64) < partner_timeout.saturating_mul(1000) {
            p.push("limits.response_timeout: must be at least limits.partner_timeout (the head comes before the end)".into());
        }
        // Files that must exist before binding.
        let must_exist = |name: &str, x: &Path, p: &mut Vec<String>| {
            if !x.exists() {
                p.push(format!("{name}: {} does not exist", x.display()));
            }
        };
        let bundles_dir = abs(&self.bundles_dir);
        let agreements_dir = abs(&self.agreements_dir);
        let tls_cert = abs(&self.tls.cert);
        let tls_key = abs(&self.tls.key);
        let signing_key = abs(&self.keys.signing);
        let audit_key = abs(&self.keys.audit);
        let pseudonym_key = abs(&self.keys.pseudonym);
        must_exist("bundles_dir", &bundles_dir, &mut p);
        must_exist("agreements_dir", &agreements_dir, &mut p);
        must_exist("tls.cert", &tls_cert, &mut p);
        must_exist("tls.key", &tls_key, &mut p);
        must_exist("keys.signing", &signing_key, &mut p);
        must_exist("keys.audit", &audit_key, &mut p);
        must_exist("keys.pseudonym", &pseudonym_key, &mut p);
        let rego: Vec<PathBuf> = self.policy.rego.iter().map(|r| abs(r)).collect();
        for (i, r) in rego.iter().enumerate() {
            must_exist(&format!("policy.rego[{i}]"), r, &mut p);
        }
        if !p.is_empty() {
            return Err(p);
        }
        match (td, gateway_id, idp_id, internal, federation, admin) {
            (
                Some(trust_domain),
                Some(gateway_id),
                Some(idp_id),
                Some(internal),
                Some(federation),
                Some(admin),
            ) => Ok(Validated {
                path: path.to_path_buf(),
                raw: self.clone(),
                trust_domain,
                gateway_id,
                idp_id,
                admin_ids,
                internal,
                federation,
                admin,
                data_dir: abs(&self.data_dir),
                bundles_dir,
                agreements_dir,
                tls_cert,
                tls_key,
                signing_key,
                audit_key,
                pseudonym_key,
                upstreams,
                strip_extra,
                strip_ingress,
                rego,
                max_links: self.chain.max_links,
                clock_skew,
                max_body_bytes: self.limits.max_body_bytes,
                partner_timeout,
                upstream_timeout,
                key_prepublish,
                watch: self.lifecycle.watch,
                conn,
                state,
                replica: self.state.replica.clone(),
                denials_per_second: self.limits.denials_per_second,
                denial_burst: self.limits.denial_burst,
                max_buffered_bytes: self.limits.max_buffered_bytes,
                max_response_bytes: self.limits.max_response_bytes,
                response_timeout: std::time::Duration::from_millis(response_timeout.max(1)),
            }),
            _ => Err(vec!["config is incomplete".into()]),
        }
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Validated, Vec<String>> {
    let text =
        crate::files::read_text_limited(path, MAX_CONFIG_BYTES).map_err(|e| vec![e.to_string()])?;
    let cfg = GatewayConfig::parse(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    cfg.validate(path).map_err(|v| {
        v.into_iter()
            .map(|m| format!("{}: {m}", path.display()))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> String {
        r#"
trust_domain = "company.com"
gateway_id = "spiffe://company.com/gateway"
data_dir = "data"
bundles_dir = "bundles"
agreements_dir = "agreements"
[listen]
internal = "127.0.0.1:8443"
federation = "127.0.0.1:9443"
admin = "127.0.0.1:9090"
[tls]
cert = "gateway.pem"
key = "keys/gateway-svid.key"
[keys]
signing = "keys/gateway.key"
audit = "keys/audit.key"
pseudonym = "keys/pseudonym.key"
[[upstreams]]
target = "spiffe://company.com/agent/report/*"
url = "http://127.0.0.1:7001"
[strip]
extra_headers = ["X-Api-Key"]
"#
        .to_string()
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(GatewayConfig::parse(&format!("{}\nbogus = 1\n", sample())).is_err());
        assert!(GatewayConfig::parse(&sample().replace("[strip]", "[strip]\nextra = 1")).is_err());
    }

    #[test]
    fn validate_lists_every_problem() {
        let text = sample()
            .replace("company.com/gateway", "other.com/gateway")
            .replace("127.0.0.1:9090", "nonsense")
            .replace("http://127.0.0.1:7001", "http://10.0.0.5:7001")
            .replace("X-Api-Key", "bad header");
        let cfg = GatewayConfig::parse(&text).unwrap();
        let problems = cfg
            .validate(Path::new("/nonexistent/gateway.toml"))
            .unwrap_err();
        let joined = problems.join("\n");
        for key in [
            "gateway_id",
            "listen.admin",
            "upstreams[0].url",
            "strip.extra_headers[0]",
            "bundles_dir",
            "tls.cert",
        ] {
            assert!(joined.contains(key), "{key} missing from:\n{joined}");
        }
    }

    #[test]
    fn upstream_urls() {
        assert!(parse_upstream_url("http://127.0.0.1:7001").is_ok());
        assert!(parse_upstream_url("http://localhost:7001/base/")
            .unwrap()
            .url
            .ends_with("/base"));
        assert!(parse_upstream_url("http://[::1]:80").is_ok());
        assert!(parse_upstream_url("http://example.com").is_err());
        assert!(parse_upstream_url("https://example.com").unwrap().tls);
        assert!(parse_upstream_url("ftp://x").is_err());
        assert!(parse_upstream_url("http://u@127.0.0.1").is_err());
    }

    #[test]
    fn upstream_protocols() {
        use crate::server::protocol::Protocol;
        let with = |extra: &str| {
            sample().replace(
                "url = \"http://127.0.0.1:7001\"\n",
                &format!("url = \"http://127.0.0.1:7001\"\n{extra}\n"),
            )
        };
        let check = |text: String| {
            GatewayConfig::parse(&text)
                .unwrap()
                .validate(Path::new("/nonexistent/gateway.toml"))
                .unwrap_err()
                .join("\n")
        };
        let p = check(with("protocol = \"grpc\""));
        assert!(p.contains("upstreams[0].protocol"), "{p}");
        let p = check(with("resource = \"https://r.example/mcp\""));
        assert!(
            p.contains("upstreams[0].resource: only for protocol"),
            "{p}"
        );
        let p = check(with("protocol = \"mcp\"\nresource = \"ftp://x\""));
        assert!(p.contains("upstreams[0].resource: must be"), "{p}");
        // Valid protocol settings raise no upstream problem (the files are missing here).
        let p = check(with(
            "protocol = \"mcp\"\nresource = \"https://r.example/mcp\"",
        ));
        assert!(!p.contains("upstreams[0]"), "{p}");
        assert_eq!(Protocol::parse("a2a"), Some(Protocol::A2a));
    }

    #[test]
    fn round_trips_through_toml() {
        let cfg = GatewayConfig::parse(&sample()).unwrap();
        let again = GatewayConfig::parse(&cfg.to_toml()).unwrap();
        assert_eq!(cfg, again);
    }
}
