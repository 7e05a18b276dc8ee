//! The gateway's shared state: the trust in force (`trust.rs`), keys, the audit log and state
//! store, HTTP clients, metrics, connection accounting and the verified-chain cache.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Body;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::config::Validated;
use super::tls::{client_config, Identity, MtlsConnector, SpiffeServerVerifier};
pub use super::trust::{Trust, TrustHandle};
use crate::chain::VerifiedChain;
use crate::jose::SigningKey;
use crate::store::{AuditLog, StateBackend};
use crate::time::Instant;

/// Prometheus counters and gauges, rendered in the text exposition format.
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<String, u64>>,
    gauges: Mutex<BTreeMap<String, f64>>,
}

impl Metrics {
    pub fn inc(&self, name: &str, labels: &[(&str, &str)]) {
        self.add(name, labels, 1);
    }

    pub fn add(&self, name: &str, labels: &[(&str, &str)], n: u64) {
        let key = Self::key(name, labels);
        if let Ok(mut c) = self.counters.lock() {
            *c.entry(key).or_insert(0) += n;
        }
    }

    pub fn set(&self, name: &str, labels: &[(&str, &str)], v: f64) {
        let key = Self::key(name, labels);
        if let Ok(mut g) = self.gauges.lock() {
            g.insert(key, v);
        }
    }

    /// A gauge's value (None when it was never set).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = Self::key(name, labels);
        self.gauges.lock().ok().and_then(|g| g.get(&key).copied())
    }

    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key = Self::key(name, labels);
        self.counters
            .lock()
            .ok()
            .and_then(|c| c.get(&key).copied())
            .unwrap_or(0)
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> String {
        if labels.is_empty() {
            return name.to_string();
        }
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}=\"{}\"",
                    v.replace('\\', "\\\\")
                        .replace('"', "\\\"")
                        .replace('\n', " ")
                )
            })
            .collect();
        format!("{name}{{{}}}", l.join(","))
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut last = String::new();
        if let Ok(c) = self.counters.lock() {
            for (k, v) in c.iter() {
                let base = k.split('{').next().unwrap_or(k).to_string();
                if base != last {
                    s.push_str(&format!("# TYPE {base} counter\n"));
                    last = base;
                }
                s.push_str(&format!("{k} {v}\n"));
            }
        }
        if let Ok(g) = self.gauges.lock() {
            for (k, v) in g.iter() {
                let base = k.split('{').next().unwrap_or(k).to_string();
                if base != last {
                    s.push_str(&format!("# TYPE {base} gauge\n"));
                    last = base;
                }
                s.push_str(&format!("{k} {v}\n"));
            }
        }
        s
    }
}

/// Most verified chains kept: bounded memory, and a chain is cheap to re-verify anyway.
pub const CHAIN_CACHE_CAPACITY: usize = 10_000;

/// Verified chains by digest, so repeated calls with the same chain skip the signature work.
/// An entry lives until the chain (or an SVID in it) expires; every revocation and every trust
/// reload empties the cache, so a cached chain is never more trusted than a fresh verification.
#[derive(Debug, Default)]
pub struct ChainCache {
    map: Mutex<HashMap<String, Arc<VerifiedChain>>>,
}

impl ChainCache {
    pub fn get(&self, digest: &str, now: Instant) -> Option<Arc<VerifiedChain>> {
        let mut m = self.map.lock().ok()?;
        match m.get(digest) {
            Some(v) if now < v.valid_until => Some(v.clone()),
            Some(_) => {
                m.remove(digest);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, v: Arc<VerifiedChain>, now: Instant) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= CHAIN_CACHE_CAPACITY {
                m.retain(|_, c| now < c.valid_until);
                if m.len() >= CHAIN_CACHE_CAPACITY {
                    // Still full of live entries: start over rather than track recency.
                    m.clear();
                }
            }
            m.insert(v.digest.clone(), v);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub type HttpClient = Client<HttpConnector, Body>;
pub type TlsClient = Client<MtlsConnector, Body>;

/// Keys the gateway signs with. The signing key can change at runtime (rotation).
pub struct Keys {
    pub signing: RwLock<Arc<SigningKey>>,
    pub pseudonym: zeroize::Zeroizing<Vec<u8>>,
    /// The Ed25519 audit key, which also signs our witness's cosignatures (`witness`).
    pub audit: SigningKey,
}

impl Keys {
    pub fn signing(&self) -> Arc<SigningKey> {
        match self.signing.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// The running gateway.
pub struct Gateway {
    pub cfg: Validated,
    pub trust: Arc<TrustHandle>,
    pub keys: Keys,
    pub identity: Identity,
    pub log: AuditLog,
    pub state: Arc<dyn StateBackend>,
    pub metrics: Metrics,
    pub chains: ChainCache,
    pub upstream_http: HttpClient,
    pub upstream_tls: TlsClient,
    partner_clients: RwLock<HashMap<String, (u64, TlsClient)>>,
    /// Reload and rotation are serialized.
    pub reload_lock: tokio::sync::Mutex<()>,
    pub life: super::trust::LifeState,
    /// Outcome records being written off the response path; shutdown waits for them.
    pub pending_outcomes: std::sync::atomic::AtomicUsize,
    /// Connection accounting per listener (internal, federation, admin).
    pub conns: [Arc<super::listener::Tracker>; 3],
    /// Refusals kept out of the log of record (unauthenticated, rate-limited).
    pub refusals: Arc<super::refusals::RefusalLog>,
    /// Per-source denial budget.
    pub denials: super::refusals::DenialLimiter,
    /// Bytes of request bodies the egress may still buffer.
    pub buffer_budget: Arc<tokio::sync::Semaphore>,
    /// Witness submissions are checked and recorded one at a time (tlog-witness: the old-size
    /// check and the update must be atomic; the store's compare-and-set covers replicas).
    pub witness_lock: tokio::sync::Mutex<()>,
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: Validated,
        trust: Arc<TrustHandle>,
        keys: Keys,
        identity: Identity,
        log: AuditLog,
        state: Arc<dyn StateBackend>,
    ) -> Result<Gateway, String> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(super::tls::CONNECT_TIMEOUT));
        let upstream_http = Client::builder(TokioExecutor::new()).build(http);
        let verifier = Arc::new(SpiffeServerVerifier::in_domain(
            trust.clone(),
            cfg.trust_domain.clone(),
        ));
        let tls = client_config(Some(&identity), verifier).map_err(|e| e.to_string())?;
        let upstream_tls = Client::builder(TokioExecutor::new()).build(MtlsConnector::new(tls));
        let cfg_conn = cfg.conn.clone();
        let refusals = Arc::new(super::refusals::RefusalLog::open(Some(
            cfg.data_dir.join("refusals.jsonl"),
        )));
        let denials = super::refusals::DenialLimiter::new(cfg.denials_per_second, cfg.denial_burst);
        let buffer_budget = Arc::new(tokio::sync::Semaphore::new(
            cfg.max_buffered_bytes
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let conns = [
            super::listener::Tracker::new(cfg_conn.clone()),
            super::listener::Tracker::new(cfg_conn.clone()),
            super::listener::Tracker::new(cfg_conn),
        ];
        for (t, name) in conns.iter().zip(["internal", "federation", "admin"]) {
            t.log_refusals_to(refusals.clone(), name);
        }
        Ok(Gateway {
            conns,
            refusals,
            denials,
            buffer_budget,
            witness_lock: tokio::sync::Mutex::new(()),
            cfg,
            trust,
            keys,
            identity,
            log,
            state,
            metrics: Metrics::default(),
            chains: ChainCache::default(),
            upstream_http,
            upstream_tls,
            partner_clients: RwLock::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            life: Default::default(),
            pending_outcomes: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The connection accounting of a listener.
    pub fn connections(&self, kind: super::tls::ListenerKind) -> &Arc<super::listener::Tracker> {
        match kind {
            super::tls::ListenerKind::Internal => &self.conns[0],
            super::tls::ListenerKind::Federation => &self.conns[1],
            super::tls::ListenerKind::Admin => &self.conns[2],
        }
    }

    /// An mTLS client that accepts only `partner`'s gateway (as the current agreements name it).
    pub fn partner_client(
        &self,
        partner_gateway: &crate::spiffe::SpiffeId,
    ) -> Result<TlsClient, String> {
        let trust = self.trust.get();
        let key = partner_gateway.to_string();
        if let Ok(m) = self.partner_clients.read() {
            if let Some((g, c)) = m.get(&key) {
                if *g == trust.generation {
                    return Ok(c.clone());
                }
            }
        }
        let verifier = Arc::new(SpiffeServerVerifier::exact(
            self.trust.clone(),
            partner_gateway.clone(),
        ));
        let tls = client_config(Some(&self.identity), verifier).map_err(|e| e.to_string())?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build(MtlsConnector::new(tls));
        if let Ok(mut m) = self.partner_clients.write() {
            m.insert(key, (trust.generation, client.clone()));
        }
        Ok(client)
    }
}
