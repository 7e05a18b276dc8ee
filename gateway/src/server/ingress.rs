//! The federation listener: `ANY /ingress/{*path}` (a partner's token arriving), `GET /bundle`
//! (this domain's trust bundle) and `POST /v1/revocations` (a partner's revocation notice).

use std::sync::Arc;
use std::time::Instant as Clock;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri};
use tracing::Instrument;

use super::deny::Denial;
use super::proxy;
use super::state::Gateway;
use super::tls::ConnInfo;
use super::{append, base_record};
use crate::agreement::rego::crossing_input;
use crate::audit::Record;
use crate::chain::{RevocationKind, Revocations};
use crate::federation::receipt::{mint_receipt, ReceiptClaims};
use crate::federation::{verify_token, TokenContext, VerifiedToken};
use crate::reason::Reason;
use crate::scope::ScopeSet;

/// Longest request path accepted at ingress.
pub const MAX_PATH_BYTES: usize = 2048;

async fn refuse(gw: &Gateway, rec: Record, reason: Reason, message: String) -> Response {
    super::deny(gw, rec, reason, message).await.into_response()
}

/// A path a route can be matched against without ambiguity: no dot segments, no empty
/// segments, no encoded slashes, dots or backslashes.
fn canonical_path(p: &str) -> bool {
    if !p.starts_with('/') || p.len() > MAX_PATH_BYTES || p.contains("//") || p.contains('\\') {
        return false;
    }
    let lower = p.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%2e")
        || lower.contains("%5c")
        || lower.contains("%00")
    {
        return false;
    }
    !p.split('/').any(|s| s == "." || s == "..")
}

fn fill_from_token(rec: &mut Record, t: &crate::federation::FederationClaims) {
    rec.crossing = t.jti.clone();
    rec.agreement = Some(t.agr.clone());
    rec.source = Some(t.act.sub.clone());
    rec.target = Some(t.tgt.clone());
    rec.scope_requested = t
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    rec.txn = Some(t.txn.clone());
    rec.principal = t.sub.clone();
    rec.chain_digest = Some(t.chn.clone());
    rec.depth = Some(t.dep as u64);
    rec.token_exp = Some(t.exp);
    rec.authenticated = Some(true);
}

/// `ANY /ingress/{*path}`.
pub async fn ingress(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let now = crate::time::now();
    let started = Clock::now();
    let mut rec = base_record(&gw, "inbound", &crate::crypto::random_id(), false);
    rec.mode = Some("ingress".into());
    rec.authenticated = Some(false);
    let Some(peer) = conn.peer.clone() else {
        return refuse(
            &gw,
            rec,
            Reason::BadSvid,
            "a client certificate is required".into(),
        )
        .await;
    };
    rec.partner = Some(peer.id.trust_domain_str().to_string());
    let auths: Vec<&http::HeaderValue> = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .collect();
    let token = match auths.as_slice() {
        [one] => match one.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some(t) => t.trim().to_string(),
            None => {
                return refuse(
                    &gw,
                    rec,
                    Reason::Malformed,
                    "Authorization must be a Bearer token".into(),
                )
                .await
            }
        },
        [] => return refuse(&gw, rec, Reason::Malformed, "no federation token".into()).await,
        _ => {
            return refuse(
                &gw,
                rec,
                Reason::Malformed,
                "more than one Authorization header".into(),
            )
            .await
        }
    };
    let trust = gw.trust.get();
    let ctx = TokenContext {
        bundles: &trust.bundles,
        local_td: &gw.cfg.trust_domain,
        local_gateway: &gw.cfg.gateway_id,
        agreements: &trust.agreements,
        peer: &peer,
        now,
    };
    let mut first = verify_token(&token, &ctx);
    // A key we do not know yet may be a partner's freshly rotated key: refetch its bundle once
    // (rate-limited) and try again before refusing.
    if let Err(e) = &first {
        if e.reason == Reason::UnknownKey
            && super::lifecycle::may_force(&gw, peer.id.trust_domain_str())
        {
            let td = peer.id.trust_domain();
            match super::lifecycle::refresh_now(&gw, &td).await {
                Ok(_) => {
                    let trust2 = gw.trust.get();
                    let ctx2 = TokenContext {
                        bundles: &trust2.bundles,
                        agreements: &trust2.agreements,
                        ..ctx
                    };
                    first = verify_token(&token, &ctx2);
                }
                Err(err) => {
                    tracing::warn!(domain = %td, error = %err, "bundle refetch after an unknown kid failed")
                }
            }
        }
    }
    let trust = gw.trust.get();
    let vt: VerifiedToken = match first {
        Ok(v) => v,
        Err(e) => {
            if let Some(c) = &e.claims {
                fill_from_token(&mut rec, c);
            }
            return refuse(&gw, rec, e.reason, e.message).await;
        }
    };
    fill_from_token(&mut rec, &vt.claims);
    rec.partner = Some(vt.issuer_td.to_string());
    let span = tracing::info_span!("ingress", crossing = %vt.claims.jti, task = %vt.claims.txn);
    async move {
        let issuer = vt.issuer_td.as_str();
        let c = &vt.claims;
        let revoked = gw
            .state
            .is_revoked(issuer, RevocationKind::Jti, &c.jti, now)
            || gw
                .state
                .is_revoked(issuer, RevocationKind::Agent, &c.act.sub, now)
            || gw
                .state
                .is_revoked(issuer, RevocationKind::Task, &c.txn, now)
            || c.sub
                .as_deref()
                .map(|p| {
                    gw.state
                        .is_revoked(issuer, RevocationKind::Principal, p, now)
                })
                .unwrap_or(false)
            || gw.state.is_revoked(
                gw.cfg.trust_domain.as_str(),
                RevocationKind::Agent,
                &c.tgt,
                now,
            );
        if revoked {
            return refuse(
                &gw,
                rec,
                Reason::Revoked,
                "the token, its agent, task or principal is revoked".into(),
            )
            .await;
        }
        let path = uri.path().strip_prefix("/ingress").unwrap_or("");
        if !canonical_path(path) {
            return refuse(
                &gw,
                rec,
                Reason::RouteDenied,
                "the path is not in canonical form".into(),
            )
            .await;
        }
        let Some(flow) = vt.decision.flow.and_then(|i| vt.agreement.flows.get(i)) else {
            return refuse(&gw, rec, Reason::RuleDenied, "no flow".into()).await;
        };
        let Some(route) = flow.route_for(method.as_str(), path, &vt.scope) else {
            let m = format!(
                "no route of flow {} allows {} {path} with [{}]",
                flow.index, method, vt.scope
            );
            return refuse(&gw, rec, Reason::RouteDenied, m).await;
        };
        let Some((_, upstream)) = gw.cfg.upstreams.iter().find(|(p, _)| p.matches(&vt.target))
        else {
            return refuse(
                &gw,
                rec,
                Reason::RouteDenied,
                format!("no upstream serves {}", vt.target),
            )
            .await;
        };
        let granted = vt
            .scope
            .intersect(&ScopeSet::from_scopes(vec![route.scope.clone()]).unwrap_or_default());
        rec.scope_granted = granted.to_strings();
        if let Some(policy) = &trust.policy {
            let input = crossing_input(
                "inbound",
                &c.act.sub,
                &c.tgt,
                &vt.scope.to_strings(),
                &granted.to_strings(),
                &vt.scope.to_strings(),
                &c.agr,
                c.sub.as_deref(),
                &c.txn,
                c.dep as usize,
                &[c.act.sub.as_str()],
                c.exp,
                now,
            );
            match policy.deny_messages(&input) {
                Ok(m) if m.is_empty() => {}
                Ok(m) => return refuse(&gw, rec, Reason::PolicyDenied, m.join("; ")).await,
                Err(e) => {
                    return refuse(
                        &gw,
                        rec,
                        Reason::PolicyDenied,
                        format!("local policy failed: {e}"),
                    )
                    .await
                }
            }
        }
        // First use wins; only a crossing that passed every other check uses up the token.
        match gw.state.replay_insert(&c.jti, c.exp) {
            Ok(true) => {}
            Ok(false) => {
                return refuse(
                    &gw,
                    rec,
                    Reason::Replayed,
                    "this token was already used".into(),
                )
                .await
            }
            Err(e) => return refuse(&gw, rec, Reason::AuditUnavailable, e.to_string()).await,
        }
        let key = gw.keys.signing();
        let foreign = vt.actor.clone();
        let link = match crate::chain::mint_crossing_link(
            &key,
            &gw.cfg.gateway_id,
            &vt.target,
            &foreign,
            &token,
            &c.jti,
            c.dep,
            &granted,
            &c.txn,
            now,
            c.exp,
        ) {
            Ok(l) => l,
            Err(e) => {
                let _ = gw.state.replay_remove(&c.jti);
                return refuse(
                    &gw,
                    rec,
                    Reason::RouteDenied,
                    format!("cannot mint the crossing link: {e}"),
                )
                .await;
            }
        };
        rec.decision = "allow".into();
        let appended = match append(&gw, rec.clone()).await {
            Ok(a) => a,
            Err(e) => {
                let _ = gw.state.replay_remove(&c.jti);
                return Denial::new(Reason::AuditUnavailable, e.to_string(), &c.jti)
                    .into_response();
            }
        };
        gw.metrics.inc(
            "fedgate_crossings_total",
            &[("direction", "inbound"), ("decision", "allow")],
        );
        let receipt = mint_receipt(
            &key,
            &ReceiptClaims {
                crossing: c.jti.clone(),
                seq: appended.seq,
                leaf: crate::crypto::b64url(&appended.leaf),
                iat: now,
            },
        )
        .ok();

        // Forward with the crossing link as the only credential.
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let url = format!("{}{}{}", upstream.url, path, query);
        let mut out_headers = proxy::strip_headers(&headers, &[]);
        if let Some(v) = proxy::header(&link) {
            out_headers.insert("delegation-chain", v);
        }
        let mut req = http::Request::new(proxy::limit_body(body, gw.cfg.max_body_bytes));
        *req.method_mut() = method;
        *req.headers_mut() = out_headers;
        match url.parse::<Uri>() {
            Ok(u) => *req.uri_mut() = u,
            Err(_) => {
                return Denial::new(Reason::RouteDenied, "bad upstream URL", &c.jti).into_response()
            }
        }
        let timeout = std::time::Duration::from_secs(gw.cfg.upstream_timeout as u64);
        let result = if upstream.tls {
            tokio::time::timeout(timeout, gw.upstream_tls.request(req)).await
        } else {
            tokio::time::timeout(timeout, gw.upstream_http.request(req)).await
        };
        let mut outcome = base_record(&gw, "inbound", &c.jti, true);
        outcome.kind = "outcome".into();
        outcome.mode = Some("ingress".into());
        outcome.ref_seq = Some(appended.seq);
        outcome.partner = rec.partner.clone();
        outcome.agreement = rec.agreement.clone();
        outcome.source = rec.source.clone();
        outcome.target = rec.target.clone();
        outcome.txn = rec.txn.clone();
        outcome.latency_ms = Some(started.elapsed().as_millis() as u64);
        let resp = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                outcome.status = Some(502);
                outcome.reason = Some(Reason::PartnerUnavailable.code().into());
                let _ = append(&gw, outcome).await;
                return Denial::new(
                    Reason::PartnerUnavailable,
                    format!("upstream failed: {e}"),
                    &c.jti,
                )
                .into_response();
            }
            Err(_) => {
                outcome.status = Some(504);
                outcome.reason = Some(Reason::PartnerUnavailable.code().into());
                let _ = append(&gw, outcome).await;
                let mut r = Denial::new(Reason::PartnerUnavailable, "upstream timed out", &c.jti)
                    .into_response();
                *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                return r;
            }
        };
        let (parts, incoming) = resp.into_parts();
        outcome.status = Some(parts.status.as_u16());
        // The decision was durable before forwarding; the outcome is logged off the response
        // path (still group-committed).
        super::append_later(&gw, outcome);
        let mut out = Response::new(proxy::limit_body(incoming, gw.cfg.max_body_bytes));
        *out.status_mut() = parts.status;
        let mut h = proxy::strip_response_headers(&parts.headers);
        h.remove("fedgate-receipt");
        h.remove("delegation-chain");
        if let Some(v) = receipt.as_deref().and_then(proxy::header) {
            h.insert("fedgate-receipt", v);
        }
        *out.headers_mut() = h;
        out
    }
    .instrument(span)
    .await
}

/// `GET /bundle`: this domain's bundle (no client certificate needed).
pub async fn bundle(State(gw): State<Arc<Gateway>>) -> Response {
    let trust = gw.trust.get();
    match trust.bundles.get(&gw.cfg.trust_domain) {
        Some(b) => (
            [(http::header::CONTENT_TYPE, "application/json")],
            b.to_json(),
        )
            .into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no local bundle").into_response(),
    }
}

/// `POST /v1/revocations`: a partner's signed revocation notice.
pub async fn revocations(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Response {
    let now = crate::time::now();
    let crossing = crate::crypto::random_id();
    // Refused notices are audited like any denial.
    let mut refused = base_record(&gw, "inbound", &crossing, false);
    refused.kind = "revocation".into();
    refused.mode = Some("notice".into());
    refused.partner = conn
        .peer
        .as_ref()
        .map(|p| p.id.trust_domain_str().to_string());
    refused.source = conn.peer.as_ref().map(|p| p.id.to_string());
    let Some(peer) = conn.peer.clone() else {
        return refuse(
            &gw,
            refused,
            Reason::BadSvid,
            "a client certificate is required".into(),
        )
        .await;
    };
    let bytes = match proxy::read_body(body, crate::jose::MAX_JWS_BYTES).await {
        Ok(b) => b,
        Err(_) => return refuse(&gw, refused, Reason::TooLarge, "notice too large".into()).await,
    };
    let text = String::from_utf8_lossy(&bytes).to_string();
    let trust = gw.trust.get();
    let (claims, iss) = match crate::federation::notice::verify_notice(&text, &trust.bundles) {
        Ok(x) => x,
        Err(e) => return refuse(&gw, refused, Reason::BadSignature, e).await,
    };
    // Only a partner's gateway, over its own connection, may revoke in its domain.
    let is_gateway = trust.agreements.iter().any(|a| {
        a.domain(&gw.cfg.trust_domain).is_some()
            && a.domain_str(iss.trust_domain_str())
                .map(|d| d.gateway_id == iss)
                .unwrap_or(false)
    });
    if iss != peer.id || !is_gateway {
        return refuse(
            &gw,
            refused,
            Reason::IssuerMismatch,
            "notices come from the partner gateway itself".into(),
        )
        .await;
    }
    let r = crate::store::Revocation {
        domain: iss.trust_domain_str().to_string(),
        kind: claims.kind.clone(),
        value: claims.value.clone(),
        until: claims.until,
        at: now,
    };
    if let Err(e) = gw.state.revoke(&r) {
        return Denial::new(Reason::AuditUnavailable, e.to_string(), &crossing).into_response();
    }
    gw.chains.clear();
    let mut rec = base_record(&gw, "inbound", &claims.jti, true);
    rec.kind = "revocation".into();
    rec.mode = Some("notice".into());
    rec.partner = Some(iss.trust_domain_str().to_string());
    rec.source = Some(iss.to_string());
    rec.revocation = Some(
        serde_json::json!({"kind": claims.kind, "value": claims.value, "until": claims.until, "domain": r.domain}),
    );
    if let Err(e) = append(&gw, rec).await {
        return Denial::new(Reason::AuditUnavailable, e.to_string(), &crossing).into_response();
    }
    gw.metrics.inc(
        "fedgate_revocations_received_total",
        &[("domain", iss.trust_domain_str())],
    );
    tracing::info!(kind = %claims.kind, from = %iss, "revocation notice accepted");
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"accepted": true, "jti": claims.jti})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn canonical_paths() {
        for ok in ["/analytics/run", "/a", "/a/b.c/d-e"] {
            assert!(super::canonical_path(ok), "{ok}");
        }
        for bad in [
            "",
            "a",
            "//x",
            "/a/../b",
            "/a/./b",
            "/a/..",
            "/a%2fb",
            "/a%2E%2e/b",
            "/a\\b",
            "/x%00",
        ] {
            assert!(!super::canonical_path(bad), "{bad}");
        }
    }
}
