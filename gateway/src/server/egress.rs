//! The internal listener: RFC 8693 token exchange (`POST /v1/token`) and the egress forward
//! proxy (`ANY /egress/{*path}`). Both verify the caller's chain (the mTLS peer must be its
//! holder), ask the agreement and the local policy, and mint a bounded federation token; the
//! proxy then strips every internal credential and forwards to the partner's ingress.

use std::collections::HashMap;
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
use super::trust::Trust;
use super::{append, base_record};
use crate::agreement::rego::crossing_input;
use crate::agreement::{
    decide_among, Agreement, ChainDisclosure, CrossingRequest, Decision, PrincipalDisclosure,
};
use crate::audit::Record;
use crate::chain::{Policy, UnverifiedChain, VerifiedChain};
use crate::federation::{mint_token, pseudonym, Actor, Cnf, FederationClaims};
use crate::reason::Reason;
use crate::scope::ScopeSet;
use crate::spiffe::SpiffeId;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const SUBJECT_TOKEN_TYPE: &str = "urn:fedgate:token-type:delegation-chain";
pub const ISSUED_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Largest token-exchange form: a chain plus a few short parameters.
pub const MAX_FORM_BYTES: usize = crate::chain::MAX_CHAIN_BYTES + 8 * 1024;

/// A chain that verified and an agreement that allowed, before anything is minted.
pub struct Authorized {
    pub chain: Arc<VerifiedChain>,
    pub holder: SpiffeId,
    pub target: SpiffeId,
    pub requested: ScopeSet,
    pub decision: Decision,
    pub agreement: Arc<Agreement>,
    pub trust: Arc<Trust>,
    pub record: Record,
}

/// Writes a deny record and returns the denial.
async fn refuse(gw: &Gateway, rec: Record, reason: Reason, message: String) -> Denial {
    super::deny(gw, rec, reason, message).await.described()
}

/// Verifies the chain (cached by digest), that the peer holds it, and that the agreement and
/// the local policy allow `target` with `scope`.
pub async fn authorize(
    gw: &Gateway,
    conn: &ConnInfo,
    chain_raw: &str,
    target: &str,
    scope: &str,
    mode: &str,
    now: i64,
) -> Result<Authorized, Denial> {
    let mut rec = base_record(gw, "outbound", &crate::crypto::random_id(), false);
    rec.mode = Some(mode.into());
    rec.target = Some(target.chars().take(2048).collect());
    let trust = gw.trust.get();
    let Some(peer) = conn.peer.as_ref() else {
        return Err(refuse(gw, rec, Reason::NotHolder, "no client certificate".into()).await);
    };
    rec.source = Some(peer.id.to_string());
    rec.peer = Some(peer.id.to_string());
    // Revocations made at another replica must be visible here before anything is decided.
    if !gw.state.ready() {
        let m = "the shared state store is unreachable or behind".to_string();
        return Err(refuse(gw, rec, Reason::StateUnavailable, m).await);
    }
    let digest = crate::chain::chain_digest(chain_raw);
    rec.chain_digest = Some(digest.clone());
    let chain = match gw.chains.get(&digest, now) {
        Some(c) => {
            gw.metrics
                .inc("fedgate_chain_cache_total", &[("result", "hit")]);
            c
        }
        None => {
            gw.metrics
                .inc("fedgate_chain_cache_total", &[("result", "miss")]);
            let policy = Policy {
                max_links: gw.cfg.max_links,
                skew: gw.cfg.clock_skew,
                idps: Some(vec![gw.cfg.idp_id.clone()]),
                gateways: Some(vec![gw.cfg.gateway_id.clone()]),
                one_domain: true,
            };
            let v = UnverifiedChain::parse(chain_raw)
                .and_then(|c| c.verify(&trust.bundles, &policy, gw.state.revocations(), now));
            match v {
                Ok(v) => {
                    let v = Arc::new(v);
                    gw.chains.put(v.clone(), now);
                    v
                }
                Err(e) => return Err(refuse(gw, rec, e.reason(), e.to_string()).await),
            }
        }
    };
    rec.txn = Some(chain.task.clone());
    rec.depth = Some(chain.depth as u64);
    // A cached chain is re-checked against revocations (cheap, in memory), with the same
    // check a fresh verification runs.
    if let Err(e) = chain.revoked(gw.state.revocations(), now) {
        gw.chains.clear();
        return Err(refuse(gw, rec, Reason::Revoked, e.to_string()).await);
    }
    let holder = match chain.holder.agent() {
        Some(h) if *h == peer.id => h.clone(),
        _ => {
            let m = format!(
                "the chain's holder is {}, but the caller is {}",
                chain.holder, peer.id
            );
            return Err(refuse(gw, rec, Reason::NotHolder, m).await);
        }
    };
    let target = match SpiffeId::parse(target) {
        Ok(t) => t,
        Err(e) => return Err(refuse(gw, rec, Reason::Malformed, format!("target: {e}")).await),
    };
    rec.partner = Some(target.trust_domain_str().to_string());
    let requested = match ScopeSet::parse_spaced(scope) {
        Ok(s) if !s.is_empty() => s,
        Ok(_) => return Err(refuse(gw, rec, Reason::Malformed, "no scope requested".into()).await),
        Err(e) => return Err(refuse(gw, rec, Reason::Malformed, format!("scope: {e}")).await),
    };
    rec.scope_requested = requested.to_strings();
    if trust.bundles.get_str(target.trust_domain_str()).is_none()
        && !target.in_domain(&gw.cfg.trust_domain)
    {
        let m = format!("no bundle for {}", target.trust_domain_str());
        return Err(refuse(gw, rec, Reason::UnknownDomain, m).await);
    }
    let req = CrossingRequest::outbound(
        &gw.cfg.trust_domain,
        &chain,
        &holder,
        &target,
        &requested,
        now,
    );
    let t0 = std::time::Instant::now();
    // Only the versions in force for a sender (agreement/versions.rs), and none of an
    // agreement either party terminated.
    use crate::chain::Revocations as _;
    let rev = gw.state.revocations();
    let partner_td = target.trust_domain();
    let terminated = |a: &crate::agreement::Agreement| {
        [gw.cfg.trust_domain.as_str(), target.trust_domain_str()]
            .into_iter()
            .any(|d| rev.is_revoked(d, crate::chain::RevocationKind::Agreement, &a.id, now))
    };
    let sendable = crate::agreement::versions::sendable(&trust.agreements, now);
    let names_partner = |a: &&crate::agreement::Agreement| a.domain(&partner_td).is_some();
    let live: Vec<&crate::agreement::Agreement> = sendable
        .iter()
        .copied()
        .filter(|a| !terminated(a))
        .collect();
    if !sendable.iter().any(|a| names_partner(a) && !terminated(a))
        && sendable.iter().any(names_partner)
    {
        let m = format!(
            "every agreement with {} was terminated",
            target.trust_domain_str()
        );
        return Err(refuse(gw, rec, Reason::AgreementTerminated, m).await);
    }
    let decision = decide_among(live, &req);
    super::log_decision(&req, &decision, t0.elapsed());
    rec.agreement = decision.agr.clone();
    if !decision.allow {
        let r = decision.reason.unwrap_or(Reason::RuleDenied);
        return Err(refuse(gw, rec, r, decision.message.clone()).await);
    }
    rec.scope_granted = decision.granted.to_strings();
    let agreement = match trust
        .agreements
        .iter()
        .find(|a| decision.agr.as_deref() == Some(a.agr().as_str()))
    {
        Some(a) => a.clone(),
        None => {
            return Err(refuse(gw, rec, Reason::NoAgreement, "agreement vanished".into()).await)
        }
    };
    if let Some(policy) = &trust.policy {
        let agents = chain.agents();
        let input = crossing_input(
            "outbound",
            holder.as_str(),
            target.as_str(),
            &requested.to_strings(),
            &decision.granted.to_strings(),
            &chain.scope.to_strings(),
            decision.agr.as_deref().unwrap_or(""),
            Some(chain.root_principal()),
            &chain.task,
            chain.depth,
            &agents,
            chain.expires,
            now,
        );
        match policy.deny_messages(&input) {
            Ok(m) if m.is_empty() => {}
            Ok(m) => return Err(refuse(gw, rec, Reason::PolicyDenied, m.join("; ")).await),
            Err(e) => {
                return Err(refuse(
                    gw,
                    rec,
                    Reason::PolicyDenied,
                    format!("local policy failed: {e}"),
                )
                .await)
            }
        }
    }
    Ok(Authorized {
        chain,
        holder,
        target,
        requested,
        decision,
        agreement,
        trust,
        record: rec,
    })
}

/// Mints the federation token for an authorized crossing and fills the allow record.
pub fn mint(
    gw: &Gateway,
    a: &mut Authorized,
    cnf: Option<Cnf>,
    now: i64,
) -> Result<(String, FederationClaims), Denial> {
    let partner = a
        .agreement
        .domain_str(a.target.trust_domain_str())
        .ok_or_else(|| {
            Denial::new(
                Reason::NoAgreement,
                "agreement does not name the target's domain",
                &a.record.crossing,
            )
        })?;
    let disclosure = a
        .decision
        .disclosure
        .unwrap_or(crate::agreement::Disclosure {
            principal: PrincipalDisclosure::None,
            chain: ChainDisclosure::Digest,
        });
    let principal = a.chain.root_principal();
    let sub = match disclosure.principal {
        PrincipalDisclosure::Clear => Some(principal.to_string()),
        PrincipalDisclosure::Pseudonymous => Some(pseudonym(&gw.keys.pseudonym, principal)),
        PrincipalDisclosure::None => None,
    };
    let agents = a.chain.agents();
    let act =
        Actor::from_agents(&agents, disclosure.chain == ChainDisclosure::Full).unwrap_or(Actor {
            sub: a.holder.to_string(),
            act: None,
        });
    let jti = crate::crypto::random_id();
    let claims = FederationClaims {
        iss: gw.cfg.gateway_id.to_string(),
        aud: partner.gateway_id.to_string(),
        sub: sub.clone(),
        act,
        tgt: a.target.to_string(),
        scope: a.decision.granted.to_spaced(),
        txn: a.chain.task.clone(),
        agr: a.decision.agr.clone().unwrap_or_default(),
        chn: a.chain.digest.clone(),
        dep: a.chain.depth as u32,
        cnf,
        iat: now,
        nbf: now,
        exp: a.decision.token_exp,
        jti: jti.clone(),
    };
    let key = gw.keys.signing();
    let token = mint_token(&key, &claims).map_err(|e| {
        Denial::new(
            Reason::AuditUnavailable,
            format!("signing failed: {e}"),
            &jti,
        )
    })?;
    let r = &mut a.record;
    r.crossing = jti;
    r.decision = "allow".into();
    r.principal = sub;
    r.token_exp = Some(claims.exp);
    Ok((token, claims))
}

fn form_param<'a>(form: &'a HashMap<String, String>, k: &str) -> Option<&'a str> {
    form.get(k).map(|s| s.as_str())
}

/// The token-exchange form: (subject_token, audience, scope), or why it is refused.
fn token_form(bytes: &[u8]) -> Result<(String, String, String), String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(bytes).map_err(|e| format!("not a form: {e}"))?;
    let mut form = HashMap::new();
    for (k, v) in pairs {
        if form.insert(k.clone(), v).is_some() {
            return Err(format!("parameter {k} appears more than once"));
        }
    }
    if form_param(&form, "grant_type") != Some(GRANT_TYPE) {
        return Err("grant_type must be urn:ietf:params:oauth:grant-type:token-exchange".into());
    }
    if form_param(&form, "subject_token_type") != Some(SUBJECT_TOKEN_TYPE) {
        return Err("subject_token_type must be urn:fedgate:token-type:delegation-chain".into());
    }
    if form.contains_key("actor_token") {
        return Err("actor_token is not supported: the chain names every actor".into());
    }
    if let Some(t) = form_param(&form, "requested_token_type") {
        if t != ISSUED_TOKEN_TYPE {
            return Err("requested_token_type must be urn:ietf:params:oauth:token-type:jwt".into());
        }
    }
    match (
        form_param(&form, "subject_token"),
        form_param(&form, "audience"),
    ) {
        (Some(c), Some(a)) => Ok((
            c.trim().to_string(),
            a.to_string(),
            form_param(&form, "scope").unwrap_or("").to_string(),
        )),
        _ => Err("subject_token and audience are required".into()),
    }
}

/// `POST /v1/token`: RFC 8693 token exchange.
pub async fn token(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Response {
    let now = crate::time::now();
    if let Some(d) = budget(&gw, &conn) {
        return d.oauth().into_response();
    }
    let mut rec = base_record(&gw, "outbound", &crate::crypto::random_id(), false);
    rec.mode = Some("token_exchange".into());
    rec.source = conn.peer.as_ref().map(|p| p.id.to_string());
    rec.peer = rec.source.clone();
    let read = proxy::read_body_within(body, MAX_FORM_BYTES, gw.cfg.conn.body_timeout).await;
    let (chain, audience, scope) = match read {
        Err(proxy::BodyError::TooLarge) => {
            return refuse(&gw, rec, Reason::TooLarge, "form too large".into())
                .await
                .oauth()
                .into_response()
        }
        Err(proxy::BodyError::TimedOut) => {
            let m = "the request body did not arrive in time".to_string();
            return refuse(&gw, rec, Reason::Malformed, m)
                .await
                .oauth()
                .into_response();
        }
        Err(proxy::BodyError::Read(e)) => {
            return refuse(&gw, rec, Reason::Malformed, e)
                .await
                .oauth()
                .into_response()
        }
        Err(proxy::BodyError::Busy) => {
            return refuse(&gw, rec, Reason::RateLimited, "busy".into())
                .await
                .oauth()
                .into_response()
        }
        Ok(bytes) => match token_form(&bytes) {
            Ok(f) => f,
            Err(m) => {
                return refuse(&gw, rec, Reason::Malformed, m)
                    .await
                    .oauth()
                    .into_response()
            }
        },
    };
    let (chain, audience, scope) = (chain.as_str(), audience.as_str(), scope.as_str());
    let mut a = match authorize(&gw, &conn, chain, audience, scope, "token_exchange", now).await {
        Ok(a) => a,
        Err(d) => return d.oauth().into_response(),
    };
    // Bind the token to the requesting agent's certificate (RFC 8705), so only it can use it.
    let cnf = conn.peer.as_ref().map(|p| Cnf {
        x5t_s256: crate::crypto::b64url(&p.cert_sha256),
    });
    let (token, claims) = match mint(&gw, &mut a, cnf, now) {
        Ok(t) => t,
        Err(d) => return d.oauth().into_response(),
    };
    let span = tracing::info_span!("token_exchange", crossing = %claims.jti, task = %claims.txn);
    let _g = span.enter();
    if let Err(e) = append(&gw, a.record.clone()).await {
        return Denial::new(Reason::AuditUnavailable, e.to_string(), &claims.jti)
            .oauth()
            .into_response();
    }
    gw.metrics.inc(
        "fedgate_crossings_total",
        &[("direction", "outbound"), ("decision", "allow")],
    );
    tracing::info!(target_agent = %a.target, scope = %claims.scope, "token issued");
    let body = serde_json::json!({
        "access_token": token,
        "issued_token_type": ISSUED_TOKEN_TYPE,
        "token_type": "N_A",
        "expires_in": claims.exp.saturating_sub(now).max(0),
        "scope": claims.scope,
    });
    let mut r = (StatusCode::OK, axum::Json(body)).into_response();
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// The internal listener requires a client certificate at the TLS layer, so every caller is an
/// authenticated local agent; one that keeps being denied is slowed down.
fn budget(gw: &Gateway, conn: &ConnInfo) -> Option<Denial> {
    match &conn.peer {
        Some(p) => super::over_budget(gw, "internal", conn, p.id.as_str()),
        None => Some(super::refuse_unauthenticated(
            gw,
            "internal",
            conn,
            Reason::NotHolder,
            "a client certificate is required",
        )),
    }
}

/// The protocol of a request sent without `Fedgate-Scope`: an A2A card fetch, a request
/// with the `A2A-Version` header or an A2A method; otherwise MCP.
fn guess_protocol(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> super::protocol::Protocol {
    use super::protocol::{a2a, Protocol};
    if (method == Method::GET && a2a::is_card_path(path)) || headers.contains_key("a2a-version") {
        return Protocol::A2a;
    }
    let first_a2a = super::protocol::parse_rpc(body)
        .ok()
        .and_then(|m| m.into_iter().find_map(|x| x.method))
        .is_some_and(|m| a2a::is_a2a_method(&m));
    if first_a2a {
        Protocol::A2a
    } else {
        Protocol::Mcp
    }
}

/// The scope to ask for on behalf of an MCP or A2A call sent without `Fedgate-Scope`. Session
/// plumbing asks for the MCP scopes the chain's last link claims (read here without checking
/// signatures; `authorize` verifies the chain and that the request is within it).
fn derive_scope(
    call: &super::protocol::Call,
    chain: Option<&http::HeaderValue>,
) -> Result<String, String> {
    let held = chain
        .and_then(|v| v.to_str().ok())
        .and_then(|c| {
            let raw = c.trim();
            let last = raw.rsplit(crate::chain::SEPARATOR).next()?;
            let jws = crate::jose::parse_compact(last).ok()?;
            let v: serde_json::Value = serde_json::from_slice(&jws.payload).ok()?;
            let list: Vec<String> = v
                .get("scope")?
                .as_array()?
                .iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            ScopeSet::parse_list(&list).ok()
        })
        .unwrap_or_default();
    super::protocol::mcp::requested_scope(&call.needs, &held).map(|s| s.to_spaced())
}

/// Reads an egress request body whole: within the body limit and time, and the buffering
/// budget every request shares.
async fn read_egress_body(
    gw: &Gateway,
    body: Option<Body>,
) -> Result<(bytes::Bytes, Option<tokio::sync::OwnedSemaphorePermit>), proxy::BodyError> {
    proxy::read_body_budgeted(
        body.unwrap_or_else(Body::empty),
        gw.cfg.max_body_bytes,
        gw.cfg.conn.body_timeout,
        &gw.buffer_budget,
    )
    .await
}

/// The refusal of a request body that could not be read.
fn body_refusal(gw: &Gateway, e: proxy::BodyError) -> (Reason, String) {
    match e {
        proxy::BodyError::Busy => (
            Reason::RateLimited,
            "the gateway is buffering too many request bodies; retry later".into(),
        ),
        proxy::BodyError::TooLarge => (
            Reason::TooLarge,
            format!("request body over {} bytes", gw.cfg.max_body_bytes),
        ),
        proxy::BodyError::Read(e) => (Reason::Malformed, e),
        proxy::BodyError::TimedOut => (
            Reason::Malformed,
            "the request body did not arrive in time".into(),
        ),
    }
}

fn one_header<'a>(h: &'a HeaderMap, name: &str) -> Result<&'a str, String> {
    let mut it = h.get_all(name).iter();
    let v = it
        .next()
        .ok_or_else(|| format!("{name} header is required"))?;
    if it.next().is_some() {
        return Err(format!("{name} must appear once"));
    }
    v.to_str().map_err(|_| format!("{name} is not ASCII"))
}

/// `ANY /egress/{*path}`: verify, mint, strip, forward to the partner's `/ingress/{*path}`.
pub async fn egress(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let now = crate::time::now();
    let started = Clock::now();
    if let Some(d) = budget(&gw, &conn) {
        return d.into_response();
    }
    // `Fedgate-Scope` may be left out for MCP and A2A calls: the scope is derived from the
    // call itself (server/protocol/). Such a request's body is read first, to classify it.
    let scope_given = headers.contains_key("fedgate-scope");
    let path = uri.path().strip_prefix("/egress").unwrap_or("/");
    let path = if path.is_empty() { "/" } else { path };
    let hinted = [
        "mcp-protocol-version",
        "mcp-method",
        "mcp-session-id",
        "a2a-version",
    ]
    .iter()
    .any(|h| headers.contains_key(*h));
    let mut pre: Option<(bytes::Bytes, Option<tokio::sync::OwnedSemaphorePermit>)> = None;
    let mut call: Option<super::protocol::Call> = None;
    let mut body = Some(body);
    if !scope_given || hinted {
        let read = read_egress_body(&gw, body.take()).await;
        match read {
            Ok((bytes, permit)) => {
                let protocol = guess_protocol(&method, path, &headers, &bytes);
                call = super::protocol::classify(protocol, method.as_str(), path, &bytes).ok();
                pre = Some((bytes, permit));
            }
            Err(e) => {
                let (reason, m) = body_refusal(&gw, e);
                let mut rec = base_record(&gw, "outbound", &crate::crypto::random_id(), false);
                rec.mode = Some("egress".into());
                rec.source = conn.peer.as_ref().map(|p| p.id.to_string());
                rec.peer = rec.source.clone();
                return refuse(&gw, rec, reason, m).await.into_response();
            }
        }
    }
    let mut rpc_id = call.as_ref().and_then(|c| c.id.clone());
    let derived = match (&call, scope_given) {
        (Some(c), false) => derive_scope(c, headers.get("delegation-chain")),
        _ => Err(String::new()),
    };
    let fields = (
        one_header(&headers, "delegation-chain"),
        one_header(&headers, "fedgate-target"),
        if scope_given {
            one_header(&headers, "fedgate-scope").map(str::to_string)
        } else {
            derived.map_err(|why| {
                if why.is_empty() {
                    "fedgate-scope header is required (it may be left out only for an MCP or A2A call)".to_string()
                } else {
                    format!("fedgate-scope header is required: {why}")
                }
            })
        },
    );
    let (chain, target, scope) = match fields {
        (Ok(c), Ok(t), Ok(s)) => (c.trim().to_string(), t.to_string(), s),
        (c, t, s) => {
            let m = [c.err(), t.err(), s.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            let mut rec = base_record(&gw, "outbound", &crate::crypto::random_id(), false);
            rec.mode = Some("egress".into());
            rec.source = conn.peer.as_ref().map(|p| p.id.to_string());
            rec.peer = rec.source.clone();
            return refuse(&gw, rec, Reason::Malformed, m)
                .await
                .rpc(rpc_id.as_ref())
                .into_response();
        }
    };
    let mut a = match authorize(&gw, &conn, &chain, &target, &scope, "egress", now).await {
        Ok(a) => a,
        Err(d) => return d.rpc(rpc_id.as_ref()).into_response(),
    };
    if let Some(c) = &call {
        a.record.protocol = Some(c.describe());
    }
    let query = uri.query().unwrap_or("");
    if let Some(why) = super::ingress::path_problem(path) {
        let m = format!("the path is not in canonical form: {why}");
        return refuse(&gw, a.record, Reason::Malformed, m)
            .await
            .rpc(rpc_id.as_ref())
            .into_response();
    }
    // Where it goes, and over which connection, is settled before anything is recorded as
    // allowed: after the allow record every way out writes an outcome.
    let Some(partner) = a.agreement.domain_str(a.target.trust_domain_str()).cloned() else {
        let m = "agreement does not name the partner".to_string();
        return refuse(&gw, a.record, Reason::NoAgreement, m)
            .await
            .rpc(rpc_id.as_ref())
            .into_response();
    };
    let url = format!(
        "{}/ingress{}{}{}",
        partner.gateway_url,
        path,
        if query.is_empty() { "" } else { "?" },
        query
    );
    let Ok(partner_uri) = url.parse::<Uri>() else {
        let m = "path does not form a valid URL".to_string();
        return refuse(&gw, a.record, Reason::Malformed, m)
            .await
            .rpc(rpc_id.as_ref())
            .into_response();
    };
    let client = match gw.partner_client(&partner.gateway_id) {
        Ok(c) => c,
        Err(e) => {
            return refuse(&gw, a.record, Reason::PartnerUnavailable, e)
                .await
                .rpc(rpc_id.as_ref())
                .into_response()
        }
    };
    // Request bodies are read whole (to look for smuggled chains), within a time limit and a
    // budget shared by every request, so many large uploads cannot exhaust memory.
    // Permits are taken per byte as it arrives, so a bodiless request takes none.
    let (body, permit) = match pre {
        Some(x) => x,
        None => {
            let read = read_egress_body(&gw, body.take()).await;
            match read {
                Ok(x) => x,
                Err(e) => {
                    let (reason, m) = body_refusal(&gw, e);
                    return refuse(&gw, a.record, reason, m)
                        .await
                        .rpc(rpc_id.as_ref())
                        .into_response();
                }
            }
        }
    };
    // A request to an MCP or A2A route is that protocol's call, however the agent sent it
    // (with or without Fedgate-Scope): classified here too, so its answer is checked as one
    // (an AgentCard's signature, URL and skills) and its refusals have JSON-RPC's shape.
    if call.is_none() {
        let p = a
            .decision
            .flow
            .and_then(|i| a.agreement.flows.get(i))
            .and_then(|f| f.rpc_route_protocol(method.as_str(), path));
        if let Some(p) = p {
            match super::protocol::classify(p, method.as_str(), path, &body) {
                Ok(c) => {
                    rpc_id = c.id.clone();
                    a.record.protocol = Some(c.describe());
                    call = Some(c);
                }
                Err((reason, m, id, what)) => {
                    a.record.protocol = what;
                    return refuse(&gw, a.record, reason, m)
                        .await
                        .rpc(id.as_ref())
                        .into_response();
                }
            }
        }
    }
    // No internal credential leaves: strip them, and refuse a chain smuggled anywhere else.
    let prepared = crate::hygiene::prepare_egress(&crate::hygiene::EgressRequest {
        path,
        query,
        headers: &headers,
        body: &body,
        chain: &chain,
        strip_extra: &a.trust.strip_extra,
    });
    let mut out_headers = match prepared {
        Ok(h) => h,
        Err(e) => {
            return refuse(&gw, a.record, Reason::Malformed, e.to_string())
                .await
                .rpc(rpc_id.as_ref())
                .into_response()
        }
    };
    let (token, claims) = match mint(&gw, &mut a, None, now) {
        Ok(t) => t,
        Err(d) => return d.described().rpc(rpc_id.as_ref()).into_response(),
    };
    let decision_rec = match append(&gw, a.record.clone()).await {
        Ok(x) => x,
        Err(e) => {
            return Denial::new(Reason::AuditUnavailable, e.to_string(), &claims.jti)
                .described()
                .rpc(rpc_id.as_ref())
                .into_response()
        }
    };
    gw.metrics.inc(
        "fedgate_crossings_total",
        &[("direction", "outbound"), ("decision", "allow")],
    );
    let span = tracing::info_span!("egress", crossing = %claims.jti, task = %claims.txn);
    let r = forward(
        gw.clone(),
        Outbound {
            a,
            claims,
            token,
            partner,
            client,
            uri: partner_uri,
            method,
            body,
            call,
            decision_seq: decision_rec.seq,
            started,
        },
        &mut out_headers,
    )
    .instrument(span)
    .await;
    drop(permit);
    r
}

/// An allowed, recorded crossing on its way to the partner.
struct Outbound {
    a: Authorized,
    claims: FederationClaims,
    token: String,
    partner: crate::agreement::DomainTerms,
    client: super::state::TlsClient,
    uri: Uri,
    method: Method,
    body: bytes::Bytes,
    /// An MCP or A2A call, classified.
    call: Option<super::protocol::Call>,
    decision_seq: u64,
    started: Clock,
}

async fn forward(gw: Arc<Gateway>, o: Outbound, headers: &mut HeaderMap) -> Response {
    let Outbound {
        a,
        claims,
        token,
        partner,
        client,
        uri,
        method,
        body,
        call,
        decision_seq,
        started,
    } = o;
    let rpc_id = call.as_ref().and_then(|c| c.id.clone());
    let crossing = claims.jti.clone();
    let authorization = format!("Bearer {token}");
    if let Some(v) = proxy::header(&authorization) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    // A streamed answer carries its signature in trailers: ask for them. And an answer the
    // gateway can check: unencoded (its types and schema are about the bytes the agent reads).
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::ACCEPT_ENCODING,
        http::HeaderValue::from_static("identity"),
    );
    // What the partner's signed answer must cover: this very request.
    let route_path = uri
        .path()
        .strip_prefix("/ingress")
        .unwrap_or("/")
        .to_string();
    let flow = a.decision.flow.and_then(|i| a.agreement.flows.get(i));
    let route = match (&call, flow) {
        (Some(c), Some(f)) => c
            .route(f, method.as_str(), &route_path, &a.decision.granted)
            .ok(),
        (None, Some(f)) => f.route_for(method.as_str(), &route_path, &a.decision.granted),
        _ => None,
    };
    let mut rules = route.map(|r| r.response.clone()).unwrap_or_default();
    use super::protocol::Protocol;
    let protocol = call.as_ref().map(|c| c.protocol).unwrap_or_default();
    if protocol == Protocol::Mcp {
        // A Streamable HTTP session is named by these; the agent's MCP client needs them back.
        for h in ["mcp-session-id", "mcp-protocol-version"] {
            if !rules.allow_headers.iter().any(|x| x == h) {
                rules.allow_headers.push(h.to_string());
            }
        }
    }
    let card = match (&call, route) {
        (Some(c), Some(r)) if c.card => Some((
            super::protocol::a2a::boundary_url(&partner.gateway_url, &route_path),
            r.skills.clone(),
        )),
        (Some(c), None) if c.card => Some((
            super::protocol::a2a::boundary_url(&partner.gateway_url, &route_path),
            Vec::new(),
        )),
        _ => None,
    };
    let mut outcome = base_record(&gw, "outbound", &crossing, true);
    outcome.protocol = a.record.protocol.clone();
    outcome.kind = "outcome".into();
    outcome.mode = Some("egress".into());
    outcome.ref_seq = Some(decision_seq);
    outcome.partner = Some(partner.trust_domain.to_string());
    outcome.agreement = a.record.agreement.clone();
    outcome.source = a.record.source.clone();
    outcome.target = a.record.target.clone();
    outcome.txn = a.record.txn.clone();
    let Some(partner_bundle) = a.trust.bundles.get(&partner.trust_domain).cloned() else {
        // After the allow record, every way out writes an outcome.
        let mut outcome = outcome;
        outcome.status = Some(Reason::UnknownDomain.http_status());
        outcome.reason = Some(Reason::UnknownDomain.code().into());
        let _ = append(&gw, outcome).await;
        return Denial::new(Reason::UnknownDomain, "no partner bundle", &crossing)
            .described()
            .rpc(rpc_id.as_ref())
            .into_response();
    };
    let expected = super::response::Expected {
        crossing: crossing.clone(),
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        authorization,
        partner: partner_bundle,
        // The agreement may lower the local limit, never raise it.
        max_bytes: rules
            .max_bytes
            .unwrap_or(gw.cfg.max_response_bytes)
            .min(gw.cfg.max_response_bytes),
        rules,
        deadline: tokio::time::Instant::now() + gw.cfg.response_timeout,
        rpc: rpc_id.clone(),
        a2a: protocol == Protocol::A2a,
        card,
    };
    let mut req = http::Request::new(Body::from(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = std::mem::take(headers);
    let timeout = std::time::Duration::from_secs(gw.cfg.partner_timeout as u64);
    let result = tokio::time::timeout(timeout, client.request(req)).await;
    outcome.latency_ms = Some(started.elapsed().as_millis() as u64);
    let resp = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            outcome.status = Some(502);
            outcome.reason = Some(Reason::PartnerUnavailable.code().into());
            let _ = append(&gw, outcome).await;
            return Denial::new(
                Reason::PartnerUnavailable,
                format!("partner request failed: {e}"),
                &crossing,
            )
            .described()
            .rpc(rpc_id.as_ref())
            .into_response();
        }
        Err(_) => {
            outcome.status = Some(504);
            outcome.reason = Some(Reason::PartnerUnavailable.code().into());
            let _ = append(&gw, outcome).await;
            let mut r = Denial::new(Reason::PartnerUnavailable, "partner timed out", &crossing)
                .described()
                .rpc(rpc_id.as_ref())
                .into_response();
            *r.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            return r;
        }
    };
    // The decision record was durable before forwarding; the answer is checked (signature,
    // digest, route rules) before the agent gets it, and the outcome — with the partner's
    // verified receipt and the answer's digest — is logged off the response path.
    super::response::deliver(gw, expected, resp, outcome).await
}
