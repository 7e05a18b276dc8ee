//! Trust that changes while the gateway runs: loading and live reload (SIGHUP, `POST
//! /v1/reload`, file changes; all or nothing), partner bundle refresh from their bundle
//! endpoints, gateway key rotation, revocation with signed notices to every partner, and the
//! replay-cache sweep.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant as Clock, SystemTime};

use serde::{Deserialize, Serialize};

use super::config::{self, Validated};
use super::state::Gateway;
use super::trust::Trust;
use super::{append, base_record};
use crate::agreement::rego::{LocalPolicy, MAX_REGO_BYTES};
use crate::chain::RevocationKind;
use crate::federation::notice::{mint_notice, NoticeClaims};
use crate::jose::SigningKey;
use crate::spiffe::svid::{verify_svid, SvidUsage};
use crate::spiffe::{Bundle, BundleSet, SpiffeId, TrustDomain};

/// Default partner refresh interval when the bundle has no `spiffe_refresh_hint`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Never poll a partner more often than this, whatever its hint says.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// An unknown `kid` triggers an immediate refetch at most this often per partner.
pub const FORCED_REFRESH_MIN_GAP: Duration = Duration::from_secs(5);
/// How often files are checked for changes (reload within 2 s of a change).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(750);
/// Cap on the backoff between failed refreshes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Revocation notices are retried this often until the partner acknowledges them.
pub const NOTICE_RETRY: Duration = Duration::from_secs(1);
/// Replay entries are swept this often.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Loads everything reloadable: bundles (files, with newer refreshed partner bundles from
/// sled), activated agreements, local Rego and the strip list.
pub fn load_trust(
    cfg: &Validated,
    state: Option<&crate::store::State>,
    generation: u64,
) -> Result<Trust, Vec<String>> {
    let mut problems = Vec::new();
    let mut bundles = crate::files::load_bundle_dir(&cfg.bundles_dir)?;
    if bundles.get(&cfg.trust_domain).is_none() {
        problems.push(format!(
            "{}: no bundle for the local domain {}",
            cfg.bundles_dir.display(),
            cfg.trust_domain
        ));
    }
    if let Some(st) = state {
        let tds: Vec<TrustDomain> = bundles
            .domains()
            .filter(|d| **d != cfg.trust_domain)
            .cloned()
            .collect();
        for td in tds {
            if let Some(saved) = st
                .get_meta(&format!("bundle:{td}"))
                .and_then(|b| Bundle::parse(td.clone(), &b).ok())
            {
                let file_seq = bundles.get(&td).and_then(|b| b.sequence).unwrap_or(0);
                if saved.sequence.unwrap_or(0) > file_seq {
                    bundles.insert(saved);
                }
            }
        }
    }
    let agreements =
        match crate::files::load_agreements(&cfg.agreements_dir, &bundles, Some(&cfg.trust_domain))
        {
            Ok(a) => a.into_iter().map(Arc::new).collect::<Vec<_>>(),
            Err(p) => {
                problems.extend(p);
                vec![]
            }
        };
    let mut modules = Vec::new();
    for r in &cfg.rego {
        match crate::files::read_text_limited(r, MAX_REGO_BYTES) {
            Ok(t) => modules.push((r.display().to_string(), t)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let policy = if modules.is_empty() {
        None
    } else {
        match LocalPolicy::compile(&modules) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                problems.push(format!("policy.rego: {e}"));
                None
            }
        }
    };
    let strip_extra = header_names(&cfg.strip_extra);
    let strip_ingress = header_names(&cfg.strip_ingress);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut partners: Vec<TrustDomain> = agreements
        .iter()
        .flat_map(|a| a.domains.iter().map(|d| d.trust_domain.clone()))
        .filter(|td| *td != cfg.trust_domain)
        .collect();
    partners.sort();
    partners.dedup();
    Ok(Trust {
        bundles,
        agreements,
        policy,
        strip_extra,
        strip_ingress,
        partners,
        generation,
    })
}

fn header_names(list: &[String]) -> Vec<http::HeaderName> {
    list.iter()
        .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
        .collect()
}

/// Reloads atomically: on any problem the old trust stays and every problem is returned.
pub async fn reload(gw: &Gateway) -> Result<serde_json::Value, Vec<String>> {
    let _g = gw.reload_lock.lock().await;
    let fresh = config::load(&gw.cfg.path)?;
    // Listeners, identity and keys are fixed for the life of the process; the rest reloads.
    let mut cfg = gw.cfg.clone();
    cfg.strip_extra = fresh.strip_extra;
    cfg.strip_ingress = fresh.strip_ingress;
    cfg.rego = fresh.rego;
    let old = gw.trust.get();
    // The strip lists of the new config live in the trust, since `gw.cfg` itself is immutable.
    let t = load_trust(&cfg, Some(&gw.state), old.generation + 1)?;
    let summary = serde_json::json!({
        "reloaded": true,
        "generation": t.generation,
        "agreements": t.agreements.iter().map(|a| a.agr()).collect::<Vec<_>>(),
        "bundles": t.bundles.domains().map(|d| d.to_string()).collect::<Vec<_>>(),
        "rego_modules": t.policy.as_ref().map(|p| p.module_names().to_vec()).unwrap_or_default(),
        "strip_extra": t.strip_extra.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        "strip_ingress": t.strip_ingress.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    });
    gw.trust.set(t);
    gw.chains.clear();
    gw.metrics.inc("fedgate_reloads_total", &[("result", "ok")]);
    tracing::info!(generation = old.generation + 1, "trust reloaded");
    Ok(summary)
}

/// Replaces one bundle in the current trust (partner refresh, local rotation).
fn swap_bundle(gw: &Gateway, b: Bundle) {
    let old = gw.trust.get();
    let mut bundles = old.bundles.clone();
    bundles.insert(b);
    gw.trust.set(Trust {
        bundles,
        agreements: old.agreements.clone(),
        policy: old.policy.clone(),
        strip_extra: old.strip_extra.clone(),
        strip_ingress: old.strip_ingress.clone(),
        partners: old.partners.clone(),
        generation: old.generation + 1,
    });
    gw.chains.clear();
}

// ---- partner bundle refresh ----

/// Asks the refresh task to refetch `td`'s bundle now (an unknown `kid` arrived), at most once
/// per `FORCED_REFRESH_MIN_GAP`.
pub fn request_refresh(gw: &Gateway, td: &str) {
    if let Ok(mut f) = gw.life.forced.lock() {
        let due = f
            .get(td)
            .map(|t| t.elapsed() >= FORCED_REFRESH_MIN_GAP)
            .unwrap_or(true);
        if due {
            f.insert(td.to_string(), Clock::now());
            gw.life.refresh_wake.notify_one();
        }
    }
}

/// Fetches `td`'s bundle from its endpoint now and applies it; for an unknown `kid` at ingress
/// (rate-limited). Returns whether the bundle changed.
pub async fn refresh_now(gw: &Gateway, td: &TrustDomain) -> Result<bool, String> {
    let _g = gw.life.fetch_lock.lock().await;
    let b = fetch_bundle(gw, td).await?;
    apply_bundle(gw, b)
}

/// Whether a forced refetch of `td` is allowed now (and marks it).
pub fn may_force(gw: &Gateway, td: &str) -> bool {
    match gw.life.forced.lock() {
        Ok(mut f) => {
            let due = f
                .get(td)
                .map(|t| t.elapsed() >= FORCED_REFRESH_MIN_GAP)
                .unwrap_or(true);
            if due {
                f.insert(td.to_string(), Clock::now());
            }
            due
        }
        Err(_) => false,
    }
}

/// GET the partner's bundle endpoint over TLS, authenticating the server as the partner's
/// gateway with the partner's current bundle; the new bundle must itself validate that
/// gateway's SVID (so a bundle of another domain, or a broken one, is refused).
pub async fn fetch_bundle(gw: &Gateway, td: &TrustDomain) -> Result<Bundle, String> {
    let trust = gw.trust.get();
    let terms = trust
        .agreements
        .iter()
        .find_map(|a| {
            a.domain(td)
                .filter(|_| a.domain(&gw.cfg.trust_domain).is_some())
                .cloned()
        })
        .ok_or_else(|| format!("no agreement names {td}"))?;
    let uri: http::Uri = terms
        .bundle_endpoint
        .parse()
        .map_err(|e| format!("bundle_endpoint: {e}"))?;
    let host = uri
        .host()
        .ok_or("bundle_endpoint has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let verifier = Arc::new(super::tls::SpiffeServerVerifier::exact(
        gw.trust.clone(),
        terms.gateway_id.clone(),
    ));
    let tls = super::tls::client_config(Some(&gw.identity), verifier).map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(gw.cfg.partner_timeout as u64);
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let peer_chain: Vec<rustls::pki_types::CertificateDer<'static>> = stream
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|x| x.clone().into_owned()).collect())
            .unwrap_or_default();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = http::Request::get(uri.path())
            .header(
                http::header::HOST,
                uri.authority().map(|a| a.as_str()).unwrap_or(""),
            )
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("bundle endpoint answered {}", resp.status()));
        }
        let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(
            resp.into_body(),
            crate::spiffe::bundle::MAX_BUNDLE_BYTES,
        ))
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
        Ok::<_, String>((body, peer_chain))
    };
    let (body, peer_chain) = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| "bundle endpoint timed out".to_string())??;
    let b = Bundle::parse(td.clone(), &body)
        .map_err(|e| format!("bundle from {}: {e}", terms.bundle_endpoint))?;
    let mut only = BundleSet::new();
    only.insert(b.clone());
    let svid =
        verify_svid(&peer_chain, &only, crate::time::now(), SvidUsage::Server).map_err(|e| {
            format!("the fetched bundle does not validate {td}'s own gateway ({e}): refusing it")
        })?;
    if svid.id != terms.gateway_id {
        return Err(format!(
            "the endpoint is served by {}, not {}",
            svid.id, terms.gateway_id
        ));
    }
    Ok(b)
}

/// Accepts a fetched bundle unless its sequence went backwards; persists it as last-good.
pub fn apply_bundle(gw: &Gateway, b: Bundle) -> Result<bool, String> {
    let trust = gw.trust.get();
    let td = b.trust_domain.clone();
    if td == gw.cfg.trust_domain {
        return Err("refusing to replace the local bundle from a partner endpoint".into());
    }
    let current = trust.bundles.get(&td);
    let (cur_seq, new_seq) = (
        current.and_then(|c| c.sequence).unwrap_or(0),
        b.sequence.unwrap_or(0),
    );
    if new_seq < cur_seq {
        return Err(format!("{td}: spiffe_sequence went backwards ({new_seq} < {cur_seq}); keeping the current bundle"));
    }
    if let Some(c) = current {
        if c.to_json() == b.to_json() {
            return Ok(false);
        }
        if new_seq == cur_seq && c.sequence.is_some() {
            return Err(format!("{td}: a different bundle with the same spiffe_sequence {new_seq}; keeping the current one"));
        }
    }
    gw.state
        .put_meta(&format!("bundle:{td}"), b.to_json().as_bytes())
        .map_err(|e| e.to_string())?;
    tracing::info!(domain = %td, sequence = new_seq, "partner bundle updated");
    swap_bundle(gw, b);
    Ok(true)
}

fn jitter(max_ms: u64) -> Duration {
    let mut b = [0u8; 2];
    crate::crypto::random_bytes(&mut b);
    Duration::from_millis(u16::from_be_bytes(b) as u64 % max_ms.max(1))
}

/// Polls each partner's bundle endpoint at its refresh hint, with jittered backoff on failure.
pub async fn refresh_loop(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut next: HashMap<String, Clock> = HashMap::new();
    let mut failures: HashMap<String, u32> = HashMap::new();
    loop {
        let trust = gw.trust.get();
        let forced: Vec<String> = gw
            .life
            .forced
            .lock()
            .map(|f| {
                f.iter()
                    .filter(|(_, t)| t.elapsed() < FORCED_REFRESH_MIN_GAP)
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        for td in trust.partners.clone() {
            let key = td.to_string();
            let due =
                next.get(&key).map(|t| Clock::now() >= *t).unwrap_or(true) || forced.contains(&key);
            if !due {
                continue;
            }
            let result = {
                let _g = gw.life.fetch_lock.lock().await;
                match fetch_bundle(&gw, &td).await {
                    Ok(b) => apply_bundle(&gw, b),
                    Err(e) => Err(e),
                }
            };
            let hint = gw
                .trust
                .get()
                .bundles
                .get(&td)
                .and_then(|b| b.refresh_hint)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_REFRESH)
                .max(MIN_REFRESH);
            match result {
                Ok(_) => {
                    failures.remove(&key);
                    next.insert(key.clone(), Clock::now() + hint);
                    if let Ok(mut m) = gw.life.last_ok.lock() {
                        m.insert(key.clone(), Clock::now());
                    }
                    if let Ok(mut f) = gw.life.forced.lock() {
                        f.remove(&key);
                    }
                }
                Err(e) => {
                    let n = failures.entry(key.clone()).or_insert(0);
                    *n += 1;
                    let backoff = Duration::from_secs(2u64.saturating_pow((*n).min(8)))
                        .min(MAX_BACKOFF)
                        .min(hint);
                    next.insert(key.clone(), Clock::now() + backoff + jitter(1000));
                    gw.metrics
                        .inc("fedgate_bundle_refresh_failures_total", &[("domain", &key)]);
                    tracing::warn!(domain = %key, error = %e, retry_in_ms = backoff.as_millis() as u64, "partner bundle refresh failed; keeping the last good bundle");
                }
            }
        }
        if let Ok(m) = gw.life.last_ok.lock() {
            for (k, t) in m.iter() {
                gw.metrics.set(
                    "fedgate_bundle_refresh_age_seconds",
                    &[("domain", k)],
                    t.elapsed().as_secs_f64(),
                );
            }
        }
        let wait = next
            .values()
            .map(|t| t.saturating_duration_since(Clock::now()))
            .min()
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = gw.life.refresh_wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

// ---- live reload on file change ----

fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut v = Vec::new();
    for p in paths {
        let mut entries = vec![p.clone()];
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                entries.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
        for e in entries {
            let m = std::fs::metadata(&e).ok();
            v.push((
                e,
                m.as_ref().map(|m| m.len()).unwrap_or(0),
                m.and_then(|m| m.modified().ok()),
            ));
        }
    }
    v.sort();
    v
}

fn watched(gw: &Gateway) -> Vec<PathBuf> {
    let mut v = vec![
        gw.cfg.path.clone(),
        gw.cfg.bundles_dir.clone(),
        gw.cfg.agreements_dir.clone(),
        rotation_path(&gw.cfg.data_dir),
    ];
    v.extend(gw.cfg.rego.iter().cloned());
    v
}

/// Reloads when a watched file changes; also drives key rotation.
pub async fn watch_loop(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last = fingerprint(&watched(&gw));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = rotation_step(&gw).await {
            tracing::error!(error = %e, "key rotation step failed");
        }
        if !gw.cfg.watch {
            continue;
        }
        let now = fingerprint(&watched(&gw));
        if now != last {
            match reload(&gw).await {
                Ok(_) => {}
                Err(p) => {
                    gw.metrics
                        .inc("fedgate_reloads_total", &[("result", "rejected")]);
                    tracing::error!(problems = ?p, "reload rejected; keeping the previous trust");
                }
            }
            last = fingerprint(&watched(&gw));
        }
    }
}

// ---- key rotation ----

/// Rotation state, `<data_dir>/rotation.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rotation {
    /// `requested` (by `fedgate rotate`), `published`, `active`, `done`.
    pub phase: String,
    /// The new key's PKCS#8 PEM file.
    pub key: PathBuf,
    pub requested_at: i64,
    #[serde(default)]
    pub new_kid: Option<String>,
    #[serde(default)]
    pub old_kid: Option<String>,
    #[serde(default)]
    pub activate_at: Option<i64>,
    #[serde(default)]
    pub retire_at: Option<i64>,
}

pub fn rotation_path(data_dir: &Path) -> PathBuf {
    data_dir.join("rotation.json")
}

pub fn read_rotation(data_dir: &Path) -> Option<Rotation> {
    let t = crate::files::read_text_limited(&rotation_path(data_dir), 64 * 1024).ok()?;
    serde_json::from_str(&t).ok()
}

fn write_rotation(data_dir: &Path, r: &Rotation) -> Result<(), String> {
    let t = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    crate::files::write_atomic(&rotation_path(data_dir), t.as_bytes(), 0o600)
        .map_err(|e| e.to_string())
}

/// The longest token lifetime any active agreement allows, plus skew: how long an old key must
/// stay published after the last token it signed.
fn longest_ttl(gw: &Gateway) -> i64 {
    gw.trust
        .get()
        .agreements
        .iter()
        .map(|a| a.max_token_ttl + a.clock_skew)
        .max()
        .unwrap_or(0)
}

fn write_local_bundle(gw: &Gateway, b: &Bundle) -> Result<(), String> {
    let p = gw
        .cfg
        .bundles_dir
        .join(format!("{}.json", gw.cfg.trust_domain));
    crate::files::write_atomic(&p, b.to_json().as_bytes(), 0o644).map_err(|e| e.to_string())
}

/// The key the gateway signs with at start, honouring a rotation in progress.
pub fn initial_signing_key(cfg: &Validated) -> Result<SigningKey, String> {
    if let Some(r) = read_rotation(&cfg.data_dir) {
        if r.phase == "active" || r.phase == "done" {
            return crate::files::read_signing_key(&r.key).map_err(|e| e.to_string());
        }
    }
    crate::files::read_signing_key(&cfg.signing_key).map_err(|e| e.to_string())
}

/// Advances a rotation: publish the new key (bundle sequence + 1), start signing with it after
/// the pre-publication delay, drop the old key once every token it signed has expired.
pub async fn rotation_step(gw: &Gateway) -> Result<(), String> {
    let Some(mut r) = read_rotation(&gw.cfg.data_dir) else {
        return Ok(());
    };
    let now = crate::time::now();
    let _g = gw.reload_lock.lock().await;
    match r.phase.as_str() {
        "requested" => {
            let key = crate::files::read_signing_key(&r.key).map_err(|e| e.to_string())?;
            let old = gw.keys.signing();
            let mut b = gw
                .trust
                .get()
                .bundles
                .get(&gw.cfg.trust_domain)
                .map(|b| (**b).clone())
                .ok_or("no local bundle")?;
            if b.authority(key.kid()).is_none() {
                b.add_jwt_authority(
                    key.kid(),
                    key.public().clone(),
                    crate::spiffe::KeyRole::Gateway,
                )
                .map_err(|e| e.to_string())?;
                b.sequence = Some(b.sequence.unwrap_or(0) + 1);
                write_local_bundle(gw, &b)?;
                swap_bundle(gw, b);
            }
            r.phase = "published".into();
            r.new_kid = Some(key.kid().to_string());
            r.old_kid = Some(old.kid().to_string());
            r.activate_at = Some(now + gw.cfg.key_prepublish);
            write_rotation(&gw.cfg.data_dir, &r)?;
            tracing::info!(kid = %key.kid(), activate_in = gw.cfg.key_prepublish, "new gateway key published");
        }
        "published" if now >= r.activate_at.unwrap_or(i64::MAX) => {
            let key = crate::files::read_signing_key(&r.key).map_err(|e| e.to_string())?;
            if let Ok(mut s) = gw.keys.signing.write() {
                *s = Arc::new(key);
            }
            r.phase = "active".into();
            r.retire_at = Some(now + longest_ttl(gw));
            write_rotation(&gw.cfg.data_dir, &r)?;
            tracing::info!("signing with the new gateway key");
        }
        "active" if now >= r.retire_at.unwrap_or(i64::MAX) => {
            let mut b = gw
                .trust
                .get()
                .bundles
                .get(&gw.cfg.trust_domain)
                .map(|b| (**b).clone())
                .ok_or("no local bundle")?;
            if let Some(old) = &r.old_kid {
                if old.as_str() != r.new_kid.as_deref().unwrap_or("") && b.remove_jwt_authority(old)
                {
                    b.sequence = Some(b.sequence.unwrap_or(0) + 1);
                    write_local_bundle(gw, &b)?;
                    swap_bundle(gw, b);
                }
            }
            r.phase = "done".into();
            write_rotation(&gw.cfg.data_dir, &r)?;
            tracing::info!("old gateway key retired");
        }
        _ => {}
    }
    Ok(())
}

/// `fedgate rotate`: stages a new P-256 gateway key for the gateway using `data_dir`.
pub fn stage_rotation(data_dir: &Path) -> Result<(String, PathBuf), String> {
    if let Some(r) = read_rotation(data_dir) {
        if r.phase != "done" {
            return Err(format!(
                "a rotation is already in progress (phase {})",
                r.phase
            ));
        }
    }
    let (key, der) = SigningKey::generate_p256().map_err(|e| e.to_string())?;
    let now = crate::time::now();
    let path = data_dir.join("keys").join(format!("gateway-{now}.key"));
    crate::files::write_private(
        &path,
        crate::files::pem_encode("PRIVATE KEY", &der).as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let r = Rotation {
        phase: "requested".into(),
        key: path.clone(),
        requested_at: now,
        new_kid: Some(key.kid().into()),
        old_kid: None,
        activate_at: None,
        retire_at: None,
    };
    write_rotation(data_dir, &r)?;
    Ok((key.kid().to_string(), path))
}

// ---- revocation ----

/// Revokes locally (durably), audits, and queues a signed notice for every partner.
pub async fn revoke(
    gw: &Gateway,
    kind: RevocationKind,
    value: &str,
    until: i64,
    now: i64,
) -> Result<usize, String> {
    if until != 0 && until <= now {
        return Err(format!(
            "until {} is not in the future (0 revokes for good)",
            crate::time::format_rfc3339(until)
        ));
    }
    let r = crate::store::Revocation {
        domain: gw.cfg.trust_domain.to_string(),
        kind: kind.as_str().into(),
        value: value.into(),
        until,
        at: now,
        notice_iat: None,
    };
    // Merged with any earlier revocation of the value: what partners are told is the merged
    // `until`, so both domains agree on what is revoked.
    let until = match gw.state.revoke(&r).map_err(|e| e.to_string())? {
        crate::store::Revoked::Merged(u) => u,
        _ => until,
    };
    gw.chains.clear();
    let jti = crate::crypto::random_id();
    let mut rec = base_record(gw, "outbound", &jti, true);
    rec.kind = "revocation".into();
    rec.mode = Some("admin".into());
    rec.revocation = Some(
        serde_json::json!({"kind": kind.as_str(), "value": value, "until": until, "domain": r.domain}),
    );
    append(gw, rec).await.map_err(|e| e.to_string())?;
    let claims = NoticeClaims {
        iss: gw.cfg.gateway_id.to_string(),
        kind: kind.as_str().into(),
        value: value.into(),
        until,
        iat: now,
        jti: jti.clone(),
    };
    let notice = mint_notice(&gw.keys.signing(), &claims).map_err(|e| e.to_string())?;
    let trust = gw.trust.get();
    let mut n = 0;
    let mut partners: Vec<String> = trust
        .agreements
        .iter()
        .filter_map(|a| a.partner_of(&gw.cfg.trust_domain))
        .map(|p| p.gateway_id.to_string())
        .collect();
    partners.sort();
    partners.dedup();
    for p in partners {
        gw.state
            .queue_notice(&p, &jti, notice.as_bytes())
            .map_err(|e| e.to_string())?;
        n += 1;
    }
    gw.metrics
        .inc("fedgate_revocations_total", &[("kind", kind.as_str())]);
    gw.life.notice_wake.notify_one();
    Ok(n)
}

/// Sends queued revocation notices until each partner acknowledges, auditing each delivery.
/// Each partner gets its notices in the order they were issued: a notice that fails holds
/// back the later ones for that partner until it is delivered.
pub async fn notice_loop(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        'partners: for (gid, queue) in gw.state.queued_notices() {
            let Ok(gid) = SpiffeId::parse(&gid) else {
                for (key, _, _) in &queue {
                    let _ = gw.state.del_meta(key);
                }
                continue;
            };
            let trust = gw.trust.get();
            let Some(terms) = trust.agreements.iter().find_map(|a| {
                a.domain_str(gid.trust_domain_str())
                    .filter(|d| d.gateway_id == gid)
                    .cloned()
            }) else {
                continue;
            };
            for (key, jti, notice) in queue {
                let jti = jti.as_str();
                let ok = send_notice(&gw, &terms.gateway_url, &gid, notice).await;
                match ok {
                    Ok(()) => {
                        let _ = gw.state.del_meta(&key);
                        let mut rec = base_record(&gw, "outbound", jti, true);
                        rec.kind = "revocation".into();
                        rec.mode = Some("notice".into());
                        rec.partner = Some(gid.trust_domain_str().to_string());
                        rec.target = Some(gid.to_string());
                        rec.status = Some(200);
                        let _ = append(&gw, rec).await;
                        tracing::info!(partner = %gid, "revocation notice delivered");
                    }
                    Err(e) => {
                        gw.metrics.inc(
                            "fedgate_notice_failures_total",
                            &[("partner", gid.trust_domain_str())],
                        );
                        tracing::warn!(partner = %gid, error = %e, "revocation notice not delivered yet; will retry");
                        continue 'partners;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(NOTICE_RETRY) => {}
            _ = gw.life.notice_wake.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

async fn send_notice(
    gw: &Gateway,
    gateway_url: &str,
    gid: &SpiffeId,
    notice: Vec<u8>,
) -> Result<(), String> {
    let client = gw.partner_client(gid)?;
    let uri: http::Uri = format!("{gateway_url}/v1/revocations")
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/jwt")
        .body(axum::body::Body::from(notice))
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(gw.cfg.partner_timeout as u64);
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("partner answered {}", resp.status()))
    }
}

/// Sweeps expired replay entries.
pub async fn sweep_loop(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        let slack = crate::chain::MAX_CLOCK_SKEW;
        match gw.state.sweep_replay(crate::time::now(), slack) {
            Ok(n) if n > 0 => tracing::debug!(swept = n, "replay cache swept"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "replay sweep failed"),
        }
    }
}
