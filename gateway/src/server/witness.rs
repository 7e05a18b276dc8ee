//! Our witness of partners' logs: `POST /v1/witness/add-checkpoint` on the federation listener,
//! request and answers as C2SP tlog-witness gives them. The check itself is `witness::check`;
//! here are the partner's bundle, the stored latest cosigned checkpoint (compare and set), the
//! cosignature, and for a fork the audit record, the metric and the evidence file.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::state::Gateway;
use super::tls::ConnInfo;
use crate::audit::checkpoint::{self, Checkpoint};
use crate::crypto::{b64std, hex, sha256};
use crate::reason::Reason;
use crate::witness::{self, AddCheckpoint, WitnessError};

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

/// The directory where refused forks are kept as evidence.
pub fn evidence_dir(gw: &Gateway) -> std::path::PathBuf {
    gw.cfg.data_dir.join("witness").join("evidence")
}

/// `POST /v1/witness/add-checkpoint`.
pub async fn add_checkpoint(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Response {
    let Some(peer) = conn.peer.clone() else {
        return super::refuse_unauthenticated(
            &gw,
            "federation",
            &conn,
            Reason::BadSvid,
            "a client certificate is required",
        )
        .into_response();
    };
    if let Some(d) = super::over_budget(&gw, "federation", &conn, peer.id.as_str()) {
        return d.into_response();
    }
    let bytes = match super::proxy::read_body_within(
        body,
        witness::MAX_REQUEST_BYTES,
        gw.cfg.conn.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "request too large\n".into()),
    };
    let req = match AddCheckpoint::parse(&bytes) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let cp = match checkpoint::peek(&req.checkpoint) {
        Ok(c) => c,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some((td, _)) = checkpoint::parse_origin(&cp.origin) else {
        return text(
            StatusCode::NOT_FOUND,
            "not a fedgate audit log origin\n".into(),
        );
    };
    let td = td.to_string();
    let trust = gw.trust.get();
    let bundle = crate::spiffe::TrustDomain::parse(&td)
        .ok()
        .filter(|t| *t != gw.cfg.trust_domain)
        .and_then(|t| trust.bundles.get(&t).cloned());
    let Some(bundle) = bundle else {
        return text(StatusCode::NOT_FOUND, format!("{td} is not a partner\n"));
    };
    // A gateway submits its own domain's log only.
    if peer.id.trust_domain_str() != td {
        return text(
            StatusCode::FORBIDDEN,
            format!("{} may not submit {td}'s checkpoints\n", peer.id),
        );
    }
    if checkpoint::verify_with_bundle(&req.checkpoint, &bundle).is_err() {
        gw.metrics.inc(
            "fedgate_witness_refused_total",
            &[("partner", &td), ("reason", "bad_signature")],
        );
        return text(
            StatusCode::FORBIDDEN,
            "no signature verifies with the partner's audit key\n".into(),
        );
    }
    let _g = gw.witness_lock.lock().await;
    let known_note = match gw.state.witnessed(&cp.origin).await {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(error = %e, "witness state unavailable");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "witness state unavailable\n".into(),
            );
        }
    };
    let known = known_note.as_deref().and_then(|n| checkpoint::peek(n).ok());
    match witness::check(known.as_ref(), &req, &cp) {
        Ok(()) => {}
        Err(WitnessError::Conflict { known, .. }) => {
            return (
                StatusCode::CONFLICT,
                [(http::header::CONTENT_TYPE, "text/x.tlog.size")],
                format!("{known}\n"),
            )
                .into_response();
        }
        Err(e @ WitnessError::Fork(_)) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::CONFLICT);
            record_fork(
                &gw,
                &td,
                peer.id.as_str(),
                &cp,
                known.as_ref(),
                known_note.as_deref(),
                &bytes,
                &e,
            )
            .await;
            return text(status, format!("{e}\n"));
        }
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return text(status, format!("{e}\n"));
        }
    }
    let name = witness::witness_name(gw.cfg.trust_domain.as_str());
    let now = crate::time::now().max(0) as u64;
    let line = match witness::cosign(&req.checkpoint, &name, &gw.keys.audit, now) {
        Ok(l) => l,
        Err(e) => return text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    };
    // Stored with our cosignature, so the state itself shows what we vouched for.
    let stored = witness::add_signatures(&req.checkpoint, &line);
    match gw
        .state
        .save_witnessed(&cp.origin, known_note.as_deref(), &stored)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return text(
                StatusCode::CONFLICT,
                "another submission changed the cosigned checkpoint; retry\n".into(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "witness state not saved");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                "witness state unavailable\n".into(),
            );
        }
    }
    // Mirrored to a file for `fedgate audit export` (the store may be locked by the gateway).
    let mirror = super::lifecycle::witnessed_path(&gw.cfg.data_dir, &cp.origin);
    if let Some(d) = mirror.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    if let Err(e) = crate::files::write_atomic(&mirror, stored.as_bytes(), 0o644) {
        tracing::warn!(error = %e, "could not mirror the witnessed checkpoint for exports");
    }
    gw.metrics
        .inc("fedgate_witness_cosigned_total", &[("partner", &td)]);
    gw.metrics.set(
        "fedgate_witness_partner_size",
        &[("partner", &td)],
        cp.size as f64,
    );
    tracing::debug!(partner = %td, size = cp.size, "cosigned a partner checkpoint");
    text(StatusCode::OK, line)
}

/// A fork: kept as evidence (both notes and the request), audited, counted, alerted.
#[allow(clippy::too_many_arguments)]
async fn record_fork(
    gw: &Gateway,
    td: &str,
    peer: &str,
    cp: &Checkpoint,
    known: Option<&Checkpoint>,
    known_note: Option<&str>,
    request: &[u8],
    e: &WitnessError,
) {
    let digest = hex(&sha256(request));
    let dir = evidence_dir(gw);
    let file = dir.join(format!("{td}-{}-{}.txt", cp.size, &digest[..16]));
    let mut evidence = String::new();
    evidence.push_str("# fedgate witness: a partner checkpoint refused as a fork\n");
    evidence.push_str(&format!("# {e}\n\n## cosigned before\n"));
    evidence.push_str(known_note.unwrap_or("(none)\n"));
    evidence.push_str("\n## submitted (tlog-witness add-checkpoint body)\n");
    evidence.push_str(&String::from_utf8_lossy(request));
    let saved = std::fs::create_dir_all(&dir)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            crate::files::write_atomic(&file, evidence.as_bytes(), 0o600).map_err(|e| e.to_string())
        });
    if let Err(err) = &saved {
        tracing::error!(error = %err, "could not keep the fork evidence");
    }
    let mut rec = super::base_record(gw, "inbound", &format!("witness-{}", &digest[..32]), false);
    rec.kind = "witness".into();
    rec.partner = Some(td.to_string());
    rec.peer = Some(peer.to_string());
    rec.reason = Some(Reason::CheckpointFork.code().into());
    rec.checkpoint = Some(serde_json::json!({
        "origin": cp.origin,
        "size": cp.size,
        "root": b64std(&cp.root),
        "cosigned_size": known.map(|k| k.size),
        "cosigned_root": known.map(|k| b64std(&k.root)),
        "evidence": saved.is_ok().then(|| file.display().to_string()),
    }));
    if let Err(err) = super::append(gw, rec).await {
        tracing::error!(error = %err, "could not audit a fork");
    }
    gw.metrics
        .inc("fedgate_witness_forks_total", &[("partner", td)]);
    tracing::error!(partner = %td, size = cp.size, cosigned = known.map(|k| k.size), evidence = %file.display(), "FORK: a partner presented a checkpoint inconsistent with the one we cosigned");
}
