//! The accept loop of a listener and what bounds a connection: the TLS handshake timeout, the
//! HTTP/1 header-read timeout (hyper needs a timer for it), the idle timeout (no request in
//! flight), HTTP/2 stream and keep-alive limits, and connection caps per listener, per
//! authenticated peer and for connections not (yet) authenticated by a client certificate.
//!
//! Unauthenticated connections are the attacker's cheap resource, so they live in their own
//! pool: when it is full (per listener or per source address) the *oldest* is closed to make
//! room, and a partner's fresh handshake always gets a slot. A connection leaves the pool once
//! its client certificate verified.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};

use super::config::ConnLimits;
use super::tls::{peer_info, ConnInfo};

/// How long a connection told to close (evicted, idle, shutting down) may finish what it is
/// doing before it is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How often the idle watchdog looks.
const IDLE_TICK: Duration = Duration::from_millis(250);

/// Counts of one listener's connections, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ConnCounts {
    pub total: usize,
    pub unauthenticated: usize,
    pub refused: u64,
    pub evicted: u64,
    /// TLS handshakes that failed (no, or an unacceptable, client certificate; timeouts).
    pub tls_failed: u64,
    /// Requests refused for ambiguous framing or an oversized header.
    pub framing_refused: u64,
}

#[derive(Default)]
struct Pools {
    total: usize,
    /// Unauthenticated connections by id (ids grow, so the first is the oldest).
    unauth: BTreeMap<u64, (IpAddr, Arc<tokio::sync::Notify>)>,
    unauth_per_ip: HashMap<IpAddr, usize>,
    per_peer: HashMap<String, usize>,
    refused: u64,
    evicted: u64,
}

/// The connection accounting of one listener.
pub struct Tracker {
    limits: ConnLimits,
    pools: Mutex<Pools>,
    next: AtomicU64,
    tls_failed: AtomicU64,
    framing_failed: AtomicU64,
    /// Where refusals before authentication are side-logged, and the listener's name.
    refusals: Mutex<Option<(Arc<super::refusals::RefusalLog>, &'static str)>>,
}

/// A connection's place in the accounting; leaving it frees the slots.
struct Slot {
    tracker: Arc<Tracker>,
    id: u64,
    ip: IpAddr,
    peer: Option<String>,
    close: Arc<tokio::sync::Notify>,
}

impl Tracker {
    pub fn new(limits: ConnLimits) -> Arc<Tracker> {
        Arc::new(Tracker {
            limits,
            pools: Mutex::new(Pools::default()),
            next: AtomicU64::new(0),
            tls_failed: AtomicU64::new(0),
            framing_failed: AtomicU64::new(0),
            refusals: Mutex::new(None),
        })
    }

    /// Side-logs failed handshakes of listener `name` into `log`.
    pub fn log_refusals_to(&self, log: Arc<super::refusals::RefusalLog>, name: &'static str) {
        if let Ok(mut r) = self.refusals.lock() {
            *r = Some((log, name));
        }
    }

    /// A TLS handshake failed: counted, and side-logged (rate-limited) with its cause.
    fn tls_refused(&self, remote: SocketAddr, why: &str) {
        self.tls_failed.fetch_add(1, Ordering::Relaxed);
        let Ok(r) = self.refusals.lock() else {
            return;
        };
        if let Some((log, name)) = r.as_ref() {
            let cert = why.contains("certificate") || why.contains("Certificate");
            log.record(super::refusals::Refusal {
                time: crate::time::format_rfc3339_millis(crate::time::now_millis()),
                listener: name,
                remote: remote.to_string(),
                peer: None,
                reason: if cert { "bad_svid" } else { "malformed" },
                message: format!("TLS handshake refused: {why}"),
                suppressed: 0,
            });
        }
    }

    /// A request refused for its framing or head: counted and side-logged (not audited: no
    /// handler has read it).
    fn framing_refused(
        &self,
        remote: SocketAddr,
        peer: Option<String>,
        p: &crate::hygiene::FramingProblem,
    ) {
        self.framing_failed.fetch_add(1, Ordering::Relaxed);
        let Ok(r) = self.refusals.lock() else {
            return;
        };
        if let Some((log, name)) = r.as_ref() {
            log.record(super::refusals::Refusal {
                time: crate::time::format_rfc3339_millis(crate::time::now_millis()),
                listener: name,
                remote: remote.to_string(),
                peer,
                reason: match p {
                    crate::hygiene::FramingProblem::TooLarge(..) => "too_large",
                    _ => "malformed",
                },
                message: p.to_string(),
                suppressed: 0,
            });
        }
    }

    pub fn counts(&self) -> ConnCounts {
        match self.pools.lock() {
            Ok(p) => ConnCounts {
                total: p.total,
                unauthenticated: p.unauth.len(),
                refused: p.refused,
                evicted: p.evicted,
                tls_failed: self.tls_failed.load(Ordering::Relaxed),
                framing_refused: self.framing_failed.load(Ordering::Relaxed),
            },
            Err(_) => ConnCounts::default(),
        }
    }

    /// Admits a new connection from `ip` into the unauthenticated pool, evicting the oldest
    /// unauthenticated connection (of that address first) when a cap is reached. `None`: the
    /// listener is full of authenticated connections; the new one is refused.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut p = self.pools.lock().ok()?;
        let per_ip = p.unauth_per_ip.get(&ip).copied().unwrap_or(0);
        if per_ip >= self.limits.max_unauthenticated_per_ip {
            let oldest = p
                .unauth
                .iter()
                .find(|(_, (a, _))| *a == ip)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                Self::evict(&mut p, k);
            }
        }
        if p.unauth.len() >= self.limits.max_unauthenticated {
            if let Some(k) = p.unauth.keys().next().copied() {
                Self::evict(&mut p, k);
            }
        }
        if p.total >= self.limits.max_connections {
            match p.unauth.keys().next().copied() {
                Some(k) => Self::evict(&mut p, k),
                None => {
                    p.refused += 1;
                    return None;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(tokio::sync::Notify::new());
        p.total += 1;
        p.unauth.insert(id, (ip, close.clone()));
        *p.unauth_per_ip.entry(ip).or_insert(0) += 1;
        Some(Slot {
            tracker: self.clone(),
            id,
            ip,
            peer: None,
            close,
        })
    }

    /// Takes a connection out of the pool (its slot still counts until it ends, but it can no
    /// longer be evicted); signals it to close.
    fn evict(p: &mut Pools, id: u64) {
        if let Some((ip, close)) = p.unauth.remove(&id) {
            Self::dec_ip(p, ip);
            p.evicted += 1;
            // notify_one stores a permit, so a connection still in its handshake sees it too.
            close.notify_one();
        }
    }

    fn dec_ip(p: &mut Pools, ip: IpAddr) {
        if let Some(n) = p.unauth_per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                p.unauth_per_ip.remove(&ip);
            }
        }
    }

    /// Moves `slot` to the authenticated peer `peer`; false when that peer is at its cap.
    fn authenticate(&self, slot: &mut Slot, peer: String) -> bool {
        let Ok(mut p) = self.pools.lock() else {
            return false;
        };
        let n = p.per_peer.get(&peer).copied().unwrap_or(0);
        if n >= self.limits.max_connections_per_peer {
            p.refused += 1;
            return false;
        }
        if p.unauth.remove(&slot.id).is_some() {
            Self::dec_ip(&mut p, slot.ip);
        }
        *p.per_peer.entry(peer.clone()).or_insert(0) += 1;
        slot.peer = Some(peer);
        true
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut p) = self.tracker.pools.lock() {
            p.total = p.total.saturating_sub(1);
            if p.unauth.remove(&self.id).is_some() {
                Tracker::dec_ip(&mut p, self.ip);
            }
            if let Some(peer) = &self.peer {
                if let Some(n) = p.per_peer.get_mut(peer) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        p.per_peer.remove(peer);
                    }
                }
            }
        }
    }
}

/// Requests in flight on a connection and when the last one ended (for the idle timeout).
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since the connection's start at which the last request ended.
    last: AtomicU64,
}

struct InFlight(Arc<Activity>, Instant);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .last
            .store(self.1.elapsed().as_millis() as u64, Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it ends.
struct Guarded {
    inner: axum::body::Body,
    _guard: InFlight,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a request refused for its framing: 400 `malformed` or 431 `too_large`, and
/// the connection closes after it.
fn framing_denial(p: &crate::hygiene::FramingProblem) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (reason, status) = match p {
        crate::hygiene::FramingProblem::TooLarge(..) => (
            crate::reason::Reason::TooLarge,
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        _ => (
            crate::reason::Reason::Malformed,
            http::StatusCode::BAD_REQUEST,
        ),
    };
    let mut r = super::deny::Denial::new(reason, p.to_string(), &crate::crypto::random_id())
        .described()
        .into_response();
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}

fn http_builder(
    limits: &ConnLimits,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_streams)
        .max_header_list_size(limits.max_header_bytes as u32)
        .keep_alive_interval(limits.h2_keepalive)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .max_local_error_reset_streams(Some(H2_MAX_LOCAL_ERROR_RESETS));
    b
}

/// An HTTP/2 keep-alive ping unanswered this long ends the connection (a peer that went away
/// without a FIN).
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams a client opened and reset before the gateway accepted them: more than this and the
/// connection is closed (the HTTP/2 "rapid reset" flood, CVE-2023-44487; hyper's default).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams the gateway had to reset because the client misbehaved (bad headers, flow-control
/// errors) before the connection is closed: a peer that keeps provoking errors is not a peer.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 256;

/// Serves `router` on `listener` with TLS until `shutdown` flips, then lets open connections
/// finish (bounded by the caller).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: axum::Router,
    tracker: Arc<Tracker>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let builder = Arc::new(http_builder(&tracker.limits));
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(slot) = tracker.admit(remote.ip()) else {
            tracing::debug!(%remote, "listener full: connection refused");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let tracker = tracker.clone();
        tokio::spawn(async move {
            serve_one(
                tcp, remote, slot, acceptor, router, watcher, builder, tracker,
            )
            .await
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_one(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    mut slot: Slot,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    watcher: hyper_util::server::graceful::Watcher,
    builder: Arc<hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>>,
    tracker: Arc<Tracker>,
) {
    let limits = &tracker.limits;
    let close = slot.close.clone();
    let stream = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TLS handshake failed");
                tracker.tls_refused(remote, &e.to_string());
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "TLS handshake timed out");
                tracker.tls_refused(remote, "the handshake timed out");
                return;
            }
        },
        _ = close.notified() => {
            tracing::debug!(%remote, "unauthenticated connection evicted during its handshake");
            return;
        }
    };
    let peer = peer_info(stream.get_ref().1.peer_certificates()).map(Arc::new);
    let idle = match &peer {
        Some(p) => {
            if !tracker.authenticate(&mut slot, p.id.to_string()) {
                tracing::warn!(%remote, peer = %p.id, "too many connections from this peer: closing");
                return;
            }
            limits.idle_timeout
        }
        None => limits.unauthenticated_idle_timeout,
    };
    let info = ConnInfo { remote, peer };
    let activity = Arc::new(Activity::default());
    let started = Instant::now();
    let act = activity.clone();
    let trk = tracker.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        act.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = InFlight(act.clone(), started);
        // Ambiguous framing or an oversized header: refused before any handler, and the
        // connection closed (its next bytes cannot be trusted to start a request).
        let refused = crate::hygiene::framing_problem(req.headers()).map(|p| {
            trk.framing_refused(remote, info.peer.as_ref().map(|p| p.id.to_string()), &p);
            framing_denial(&p)
        });
        req.extensions_mut().insert(info.clone());
        let r = router.clone();
        async move {
            if let Some(resp) = refused {
                return Ok(resp);
            }
            let resp = tower::ServiceExt::oneshot(r, req).await;
            // The request is in flight until its response body has been sent (a long stream,
            // e.g. server-sent events, is not idleness).
            resp.map(|r| {
                r.map(|b| {
                    axum::body::Body::new(Guarded {
                        inner: b,
                        _guard: guard,
                    })
                })
            })
        }
    });
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
        .into_owned();
    let conn = watcher.watch(conn);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval(IDLE_TICK);
    let closing = loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            _ = close.notified() => break "evicted",
            _ = tick.tick() => {
                let busy = activity.in_flight.load(Ordering::Acquire) > 0;
                let since = started.elapsed().as_millis() as u64
                    - activity.last.load(Ordering::Acquire).min(started.elapsed().as_millis() as u64);
                if !busy && Duration::from_millis(since) >= idle {
                    break "idle";
                }
            }
        }
    };
    tracing::debug!(%remote, why = closing, "closing connection");
    // The watched connection shuts down gracefully when the listener's GracefulShutdown fires;
    // here we are closing one connection, so give it a moment and drop it.
    let _ = tokio::time::timeout(CLOSE_GRACE, &mut conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, unauth: usize, per_ip: usize, per_peer: usize) -> ConnLimits {
        ConnLimits {
            max_connections: total,
            max_unauthenticated: unauth,
            max_unauthenticated_per_ip: per_ip,
            max_connections_per_peer: per_peer,
            ..ConnLimits::default()
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn unauthenticated_pool_evicts_the_oldest() {
        let t = Tracker::new(limits(100, 3, 2, 10));
        let a = t.admit(ip(1)).unwrap();
        let b = t.admit(ip(1)).unwrap();
        // Third from the same address: the address's oldest (a) goes.
        let c = t.admit(ip(1)).unwrap();
        assert_eq!(t.counts().evicted, 1);
        assert_eq!(t.counts().unauthenticated, 2);
        let d = t.admit(ip(2)).unwrap();
        // Pool full (3): the next one evicts the oldest overall (b).
        let e = t.admit(ip(3)).unwrap();
        assert_eq!(t.counts().evicted, 2);
        assert_eq!(t.counts().unauthenticated, 3);
        assert_eq!(
            t.counts().total,
            5,
            "evicted connections count until they end"
        );
        drop((a, b));
        assert_eq!(t.counts().total, 3);
        drop((c, d, e));
        assert_eq!(
            t.counts(),
            ConnCounts {
                total: 0,
                unauthenticated: 0,
                refused: 0,
                evicted: 2,
                tls_failed: 0,
                framing_refused: 0,
            }
        );
    }

    #[test]
    fn authenticated_connections_leave_the_pool_and_are_capped_per_peer() {
        let t = Tracker::new(limits(3, 10, 10, 1));
        let mut a = t.admit(ip(1)).unwrap();
        assert!(t.authenticate(&mut a, "spiffe://p/gateway".into()));
        assert_eq!(t.counts().unauthenticated, 0);
        let mut b = t.admit(ip(1)).unwrap();
        assert!(
            !t.authenticate(&mut b, "spiffe://p/gateway".into()),
            "one per peer"
        );
        let mut c = t.admit(ip(1)).unwrap();
        assert!(t.authenticate(&mut c, "spiffe://q/gateway".into()));
        // Listener full: b (unauthenticated) is evicted to admit d; then nothing evictable.
        let d = t.admit(ip(2)).unwrap();
        drop(b);
        let mut d = d;
        assert!(t.authenticate(&mut d, "spiffe://r/gateway".into()));
        assert!(
            t.admit(ip(3)).is_none(),
            "full of authenticated connections"
        );
        assert_eq!(t.counts().refused, 2);
        drop((a, c, d));
        assert_eq!(t.counts().total, 0);
    }
}
