//! Revocation: local and durable at once (merged, never lifted), audited, and told to every
//! partner with a signed notice, delivered in issue order and retried until acknowledged (with
//! replicas, by whichever replica holds the notice's lease); and the replay-cache sweep.

use std::sync::Arc;
use std::time::Duration;

use crate::chain::RevocationKind;
use crate::federation::notice::{mint_notice, NoticeClaims};
use crate::server::state::Gateway;
use crate::server::{append, base_record};
use crate::spiffe::SpiffeId;

/// Revocation notices are retried this often until the partner acknowledges them.
pub const NOTICE_RETRY: Duration = Duration::from_secs(1);
/// Replay entries are swept this often.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

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
    let until = match gw.state.revoke(&r).await.map_err(|e| e.to_string())? {
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
        // A termination concerns only the partners of that agreement: any other partner
        // would refuse the notice (it names no agreement it holds) and hold back its queue.
        .filter(|a| kind != RevocationKind::Agreement || a.id == value)
        .filter_map(|a| a.partner_of(&gw.cfg.trust_domain))
        .map(|p| p.gateway_id.to_string())
        .collect();
    partners.sort();
    partners.dedup();
    for p in partners {
        gw.state
            .queue_notice(&p, &jti, notice.as_bytes())
            .await
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
        // Deliver until a round makes no progress (with a shared store only each partner's
        // head is claimed at a time, so a backlog drains round by round).
        loop {
            let claimed = match gw.state.claim_notices().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the notice queue; will retry");
                    break;
                }
            };
            let mut progress = false;
            'partners: for (gid, queue) in claimed {
                let Ok(gid) = SpiffeId::parse(&gid) else {
                    for n in &queue {
                        let _ = gw.state.notice_delivered(n).await;
                    }
                    continue;
                };
                let trust = gw.trust.get();
                let Some(terms) = trust.agreements.iter().find_map(|a| {
                    a.domain_str(gid.trust_domain_str())
                        .filter(|d| d.gateway_id == gid)
                        .cloned()
                }) else {
                    for n in &queue {
                        let _ = gw.state.notice_failed(n).await;
                    }
                    continue;
                };
                let mut queue = queue.into_iter();
                while let Some(n) = queue.next() {
                    match send_notice(&gw, &terms.gateway_url, &gid, n.notice.clone()).await {
                        Ok(()) => {
                            if let Err(e) = gw.state.notice_delivered(&n).await {
                                tracing::warn!(error = %e, "notice delivered but not dequeued; it will be sent again (harmless)");
                            }
                            progress = true;
                            let mut rec = base_record(&gw, "outbound", &n.jti, true);
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
                            let _ = gw.state.notice_failed(&n).await;
                            for rest in queue.by_ref() {
                                let _ = gw.state.notice_failed(&rest).await;
                            }
                            continue 'partners;
                        }
                    }
                }
            }
            if !progress || gw.state.replica().is_none() {
                break;
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
        match gw.state.sweep_replay(crate::time::now(), slack).await {
            Ok(n) if n > 0 => tracing::debug!(swept = n, "replay cache swept"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "replay sweep failed"),
        }
    }
}
