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
use crate::federation::receipt::{mint_receipt, ReceiptClaims};
use crate::federation::{verify_token, TokenContext, VerifiedToken};
use crate::reason::Reason;
use crate::scope::ScopeSet;

pub use crate::hygiene::{path_problem, MAX_PATH_BYTES};

async fn refuse(gw: &Gateway, rec: Record, reason: Reason, message: String) -> Response {
    super::deny(gw, rec, reason, message).await.into_response()
}

/// [`refuse`], in the JSON-RPC shape when the request was an MCP or A2A call.
async fn refuse_rpc(
    gw: &Gateway,
    rec: Record,
    id: Option<&serde_json::Value>,
    reason: Reason,
    message: String,
) -> Response {
    super::deny(gw, rec, reason, message)
        .await
        .rpc(id)
        .into_response()
}

/// A request body held in memory, with its share of the gateway's buffering budget.
type Held = (bytes::Bytes, Option<tokio::sync::OwnedSemaphorePermit>);

/// Reads an MCP or A2A request body whole (bounded by [`protocol::MAX_RPC_BODY_BYTES`] and the
/// gateway's body limit and timeout, within the buffering budget every request shares) and
/// classifies it.
async fn read_and_classify(
    gw: &Gateway,
    protocol: super::protocol::Protocol,
    method: &Method,
    path: &str,
    body: Body,
) -> Result<(Held, super::protocol::Call), super::protocol::Refused> {
    let limit = super::protocol::MAX_RPC_BODY_BYTES.min(gw.cfg.max_body_bytes);
    let held = proxy::read_body_budgeted(body, limit, gw.cfg.conn.body_timeout, &gw.buffer_budget)
        .await
        .map_err(|e| {
            let (r, m) = match e {
                proxy::BodyError::TooLarge => (
                    Reason::TooLarge,
                    format!("{} request body over {limit} bytes", protocol.as_str()),
                ),
                proxy::BodyError::Busy => (Reason::RateLimited, "busy".into()),
                proxy::BodyError::TimedOut => (
                    Reason::Malformed,
                    "the request body did not arrive in time".into(),
                ),
                proxy::BodyError::Read(m) => (Reason::Malformed, m),
            };
            let what = serde_json::json!({"name": protocol.as_str()});
            (r, m, Some(serde_json::Value::Null), Some(what))
        })?;
    let call = super::protocol::classify(protocol, method.as_str(), path, &held.0)?;
    Ok((held, call))
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

/// The bearer token of a request: `Ok(None)` when there is none at all (an unauthenticated
/// request on the federation listener, SPEC section 7), `Err` when it is not usable.
fn bearer(headers: &HeaderMap) -> Result<Option<String>, &'static str> {
    let auths: Vec<&http::HeaderValue> = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .collect();
    match auths.as_slice() {
        [] => Ok(None),
        [one] => match one.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")) {
            Some(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
            _ => Ok(None),
        },
        _ => Err("more than one Authorization header"),
    }
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
    let mut rec = base_record(&gw, "inbound", &crate::crypto::random_id(), false);
    rec.mode = Some("ingress".into());
    rec.authenticated = Some(false);
    rec.partner = Some(peer.id.trust_domain_str().to_string());
    rec.source = Some(peer.id.to_string());
    rec.peer = Some(peer.id.to_string());
    let token = match bearer(&headers) {
        Ok(Some(t)) => t,
        Ok(None) => {
            let mut r = super::refuse_unauthenticated(
                &gw,
                "federation",
                &conn,
                Reason::Malformed,
                "no federation token (Authorization: Bearer)",
            )
            .into_response();
            // An MCP client is told where the resource's metadata is (RFC 9728 section 5.1).
            let mcp = gw
                .cfg
                .upstreams
                .iter()
                .any(|(_, u)| u.protocol == super::protocol::Protocol::Mcp);
            if let (true, Some(own)) = (mcp, own_url(&gw, &gw.trust.get())) {
                let at = format!(
                    "Bearer resource_metadata=\"{}{}\"",
                    own.trim_end_matches('/'),
                    super::protocol::mcp::metadata_path(uri.path())
                );
                if let Some(v) = proxy::header(&at) {
                    r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
                }
            }
            return r;
        }
        Err(m) => return refuse(&gw, rec, Reason::Malformed, m.into()).await,
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
        let mut body_stream: Option<Body> = None;
        let c = &vt.claims;
        if !gw.state.ready() {
            let m = "the shared state store is unreachable or behind".to_string();
            return refuse(&gw, rec, Reason::StateUnavailable, m).await;
        }
        if let Some(what) = vt.terminated(&gw.cfg.trust_domain, gw.state.revocations(), now) {
            return refuse(&gw, rec, Reason::AgreementTerminated, what).await;
        }
        if let Some(what) = vt.revoked(&gw.cfg.trust_domain, gw.state.revocations(), now) {
            return refuse(&gw, rec, Reason::Revoked, format!("{what} is revoked")).await;
        }
        let path = uri.path().strip_prefix("/ingress").unwrap_or("");
        if let Some(why) = path_problem(path) {
            return refuse(
                &gw,
                rec,
                Reason::RouteDenied,
                format!("the path is not in canonical form: {why}"),
            )
            .await;
        }
        if let Some(q) = uri.query() {
            if q.len() > MAX_PATH_BYTES {
                return refuse(&gw, rec, Reason::TooLarge, "query too long".into()).await;
            }
        }
        let Some(flow) = vt.decision.flow.and_then(|i| vt.agreement.flows.get(i)) else {
            return refuse(&gw, rec, Reason::RuleDenied, "no flow".into()).await;
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
        // An MCP or A2A upstream: each JSON-RPC call is classified and needs its own scope
        // (server/protocol/); refusals answer in JSON-RPC's shape.
        let mut rpc = None;
        let route = if upstream.protocol.is_rpc() {
            let (bytes, call) =
                match read_and_classify(&gw, upstream.protocol, &method, path, body).await {
                    Ok(x) => x,
                    Err((reason, m, id, what)) => {
                        rec.protocol = what;
                        let d = super::deny(&gw, rec, reason, m).await;
                        return d.rpc(id.as_ref()).into_response();
                    }
                };
            rec.protocol = Some(call.describe());
            match call.route(flow, method.as_str(), path, &vt.scope) {
                Ok(r) => {
                    rpc = Some((bytes, call));
                    r
                }
                Err(m) => {
                    let id = call.id.clone();
                    let d = super::deny(&gw, rec, Reason::RouteDenied, m).await;
                    return d.rpc(id.as_ref()).into_response();
                }
            }
        } else {
            body_stream = Some(body);
            let Some(route) = flow.route_for(method.as_str(), path, &vt.scope) else {
                let m = format!(
                    "no route of flow {} allows {} {path} with [{}]",
                    flow.index, method, vt.scope
                );
                return refuse(&gw, rec, Reason::RouteDenied, m).await;
            };
            route
        };
        let rpc_id = rpc.as_ref().and_then(|(_, c)| c.id.clone());
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let upstream_uri = match format!("{}{}{}", upstream.url, path, query).parse::<Uri>() {
            Ok(u) => u,
            Err(_) => {
                return refuse_rpc(
                    &gw,
                    rec,
                    rpc_id.as_ref(),
                    Reason::RouteDenied,
                    "bad upstream URL".into(),
                )
                .await
            }
        };
        let granted = match &rpc {
            Some((_, call)) => call.granted(&vt.scope, route),
            None => vt
                .scope
                .intersect(&ScopeSet::from_scopes(vec![route.scope.clone()]).unwrap_or_default()),
        };
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
                Ok(m) => {
                    return refuse_rpc(
                        &gw,
                        rec,
                        rpc_id.as_ref(),
                        Reason::PolicyDenied,
                        m.join("; "),
                    )
                    .await
                }
                Err(e) => {
                    return refuse_rpc(
                        &gw,
                        rec,
                        rpc_id.as_ref(),
                        Reason::PolicyDenied,
                        format!("local policy failed: {e}"),
                    )
                    .await
                }
            }
        }
        // Nothing minted here outlives the agreement's cap, whatever the token says.
        let exp = c.exp.min(now.saturating_add(vt.agreement.max_token_ttl));
        let issuer = vt.issuer_td.as_str();
        // First use wins; only a crossing that passed every other check uses up the token.
        // The token id is remembered for as long as the token itself could be accepted
        // (`exp` plus the agreement's skew), not just as long as the crossing link lives.
        let keep = c.exp.saturating_add(vt.agreement.clock_skew);
        match gw.state.replay_insert(issuer, &c.jti, keep).await {
            Ok(true) => {}
            Ok(false) => {
                return refuse_rpc(
                    &gw,
                    rec,
                    rpc_id.as_ref(),
                    Reason::Replayed,
                    "this token was already used".into(),
                )
                .await
            }
            Err(e) => {
                return refuse_rpc(
                    &gw,
                    rec,
                    rpc_id.as_ref(),
                    Reason::StateUnavailable,
                    e.to_string(),
                )
                .await
            }
        }
        let key = gw.keys.signing();
        let foreign = vt.actor.clone();
        let link = match crate::chain::mint_crossing_link(
            &key,
            &crate::chain::CrossingLink {
                gateway: &gw.cfg.gateway_id,
                target: &vt.target,
                foreign_actor: &foreign,
                federation_token: &token,
                crossing: &c.jti,
                dep: c.dep,
                scope: &granted,
                task: &c.txn,
                agreement: &c.agr,
                principal: c.sub.as_deref(),
                now,
                exp,
            },
        ) {
            Ok(l) => l,
            Err(e) => {
                let _ = gw.state.replay_remove(issuer, &c.jti).await;
                return refuse_rpc(
                    &gw,
                    rec,
                    rpc_id.as_ref(),
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
                let _ = gw.state.replay_remove(issuer, &c.jti).await;
                return Denial::new(Reason::AuditUnavailable, e.to_string(), &c.jti)
                    .rpc(rpc_id.as_ref())
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
                replica: gw.cfg.replica.clone(),
            },
        );

        // From here on the crossing was allowed and recorded: every way out writes its outcome.
        let mut outcome = base_record(&gw, "inbound", &c.jti, true);
        outcome.kind = "outcome".into();
        outcome.mode = Some("ingress".into());
        outcome.ref_seq = Some(appended.seq);
        outcome.partner = rec.partner.clone();
        outcome.agreement = rec.agreement.clone();
        outcome.source = rec.source.clone();
        outcome.target = rec.target.clone();
        outcome.txn = rec.txn.clone();
        // Every crossing forwarded comes with its signed receipt: none, no forwarding.
        let receipt = match receipt {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(crossing = %c.jti, error = %e, "cannot sign the receipt");
                outcome.status = Some(503);
                let _ = append(&gw, outcome).await;
                return Denial::new(
                    Reason::StateUnavailable,
                    "the receipt could not be signed",
                    &rec.crossing,
                )
                .rpc(rpc_id.as_ref())
                .into_response();
            }
        };

        // Forward with the crossing link as the only credential, and the gateway's own view
        // of where the request came from.
        let Some(out_headers) =
            crate::hygiene::prepare_ingress(&headers, &trust.strip_ingress, &link, conn.remote)
        else {
            outcome.status = Some(502);
            let _ = append(&gw, outcome).await;
            return Denial::new(
                Reason::Malformed,
                "the crossing link is not a header value",
                &rec.crossing,
            )
            .rpc(rpc_id.as_ref())
            .into_response();
        };
        let mut out_headers = out_headers;
        outcome.protocol = rec.protocol.clone();
        // The request body's budget share is held until the upstream has answered.
        let mut _held_permit = None;
        let (req_body, card) = match rpc {
            Some(((bytes, permit), call)) => {
                _held_permit = permit;
                (Body::from(bytes), call.card)
            }
            None => (
                proxy::without_trailers(proxy::limit_body(
                    body_stream.take().unwrap_or_else(Body::empty),
                    gw.cfg.max_body_bytes,
                )),
                false,
            ),
        };
        // An MCP server is an OAuth resource server: it gets a token minted for its resource
        // alone (never the federation token, which was stripped with every other credential).
        if let (super::protocol::Protocol::Mcp, Some(resource)) =
            (upstream.protocol, upstream.resource.as_deref())
        {
            let claims = super::protocol::mcp::ResourceClaims {
                iss: gw.cfg.gateway_id.to_string(),
                sub: c.act.sub.clone(),
                aud: resource.to_string(),
                client_id: c.iss.clone(),
                scope: granted.to_spaced(),
                txn: c.txn.clone(),
                crossing: c.jti.clone(),
                iat: now,
                nbf: now,
                exp: super::protocol::mcp::resource_exp(now, exp),
                jti: crate::crypto::random_id(),
            };
            let bearer = super::protocol::mcp::mint_resource_token(&key, &claims)
                .ok()
                .and_then(|t| proxy::header(&format!("Bearer {t}")));
            let Some(v) = bearer else {
                outcome.status = Some(503);
                let _ = append(&gw, outcome).await;
                return Denial::new(
                    Reason::StateUnavailable,
                    "the resource token could not be signed",
                    &rec.crossing,
                )
                .rpc(rpc_id.as_ref())
                .into_response();
            };
            out_headers.insert(http::header::AUTHORIZATION, v);
        }
        let mut req = http::Request::new(req_body);
        *req.method_mut() = method;
        *req.headers_mut() = out_headers;
        *req.uri_mut() = upstream_uri;
        let timeout = std::time::Duration::from_secs(gw.cfg.upstream_timeout as u64);
        let result = if upstream.tls {
            tokio::time::timeout(timeout, gw.upstream_tls.request(req)).await
        } else {
            tokio::time::timeout(timeout, gw.upstream_http.request(req)).await
        };
        outcome.latency_ms = Some(started.elapsed().as_millis() as u64);
        let resp = match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                outcome.status = Some(502);
                outcome.reason = Some(Reason::PartnerUnavailable.code().into());
                super::append_later(&gw, outcome);
                return Denial::new(
                    Reason::PartnerUnavailable,
                    format!("upstream failed: {e}"),
                    &c.jti,
                )
                .rpc(rpc_id.as_ref())
                .into_response();
            }
            Err(_) => {
                outcome.status = Some(504);
                outcome.reason = Some(Reason::PartnerUnavailable.code().into());
                super::append_later(&gw, outcome);
                let mut r = Denial::new(Reason::PartnerUnavailable, "upstream timed out", &c.jti)
                    .rpc(rpc_id.as_ref())
                    .into_response();
                *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                return r;
            }
        };
        let (mut parts, incoming) = resp.into_parts();
        outcome.status = Some(parts.status.as_u16());
        let a2a = upstream.protocol == super::protocol::Protocol::A2a;
        let whole_json = a2a
            && parts.status.is_success()
            && (card
                || (parts.headers.contains_key(http::header::CONTENT_LENGTH)
                    && parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|t| t.starts_with("application/json"))));
        let mut out = if whole_json {
            // A2A: the card is re-signed for the boundary; a JSON answer is read whole (it has
            // a length) so the outcome can name the task it created.
            let limit = if card {
                super::protocol::a2a::MAX_CARD_BYTES
            } else {
                gw.cfg.max_body_bytes
            };
            let deadline = tokio::time::Instant::now()
                + std::time::Duration::from_secs(gw.cfg.upstream_timeout as u64);
            let read = proxy::read_whole(incoming, limit, deadline, &gw.buffer_budget).await;
            let (bytes, answer_permit) = match read {
                Ok(w) => (w.bytes, w.permit),
                Err(e) => {
                    outcome.status = Some(502);
                    outcome.reason = Some(Reason::PartnerUnavailable.code().into());
                    super::append_later(&gw, outcome);
                    let m = format!("the upstream's answer could not be read: {e:?}");
                    return Denial::new(Reason::PartnerUnavailable, m, &c.jti)
                        .rpc(rpc_id.as_ref())
                        .into_response();
                }
            };
            let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            let body = if card {
                let own = vt
                    .agreement
                    .domain(&gw.cfg.trust_domain)
                    .map(|d| d.gateway_url.clone())
                    .unwrap_or_default();
                let url = super::protocol::a2a::boundary_url(&own, path);
                match json.map(|j| super::protocol::a2a::sign_card(&j, &url, &key)) {
                    Some(Ok(signed)) => bytes::Bytes::from(signed.to_string()),
                    other => {
                        let m = match other {
                            Some(Err(e)) => e,
                            _ => "the upstream's AgentCard is not JSON".into(),
                        };
                        outcome.status = Some(502);
                        outcome.reason = Some(Reason::PartnerUnavailable.code().into());
                        super::append_later(&gw, outcome);
                        return Denial::new(Reason::PartnerUnavailable, m, &c.jti).into_response();
                    }
                }
            } else {
                if let Some(task) = json
                    .as_ref()
                    .and_then(super::protocol::a2a::task_in_response)
                {
                    let p = outcome
                        .protocol
                        .get_or_insert_with(|| serde_json::json!({"name": "a2a"}));
                    p["task"] = serde_json::Value::String(task);
                }
                bytes
            };
            parts.headers.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from(body.len()),
            );
            if card {
                parts.headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
            }
            // The answer stays counted in the buffering budget until it is sent.
            Response::new(proxy::body_holding(body, answer_permit))
        } else {
            Response::new(proxy::limit_body(incoming, gw.cfg.max_body_bytes))
        };
        *out.status_mut() = parts.status;
        // The upstream's cookies and our own headers never leave with the answer.
        let mut h = crate::hygiene::strip_response_headers(&parts.headers);
        h.remove(http::header::SET_COOKIE);
        h.remove("set-cookie2");
        h.remove("delegation-chain");
        let ours: Vec<http::HeaderName> = h
            .keys()
            .filter(|k| k.as_str().starts_with("fedgate-"))
            .cloned()
            .collect();
        for k in ours {
            h.remove(k);
        }
        if let Some(v) = receipt.as_deref().and_then(proxy::header) {
            h.insert("fedgate-receipt", v);
        }
        // A known length tells the signing layer the answer can be read whole and signed in
        // headers; without one it is streamed and signed in trailers.
        if let Some(v) = parts.headers.get(http::header::CONTENT_LENGTH) {
            h.insert(http::header::CONTENT_LENGTH, v.clone());
        }
        if let Some(v) = proxy::header(&c.jti) {
            h.insert(crate::federation::httpsig::CROSSING_HEADER, v);
        }
        *out.headers_mut() = h;
        // The decision was durable before forwarding; the outcome (with the digest of the
        // answer, once signed) is logged off the response path by the signing layer.
        out.extensions_mut()
            .insert(super::response::PendingOutcome(outcome));
        out
    }
    .instrument(span)
    .await
}

/// This gateway's own boundary URL, as its agreements name it.
fn own_url(gw: &Gateway, trust: &super::trust::Trust) -> Option<String> {
    trust.agreements.iter().find_map(|a| {
        a.domain(&gw.cfg.trust_domain)
            .map(|d| d.gateway_url.clone())
    })
}

/// `GET /.well-known/oauth-protected-resource/ingress/{path}`: RFC 9728 metadata of an MCP
/// resource behind this gateway (404 when no upstream speaks MCP). The scopes are listed only
/// to an authenticated partner gateway, from the MCP routes of the agreements with it.
pub async fn resource_metadata(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    uri: Uri,
) -> Response {
    let any_mcp = gw
        .cfg
        .upstreams
        .iter()
        .any(|(_, u)| u.protocol == super::protocol::Protocol::Mcp);
    let trust = gw.trust.get();
    let (true, Some(own)) = (any_mcp, own_url(&gw, &trust)) else {
        return (StatusCode::NOT_FOUND, "no MCP resource here").into_response();
    };
    let path = uri
        .path()
        .strip_prefix("/.well-known/oauth-protected-resource")
        .unwrap_or("");
    if path_problem(path.strip_prefix("/ingress").unwrap_or(path)).is_some() {
        return (StatusCode::NOT_FOUND, "no such resource").into_response();
    }
    let mut scopes: Vec<String> = Vec::new();
    if let Some(peer) = &conn.peer {
        for a in trust.agreements.iter() {
            if a.domain(&gw.cfg.trust_domain).is_none()
                || a.domain(&peer.id.trust_domain()).is_none()
            {
                continue;
            }
            for f in &a.flows {
                for r in &f.routes {
                    let s = r.scope.to_string();
                    if r.protocol == super::protocol::Protocol::Mcp && !scopes.contains(&s) {
                        scopes.push(s);
                    }
                }
            }
        }
    }
    let doc =
        super::protocol::mcp::metadata(&format!("{}{path}", own.trim_end_matches('/')), &scopes);
    (
        [(http::header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
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

/// `POST /v1/revocations`: a partner's signed revocation notice. Merged with what is already
/// revoked (never lifting anything); a notice older than the newest applied for the same value,
/// or one whose `until` has passed, is acknowledged and changes nothing.
pub async fn revocations(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Response {
    let now = crate::time::now();
    let crossing = crate::crypto::random_id();
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
    // Refused notices from an authenticated peer are audited like any denial.
    let mut refused = base_record(&gw, "inbound", &crossing, false);
    refused.kind = "revocation".into();
    refused.mode = Some("notice".into());
    refused.partner = Some(peer.id.trust_domain_str().to_string());
    refused.source = Some(peer.id.to_string());
    refused.peer = Some(peer.id.to_string());
    let bytes =
        match proxy::read_body_within(body, crate::jose::MAX_JWS_BYTES, gw.cfg.conn.body_timeout)
            .await
        {
            Ok(b) => b,
            Err(_) => {
                return refuse(&gw, refused, Reason::TooLarge, "notice too large".into()).await
            }
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
    if claims.kind == "agreement"
        && !trust.agreements.iter().any(|a| {
            a.id == claims.value
                && a.domain(&gw.cfg.trust_domain).is_some()
                && a.domain_str(iss.trust_domain_str()).is_some()
        })
    {
        return refuse(
            &gw,
            refused,
            Reason::NoAgreement,
            format!("no agreement {} between us to terminate", claims.value),
        )
        .await;
    }
    let r = crate::store::Revocation {
        domain: iss.trust_domain_str().to_string(),
        kind: claims.kind.clone(),
        value: claims.value.clone(),
        until: claims.until,
        at: now,
        notice_iat: Some(claims.iat),
    };
    let applied = if claims.until != 0 && claims.until <= now {
        "expired"
    } else {
        match gw.state.revoke(&r).await {
            Ok(crate::store::Revoked::Stale) => "stale",
            Ok(_) => "applied",
            Err(e) => {
                return Denial::new(Reason::StateUnavailable, e.to_string(), &crossing)
                    .into_response()
            }
        }
    };
    if applied == "applied" {
        gw.chains.clear();
    }
    let mut rec = base_record(&gw, "inbound", &claims.jti, true);
    rec.kind = "revocation".into();
    rec.mode = Some("notice".into());
    rec.partner = Some(iss.trust_domain_str().to_string());
    rec.source = Some(iss.to_string());
    rec.revocation = Some(serde_json::json!({
        "applied": applied,
        "domain": r.domain,
        "iat": claims.iat,
        "kind": claims.kind,
        "until": claims.until,
        "value": claims.value,
    }));
    if let Err(e) = append(&gw, rec).await {
        return Denial::new(Reason::AuditUnavailable, e.to_string(), &crossing).into_response();
    }
    gw.metrics.inc(
        "fedgate_revocations_received_total",
        &[("domain", iss.trust_domain_str()), ("result", applied)],
    );
    tracing::info!(kind = %claims.kind, from = %iss, result = applied, "revocation notice received");
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({"accepted": true, "applied": applied == "applied", "result": applied, "jti": claims.jti})),
    )
        .into_response()
}
