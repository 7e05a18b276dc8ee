//! The audit log of record: append-only segment files written by one thread with group commit
//! (every append waiting at the same moment shares one `fdatasync`), framed as
//! `len (u32 BE) | crc32 (u32 BE) | canonical record`. An append is acknowledged only after its
//! bytes are durable. Signed checkpoints are written periodically and at shutdown.
//!
//! On open the log is replayed: a torn final frame (a crash mid-write, never acknowledged) is
//! moved aside into a `.torn-*` file next to its segment and cut off, and reported; any other
//! damage, or a log that does not hash to its last signed checkpoint, refuses to open (the
//! gateway fails closed) without changing a byte. Torn means the last frame of the last
//! segment really runs past the end of the file (or the file ends in zeros a crash left
//! there); an implausible length or a bad checksum with bytes after it is damage, not a torn
//! write. Nothing covered by the signed checkpoint is ever cut. If a write or sync fails, the
//! log stops accepting appends (`audit_unavailable`) rather than continue past a gap: the
//! partial bytes are cut off, and the writer tries again every `RECOVER_INTERVAL` — reopen the
//! segment, cut it back to the last durable length, sync, sign a checkpoint — and accepts
//! appends again once that works (space came back). The writer's file operations go through
//! `store::io::LogIo`, so tests can inject the faults.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::checkpoint::{self, Checkpoint};
use crate::audit::merkle::{Hash, MerkleTree};
use crate::audit::record::{Record, MAX_RECORD_BYTES, RECORD_VERSION};
use crate::crypto::b64url;
use crate::jose::SigningKey;
use crate::store::io::{FsIo, LogIo, SegmentFile};

/// A segment is closed and a new one started past this size: bounded files are easier to
/// copy, archive and scan.
pub const SEGMENT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Most appends folded into one write + fdatasync.
pub const MAX_BATCH: usize = 4096;
/// A new checkpoint is signed at most this often while records keep arriving.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Frame header: length and CRC-32.
const FRAME_HEADER: usize = 8;
/// After a failed write, the writer tries to recover this often (a disk that filled up is
/// usually freed by an operator or a log rotation within seconds to minutes).
pub const RECOVER_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    #[error("audit log I/O: {0}")]
    Io(String),
    #[error("audit log is damaged: {0}")]
    Damaged(String),
    #[error("audit log does not match its signed checkpoint: {0}")]
    CheckpointMismatch(String),
    #[error("audit log is unavailable (an earlier write failed)")]
    Unavailable,
    #[error("invalid record: {0}")]
    Record(String),
}

fn io(e: impl std::fmt::Display) -> LogError {
    LogError::Io(e.to_string())
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub leaf: Hash,
}

/// What recovery found on open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub records: u64,
    pub segments: usize,
    /// Bytes of a torn final frame that were cut off (and kept in a `.torn-*` file).
    pub truncated_bytes: u64,
    pub moved_aside: bool,
    pub checkpoint_size: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Loc {
    segment: u32,
    offset: u64,
    len: u32,
}

struct Tree {
    tree: MerkleTree,
    locs: Vec<Loc>,
    /// Crossing id (hashed) → seqs of its records. Rebuilt from the log at open; a lookup reads
    /// the records and keeps only exact matches, so hash collisions cost a read, not a mistake.
    index: HashMap<u64, Vec<u64>>,
    checkpoint: Option<(Checkpoint, String)>,
}

struct Shared {
    dir: PathBuf,
    origin: String,
    healthy: AtomicBool,
    state: Mutex<Tree>,
    segments: Mutex<Vec<PathBuf>>,
}

type Reply = tokio::sync::oneshot::Sender<Result<Appended, LogError>>;

enum Job {
    Append(Box<Record>, Reply),
    Checkpoint(std::sync::mpsc::Sender<Result<String, LogError>>),
    Stop(std::sync::mpsc::Sender<()>),
}

/// The log handle; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
}

/// The index key of a crossing id: the first 8 bytes of its SHA-256.
fn crossing_key(crossing: &str) -> u64 {
    let h = crate::crypto::sha256(crossing.as_bytes());
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, LogError> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .map(|n| n.starts_with("seg-") && n.ends_with(".log"))
                .unwrap_or(false)
        })
        .collect();
    v.sort();
    Ok(v)
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME_HEADER + bytes.len());
    f.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    f.extend_from_slice(&crc32fast::hash(bytes).to_be_bytes());
    f.extend_from_slice(bytes);
    f
}

/// Reads every frame of the log in `dir` (read-only). Returns (payloads, locations, torn tail
/// info `(segment path, valid length, file length)`).
#[allow(clippy::type_complexity)]
fn scan(
    dir: &Path,
) -> Result<
    (
        Vec<Vec<u8>>,
        Vec<Loc>,
        Vec<PathBuf>,
        Option<(PathBuf, u64, u64)>,
    ),
    LogError,
> {
    let segs = list_segments(dir)?;
    let mut payloads = Vec::new();
    let mut locs = Vec::new();
    let mut torn = None;
    for (si, path) in segs.iter().enumerate() {
        let mut f = File::open(path).map_err(io)?;
        let mut data = Vec::new();
        f.read_to_end(&mut data).map_err(io)?;
        let last_segment = si + 1 == segs.len();
        let mut off = 0usize;
        while off < data.len() {
            let rest = data.len() - off;
            let header_ok = rest >= FRAME_HEADER;
            let len = if header_ok {
                u32::from_be_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]])
                    as usize
            } else {
                0
            };
            let plausible = header_ok && len > 0 && len <= MAX_RECORD_BYTES;
            let complete = plausible && rest >= FRAME_HEADER + len;
            let crc_ok = complete && {
                let crc = u32::from_be_bytes([
                    data[off + 4],
                    data[off + 5],
                    data[off + 6],
                    data[off + 7],
                ]);
                crc32fast::hash(&data[off + FRAME_HEADER..off + FRAME_HEADER + len]) == crc
            };
            if !crc_ok {
                // Only the very end of the last segment may be torn: a header cut short, a
                // plausible frame that runs past the end of the file or ends exactly there
                // (the last write, half on disk), or a tail of zeros. An implausible length
                // with more bytes after it is damage.
                let runs_past_end = !header_ok || (plausible && !complete);
                let ends_here = complete && off + FRAME_HEADER + len == data.len();
                let zero_tail = data[off..].iter().all(|b| *b == 0);
                if last_segment && (runs_past_end || ends_here || zero_tail) {
                    torn = Some((path.clone(), off as u64, data.len() as u64));
                    break;
                }
                let seg = path.display();
                return Err(LogError::Damaged(format!(
                    "{seg}: frame at byte {off} is corrupt (record {})",
                    payloads.len()
                )));
            }
            let payload = data[off + FRAME_HEADER..off + FRAME_HEADER + len].to_vec();
            locs.push(Loc {
                segment: si as u32,
                offset: (off + FRAME_HEADER) as u64,
                len: len as u32,
            });
            payloads.push(payload);
            off += FRAME_HEADER + len;
        }
    }
    Ok((payloads, locs, segs, torn))
}

/// Checks records against each other: canonical, seq in order, `prev` chained, one domain.
fn check_records(
    payloads: &[Vec<u8>],
    domain: &str,
) -> Result<(MerkleTree, HashMap<u64, Vec<u64>>), LogError> {
    let mut tree = MerkleTree::new();
    let mut index: HashMap<u64, Vec<u64>> = HashMap::new();
    for (i, p) in payloads.iter().enumerate() {
        let r =
            Record::from_canonical(p).map_err(|e| LogError::Damaged(format!("record {i}: {e}")))?;
        if r.seq != i as u64 {
            return Err(LogError::Damaged(format!("record {i} has seq {}", r.seq)));
        }
        if r.domain != domain {
            return Err(LogError::Damaged(format!(
                "record {i} belongs to {}",
                r.domain
            )));
        }
        let want = if i == 0 {
            String::new()
        } else {
            b64url(&tree.leaf(i as u64 - 1).unwrap_or_default())
        };
        if r.prev != want {
            return Err(LogError::Damaged(format!(
                "record {} changed after it was logged",
                i.saturating_sub(1)
            )));
        }
        tree.push(Record::leaf(p));
        index
            .entry(crossing_key(&r.crossing))
            .or_default()
            .push(i as u64);
    }
    Ok((tree, index))
}

/// Copies the bytes `[valid, len)` of `path` to `<path>.torn-<unix time>-<valid>` (synced),
/// then cuts the segment at `valid`: nothing a crash left behind is destroyed.
fn set_aside(path: &Path, valid: u64, len: u64) -> Result<(), LogError> {
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    f.seek(SeekFrom::Start(valid)).map_err(io)?;
    let mut tail = Vec::with_capacity((len - valid) as usize);
    f.read_to_end(&mut tail).map_err(io)?;
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".torn-{}-{valid}", crate::time::now()));
    let aside = PathBuf::from(name);
    let mut out = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&aside)
        .map_err(io)?;
    out.write_all(&tail).map_err(io)?;
    out.sync_all().map_err(io)?;
    if let Some(d) = path.parent().and_then(|d| File::open(d).ok()) {
        d.sync_all().map_err(io)?;
    }
    f.set_len(valid).map_err(io)?;
    f.sync_all().map_err(io)?;
    tracing::warn!(aside = %aside.display(), bytes = len - valid, "audit log: a torn final record was moved aside");
    Ok(())
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

/// Reads and verifies the persisted checkpoint with the audit public key.
fn load_checkpoint(
    dir: &Path,
    origin: &str,
    public: &[u8],
) -> Result<Option<(Checkpoint, String)>, LogError> {
    let p = checkpoint_path(dir);
    if !p.exists() {
        return Ok(None);
    }
    let text = crate::files::read_text_limited(&p, checkpoint::MAX_NOTE_BYTES).map_err(io)?;
    let cp = checkpoint::verify_with_key(&text, origin, public)
        .map_err(|e| LogError::CheckpointMismatch(format!("stored checkpoint: {e}")))?;
    Ok(Some((cp, text)))
}

impl AuditLog {
    /// Opens (or creates) the log in `dir` for `domain`, recovering as described above, and
    /// starts the writer thread. `key` is the Ed25519 audit key.
    pub fn open(
        dir: &Path,
        domain: &str,
        key: SigningKey,
    ) -> Result<(AuditLog, Recovery), LogError> {
        Self::open_with_origin(dir, domain, &checkpoint::origin_of(domain), key)
    }

    /// [`open`](Self::open) with an explicit checkpoint origin (a replica's own log:
    /// `<td>/fedgate-audit/<replica>`).
    pub fn open_with_origin(
        dir: &Path,
        domain: &str,
        origin: &str,
        key: SigningKey,
    ) -> Result<(AuditLog, Recovery), LogError> {
        Self::open_with_io(dir, domain, origin, key, Arc::new(FsIo))
    }

    /// [`open_with_origin`](Self::open_with_origin) with the writer's file operations going
    /// through `io` (faults injected in tests).
    pub fn open_with_io(
        dir: &Path,
        domain: &str,
        origin: &str,
        key: SigningKey,
        log_io: Arc<dyn LogIo>,
    ) -> Result<(AuditLog, Recovery), LogError> {
        fs::create_dir_all(dir).map_err(io)?;
        let origin = origin.to_string();
        let (payloads, locs, mut segs, torn) = scan(dir)?;
        let mut rec = Recovery {
            records: payloads.len() as u64,
            segments: segs.len(),
            ..Default::default()
        };
        // Everything is checked before anything is changed: the checkpoint first.
        let cp = load_checkpoint(dir, &origin, key.public().raw())?;
        if let (Some((c, _)), Some(_)) = (&cp, &torn) {
            if c.size > payloads.len() as u64 {
                return Err(LogError::CheckpointMismatch(format!(
                    "record {} is damaged, but the signed checkpoint covers {} records: acknowledged records would be lost, refusing to cut anything",
                    payloads.len(),
                    c.size
                )));
            }
        }
        let (tree, index) = check_records(&payloads, domain)?;
        if let Some((c, _)) = &cp {
            if c.size > tree.len() {
                return Err(LogError::CheckpointMismatch(format!(
                    "the checkpoint covers {} records but only {} are on disk: acknowledged records are missing",
                    c.size,
                    tree.len()
                )));
            }
            if tree.root(c.size) != Some(c.root) {
                return Err(LogError::CheckpointMismatch(format!(
                    "the first {} records do not hash to the signed root",
                    c.size
                )));
            }
            rec.checkpoint_size = Some(c.size);
        }
        // Only now, with every check passed, is the damaged tail moved aside.
        if let Some((path, valid, len)) = torn {
            set_aside(&path, valid, len)?;
            rec.truncated_bytes = len - valid;
            rec.moved_aside = true;
        }
        if segs.is_empty() {
            let p = dir.join(segment_name(0));
            log_io.create_segment(&p).map_err(io)?;
            segs.push(p);
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            origin,
            healthy: AtomicBool::new(true),
            state: Mutex::new(Tree {
                tree,
                locs,
                index,
                checkpoint: cp,
            }),
            segments: Mutex::new(segs),
        });
        let (tx, rx) = mpsc::channel();
        let log = AuditLog {
            shared: shared.clone(),
            tx,
        };
        let last_leaf = {
            let st = shared.state.lock().map_err(|_| LogError::Unavailable)?;
            st.tree.len().checked_sub(1).and_then(|i| st.tree.leaf(i))
        };
        let writer = Writer::new(shared, key, last_leaf, log_io)?;
        std::thread::Builder::new()
            .name("fedgate-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        // Sign a checkpoint covering everything recovered, so exports see it at once.
        log.checkpoint_now()?;
        Ok((log, rec))
    }

    /// Appends a record (its `seq`, `prev` and `v` are set here) and resolves once it is durable.
    pub async fn append(&self, record: Record) -> Result<Appended, LogError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(LogError::Unavailable);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Append(Box::new(record), tx))
            .map_err(|_| LogError::Unavailable)?;
        rx.await.map_err(|_| LogError::Unavailable)?
    }

    /// Blocking append, for code outside the async runtime.
    pub fn append_blocking(&self, record: Record) -> Result<Appended, LogError> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return Err(LogError::Unavailable);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Append(Box::new(record), tx))
            .map_err(|_| LogError::Unavailable)?;
        rx.blocking_recv().map_err(|_| LogError::Unavailable)?
    }

    /// Signs and persists a checkpoint of everything durable now; returns the note.
    pub fn checkpoint_now(&self) -> Result<String, LogError> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send(Job::Checkpoint(tx))
            .map_err(|_| LogError::Unavailable)?;
        rx.recv().map_err(|_| LogError::Unavailable)?
    }

    /// Stops the writer after a final checkpoint.
    pub fn shutdown(&self) {
        let _ = self.checkpoint_now();
        let (tx, rx) = mpsc::channel();
        if self.tx.send(Job::Stop(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Acquire)
    }

    pub fn origin(&self) -> &str {
        &self.shared.origin
    }

    pub fn size(&self) -> u64 {
        self.shared.state.lock().map(|s| s.tree.len()).unwrap_or(0)
    }

    /// The latest signed checkpoint `(parsed, note text)`.
    pub fn latest_checkpoint(&self) -> Option<(Checkpoint, String)> {
        self.shared
            .state
            .lock()
            .ok()
            .and_then(|s| s.checkpoint.clone())
    }

    pub fn leaf(&self, seq: u64) -> Option<Hash> {
        self.shared.state.lock().ok().and_then(|s| s.tree.leaf(seq))
    }

    pub fn root(&self, size: u64) -> Option<Hash> {
        self.shared
            .state
            .lock()
            .ok()
            .and_then(|s| s.tree.root(size))
    }

    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Option<Vec<Hash>> {
        self.shared
            .state
            .lock()
            .ok()
            .and_then(|s| s.tree.inclusion_proof(seq, size))
    }

    pub fn consistency_proof(&self, m: u64, n: u64) -> Option<Vec<Hash>> {
        self.shared
            .state
            .lock()
            .ok()
            .and_then(|s| s.tree.consistency_proof(m, n))
    }

    /// The canonical records of one crossing, in log order.
    pub fn crossing(&self, crossing: &str) -> Result<Vec<Vec<u8>>, LogError> {
        let (locs, segs) = {
            let st = self
                .shared
                .state
                .lock()
                .map_err(|_| LogError::Unavailable)?;
            let seqs = st
                .index
                .get(&crossing_key(crossing))
                .cloned()
                .unwrap_or_default();
            let locs: Vec<Loc> = seqs
                .iter()
                .filter_map(|s| st.locs.get(*s as usize).copied())
                .collect();
            (
                locs,
                self.shared
                    .segments
                    .lock()
                    .map_err(|_| LogError::Unavailable)?
                    .clone(),
            )
        };
        let needle = format!(
            "\"crossing\":{}",
            serde_json::to_string(crossing).unwrap_or_default()
        );
        Ok(read_locs(&segs, &locs)?
            .into_iter()
            .filter(|r| r.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .collect())
    }

    /// Canonical bytes of records `[from, from + limit)` that are durable.
    pub fn read(&self, from: u64, limit: u64) -> Result<Vec<Vec<u8>>, LogError> {
        let (locs, segs) = {
            let st = self
                .shared
                .state
                .lock()
                .map_err(|_| LogError::Unavailable)?;
            let end = st.tree.len().min(from.saturating_add(limit));
            let locs: Vec<Loc> = if from < end {
                st.locs[from as usize..end as usize].to_vec()
            } else {
                vec![]
            };
            let segs = self
                .shared
                .segments
                .lock()
                .map_err(|_| LogError::Unavailable)?
                .clone();
            (locs, segs)
        };
        read_locs(&segs, &locs)
    }
}

fn read_locs(segs: &[PathBuf], locs: &[Loc]) -> Result<Vec<Vec<u8>>, LogError> {
    let mut out = Vec::with_capacity(locs.len());
    let mut open: Option<(u32, File)> = None;
    for l in locs {
        if open.as_ref().map(|(s, _)| *s) != Some(l.segment) {
            let p = segs
                .get(l.segment as usize)
                .ok_or_else(|| LogError::Damaged("segment vanished".into()))?;
            open = Some((l.segment, File::open(p).map_err(io)?));
        }
        if let Some((_, f)) = open.as_mut() {
            let mut buf = vec![0u8; l.len as usize];
            f.seek(SeekFrom::Start(l.offset)).map_err(io)?;
            f.read_exact(&mut buf).map_err(io)?;
            out.push(buf);
        }
    }
    Ok(out)
}

/// Reads the records covered by the last signed checkpoint of a (possibly running) gateway's
/// log, without modifying anything: `(canonical records, checkpoint note)`.
pub fn export(
    dir: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<(Vec<Vec<u8>>, String), LogError> {
    let text = crate::files::read_text_limited(&checkpoint_path(dir), checkpoint::MAX_NOTE_BYTES)
        .map_err(|e| LogError::Io(format!("no signed checkpoint to export against: {e}")))?;
    let cp = checkpoint::peek(&text).map_err(|e| LogError::Damaged(e.to_string()))?;
    let (payloads, _, _, _) = scan(dir)?;
    if (payloads.len() as u64) < cp.size {
        return Err(LogError::CheckpointMismatch(format!(
            "the checkpoint covers {} records, the log has {}",
            cp.size,
            payloads.len()
        )));
    }
    let mut out = Vec::with_capacity(cp.size as usize);
    for (i, p) in payloads.into_iter().take(cp.size as usize).enumerate() {
        out.push(p);
        if i % 100_000 == 0 {
            progress(i as u64, cp.size);
        }
    }
    Ok((out, text))
}

struct Writer {
    shared: Arc<Shared>,
    key: SigningKey,
    log_io: Arc<dyn LogIo>,
    /// When the writer last tried to recover from a failed write.
    last_recovery: Instant,
    file: Box<dyn SegmentFile>,
    segment: u32,
    seg_len: u64,
    last_leaf: Option<Hash>,
    last_checkpoint: Instant,
}

impl Writer {
    fn new(
        shared: Arc<Shared>,
        key: SigningKey,
        last_leaf: Option<Hash>,
        log_io: Arc<dyn LogIo>,
    ) -> Result<Writer, LogError> {
        let (path, segment) = {
            let segs = shared.segments.lock().map_err(|_| LogError::Unavailable)?;
            let p = segs
                .last()
                .cloned()
                .ok_or_else(|| LogError::Io("no segment".into()))?;
            (p, segs.len() as u32 - 1)
        };
        let file = log_io.open_append(&path).map_err(io)?;
        let seg_len = file.size().map_err(io)?;
        Ok(Writer {
            shared,
            key,
            log_io,
            last_recovery: Instant::now(),
            file,
            segment,
            seg_len,
            last_leaf,
            last_checkpoint: Instant::now(),
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Job>) {
        loop {
            let wait = if self.shared.healthy.load(Ordering::Acquire) {
                CHECKPOINT_INTERVAL
            } else {
                RECOVER_INTERVAL
            };
            let job = rx.recv_timeout(wait);
            if !self.shared.healthy.load(Ordering::Acquire)
                && self.last_recovery.elapsed() >= RECOVER_INTERVAL
            {
                self.recover();
            }
            let job = match job {
                Ok(j) => j,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.shared.healthy.load(Ordering::Acquire) {
                        self.maybe_checkpoint(false);
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.maybe_checkpoint(true);
                    return;
                }
            };
            let mut appends: Vec<(Box<Record>, Reply)> = Vec::new();
            let mut others: Vec<Job> = Vec::new();
            match job {
                Job::Append(r, tx) => appends.push((r, tx)),
                other => others.push(other),
            }
            // Group commit: take everything already waiting.
            while appends.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Job::Append(r, tx)) => appends.push((r, tx)),
                    Ok(other) => others.push(other),
                    Err(_) => break,
                }
            }
            if !appends.is_empty() {
                self.commit(appends);
            }
            if self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                self.maybe_checkpoint(false);
            }
            for j in others {
                match j {
                    Job::Checkpoint(tx) => {
                        let _ = tx.send(self.checkpoint());
                    }
                    Job::Stop(tx) => {
                        let _ = tx.send(());
                        return;
                    }
                    Job::Append(..) => {}
                }
            }
        }
    }

    fn commit(&mut self, batch: Vec<(Box<Record>, Reply)>) {
        if !self.shared.healthy.load(Ordering::Acquire) {
            for (_, tx) in batch {
                let _ = tx.send(Err(LogError::Unavailable));
            }
            return;
        }
        if self.seg_len >= SEGMENT_MAX_BYTES {
            if let Err(e) = self.rotate() {
                tracing::error!(error = %e, "audit segment rotation failed; audit log unavailable");
                self.shared.healthy.store(false, Ordering::Release);
                for (_, tx) in batch {
                    let _ = tx.send(Err(LogError::Unavailable));
                }
                return;
            }
        }
        let start_seq = match self.shared.state.lock() {
            Ok(s) => s.tree.len(),
            Err(_) => return,
        };
        let mut buf = Vec::with_capacity(batch.len() * 700);
        let mut done: Vec<(Hash, Loc)> = Vec::with_capacity(batch.len());
        let mut replies: Vec<(Reply, Result<(), LogError>)> = Vec::with_capacity(batch.len());
        let mut prev = self.last_leaf;
        let mut seq = start_seq;
        let mut keys: Vec<u64> = Vec::with_capacity(batch.len());
        for (mut r, tx) in batch {
            r.v = RECORD_VERSION;
            r.seq = seq;
            r.prev = prev.map(|p| b64url(&p)).unwrap_or_default();
            match r.canonical() {
                Ok(bytes) => {
                    let leaf = Record::leaf(&bytes);
                    let loc = Loc {
                        segment: self.segment,
                        offset: self.seg_len + buf.len() as u64 + FRAME_HEADER as u64,
                        len: bytes.len() as u32,
                    };
                    buf.extend_from_slice(&frame(&bytes));
                    keys.push(crossing_key(&r.crossing));
                    done.push((leaf, loc));
                    prev = Some(leaf);
                    seq += 1;
                    replies.push((tx, Ok(())));
                }
                Err(e) => replies.push((tx, Err(LogError::Record(e)))),
            }
        }
        let write = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = write {
            tracing::error!(error = %e, "audit write failed; audit log unavailable until it can be written again");
            // Cut back whatever part reached the file, so the log stays a clean prefix.
            let _ = self.file.set_len(self.seg_len);
            self.shared.healthy.store(false, Ordering::Release);
            self.last_recovery = Instant::now();
            for (tx, _) in replies {
                let _ = tx.send(Err(LogError::Unavailable));
            }
            return;
        }
        self.seg_len += buf.len() as u64;
        self.last_leaf = prev;

        let mut results = done.iter();
        if let Ok(mut st) = self.shared.state.lock() {
            for (i, (leaf, loc)) in done.iter().enumerate() {
                let seq = st.tree.len();
                st.tree.push(*leaf);
                st.locs.push(*loc);
                if let Some(k) = keys.get(i) {
                    st.index.entry(*k).or_default().push(seq);
                }
            }
        }
        let mut next_seq = start_seq;
        for (tx, r) in replies {
            let reply = match r {
                Ok(()) => {
                    let (leaf, _) = results.next().copied().unwrap_or((
                        [0; 32],
                        Loc {
                            segment: 0,
                            offset: 0,
                            len: 0,
                        },
                    ));
                    let a = Appended {
                        seq: next_seq,
                        leaf,
                    };
                    next_seq += 1;
                    Ok(a)
                }
                Err(e) => Err(e),
            };
            let _ = tx.send(reply);
        }
    }

    fn rotate(&mut self) -> Result<(), LogError> {
        let first = self
            .shared
            .state
            .lock()
            .map_err(|_| LogError::Unavailable)?
            .tree
            .len();
        let path = self.shared.dir.join(segment_name(first));
        let f = self.log_io.create_segment(&path).map_err(io)?;
        let mut segs = self
            .shared
            .segments
            .lock()
            .map_err(|_| LogError::Unavailable)?;
        segs.push(path);
        self.segment = segs.len() as u32 - 1;
        self.file = f;
        self.seg_len = 0;
        Ok(())
    }

    /// After a failed write: reopen the current segment, cut it back to the last durable
    /// length, sync it, and sign a checkpoint (which needs room on the disk). If all of that
    /// works, appends are accepted again.
    fn recover(&mut self) {
        self.last_recovery = Instant::now();
        let path = match self.shared.segments.lock() {
            Ok(s) => s.get(self.segment as usize).cloned(),
            Err(_) => None,
        };
        let Some(path) = path else { return };
        let attempt = (|| -> Result<Box<dyn SegmentFile>, LogError> {
            let mut f = self.log_io.open_append(&path).map_err(io)?;
            f.set_len(self.seg_len).map_err(io)?;
            f.sync_data().map_err(io)?;
            if f.size().map_err(io)? != self.seg_len {
                return Err(LogError::Io(
                    "the segment did not return to its length".into(),
                ));
            }
            Ok(f)
        })();
        let f = match attempt {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(error = %e, "audit log still not writable");
                return;
            }
        };
        self.file = f;
        // A checkpoint is a write too: the disk must take it (the current tree's, which a failed
        // write did not change; written again if it is already signed).
        let signed = self.shared.state.lock().ok().and_then(|st| {
            st.checkpoint
                .as_ref()
                .map(|(c, t)| (c.size == st.tree.len(), t.clone()))
        });
        let written = match signed {
            Some((true, text)) => self
                .log_io
                .replace(&checkpoint_path(&self.shared.dir), text.as_bytes())
                .map(|_| text)
                .map_err(io),
            _ => self.checkpoint(),
        };
        match written {
            Ok(_) => {
                self.shared.healthy.store(true, Ordering::Release);
                tracing::warn!("audit log writable again: appends resume");
            }
            Err(e) => tracing::debug!(error = %e, "audit log still not writable"),
        }
    }

    fn maybe_checkpoint(&mut self, force: bool) {
        let stale = match self.shared.state.lock() {
            Ok(s) => s.checkpoint.as_ref().map(|(c, _)| c.size) != Some(s.tree.len()),
            Err(_) => false,
        };
        if stale || force {
            if let Err(e) = self.checkpoint() {
                tracing::error!(error = %e, "audit checkpoint failed");
            }
        }
    }

    fn checkpoint(&mut self) -> Result<String, LogError> {
        self.last_checkpoint = Instant::now();
        let (size, root) = {
            let st = self
                .shared
                .state
                .lock()
                .map_err(|_| LogError::Unavailable)?;
            if let Some((c, text)) = &st.checkpoint {
                if c.size == st.tree.len() {
                    return Ok(text.clone());
                }
            }
            let n = st.tree.len();
            (
                n,
                st.tree
                    .root(n)
                    .unwrap_or_else(crate::audit::merkle::empty_root),
            )
        };
        let cp = Checkpoint {
            origin: self.shared.origin.clone(),
            size,
            root,
        };
        let note = cp
            .sign(&self.key)
            .map_err(|e| LogError::Io(e.to_string()))?;
        self.log_io
            .replace(&checkpoint_path(&self.shared.dir), note.as_bytes())
            .map_err(io)?;
        if let Ok(mut st) = self.shared.state.lock() {
            st.checkpoint = Some((cp, note.clone()));
        }
        Ok(note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::generate_ed25519().unwrap().0
    }

    fn rec(i: usize) -> Record {
        Record::decision("company.com", "outbound", &format!("c{i}"), i % 2 == 0)
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn append_reopen_and_verify() {
        let d = tempfile::tempdir().unwrap();
        let k = key();
        let der = k.public().raw().to_vec();
        let (log, rec0) = AuditLog::open(d.path(), "company.com", k).unwrap();
        assert_eq!(rec0.records, 0);
        let rt = rt();
        let seqs: Vec<u64> = rt.block_on(async {
            let mut hs = Vec::new();
            for i in 0..50 {
                let l = log.clone();
                hs.push(tokio::spawn(
                    async move { l.append(rec(i)).await.unwrap().seq },
                ));
            }
            let mut v = Vec::new();
            for h in hs {
                v.push(h.await.unwrap());
            }
            v
        });
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        let note = log.checkpoint_now().unwrap();
        let cp = checkpoint::verify_with_key(&note, "company.com/fedgate-audit", &der).unwrap();
        assert_eq!(cp.size, 50);
        assert_eq!(log.read(10, 5).unwrap().len(), 5);
        let r = Record::from_canonical(&log.read(49, 1).unwrap()[0]).unwrap();
        assert_eq!(r.seq, 49);
        let c7 = log.crossing("c7").unwrap();
        assert_eq!(c7.len(), 1);
        assert_eq!(Record::from_canonical(&c7[0]).unwrap().crossing, "c7");
        assert!(log.crossing("c70").unwrap().is_empty());
        let p = log.inclusion_proof(7, 50).unwrap();
        assert!(crate::audit::merkle::verify_inclusion(
            &log.leaf(7).unwrap(),
            7,
            50,
            &p,
            &cp.root
        ));
        log.shutdown();
        drop(log);
        // Reopen: everything is there and matches the checkpoint.
        let k2 = SigningKey::generate_ed25519().unwrap().0;
        assert!(
            matches!(
                AuditLog::open(d.path(), "company.com", k2),
                Err(LogError::CheckpointMismatch(_))
            ),
            "another key cannot vouch for the checkpoint"
        );
    }

    #[test]
    fn torn_tail_is_truncated_other_damage_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        let (k, der) = SigningKey::generate_ed25519().unwrap();
        let (log, _) = AuditLog::open(d.path(), "company.com", k).unwrap();
        for i in 0..10 {
            log.append_blocking(rec(i)).unwrap();
        }
        log.shutdown();
        drop(log);
        let seg = list_segments(d.path()).unwrap()[0].clone();
        // A torn final frame: half a record appended.
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&frame(b"{\"partial\":")[..12]).unwrap();
        drop(f);
        let (log, rec) = AuditLog::open(
            d.path(),
            "company.com",
            SigningKey::from_pkcs8(&der).unwrap(),
        )
        .unwrap();
        assert_eq!(rec.records, 10);
        assert_eq!(rec.truncated_bytes, 12);
        assert!(rec.moved_aside);
        let aside: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".torn-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            fs::read(aside[0].path()).unwrap(),
            frame(b"{\"partial\":")[..12].to_vec()
        );
        log.append_blocking(rec_owned(10)).unwrap();
        log.shutdown();
        drop(log);
        // A flipped byte in the middle: refuse to open.
        let mut data = fs::read(&seg).unwrap();
        data[FRAME_HEADER + 20] ^= 0x20;
        fs::write(&seg, &data).unwrap();
        let e = AuditLog::open(
            d.path(),
            "company.com",
            SigningKey::from_pkcs8(&der).unwrap(),
        );
        assert!(matches!(e, Err(LogError::Damaged(_))), "{:?}", e.err());
    }

    /// An implausible length in the middle of the last segment is damage, not a torn tail: the
    /// log refuses to open and not a byte is changed (the review's reproduction cut 7.9 KB of
    /// intact records here).
    #[test]
    fn an_implausible_length_is_damage_and_nothing_is_cut() {
        let d = tempfile::tempdir().unwrap();
        let (k, der) = SigningKey::generate_ed25519().unwrap();
        let (log, _) = AuditLog::open(d.path(), "company.com", k).unwrap();
        for i in 0..30 {
            log.append_blocking(rec(i)).unwrap();
        }
        log.shutdown();
        drop(log);
        let seg = list_segments(d.path()).unwrap()[0].clone();
        let (_, locs, _, _) = scan(d.path()).unwrap();
        let mut data = fs::read(&seg).unwrap();
        let at = (locs[12].offset - FRAME_HEADER as u64) as usize;
        data[at..at + 4].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
        fs::write(&seg, &data).unwrap();
        let e = AuditLog::open(
            d.path(),
            "company.com",
            SigningKey::from_pkcs8(&der).unwrap(),
        );
        assert!(matches!(e, Err(LogError::Damaged(_))), "{:?}", e.err());
        assert_eq!(
            fs::read(&seg).unwrap(),
            data,
            "recovery changed the damaged log"
        );
        // A torn-looking tail *below* the checkpoint is refused as well: cut off the last
        // records' bytes mid-frame, which the checkpoint covers.
        data[at..at + 4].copy_from_slice(&(locs[12].len).to_be_bytes());
        let cut = (locs[29].offset + 3) as usize;
        fs::write(&seg, &data[..cut]).unwrap();
        let e = AuditLog::open(
            d.path(),
            "company.com",
            SigningKey::from_pkcs8(&der).unwrap(),
        );
        assert!(
            matches!(e, Err(LogError::CheckpointMismatch(_))),
            "{:?}",
            e.err()
        );
        assert_eq!(
            fs::read(&seg).unwrap().len(),
            cut,
            "nothing below the checkpoint is cut"
        );
    }

    fn rec_owned(i: usize) -> Record {
        rec(i)
    }

    #[test]
    fn a_deleted_tail_behind_the_checkpoint_fails_closed() {
        let d = tempfile::tempdir().unwrap();
        let (k, der) = SigningKey::generate_ed25519().unwrap();
        let (log, _) = AuditLog::open(d.path(), "company.com", k).unwrap();
        for i in 0..5 {
            log.append_blocking(rec(i)).unwrap();
        }
        log.shutdown();
        drop(log);
        // Remove the last whole frame (as if acknowledged records vanished).
        let seg = list_segments(d.path()).unwrap()[0].clone();
        let (payloads, locs, _, _) = scan(d.path()).unwrap();
        let cut = locs[4].offset - FRAME_HEADER as u64;
        assert_eq!(payloads.len(), 5);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let e = AuditLog::open(
            d.path(),
            "company.com",
            SigningKey::from_pkcs8(&der).unwrap(),
        );
        assert!(
            matches!(e, Err(LogError::CheckpointMismatch(_))),
            "{:?}",
            e.err()
        );
        // Export refuses too.
        assert!(export(d.path(), |_, _| {}).is_err());
    }
}
