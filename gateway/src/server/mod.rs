//! The gateway server (`fedgate serve`): three TLS listeners on rustls with the gateway's
//! X509-SVID — internal (local agents: token exchange and egress), federation (partners:
//! ingress, bundle endpoint, revocation notices) and admin — plus the lifecycle tasks.

pub mod admin;
pub mod config;
pub mod deny;
pub mod egress;
pub mod ingress;
pub mod lifecycle;
pub mod listener;
pub mod proposals;
pub mod protocol;
pub mod proxy;
pub mod refusals;
pub mod response;
pub mod state;
pub mod tls;
pub mod trust;
pub mod witness;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::audit::Record;
use crate::store::{log::Appended, AuditLog, LogError, State, StateBackend};
use state::{Gateway, Keys};
use tls::{Identity, ListenerKind, SpiffeClientVerifier};
use trust::TrustHandle;

/// How long open connections get to finish after SIGTERM.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A record with the fields every record of this gateway shares.
pub fn base_record(gw: &Gateway, direction: &str, crossing: &str, allow: bool) -> Record {
    Record::decision(gw.cfg.trust_domain.as_str(), direction, crossing, allow)
}

/// Audits a denial of an authenticated request (the record's `direction` names it in the
/// metrics) and returns it. A denial that cannot be audited is still a denial; the failure is
/// logged. Each denial spends one of the source's denial tokens (see [`over_budget`]).
pub async fn deny(
    gw: &Gateway,
    mut rec: Record,
    reason: crate::reason::Reason,
    message: String,
) -> deny::Denial {
    // The budget belongs to who sent the request (the mTLS peer), which is also who
    // `over_budget` checks; never to the actor a token names.
    if let Some(src) = rec.peer.as_deref().or(rec.source.as_deref()) {
        gw.denials.take(src);
    }
    rec.decision = "deny".into();
    rec.reason = Some(reason.code().into());
    let direction = if rec.direction == "inbound" {
        "inbound"
    } else {
        "outbound"
    };
    gw.metrics.inc(
        "fedgate_crossings_total",
        &[("direction", direction), ("decision", "deny")],
    );
    gw.metrics
        .inc("fedgate_denials_total", &[("reason", reason.code())]);
    let crossing = rec.crossing.clone();
    if let Err(e) = append(gw, rec).await {
        tracing::error!(crossing = %crossing, error = %e, "could not audit a denial");
    }
    deny::Denial::new(reason, message, &crossing)
}

/// Refuses a request whose peer is not authenticated (no or an invalid client certificate; on
/// the federation listener no token at all): counted in metrics and written to the
/// rate-limited side log, never to the audit log of record (SPEC section 7).
pub fn refuse_unauthenticated(
    gw: &Gateway,
    listener: &'static str,
    conn: &tls::ConnInfo,
    reason: crate::reason::Reason,
    message: &str,
) -> deny::Denial {
    gw.metrics.inc(
        "fedgate_unauthenticated_refusals_total",
        &[("listener", listener), ("reason", reason.code())],
    );
    gw.refusals.record(refusals::Refusal {
        time: crate::time::format_rfc3339_millis(crate::time::now_millis()),
        listener,
        remote: conn.remote.to_string(),
        peer: conn.peer.as_ref().map(|p| p.id.to_string()),
        reason: reason.code(),
        message: message.to_string(),
        suppressed: 0,
    });
    deny::Denial::new(reason, message, &crate::crypto::random_id())
}

/// A source (an authenticated peer) that spent its denial budget is refused up front with
/// `rate_limited` until the budget refills: counted and side-logged, not audited, so a peer
/// that keeps being denied cannot fill the log of record. `None`: go ahead.
pub fn over_budget(
    gw: &Gateway,
    listener: &'static str,
    conn: &tls::ConnInfo,
    source: &str,
) -> Option<deny::Denial> {
    if gw.denials.allows(source) {
        return None;
    }
    gw.metrics
        .inc("fedgate_rate_limited_total", &[("listener", listener)]);
    gw.refusals.record(refusals::Refusal {
        time: crate::time::format_rfc3339_millis(crate::time::now_millis()),
        listener,
        remote: conn.remote.to_string(),
        peer: Some(source.to_string()),
        reason: crate::reason::Reason::RateLimited.code(),
        message: "too many denials from this source".into(),
        suppressed: 0,
    });
    Some(deny::Denial::new(
        crate::reason::Reason::RateLimited,
        "too many denials from this source; slow down",
        &crate::crypto::random_id(),
    ))
}

/// Emits an OPA-style decision-log entry (target `fedgate::decisions`) when that target is
/// enabled, e.g. `FEDGATE_LOG=info,fedgate::decisions=debug`.
pub fn log_decision(
    req: &crate::agreement::CrossingRequest<'_>,
    d: &crate::agreement::Decision,
    took: Duration,
) {
    if tracing::enabled!(target: "fedgate::decisions", tracing::Level::DEBUG) {
        let rec = crate::agreement::DecisionRecord::new(req, d, took.as_nanos() as u64);
        tracing::debug!(target: "fedgate::decisions", decision = %serde_json::to_string(&rec).unwrap_or_default());
    }
}

/// Logs an outcome record without holding up the response; shutdown waits for it.
pub fn append_later(gw: &Arc<Gateway>, rec: Record) {
    use std::sync::atomic::Ordering;
    gw.pending_outcomes.fetch_add(1, Ordering::AcqRel);
    let gw = gw.clone();
    tokio::spawn(async move {
        if let Err(e) = append(&gw, rec).await {
            tracing::error!(error = %e, "could not audit an outcome");
        }
        gw.pending_outcomes.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Appends durably (the log's writer also indexes the crossing; with replicas the shared index
/// learns it too, off the response path).
pub async fn append(gw: &Gateway, rec: Record) -> Result<Appended, LogError> {
    let crossing = gw.state.replica().map(|_| rec.crossing.clone());
    let a = gw.log.append(rec).await?;
    if let Some(c) = crossing {
        gw.state.index_crossing(&c, a.seq);
    }
    Ok(a)
}

/// Pre-bound listeners (tests and the demo bind `127.0.0.1:0` first to learn the ports).
pub struct Listeners {
    pub internal: std::net::TcpListener,
    pub federation: std::net::TcpListener,
    pub admin: std::net::TcpListener,
}

impl Listeners {
    pub fn bind(
        internal: SocketAddr,
        federation: SocketAddr,
        admin: SocketAddr,
    ) -> std::io::Result<Listeners> {
        Ok(Listeners {
            internal: std::net::TcpListener::bind(internal)?,
            federation: std::net::TcpListener::bind(federation)?,
            admin: std::net::TcpListener::bind(admin)?,
        })
    }

    pub fn loopback() -> std::io::Result<Listeners> {
        let a: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self::bind(a, a, a)
    }

    pub fn addrs(&self) -> std::io::Result<(SocketAddr, SocketAddr, SocketAddr)> {
        Ok((
            self.internal.local_addr()?,
            self.federation.local_addr()?,
            self.admin.local_addr()?,
        ))
    }
}

/// A running gateway.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub internal: SocketAddr,
    pub federation: SocketAddr,
    pub admin: SocketAddr,
    pub recovery: crate::store::Recovery,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    graceful: Vec<Arc<hyper_util::server::graceful::GracefulShutdown>>,
}

impl Running {
    /// Stops accepting, lets open connections finish (bounded), writes a final checkpoint.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        for g in self.graceful {
            if let Ok(g) = Arc::try_unwrap(g) {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, g.shutdown()).await;
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while self
            .gateway
            .pending_outcomes
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.gateway.log.shutdown();
        let _ = self.gateway.state.flush();
        tracing::info!("gateway stopped");
    }
}

fn internal_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/token", post(egress::token))
        .route("/egress", any(egress::egress))
        .route("/egress/", any(egress::egress))
        .route("/egress/{*path}", any(egress::egress))
        .fallback(not_found)
        .with_state(gw)
}

fn federation_router(gw: Arc<Gateway>) -> Router {
    // Every answer on /ingress is signed for the partner (and its digest audited).
    let signed = Router::new()
        .route("/ingress", any(ingress::ingress))
        .route("/ingress/", any(ingress::ingress))
        .route("/ingress/{*path}", any(ingress::ingress))
        .route_layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            response::sign_ingress,
        ));
    Router::new()
        .merge(signed)
        .route("/bundle", get(ingress::bundle))
        .route(
            "/.well-known/oauth-protected-resource/ingress/{*path}",
            get(ingress::resource_metadata),
        )
        .route("/v1/revocations", post(ingress::revocations))
        .route("/v1/witness/add-checkpoint", post(witness::add_checkpoint))
        .route("/v1/agreements/proposals", post(proposals::fed_receive))
        .route(
            "/v1/agreements/proposals/accept",
            post(proposals::fed_accepted),
        )
        .route(
            "/v1/agreements/proposals/reject",
            post(proposals::fed_rejected),
        )
        .fallback(not_found)
        .with_state(gw)
}

fn admin_router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/metrics", get(admin::metrics))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/v1/audit/checkpoint", get(admin::checkpoint))
        .route("/checkpoint", get(admin::tlog_checkpoint))
        .route("/tile/{*path}", get(admin::tile))
        .route("/v1/audit/records", get(admin::records))
        .route("/v1/audit/proof/{seq}", get(admin::proof))
        .route("/v1/audit/crossing/{id}", get(admin::crossing))
        .route(
            "/v1/audit/crossing/{id}/locations",
            get(admin::crossing_locations),
        )
        .route("/v1/audit/consistency", get(admin::consistency))
        .route("/v1/revoke", post(admin::revoke))
        .route("/v1/graph", get(admin::graph))
        .route("/v1/reload", post(admin::reload))
        .route(
            "/v1/agreements/proposals",
            get(proposals::admin_list).post(proposals::admin_propose),
        )
        .route(
            "/v1/agreements/proposals/accept",
            post(proposals::admin_accept),
        )
        .route(
            "/v1/agreements/proposals/reject",
            post(proposals::admin_reject),
        )
        .route("/v1/agreements/terminate", post(proposals::admin_terminate))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            admin::guard,
        ))
        .with_state(gw)
}

async fn not_found() -> (http::StatusCode, axum::Json<serde_json::Value>) {
    (
        http::StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({"error": "not found"})),
    )
}

/// What a caller may put in place of the defaults.
#[derive(Default, Clone)]
pub struct StartOptions {
    /// The audit log writer's file operations (tests inject faults: `store::io::FaultIo`).
    pub log_io: Option<Arc<dyn crate::store::io::LogIo>>,
}

/// Loads keys, trust, the audit log and state, and starts the listeners and lifecycle tasks.
/// Every problem is reported before any port accepts a connection.
pub async fn start(
    cfg: config::Validated,
    listeners: Option<Listeners>,
) -> Result<Running, Vec<String>> {
    start_with(cfg, listeners, StartOptions::default()).await
}

/// [`start`] with [`StartOptions`].
pub async fn start_with(
    cfg: config::Validated,
    listeners: Option<Listeners>,
    opts: StartOptions,
) -> Result<Running, Vec<String>> {
    crate::crypto::install_provider();
    let one = |e: String| vec![e];
    let chain = crate::files::read_pem_certs(&cfg.tls_cert).map_err(|e| one(e.to_string()))?;
    let key = crate::files::read_private_key_der(&cfg.tls_key).map_err(|e| one(e.to_string()))?;
    let leaf_id = x509_parser::parse_x509_certificate(&chain[0])
        .ok()
        .and_then(|(_, c)| crate::spiffe::svid::leaf_spiffe_id(&c).ok());
    if leaf_id.as_ref() != Some(&cfg.gateway_id) {
        return Err(one(format!(
            "{}: the certificate is not an SVID for {}",
            cfg.tls_cert.display(),
            cfg.gateway_id
        )));
    }
    let identity = Identity { chain, key };
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| one(format!("{}: {e}", cfg.data_dir.display())))?;
    let pseudonym = config::read_pseudonym_key(&cfg.pseudonym_key).map_err(one)?;
    // The state store first: an unreachable database stops the start before any port binds.
    let st: Arc<dyn StateBackend> = match &cfg.state {
        config::StateChoice::Sled => Arc::new(
            State::open_with(
                &cfg.data_dir.join("state"),
                lifecycle::rotation_path(&cfg.data_dir),
            )
            .map_err(|e| one(format!("{}: {e}", cfg.data_dir.join("state").display())))?,
        ),
        config::StateChoice::Postgres(o) => crate::store::postgres::PgState::connect(
            o.clone(),
            &pseudonym,
            crate::store::postgres::Opener::Replica,
        )
        .await
        .map_err(|e| one(format!("state backend postgres: {e}")))?,
    };
    let rotation = st
        .rotation()
        .await
        .map_err(|e| one(e.to_string()))?
        .and_then(|t| lifecycle::parse_rotation(&t));
    let signing = lifecycle::initial_signing_key(&cfg, rotation.as_ref()).map_err(one)?;
    let audit_key =
        crate::files::read_signing_key(&cfg.audit_key).map_err(|e| one(e.to_string()))?;
    if audit_key.alg() != crate::jose::Alg::EdDsa {
        return Err(one(format!(
            "{}: the audit key must be Ed25519",
            cfg.audit_key.display()
        )));
    }
    let saved = st.saved_bundles().await.map_err(|e| one(e.to_string()))?;
    let trust = lifecycle::load_trust(&cfg, &saved, 1)?;
    {
        let local = trust.bundles.get(&cfg.trust_domain);
        let published = local.map(|b| b.jwt_key(signing.kid(), crate::spiffe::KeyRole::Gateway));
        if published.as_ref().and_then(|r| r.as_ref().ok()) != Some(&signing.public()) {
            return Err(one(format!(
                "the signing key (kid {}) is not in the local bundle as a gateway key",
                signing.kid()
            )));
        }
        let audit_published = local
            .map(|b| {
                b.keys_with_role(crate::spiffe::KeyRole::Audit)
                    .any(|a| a.key == *audit_key.public())
            })
            .unwrap_or(false);
        if !audit_published {
            tracing::warn!("the audit key is not published in the local bundle: auditors cannot verify checkpoints");
        }
    }
    // Each replica has its own log (and origin), so no two writers share one.
    let origin =
        crate::audit::checkpoint::origin_for(cfg.trust_domain.as_str(), cfg.replica.as_deref());
    let audit_dir = cfg.data_dir.join("audit");
    let (log, recovery) = AuditLog::open_with_io(
        &audit_dir,
        cfg.trust_domain.as_str(),
        &origin,
        audit_key,
        opts.log_io
            .unwrap_or_else(|| Arc::new(crate::store::io::FsIo)),
    )
    .map_err(|e| one(format!("{}: {e}", audit_dir.display())))?;
    if recovery.truncated_bytes > 0 {
        tracing::warn!(
            bytes = recovery.truncated_bytes,
            "audit log: a torn final record (never acknowledged) was moved aside"
        );
    }
    if st.replica().is_none() {
        rebuild_replay_cache(&log, st.as_ref()).await.map_err(one)?;
    } else {
        reindex_crossings(&log, st.as_ref()).await.map_err(one)?;
    }
    let listeners = match listeners {
        Some(l) => l,
        None => Listeners::bind(cfg.internal, cfg.federation, cfg.admin)
            .map_err(|e| one(format!("binding listeners: {e}")))?,
    };
    let trust = Arc::new(TrustHandle::new(trust));
    let keys = Keys {
        signing: std::sync::RwLock::new(Arc::new(signing)),
        pseudonym,
        audit: crate::files::read_signing_key(&cfg.audit_key).map_err(|e| one(e.to_string()))?,
    };
    let gw = Arc::new(Gateway::new(cfg, trust.clone(), keys, identity, log, st).map_err(one)?);
    let (internal, federation, admin) = listeners.addrs().map_err(|e| one(e.to_string()))?;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = gw.state.clone().spawn_tasks(stop_rx.clone());
    let mut graceful = Vec::new();
    for (l, kind, router) in [
        (
            listeners.internal,
            ListenerKind::Internal,
            internal_router(gw.clone()),
        ),
        (
            listeners.federation,
            ListenerKind::Federation,
            federation_router(gw.clone()),
        ),
        (
            listeners.admin,
            ListenerKind::Admin,
            admin_router(gw.clone()),
        ),
    ] {
        l.set_nonblocking(true).map_err(|e| one(e.to_string()))?;
        let l = TcpListener::from_std(l).map_err(|e| one(e.to_string()))?;
        let verifier = Arc::new(SpiffeClientVerifier::new(
            trust.clone(),
            gw.cfg.trust_domain.clone(),
            kind,
        ));
        let tls =
            Arc::new(tls::server_config(&gw.identity, verifier).map_err(|e| one(e.to_string()))?);
        let g = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
        graceful.push(g.clone());
        let tracker = gw.connections(kind).clone();
        tasks.push(tokio::spawn(listener::serve(
            l,
            tls,
            router,
            tracker,
            stop_rx.clone(),
            g,
        )));
    }
    tasks.push(tokio::spawn(lifecycle::refresh_loop(
        gw.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(lifecycle::watch_loop(
        gw.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(lifecycle::notice_loop(
        gw.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(lifecycle::witness_loop(
        gw.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(lifecycle::sweep_loop(
        gw.clone(),
        stop_rx.clone(),
    )));
    tracing::info!(%internal, %federation, %admin, domain = %gw.cfg.trust_domain, records = recovery.records, "gateway started");
    Ok(Running {
        gateway: gw,
        internal,
        federation,
        admin,
        recovery,
        stop,
        tasks,
        graceful,
    })
}

/// A replica's log records since the shared crossing index's watermark are indexed again (the
/// index is written off the response path, so a crash can leave its tail out).
async fn reindex_crossings(log: &AuditLog, st: &dyn StateBackend) -> Result<(), String> {
    let from = st
        .index_mark()
        .await
        .map_err(|e| e.to_string())?
        .map(|m| m + 1)
        .unwrap_or(0);
    let size = log.size();
    let mut at = from;
    const PAGE: u64 = 10_000;
    while at < size {
        for (i, bytes) in log
            .read(at, PAGE)
            .map_err(|e| e.to_string())?
            .iter()
            .enumerate()
        {
            if let Ok(r) = serde_json::from_slice::<Record>(bytes) {
                st.index_crossing(&r.crossing, at + i as u64);
            }
        }
        at += PAGE;
    }
    Ok(())
}

/// The replay cache is state that can be rebuilt: every inbound crossing the log of record
/// accepted and whose token has not expired is marked used again. The log is read backwards a
/// page at a time and the reading stops at the first page whose records are all older than the
/// longest a token can live (`MAX_TOKEN_TTL` plus twice the largest skew), so a start costs
/// the recent log, not the whole log.
async fn rebuild_replay_cache(log: &AuditLog, st: &dyn StateBackend) -> Result<(), String> {
    let now = crate::time::now();
    let oldest_live = now
        .saturating_sub(crate::agreement::MAX_TOKEN_TTL)
        .saturating_sub(2 * crate::chain::MAX_CLOCK_SKEW);
    let size = log.size();
    const PAGE: u64 = 10_000;
    let mut end = size;
    while end > 0 {
        let from = end.saturating_sub(PAGE);
        let mut any_recent = false;
        for bytes in log.read(from, end - from).map_err(|e| e.to_string())? {
            let Ok(r) = serde_json::from_slice::<Record>(&bytes) else {
                continue;
            };
            // A record without a readable time counts as recent: keep reading.
            if crate::time::parse_rfc3339(&r.time)
                .map(|t| t >= oldest_live)
                .unwrap_or(true)
            {
                any_recent = true;
            }
            if r.kind == "decision" && r.direction == "inbound" && r.is_allow() {
                if let (Some(exp), Some(issuer)) = (r.token_exp, r.partner.as_deref()) {
                    if exp.saturating_add(crate::chain::MAX_CLOCK_SKEW) > now {
                        // Kept as long as the token could still be accepted (the largest skew an
                        // agreement may set).
                        st.replay_insert(
                            issuer,
                            &r.crossing,
                            exp.saturating_add(crate::chain::MAX_CLOCK_SKEW),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        if !any_recent {
            break;
        }
        end = from;
    }
    st.flush().map_err(|e| e.to_string())
}

/// `fedgate serve`: run until SIGTERM/SIGINT; SIGHUP reloads.
pub async fn run_until_signal(cfg: config::Validated) -> Result<(), Vec<String>> {
    let running = start(cfg, None).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| vec![e.to_string()])?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| vec![e.to_string()])?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                match lifecycle::reload(&running.gateway).await {
                    Ok(_) => tracing::info!("reloaded on SIGHUP"),
                    Err(p) => tracing::error!(problems = ?p, "SIGHUP reload rejected; keeping the previous trust"),
                }
            }
        }
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}
