//! Partner bundle refresh: each partner's bundle endpoint polled at its refresh hint, with
//! jittered backoff, an immediate (rate-limited) refetch when an unknown `kid` arrives, and the
//! last good bundle kept in the state store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant as Clock};

use super::swap_bundle;
use crate::server::state::Gateway;
use crate::spiffe::svid::{verify_svid, SvidUsage};
use crate::spiffe::{Bundle, BundleSet, TrustDomain};

/// Default partner refresh interval when the bundle has no `spiffe_refresh_hint`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// Never poll a partner more often than this, whatever its hint says.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// An unknown `kid` triggers an immediate refetch at most this often per partner.
pub const FORCED_REFRESH_MIN_GAP: Duration = Duration::from_secs(5);
/// Cap on the backoff between failed refreshes.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

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
    apply_bundle(gw, b).await
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
    let verifier = Arc::new(crate::server::tls::SpiffeServerVerifier::exact(
        gw.trust.clone(),
        terms.gateway_id.clone(),
    ));
    let tls = crate::server::tls::client_config(Some(&gw.identity), verifier)
        .map_err(|e| e.to_string())?;
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
pub async fn apply_bundle(gw: &Gateway, b: Bundle) -> Result<bool, String> {
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
        .save_bundle(td.as_str(), new_seq, b.to_json().as_bytes())
        .await
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
                    Ok(b) => apply_bundle(&gw, b).await,
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
