//! The admin listener: metrics, health, the audit log's checkpoint, records and proofs,
//! revocation, the delegation graph and reload. Only the configured admin SPIFFE IDs (or,
//! when configured, loopback callers without a certificate) get in.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use super::deny::Denial;
use super::proxy;
use super::state::Gateway;
use super::tls::ConnInfo;
use crate::audit::Record;
use crate::chain::RevocationKind;
use crate::crypto::b64std;
use crate::reason::Reason;

/// Most records one `GET /v1/audit/records` returns.
pub const MAX_RECORDS_PER_PAGE: u64 = 1000;
/// Records scanned to draw `GET /v1/graph`.
pub const GRAPH_WINDOW: u64 = 100_000;

pub async fn guard(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    req: Request,
    next: Next,
) -> Response {
    let ok = match &conn.peer {
        Some(p) => gw.cfg.admin_ids.contains(&p.id),
        None => gw.cfg.raw.admin.allow_loopback && conn.remote.ip().is_loopback(),
    };
    if !ok {
        // Not an admin: counted and side-logged like any unauthenticated refusal.
        let d = super::refuse_unauthenticated(&gw, "admin", &conn, Reason::NotHolder, "admin only");
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({"error": "admin only", "reason": d.reason.code()})),
        )
            .into_response();
    }
    next.run(req).await
}

pub async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    gw.metrics
        .set("fedgate_audit_records", &[], gw.log.size() as f64);
    gw.metrics
        .set("fedgate_chain_cache_entries", &[], gw.chains.len() as f64);
    gw.metrics.set(
        "fedgate_trust_generation",
        &[],
        gw.trust.get().generation as f64,
    );
    for (name, kind) in [
        ("internal", super::tls::ListenerKind::Internal),
        ("federation", super::tls::ListenerKind::Federation),
        ("admin", super::tls::ListenerKind::Admin),
    ] {
        let c = gw.connections(kind).counts();
        gw.metrics.set(
            "fedgate_connections",
            &[("listener", name), ("state", "authenticated")],
            c.total.saturating_sub(c.unauthenticated) as f64,
        );
        gw.metrics.set(
            "fedgate_connections",
            &[("listener", name), ("state", "unauthenticated")],
            c.unauthenticated as f64,
        );
        gw.metrics.set(
            "fedgate_connections_evicted",
            &[("listener", name)],
            c.evicted as f64,
        );
        gw.metrics.set(
            "fedgate_connections_refused",
            &[("listener", name)],
            c.refused as f64,
        );
        gw.metrics.set(
            "fedgate_tls_handshakes_refused",
            &[("listener", name)],
            c.tls_failed as f64,
        );
    }
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(),
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if !gw.log.is_healthy() {
        (StatusCode::SERVICE_UNAVAILABLE, "audit log unavailable").into_response()
    } else if !gw.state.ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "state store unavailable").into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

pub async fn checkpoint(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.log.checkpoint_now() {
        Ok(note) => (
            [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            super::lifecycle::cosigned_note(&gw.cfg.data_dir, &note),
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// C2SP tlog-tiles `<prefix>/checkpoint` (the admin listener is the prefix): the latest signed
/// checkpoint with the cosignatures held for it, never cached for long.
pub async fn tlog_checkpoint(State(gw): State<Arc<Gateway>>) -> Response {
    match gw.log.latest_checkpoint() {
        Some((_, note)) => (
            [
                (http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (http::header::CACHE_CONTROL, "no-cache"),
            ],
            super::lifecycle::cosigned_note(&gw.cfg.data_dir, &note),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no checkpoint yet").into_response(),
    }
}

/// C2SP tlog-tiles `<prefix>/tile/<L>/<N>[.p/<W>]` and `<prefix>/tile/entries/<N>[.p/<W>]`,
/// from the log's tile files and segments. Tiles never change, so they may be cached for good.
pub async fn tile(State(gw): State<Arc<Gateway>>, Path(path): Path<String>) -> Response {
    let Some(t) = crate::audit::tiles::TileRef::parse(&format!("tile/{path}")) else {
        return (StatusCode::NOT_FOUND, "not a tile path").into_response();
    };
    let log = gw.log.clone();
    match tokio::task::spawn_blocking(move || log.tile(t)).await {
        Ok(Ok(Some(bytes))) => (
            [
                (http::header::CONTENT_TYPE, "application/octet-stream"),
                (
                    http::header::CACHE_CONTROL,
                    "public, max-age=31536000, immutable",
                ),
            ],
            bytes,
        )
            .into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no such tile").into_response(),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
pub struct Page {
    from: Option<u64>,
    limit: Option<u64>,
}

pub async fn records(State(gw): State<Arc<Gateway>>, Query(p): Query<Page>) -> Response {
    let from = p.from.unwrap_or(0);
    let limit = p.limit.unwrap_or(100).min(MAX_RECORDS_PER_PAGE);
    match gw.log.read(from, limit) {
        Ok(rs) => {
            let mut body = String::new();
            for r in rs {
                body.push_str(&String::from_utf8_lossy(&r));
                body.push('\n');
            }
            ([(http::header::CONTENT_TYPE, "application/jsonl")], body).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// The records of one crossing (decision, outcome), as JSON Lines.
pub async fn crossing(State(gw): State<Arc<Gateway>>, Path(id): Path<String>) -> Response {
    match gw.log.crossing(&id) {
        Ok(rs) if rs.is_empty() => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no records of this crossing"})),
        )
            .into_response(),
        Ok(rs) => {
            let mut body = String::new();
            for r in rs {
                body.push_str(&String::from_utf8_lossy(&r));
                body.push('\n');
            }
            ([(http::header::CONTENT_TYPE, "application/jsonl")], body).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Which replicas' logs hold records of a crossing (`[{replica, seq}]`), from the index the
/// replicas share; a single gateway answers from its own log.
pub async fn crossing_locations(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<String>,
) -> Response {
    if gw.state.replica().is_some() {
        return match gw.state.crossing_locations(&id).await {
            Ok(v) => axum::Json(serde_json::json!({
                "crossing": id,
                "locations": v.iter().map(|(r, s)| serde_json::json!({"replica": r, "seq": s})).collect::<Vec<_>>(),
            }))
            .into_response(),
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
        };
    }
    match gw.log.crossing(&id) {
        Ok(rs) => {
            let seqs: Vec<serde_json::Value> = rs
                .iter()
                .filter_map(|b| serde_json::from_slice::<Record>(b).ok())
                .map(|r| serde_json::json!({"replica": null, "seq": r.seq}))
                .collect();
            axum::Json(serde_json::json!({"crossing": id, "locations": seqs})).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// Inclusion proof of record `seq` in the latest checkpoint.
pub async fn proof(State(gw): State<Arc<Gateway>>, Path(seq): Path<u64>) -> Response {
    let note = match gw.log.checkpoint_now() {
        Ok(n) => n,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let Some((cp, _)) = gw.log.latest_checkpoint() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no checkpoint").into_response();
    };
    match (gw.log.leaf(seq), gw.log.inclusion_proof(seq, cp.size)) {
        (Some(leaf), Some(p)) if seq < cp.size => axum::Json(serde_json::json!({
            "seq": seq,
            "tree_size": cp.size,
            "leaf": b64std(&leaf),
            "proof": p.iter().map(|h| b64std(h)).collect::<Vec<_>>(),
            "checkpoint": note,
        }))
        .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no such record in the latest checkpoint"})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
pub struct Sizes {
    first: u64,
    second: Option<u64>,
}

/// Consistency proof between two tree sizes (the second defaults to the latest checkpoint).
pub async fn consistency(State(gw): State<Arc<Gateway>>, Query(s): Query<Sizes>) -> Response {
    let note = match gw.log.checkpoint_now() {
        Ok(n) => n,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let latest = gw.log.latest_checkpoint().map(|(c, _)| c.size).unwrap_or(0);
    let second = s.second.unwrap_or(latest).min(latest);
    match gw.log.consistency_proof(s.first, second) {
        Some(p) => axum::Json(serde_json::json!({
            "first": s.first,
            "second": second,
            "first_root": gw.log.root(s.first).map(|r| b64std(&r)),
            "second_root": gw.log.root(second).map(|r| b64std(&r)),
            "proof": p.iter().map(|h| b64std(h)).collect::<Vec<_>>(),
            "checkpoint": note,
        }))
        .into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "need 0 < first <= second <= tree size"})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    pub kind: String,
    pub value: String,
    #[serde(default)]
    pub until: Option<i64>,
}

/// `POST /v1/revoke`: revoke locally, audit, and notify every partner.
pub async fn revoke(State(gw): State<Arc<Gateway>>, body: Body) -> Response {
    let now = crate::time::now();
    let id = crate::crypto::random_id();
    let bytes = match proxy::read_body_within(body, 16 * 1024, gw.cfg.conn.body_timeout).await {
        Ok(b) => b,
        Err(_) => {
            return Denial::new(Reason::TooLarge, "request too large", &id)
                .described()
                .into_response()
        }
    };
    let req: RevokeRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return Denial::new(
                Reason::Malformed,
                format!("expected {{kind, value, until?}}: {e}"),
                &id,
            )
            .described()
            .into_response()
        }
    };
    let Some(kind) = RevocationKind::parse(&req.kind) else {
        return Denial::new(
            Reason::Malformed,
            "kind must be jti, task, agent or principal",
            &id,
        )
        .described()
        .into_response();
    };
    if req.value.is_empty() || req.value.len() > crate::federation::notice::MAX_VALUE_BYTES {
        return Denial::new(Reason::Malformed, "value must be 1-2048 bytes", &id)
            .described()
            .into_response();
    }
    if let Some(u) = req.until {
        if u != 0 && u <= now {
            return Denial::new(
                Reason::Malformed,
                "until must be in the future (or 0: for good)",
                &id,
            )
            .described()
            .into_response();
        }
    }
    if kind == RevocationKind::Agreement {
        return Denial::new(
            Reason::Malformed,
            "an agreement is terminated with POST /v1/agreements/terminate (fedgate agreement terminate)",
            &id,
        )
        .described()
        .into_response();
    }
    if kind == RevocationKind::Agent {
        match crate::spiffe::SpiffeId::parse(&req.value) {
            Ok(a) if a.in_domain(&gw.cfg.trust_domain) => {}
            _ => {
                return Denial::new(
                    Reason::Malformed,
                    "a domain revokes only its own agents",
                    &id,
                )
                .described()
                .into_response()
            }
        }
    }
    match super::lifecycle::revoke(&gw, kind, &req.value, req.until.unwrap_or(0), now).await {
        Ok(n) => axum::Json(serde_json::json!({"revoked": true, "kind": req.kind, "value": req.value, "notified_partners": n})).into_response(),
        Err(e) => Denial::new(Reason::StateUnavailable, e, &id).described().into_response(),
    }
}

/// Allowed count, denied count, denials by reason.
type Edge = (u64, u64, BTreeMap<String, u64>);

/// `GET /v1/graph`: who delegated to whom across the boundary, from the recent audit records.
pub async fn graph(State(gw): State<Arc<Gateway>>) -> Response {
    let size = gw.log.size();
    let from = size.saturating_sub(GRAPH_WINDOW);
    let rs = match gw.log.read(from, GRAPH_WINDOW) {
        Ok(r) => r,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let mut edges: BTreeMap<(String, String, String), Edge> = BTreeMap::new();
    for bytes in rs {
        let Ok(r) = serde_json::from_slice::<Record>(&bytes) else {
            continue;
        };
        if r.kind != "decision" {
            continue;
        }
        let (Some(s), Some(t)) = (r.source.clone(), r.target.clone()) else {
            continue;
        };
        let e = edges.entry((s, t, r.direction.clone())).or_default();
        if r.is_allow() {
            e.0 += 1;
        } else {
            e.1 += 1;
            *e.2.entry(r.reason.clone().unwrap_or_default()).or_insert(0) += 1;
        }
    }
    let list: Vec<serde_json::Value> = edges
        .into_iter()
        .map(|((s, t, d), (a, n, reasons))| serde_json::json!({"from": s, "to": t, "direction": d, "allowed": a, "denied": n, "denials": reasons}))
        .collect();
    axum::Json(serde_json::json!({"records_scanned": size - from, "edges": list})).into_response()
}

/// `POST /v1/reload`: reload agreements, bundles, Rego and the strip list; all or nothing.
pub async fn reload(State(gw): State<Arc<Gateway>>) -> Response {
    match super::lifecycle::reload(&gw).await {
        Ok(summary) => axum::Json(summary).into_response(),
        Err(problems) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"reloaded": false, "problems": problems})),
        )
            .into_response(),
    }
}
