//! Shared state on PostgreSQL, for several replicas of one domain's gateway behind one address
//! (`[state] backend = "postgres"`). Every replica reads and writes the same rows, so:
//!
//! - the replay cache is one table, and first use wins across replicas with one atomic
//!   statement (`INSERT … ON CONFLICT DO NOTHING`);
//! - a revocation made at any replica is one upsert that merges with what is there, followed by
//!   `NOTIFY`; every replica mirrors the table in memory, refreshed on each notification and by
//!   polling (`POLL_INTERVAL`), so it is enforced everywhere within a second. A replica whose
//!   mirror is older than `STALE_AFTER` is not ready and refuses crossings (fail closed);
//! - notices to partners are queued once and leased to one replica at a time, so each is
//!   delivered by some replica and retried by another if that one dies;
//! - last-good bundles (partners' and, after a rotation, our own), rotation state and the
//!   crossing-id index across replicas' logs are rows too.
//!
//! The audit log of record stays a local file per replica, each with its own origin. The schema
//! is created and migrated by the gateway itself (`fedgate_schema` holds the version), under an
//! advisory lock so replicas starting together do not race. Every row is keyed by the local
//! trust domain; still, give each domain its own database (or role): a domain's gateways are
//! trusted with its replay and revocation rows.
//!
//! What the database can and cannot do: it is trusted for replay and revocation state (like
//! sled's files on a single gateway's disk: whoever can delete a row there can let a token be
//! used twice or lift a revocation), but not for authority. Rows that would change whom the
//! gateway trusts — stored bundles (ours after a rotation, partners' last good ones) and the
//! rotation state — carry an HMAC under a key derived from the domain's pseudonym key, which
//! the database never sees; a row that fails it is ignored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::Host;

use super::backend::{
    err, BoxFuture, NoticeQueues, QueuedNotice, Revocation, RevocationCache, Revoked, SavedBundles,
    StateBackend, StateError,
};
use crate::time::Instant;

/// The revocation mirror is refreshed at least this often (notifications make it sooner).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// A mirror older than this is not trusted: the replica is not ready and refuses crossings.
pub const STALE_AFTER_MS: i64 = 2_000;
/// A replica delivering a notice holds it this long; if it dies, another takes over after.
pub const NOTICE_LEASE_SECS: i64 = 30;
/// Crossing-index entries written in one statement at most.
const INDEX_BATCH: usize = 512;
/// Crossing-index entries kept in memory while the database is away; beyond this the oldest are
/// dropped (the index is rebuilt from the log at the next start, from its watermark).
const INDEX_BACKLOG: usize = 100_000;
/// The schema version this build writes.
pub const SCHEMA_VERSION: i32 = 3;
/// A replica holds its name this long after its last heartbeat; a second gateway claiming the
/// same name meanwhile is refused (two writers must never share one audit log origin).
pub const REPLICA_LEASE_MS: i64 = 2_000;
/// Renewed well within the lease, so a slow statement or two does not lose the name.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(REPLICA_LEASE_MS as u64 / 4);
/// How long a starting replica waits for the name's previous holder's lease to expire (a
/// restart right after a crash).
const REPLICA_CLAIM_WAIT: Duration = Duration::from_millis(2 * REPLICA_LEASE_MS as u64 + 1_000);
/// Channel of the revocation notifications.
const CHANNEL: &str = "fedgate_revocations";

/// The migrations, in order; `MIGRATIONS[i]` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE fedgate_replay (
    domain text NOT NULL, issuer text NOT NULL, jti text NOT NULL, exp bigint NOT NULL,
    PRIMARY KEY (domain, issuer, jti));
CREATE INDEX fedgate_replay_exp ON fedgate_replay (domain, exp);
CREATE SEQUENCE fedgate_revocation_seq;
CREATE TABLE fedgate_revocations (
    domain text NOT NULL, owner text NOT NULL, kind text NOT NULL, value text NOT NULL,
    until bigint NOT NULL, at bigint NOT NULL, notice_iat bigint,
    seq bigint NOT NULL DEFAULT nextval('fedgate_revocation_seq'),
    PRIMARY KEY (domain, owner, kind, value));
CREATE INDEX fedgate_revocations_seq ON fedgate_revocations (domain, seq);
CREATE TABLE fedgate_bundles (
    domain text NOT NULL, trust_domain text NOT NULL, sequence bigint NOT NULL,
    document bytea NOT NULL, PRIMARY KEY (domain, trust_domain));
CREATE TABLE fedgate_notices (
    id bigserial PRIMARY KEY, domain text NOT NULL, partner text NOT NULL, jti text NOT NULL,
    notice bytea NOT NULL, lease_owner text, lease_until bigint);
CREATE INDEX fedgate_notices_queue ON fedgate_notices (domain, partner, id);
CREATE TABLE fedgate_rotation (domain text PRIMARY KEY, state text NOT NULL);
CREATE TABLE fedgate_crossings (
    domain text NOT NULL, crossing text NOT NULL, replica text NOT NULL, seq bigint NOT NULL,
    PRIMARY KEY (domain, crossing, replica, seq));
CREATE TABLE fedgate_index_marks (
    domain text NOT NULL, replica text NOT NULL, seq bigint NOT NULL,
    PRIMARY KEY (domain, replica));
"#,
    r#"
ALTER TABLE fedgate_revocations ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX fedgate_revocations_xid ON fedgate_revocations (domain, xid);
ALTER TABLE fedgate_bundles ADD COLUMN mac bytea;
ALTER TABLE fedgate_rotation ADD COLUMN mac bytea;
CREATE TABLE fedgate_replicas (
    domain text NOT NULL, replica text NOT NULL, instance text NOT NULL, seen bigint NOT NULL,
    PRIMARY KEY (domain, replica));
"#,
    r#"
CREATE TABLE fedgate_witness (
    domain text NOT NULL, origin text NOT NULL, note text NOT NULL, mac bytea NOT NULL,
    PRIMARY KEY (domain, origin));
"#,
];

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://…` (kept out of logs: it may carry a password).
    pub url: String,
    pub pool_size: usize,
    pub statement_timeout: Duration,
    /// CA certificates (PEM) that sign the server's certificate: TLS is used exactly when set.
    pub ca: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// The local trust domain (every row is keyed by it).
    pub domain: String,
    /// This replica's name (its audit log origin, its notice leases, its index entries).
    pub replica: String,
}

/// Who opens the database: a serving replica claims its name (and keeps the claim alive); a
/// command-line tool (`fedgate rotate --config`) beside a running replica does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    Replica,
    Tool,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("pool_size", &self.pool_size)
            .field("domain", &self.domain)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// Parses `url` and checks what can be checked without connecting: TLS is required unless the
/// server is on loopback or a Unix socket.
pub fn parse_url(url: &str, tls: bool) -> Result<tokio_postgres::Config, String> {
    let cfg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| format!("not a PostgreSQL URL: {e}"))?;
    if cfg.get_hosts().is_empty() {
        return Err("the URL names no host".into());
    }
    if !tls {
        for h in cfg.get_hosts() {
            let local = match h {
                Host::Unix(_) => true,
                Host::Tcp(name) => {
                    name == "localhost"
                        || name
                            .trim_start_matches('[')
                            .trim_end_matches(']')
                            .parse::<std::net::IpAddr>()
                            .map(|ip| ip.is_loopback())
                            .unwrap_or(false)
                }
            };
            if !local {
                return Err(format!(
                    "{h:?} is not on this host: PostgreSQL over the network needs TLS ([state] ca = the server's CA)"
                ));
            }
        }
    }
    Ok(cfg)
}

#[derive(Clone)]
enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The shared state of one replica.
pub struct PgState {
    pool: Pool,
    pg: tokio_postgres::Config,
    tls: Tls,
    domain: String,
    replica: String,
    cache: RevocationCache,
    /// Every revocation written by a transaction older than this (a PostgreSQL transaction
    /// id, `xid8`) is mirrored; rows are re-read from here, so one committed late is never
    /// missed (a `seq` taken at statement time can commit after a higher one).
    watermark: AtomicU64,
    integrity_key: zeroize::Zeroizing<Vec<u8>>,
    /// This process's claim on the replica name.
    instance: String,
    /// Another gateway took the name (this one lost its lease during an outage): the mirror is
    /// never marked current again, so this replica refuses crossings until restarted.
    name_lost: std::sync::atomic::AtomicBool,
    /// The lowest crossing-index entry dropped while the database was away: the index
    /// watermark never passes it, so the next start indexes it again.
    index_dropped: AtomicU64,
    index: Mutex<VecDeque<(String, u64)>>,
    index_wake: tokio::sync::Notify,
}

fn now_ms() -> i64 {
    crate::time::now_millis()
}

impl PgState {
    /// Connects, migrates the schema and loads the revocation mirror. Fails (the gateway exits
    /// 2 before binding) if the database cannot be reached.
    /// Opens the database for `o.domain`. `secret` is the domain's pseudonym key: the rows
    /// that carry authority (stored bundles, rotation state) are authenticated under a key
    /// derived from it, which every replica of the domain has and the database never sees.
    pub async fn connect(
        o: PgOptions,
        secret: &[u8],
        opener: Opener,
    ) -> Result<Arc<PgState>, StateError> {
        let mut pg = parse_url(&o.url, o.ca.is_some()).map_err(StateError)?;
        pg.options(format!(
            "-c statement_timeout={}",
            o.statement_timeout.as_millis().max(1)
        ))
        .connect_timeout(o.statement_timeout.max(Duration::from_secs(1)))
        .application_name(format!("fedgate {} {}", o.domain, o.replica));
        let tls = match &o.ca {
            None => {
                pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
                Tls::None
            }
            Some(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c.clone()).map_err(err)?;
                }
                let cfg =
                    rustls::ClientConfig::builder_with_provider(crate::server::tls::provider())
                        .with_safe_default_protocol_versions()
                        .map_err(err)?
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                pg.ssl_mode(tokio_postgres::config::SslMode::Require);
                Tls::Rustls(tokio_postgres_rustls::MakeRustlsConnect::new(cfg))
            }
        };
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let mgr = match &tls {
            Tls::None => Manager::from_config(pg.clone(), tokio_postgres::NoTls, mc),
            Tls::Rustls(t) => Manager::from_config(pg.clone(), t.clone(), mc),
        };
        let t = o.statement_timeout.max(Duration::from_secs(1));
        let pool = Pool::builder(mgr)
            .max_size(o.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(t))
            .create_timeout(Some(t))
            .recycle_timeout(Some(t))
            .build()
            .map_err(err)?;
        let s = Arc::new(PgState {
            pool,
            pg,
            tls,
            domain: o.domain,
            replica: o.replica,
            cache: RevocationCache::default(),
            watermark: AtomicU64::new(0),
            integrity_key: zeroize::Zeroizing::new(
                crate::crypto::hmac_sha256(secret, b"fedgate state integrity v1").to_vec(),
            ),
            instance: crate::crypto::random_id(),
            name_lost: std::sync::atomic::AtomicBool::new(false),
            index_dropped: AtomicU64::new(u64::MAX),
            index: Mutex::new(VecDeque::new()),
            index_wake: tokio::sync::Notify::new(),
        });
        s.migrate().await?;
        if opener == Opener::Replica {
            s.claim_replica().await?;
        }
        s.refresh().await?;
        Ok(s)
    }

    /// The integrity tag of a row carrying authority.
    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut msg = Vec::new();
        for p in parts {
            msg.extend_from_slice(&(p.len() as u64).to_be_bytes());
            msg.extend_from_slice(p);
        }
        crate::crypto::hmac_sha256(&self.integrity_key, &msg)
    }

    fn check_mac(&self, parts: &[&[u8]], got: Option<&[u8]>) -> bool {
        got.is_some_and(|g| crate::crypto::ct_eq(g, &self.mac(parts)))
    }

    /// Takes the replica name (or refuses: another live gateway uses it), waiting for the
    /// lease of a crashed previous holder to expire.
    async fn claim_replica(&self) -> Result<(), StateError> {
        let until = tokio::time::Instant::now() + REPLICA_CLAIM_WAIT;
        loop {
            let c = self.client().await?;
            // The database's clock, so replicas' clock skew cannot shorten a lease.
            let row = c
                .query_opt(
                    "INSERT INTO fedgate_replicas AS r (domain, replica, instance, seen)
                     VALUES ($1, $2, $3, (extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                     ON CONFLICT (domain, replica) DO UPDATE
                     SET instance = EXCLUDED.instance, seen = EXCLUDED.seen
                     WHERE r.seen < EXCLUDED.seen - $4 OR r.instance = EXCLUDED.instance
                     RETURNING instance",
                    &[
                        &self.domain,
                        &self.replica,
                        &self.instance,
                        &REPLICA_LEASE_MS,
                    ],
                )
                .await
                .map_err(err)?;
            if row.is_some() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(StateError(format!(
                    "replica name {:?} is in use by another running gateway of {}: every replica needs its own [state] replica",
                    self.replica, self.domain
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Renews this replica's claim on its name.
    async fn heartbeat(&self) -> Result<(), StateError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE fedgate_replicas SET seen = (extract(epoch FROM clock_timestamp()) * 1000)::bigint
                 WHERE domain = $1 AND replica = $2 AND instance = $3",
                &[&self.domain, &self.replica, &self.instance],
            )
            .await
            .map_err(err)?;
        if n == 0 {
            self.name_lost.store(true, Ordering::Release);
            return Err(StateError(format!(
                "another gateway took replica name {:?} (this one lost its lease): refusing crossings until restarted",
                self.replica
            )));
        }
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StateError> {
        self.pool
            .get()
            .await
            .map_err(|e| StateError(format!("PostgreSQL unreachable: {e}")))
    }

    /// Creates or migrates the schema to [`SCHEMA_VERSION`]; refuses a newer one.
    async fn migrate(&self) -> Result<(), StateError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(err)?;
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(7265646761746531);
             CREATE TABLE IF NOT EXISTS fedgate_schema (version integer NOT NULL);",
        )
        .await
        .map_err(err)?;
        let row = tx
            .query_opt("SELECT version FROM fedgate_schema", &[])
            .await
            .map_err(err)?;
        let mut version: i32 = row.map(|r| r.get(0)).unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(StateError(format!(
                "the database schema is version {version}, newer than this gateway's {SCHEMA_VERSION}: upgrade the gateway"
            )));
        }
        if version == 0 {
            tx.execute("INSERT INTO fedgate_schema (version) VALUES (0)", &[])
                .await
                .map_err(err)?;
        }
        while (version as usize) < MIGRATIONS.len() {
            tx.batch_execute(MIGRATIONS[version as usize])
                .await
                .map_err(err)?;
            version += 1;
            if version == 2 {
                // Rows written before they carried integrity tags are adopted by the gateway
                // that upgrades the schema, for its own domain (other domains sharing the
                // database: docs/spec-notes.md note 33).
                self.adopt_untagged(&tx).await?;
            }
            tx.execute("UPDATE fedgate_schema SET version = $1", &[&version])
                .await
                .map_err(err)?;
            tracing::info!(version, "state schema migrated");
        }
        tx.commit().await.map_err(err)
    }

    /// Tags this domain's bundle and rotation rows written by schema 1.
    async fn adopt_untagged(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), StateError> {
        let rows = tx
            .query(
                "SELECT trust_domain, document FROM fedgate_bundles WHERE domain = $1 AND mac IS NULL",
                &[&self.domain],
            )
            .await
            .map_err(err)?;
        for r in rows {
            let (td, doc): (String, Vec<u8>) = (r.get(0), r.get(1));
            let mac = self.mac(&[self.domain.as_bytes(), b"bundle", td.as_bytes(), &doc]);
            tx.execute(
                "UPDATE fedgate_bundles SET mac = $3 WHERE domain = $1 AND trust_domain = $2",
                &[&self.domain, &td, &mac.as_slice()],
            )
            .await
            .map_err(err)?;
        }
        let row = tx
            .query_opt(
                "SELECT state FROM fedgate_rotation WHERE domain = $1 AND mac IS NULL",
                &[&self.domain],
            )
            .await
            .map_err(err)?;
        if let Some(r) = row {
            let state: String = r.get(0);
            let mac = self.mac(&[self.domain.as_bytes(), b"rotation", state.as_bytes()]);
            tx.execute(
                "UPDATE fedgate_rotation SET mac = $2 WHERE domain = $1",
                &[&self.domain, &mac.as_slice()],
            )
            .await
            .map_err(err)?;
        }
        Ok(())
    }

    /// Mirrors every revocation changed since the last refresh. One statement, so one snapshot:
    /// the rows of every transaction at or after the watermark, and that snapshot's oldest
    /// running transaction as the next watermark.
    async fn refresh(&self) -> Result<usize, StateError> {
        let started = now_ms();
        let c = self.client().await?;
        let w = self.watermark.load(Ordering::Acquire).to_string();
        let rows = c
            .query(
                "WITH s AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x)
                 SELECT s.x::text, r.owner, r.kind, r.value, r.until, r.at, r.notice_iat
                 FROM s LEFT JOIN fedgate_revocations r
                   ON r.domain = $1 AND r.xid >= $2::text::xid8",
                &[&self.domain, &w],
            )
            .await
            .map_err(err)?;
        let mut n = 0;
        let mut next = None;
        for r in rows {
            let x: String = r.get(0);
            next = x.parse::<u64>().ok();
            let owner: Option<String> = r.get(1);
            let Some(owner) = owner else { continue };
            n += 1;
            self.cache.set(&Revocation {
                domain: owner,
                kind: r.get(2),
                value: r.get(3),
                until: r.get(4),
                at: r.get(5),
                notice_iat: r.get(6),
            });
        }
        if let Some(x) = next {
            self.watermark.fetch_max(x, Ordering::AcqRel);
        }
        // The mirror is complete as of when the query started.
        if !self.name_lost.load(Ordering::Acquire) {
            self.cache.mark_synced(started);
        }
        Ok(n)
    }

    /// Keeps the revocation mirror current until `stop`: a LISTEN connection for prompt
    /// notifications, and a poll every `POLL_INTERVAL` in case one is missed or the connection
    /// is down.
    async fn sync_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let listener = {
            let s = self.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                loop {
                    let r = match &s.tls {
                        Tls::None => listen(&s.pg, tokio_postgres::NoTls, &tx).await,
                        Tls::Rustls(t) => listen(&s.pg, t.clone(), &tx).await,
                    };
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "revocation LISTEN connection ended");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            })
        };
        let mut was_ok = true;
        let mut last_beat = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = rx.recv() => {}
                _ = stop.changed() => break,
            }
            let r = match self.refresh().await {
                Ok(n) if last_beat.elapsed() >= HEARTBEAT_EVERY => {
                    let r = self.heartbeat().await.map(|_| n);
                    if r.is_ok() {
                        last_beat = tokio::time::Instant::now();
                    }
                    r
                }
                r => r,
            };
            match r {
                Ok(_) => {
                    if !was_ok {
                        tracing::info!("PostgreSQL reachable again: revocations current");
                    }
                    was_ok = true;
                }
                Err(e) => {
                    if was_ok {
                        tracing::error!(error = %e, "cannot refresh revocations from PostgreSQL; crossings are refused until it is back");
                    }
                    was_ok = false;
                }
            }
        }
        listener.abort();
        // A clean stop hands the name back at once (a restart need not wait for the lease).
        if let Ok(c) = self.client().await {
            let _ = c
                .execute(
                    "DELETE FROM fedgate_replicas WHERE domain = $1 AND replica = $2 AND instance = $3",
                    &[&self.domain, &self.replica, &self.instance],
                )
                .await;
        }
    }

    /// Writes queued crossing-index entries in batches until `stop`.
    async fn index_loop(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = self.index_wake.notified() => {}
                _ = stop.changed() => {
                    let _ = self.write_index().await;
                    return;
                }
            }
            if let Err(e) = self.write_index().await {
                tracing::debug!(error = %e, "crossing index not written yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    async fn write_index(&self) -> Result<(), StateError> {
        loop {
            let batch: Vec<(String, u64)> = {
                let Ok(mut q) = self.index.lock() else {
                    return Ok(());
                };
                let n = q.len().min(INDEX_BATCH);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            let crossings: Vec<&str> = batch.iter().map(|(c, _)| c.as_str()).collect();
            let seqs: Vec<i64> = batch.iter().map(|(_, s)| *s as i64).collect();
            // Never past an entry dropped while the database was away (re-indexed at start).
            let dropped = self.index_dropped.load(Ordering::Acquire);
            let top = batch
                .iter()
                .map(|(_, s)| *s)
                .max()
                .unwrap_or(0)
                .min(dropped.saturating_sub(1))
                .min(i64::MAX as u64) as i64;
            let r = async {
                let c = self.client().await?;
                c.execute(
                    "INSERT INTO fedgate_crossings (domain, crossing, replica, seq)
                     SELECT $1, x.c, $2, x.s FROM unnest($3::text[], $4::bigint[]) AS x(c, s)
                     ON CONFLICT DO NOTHING",
                    &[&self.domain, &self.replica, &crossings, &seqs],
                )
                .await
                .map_err(err)?;
                c.execute(
                    "INSERT INTO fedgate_index_marks (domain, replica, seq) VALUES ($1, $2, $3)
                     ON CONFLICT (domain, replica) DO UPDATE
                     SET seq = GREATEST(fedgate_index_marks.seq, EXCLUDED.seq)",
                    &[&self.domain, &self.replica, &top],
                )
                .await
                .map_err(err)?;
                Ok::<_, StateError>(())
            }
            .await;
            if let Err(e) = r {
                // Put the batch back (oldest first) for the next attempt.
                if let Ok(mut q) = self.index.lock() {
                    for e in batch.into_iter().rev() {
                        q.push_front(e);
                    }
                    while q.len() > INDEX_BACKLOG {
                        if let Some((_, seq)) = q.pop_front() {
                            self.index_dropped.fetch_min(seq, Ordering::AcqRel);
                        }
                    }
                }
                return Err(e);
            }
        }
    }

    /// The highest seq of this replica's log already in the crossing index.
    pub async fn index_mark(&self) -> Result<Option<u64>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT seq FROM fedgate_index_marks WHERE domain = $1 AND replica = $2",
                &[&self.domain, &self.replica],
            )
            .await
            .map_err(err)?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }
}

/// One LISTEN connection: forwards each notification to `tx` until the connection fails.
async fn listen<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    tx: &tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<(), StateError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut conn) = pg.connect(tls).await.map_err(err)?;
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    let tx2 = tx.clone();
    let pump = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                    let _ = tx2.send(());
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        let _ = done_tx.send(());
    });
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(err)?;
    // Anything missed while connecting is picked up by the next poll.
    let _ = tx.send(());
    let _ = (&mut done_rx).await;
    pump.abort();
    Ok(())
}

impl StateBackend for PgState {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn revocations(&self) -> &RevocationCache {
        &self.cache
    }

    fn ready(&self) -> bool {
        self.cache.age_ms(now_ms()) <= STALE_AFTER_MS
    }

    fn replay_insert<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
        exp: Instant,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let n = c
                .execute(
                    "INSERT INTO fedgate_replay (domain, issuer, jti, exp) VALUES ($1, $2, $3, $4)
                     ON CONFLICT DO NOTHING",
                    &[&self.domain, &issuer, &jti, &exp],
                )
                .await
                .map_err(err)?;
            Ok(n == 1)
        })
    }

    fn replay_remove<'a>(
        &'a self,
        issuer: &'a str,
        jti: &'a str,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            c.execute(
                "DELETE FROM fedgate_replay WHERE domain = $1 AND issuer = $2 AND jti = $3",
                &[&self.domain, &issuer, &jti],
            )
            .await
            .map_err(err)?;
            Ok(())
        })
    }

    fn sweep_replay(&self, now: Instant, slack: i64) -> BoxFuture<'_, Result<usize, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let n = c
                .execute(
                    "DELETE FROM fedgate_replay WHERE domain = $1 AND exp < $2",
                    &[&self.domain, &now.saturating_sub(slack)],
                )
                .await
                .map_err(err)?;
            Ok(n as usize)
        })
    }

    fn revoke<'a>(&'a self, r: &'a Revocation) -> BoxFuture<'a, Result<Revoked, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            // One statement: insert, or merge (permanent wins, else the later until); a notice
            // older than the newest applied for the value updates nothing (no row returned).
            let row = c
                .query_opt(
                    "INSERT INTO fedgate_revocations AS r (domain, owner, kind, value, until, at, notice_iat)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)
                     ON CONFLICT (domain, owner, kind, value) DO UPDATE SET
                       until = CASE WHEN r.until = 0 OR EXCLUDED.until = 0 THEN 0
                                    ELSE GREATEST(r.until, EXCLUDED.until) END,
                       notice_iat = GREATEST(r.notice_iat, EXCLUDED.notice_iat),
                       seq = nextval('fedgate_revocation_seq'),
                       xid = pg_current_xact_id()
                     WHERE EXCLUDED.notice_iat IS NULL OR r.notice_iat IS NULL
                        OR EXCLUDED.notice_iat >= r.notice_iat
                     RETURNING until, (xmax = 0) AS inserted",
                    &[
                        &self.domain,
                        &r.domain,
                        &r.kind,
                        &r.value,
                        &r.until,
                        &r.at,
                        &r.notice_iat,
                    ],
                )
                .await
                .map_err(err)?;
            let Some(row) = row else {
                return Ok(Revoked::Stale);
            };
            let until: i64 = row.get(0);
            let inserted: bool = row.get(1);
            c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.domain])
                .await
                .map_err(err)?;
            self.cache.set(&Revocation { until, ..r.clone() });
            Ok(if inserted {
                Revoked::New
            } else {
                Revoked::Merged(until)
            })
        })
    }

    fn save_bundle<'a>(
        &'a self,
        td: &'a str,
        sequence: u64,
        document: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            // Never replace a bundle with one of a lower sequence (another replica may have
            // stored a newer one meanwhile).
            let mac = self.mac(&[self.domain.as_bytes(), b"bundle", td.as_bytes(), document]);
            c.execute(
                "INSERT INTO fedgate_bundles AS b (domain, trust_domain, sequence, document, mac)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (domain, trust_domain) DO UPDATE
                 SET sequence = EXCLUDED.sequence, document = EXCLUDED.document, mac = EXCLUDED.mac
                 WHERE b.sequence <= EXCLUDED.sequence",
                &[
                    &self.domain,
                    &td,
                    &(sequence as i64),
                    &document,
                    &mac.as_slice(),
                ],
            )
            .await
            .map_err(err)?;
            Ok(())
        })
    }

    fn saved_bundles(&self) -> BoxFuture<'_, Result<SavedBundles, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT trust_domain, document, mac FROM fedgate_bundles WHERE domain = $1",
                    &[&self.domain],
                )
                .await
                .map_err(err)?;
            let mut out = Vec::new();
            for r in rows {
                let (td, doc, mac): (String, Vec<u8>, Option<Vec<u8>>) =
                    (r.get(0), r.get(1), r.get(2));
                // A row this domain's gateways did not write is ignored, never trusted.
                if self.check_mac(
                    &[self.domain.as_bytes(), b"bundle", td.as_bytes(), &doc],
                    mac.as_deref(),
                ) {
                    out.push((td, doc));
                } else {
                    tracing::error!(domain = %td, "a stored bundle fails its integrity check: ignored (was the database altered?)");
                }
            }
            Ok(out)
        })
    }

    fn queue_notice<'a>(
        &'a self,
        partner: &'a str,
        jti: &'a str,
        notice: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO fedgate_notices (domain, partner, jti, notice) VALUES ($1, $2, $3, $4)",
                &[&self.domain, &partner, &jti, &notice],
            )
            .await
            .map_err(err)?;
            Ok(())
        })
    }

    fn claim_notices(&self) -> BoxFuture<'_, Result<NoticeQueues, StateError>> {
        Box::pin(async move {
            let now = crate::time::now();
            let c = self.client().await?;
            // The head of each partner's queue, leased to this replica unless another holds a
            // live lease on it: order per partner is kept because only heads are delivered.
            let rows = c
                .query(
                    "UPDATE fedgate_notices n SET lease_owner = $2, lease_until = $3
                     WHERE n.id IN (SELECT DISTINCT ON (partner) id FROM fedgate_notices
                                    WHERE domain = $1 ORDER BY partner, id)
                       AND (n.lease_until IS NULL OR n.lease_until < $4 OR n.lease_owner = $2)
                     RETURNING n.id, n.partner, n.jti, n.notice",
                    &[
                        &self.domain,
                        &self.replica,
                        &(now + NOTICE_LEASE_SECS),
                        &now,
                    ],
                )
                .await
                .map_err(err)?;
            let mut out: Vec<(String, Vec<QueuedNotice>)> = rows
                .into_iter()
                .map(|r| {
                    let partner: String = r.get(1);
                    (
                        partner.clone(),
                        vec![QueuedNotice {
                            id: r.get::<_, i64>(0).to_string(),
                            partner,
                            jti: r.get(2),
                            notice: r.get(3),
                        }],
                    )
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(out)
        })
    }

    fn notice_delivered<'a>(
        &'a self,
        n: &'a QueuedNotice,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let id: i64 = n.id.parse().map_err(err)?;
            let c = self.client().await?;
            c.execute(
                "DELETE FROM fedgate_notices WHERE id = $1 AND domain = $2",
                &[&id, &self.domain],
            )
            .await
            .map_err(err)?;
            Ok(())
        })
    }

    fn notice_failed<'a>(&'a self, n: &'a QueuedNotice) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let id: i64 = n.id.parse().map_err(err)?;
            let c = self.client().await?;
            c.execute(
                "UPDATE fedgate_notices SET lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND domain = $2 AND lease_owner = $3",
                &[&id, &self.domain, &self.replica],
            )
            .await
            .map_err(err)?;
            Ok(())
        })
    }

    fn rotation(&self) -> BoxFuture<'_, Result<Option<String>, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT state, mac FROM fedgate_rotation WHERE domain = $1",
                    &[&self.domain],
                )
                .await
                .map_err(err)?;
            let Some(r) = row else { return Ok(None) };
            let (state, mac): (String, Option<Vec<u8>>) = (r.get(0), r.get(1));
            if !self.check_mac(
                &[self.domain.as_bytes(), b"rotation", state.as_bytes()],
                mac.as_deref(),
            ) {
                return Err(StateError(if mac.is_none() {
                    "the stored rotation state has no integrity tag: written before schema 2 by a gateway of this domain that did not upgrade it, or inserted by someone else; check that no rotation is in progress, then delete the domain's row of fedgate_rotation".into()
                } else {
                    "the stored rotation state fails its integrity check (was the database altered?)".into()
                }));
            }
            Ok(Some(state))
        })
    }

    fn witnessed<'a>(
        &'a self,
        origin: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT note, mac FROM fedgate_witness WHERE domain = $1 AND origin = $2",
                    &[&self.domain, &origin],
                )
                .await
                .map_err(err)?;
            let Some(r) = row else { return Ok(None) };
            let (note, mac): (String, Vec<u8>) = (r.get(0), r.get(1));
            if !self.check_mac(
                &[
                    self.domain.as_bytes(),
                    b"witness",
                    origin.as_bytes(),
                    note.as_bytes(),
                ],
                Some(&mac),
            ) {
                return Err(StateError(
                    "the stored witness state fails its integrity check (was the database altered?)"
                        .into(),
                ));
            }
            Ok(Some(note))
        })
    }

    fn save_witnessed<'a>(
        &'a self,
        origin: &'a str,
        expected: Option<&'a str>,
        note: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let mac = self.mac(&[
                self.domain.as_bytes(),
                b"witness",
                origin.as_bytes(),
                note.as_bytes(),
            ]);
            let mac = mac.as_slice();
            let n = match expected {
                None => {
                    c.execute(
                        "INSERT INTO fedgate_witness (domain, origin, note, mac) VALUES ($1, $2, $3, $4)
                         ON CONFLICT DO NOTHING",
                        &[&self.domain, &origin, &note, &mac],
                    )
                    .await
                }
                Some(old) => {
                    c.execute(
                        "UPDATE fedgate_witness SET note = $3, mac = $4
                         WHERE domain = $1 AND origin = $2 AND note = $5",
                        &[&self.domain, &origin, &note, &mac, &old],
                    )
                    .await
                }
            }
            .map_err(err)?;
            Ok(n == 1)
        })
    }

    fn save_rotation<'a>(
        &'a self,
        expected: Option<&'a str>,
        state: &'a str,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let mac = self.mac(&[self.domain.as_bytes(), b"rotation", state.as_bytes()]);
            let mac = mac.as_slice();
            let n = match expected {
                None => {
                    c.execute(
                        "INSERT INTO fedgate_rotation (domain, state, mac) VALUES ($1, $2, $3)
                         ON CONFLICT DO NOTHING",
                        &[&self.domain, &state, &mac],
                    )
                    .await
                }
                Some(old) => {
                    c.execute(
                        "UPDATE fedgate_rotation SET state = $2, mac = $4 WHERE domain = $1 AND state = $3",
                        &[&self.domain, &state, &old, &mac],
                    )
                    .await
                }
            }
            .map_err(err)?;
            Ok(n == 1)
        })
    }

    fn index_crossing(&self, crossing: &str, seq: u64) {
        if let Ok(mut q) = self.index.lock() {
            if q.len() >= INDEX_BACKLOG {
                if let Some((_, s)) = q.pop_front() {
                    self.index_dropped.fetch_min(s, Ordering::AcqRel);
                }
            }
            q.push_back((crossing.to_string(), seq));
            if q.len() >= INDEX_BATCH {
                self.index_wake.notify_one();
            }
        }
    }

    fn crossing_locations<'a>(
        &'a self,
        crossing: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, u64)>, StateError>> {
        Box::pin(async move {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT replica, seq FROM fedgate_crossings
                     WHERE domain = $1 AND crossing = $2 ORDER BY replica, seq",
                    &[&self.domain, &crossing],
                )
                .await
                .map_err(err)?;
            Ok(rows
                .into_iter()
                .map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64))
                .collect())
        })
    }

    fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }

    fn spawn_tasks(
        self: Arc<Self>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().sync_loop(stop.clone())),
            tokio::spawn(self.index_loop(stop)),
        ]
    }

    fn replica(&self) -> Option<&str> {
        Some(&self.replica)
    }

    fn index_mark(&self) -> BoxFuture<'_, Result<Option<u64>, StateError>> {
        Box::pin(PgState::index_mark(self))
    }
}
