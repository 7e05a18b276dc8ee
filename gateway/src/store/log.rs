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
//!
//! Memory does not grow with the log: the Merkle tree is kept on disk as C2SP tiles and the
//! record locations beside it (`store::tiles`), the crossing index in sorted run files
//! (`store::crossings`); the writer keeps only the tree's right edge (`audit::tiles::TileEdge`).
//! Those files are derived from the segments: written before each batch's segment write,
//! checked or rebuilt at open (see `replay`).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::audit::checkpoint::{self, Checkpoint};
use crate::audit::merkle::{consistency_proof_of, inclusion_proof_of, root_at, Hash};
use crate::audit::record::{Record, MAX_RECORD_BYTES, RECORD_VERSION};
use crate::audit::tiles::{self, Stored, TileEdge, TileRef, Tiled};
use crate::crypto::b64url;
use crate::jose::SigningKey;
use crate::store::crossings::{crossing_key, CrossingIndex};
use crate::store::io::{FsIo, LogIo, SegmentFile};
use crate::store::tiles::{Loc, TileFiles};

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

struct Tree {
    /// Records durable (and readable through the tile files).
    size: u64,
    /// The right edge of the tiled tree: all of the tree the writer keeps in memory.
    edge: TileEdge,
    checkpoint: Option<(Checkpoint, String)>,
}

struct Shared {
    dir: PathBuf,
    origin: String,
    healthy: AtomicBool,
    state: Mutex<Tree>,
    segments: Mutex<Vec<PathBuf>>,
    files: TileFiles,
    index: CrossingIndex,
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

/// A torn tail: `(segment path, valid length, file length)`.
type Torn = Option<(PathBuf, u64, u64)>;

/// Reads every frame of the log in `dir` (read-only), one segment in memory at a time, and
/// calls `visit(location, payload)` for each in order. Returns the segments, the torn tail if
/// any, and the number of frames.
fn scan_with(
    dir: &Path,
    mut visit: impl FnMut(Loc, &[u8]) -> Result<(), LogError>,
) -> Result<(Vec<PathBuf>, Torn, u64), LogError> {
    let segs = list_segments(dir)?;
    let mut count = 0u64;
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
                    "{seg}: frame at byte {off} is corrupt (record {count})"
                )));
            }
            visit(
                Loc {
                    segment: si as u32,
                    offset: (off + FRAME_HEADER) as u64,
                    len: len as u32,
                },
                &data[off + FRAME_HEADER..off + FRAME_HEADER + len],
            )?;
            count += 1;
            off += FRAME_HEADER + len;
        }
    }
    Ok((segs, torn, count))
}

/// Checks one record against the log: canonical, its seq, `prev` chained, the log's domain.
/// Returns its crossing id.
fn check_record(
    bytes: &[u8],
    i: u64,
    prev: Option<&Hash>,
    domain: &str,
) -> Result<String, LogError> {
    let r =
        Record::from_canonical(bytes).map_err(|e| LogError::Damaged(format!("record {i}: {e}")))?;
    if r.seq != i {
        return Err(LogError::Damaged(format!("record {i} has seq {}", r.seq)));
    }
    if r.domain != domain {
        return Err(LogError::Damaged(format!(
            "record {i} belongs to {}",
            r.domain
        )));
    }
    let want = prev.map(|p| b64url(p)).unwrap_or_default();
    if r.prev != want {
        return Err(LogError::Damaged(format!(
            "record {} changed after it was logged",
            i.saturating_sub(1)
        )));
    }
    Ok(r.crossing)
}

/// Hashes read from (or to be written to) the tile files in chunks while the log is opened.
const OPEN_CHUNK: u64 = 4096;

/// What opening found: the tree's edge and size, and the last leaf.
struct Opened {
    segs: Vec<PathBuf>,
    torn: Torn,
    size: u64,
    edge: TileEdge,
    last_leaf: Option<Hash>,
}

/// Replays the log in `dir` against the tile files, the crossing index and the signed
/// checkpoint: every frame's checksum and leaf hash is computed; a record whose leaf hash the
/// tile files already hold is the one the writer wrote and checked; any other record (and the
/// one after it, whose `prev` covers it) is checked in full, as is every record the crossing
/// index does not cover yet. The tree is rebuilt from the leaves and must hash to the signed
/// checkpoint at its size. Only derived files are written.
fn replay(
    dir: &Path,
    domain: &str,
    cp: Option<&Checkpoint>,
    files: &TileFiles,
    index: &CrossingIndex,
    index_from: u64,
) -> Result<Opened, LogError> {
    let stored0 = files.stored(0).map_err(io)?;
    let mut edge = TileEdge::new();
    let mut last_leaf: Option<Hash> = None;
    let mut check_next = false;
    let mut have: Vec<Hash> = Vec::new();
    let mut have_from = 0u64;
    let mut locs: Vec<Loc> = Vec::new();
    let mut locs_from = 0u64;
    let mut i = 0u64;
    if let Some(c) = cp {
        if c.size == 0 && c.root != crate::audit::merkle::empty_root() {
            return Err(LogError::CheckpointMismatch(
                "the empty log does not hash to the signed root".into(),
            ));
        }
    }
    let (segs, torn, count) = scan_with(dir, |loc, bytes| {
        let leaf = Record::leaf(bytes);
        let stored = if i < stored0 {
            if i >= have_from + have.len() as u64 {
                have_from = i;
                have = files.read(0, i, OPEN_CHUNK.min(stored0 - i)).map_err(io)?;
            }
            have.get((i - have_from) as usize).copied()
        } else {
            None
        };
        let known = stored == Some(leaf);
        if !known || check_next || i >= index_from {
            let crossing = check_record(bytes, i, last_leaf.as_ref(), domain)?;
            if i >= index_from {
                index.add(crossing_key(&crossing), i);
                index.maybe_flush(i + 1).map_err(io)?;
            }
        }
        check_next = !known;
        if locs.is_empty() {
            locs_from = i;
        }
        let up = edge.push(leaf);
        // Higher levels are rewritten as they are recomputed (1 in 256 hashes); a leaf only
        // where the file did not have it.
        files.store(&up[1..]).map_err(io)?;
        if !known {
            files.store_leaves(i, &[leaf]).map_err(io)?;
        }
        locs.push(loc);
        if locs.len() as u64 >= OPEN_CHUNK {
            files.store_locs(locs_from, &locs).map_err(io)?;
            locs.clear();
        }
        last_leaf = Some(leaf);
        i += 1;
        if let Some(c) = cp {
            if c.size == i && edge.root() != c.root {
                return Err(LogError::CheckpointMismatch(format!(
                    "the first {} records do not hash to the signed root",
                    c.size
                )));
            }
        }
        Ok(())
    })?;
    if !locs.is_empty() {
        files.store_locs(locs_from, &locs).map_err(io)?;
    }
    if let Some(c) = cp {
        if c.size > count {
            return Err(LogError::CheckpointMismatch(format!(
                "the checkpoint covers {} records but only {count} are on disk: acknowledged records are missing",
                c.size
            )));
        }
    }
    if index.runs_cover() > count {
        return Err(LogError::Damaged(format!(
            "the crossing index covers {} records but only {count} are on disk: acknowledged records are missing",
            index.runs_cover()
        )));
    }
    files.truncate(count).map_err(io)?;
    Ok(Opened {
        segs,
        torn,
        size: count,
        edge,
        last_leaf,
    })
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
        // Everything is checked before anything of the log is changed: the checkpoint first.
        let cp = load_checkpoint(dir, &origin, key.public().raw())?;
        let files = TileFiles::open(&dir.join("tiles")).map_err(io)?;
        let (index, index_from) = CrossingIndex::open(&dir.join("index"), u64::MAX).map_err(io)?;
        let opened = replay(
            dir,
            domain,
            cp.as_ref().map(|(c, _)| c),
            &files,
            &index,
            index_from,
        )?;
        let mut segs = opened.segs;
        let mut rec = Recovery {
            records: opened.size,
            segments: segs.len(),
            checkpoint_size: cp.as_ref().map(|(c, _)| c.size),
            ..Default::default()
        };
        // Only now, with every check passed, is the damaged tail moved aside.
        if let Some((path, valid, len)) = opened.torn {
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
                size: opened.size,
                edge: opened.edge,
                checkpoint: cp,
            }),
            segments: Mutex::new(segs),
            files,
            index,
        });
        let (tx, rx) = mpsc::channel();
        let log = AuditLog {
            shared: shared.clone(),
            tx,
        };
        let writer = Writer::new(shared, key, opened.last_leaf, log_io)?;
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
        self.shared.state.lock().map(|s| s.size).unwrap_or(0)
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
        if seq >= self.size() {
            return None;
        }
        self.shared
            .files
            .read(0, seq, 1)
            .ok()
            .and_then(|v| v.first().copied())
    }

    /// The root of the first `size` records (read from the tiles).
    pub fn root(&self, size: u64) -> Option<Hash> {
        let have = self.size();
        root_at(&Tiled(&self.shared.files.view(have)), size)
            .ok()
            .flatten()
    }

    pub fn inclusion_proof(&self, seq: u64, size: u64) -> Option<Vec<Hash>> {
        let have = self.size();
        inclusion_proof_of(&Tiled(&self.shared.files.view(have)), seq, size)
            .ok()
            .flatten()
    }

    pub fn consistency_proof(&self, m: u64, n: u64) -> Option<Vec<Hash>> {
        let have = self.size();
        consistency_proof_of(&Tiled(&self.shared.files.view(have)), m, n)
            .ok()
            .flatten()
    }

    /// A C2SP tile of the durable log: hash tiles straight from the tile files, entry bundles
    /// read from the segments. `None` if the log has no such tile (yet).
    pub fn tile(&self, t: TileRef) -> Result<Option<Vec<u8>>, LogError> {
        let size = self.size();
        let level = t.level.unwrap_or(0);
        if tiles::tile_width(size, level, t.index) < t.width {
            return Ok(None);
        }
        let from = t.index * tiles::TILE_WIDTH;
        match t.level {
            Some(l) => {
                let hs = self.shared.files.read(l, from, t.width).map_err(io)?;
                Ok(Some(hs.iter().flatten().copied().collect()))
            }
            None => {
                let rs = self.read(from, t.width)?;
                tiles::encode_bundle(rs.iter().map(|r| r.as_slice()))
                    .map(Some)
                    .map_err(LogError::Record)
            }
        }
    }

    /// Records held in memory by the crossing index (bounded by `crossings::RUN_RECORDS`).
    pub fn indexed_in_memory(&self) -> u64 {
        self.shared.index.in_memory()
    }

    /// The canonical records of one crossing, in log order.
    pub fn crossing(&self, crossing: &str) -> Result<Vec<Vec<u8>>, LogError> {
        let seqs = self
            .shared
            .index
            .lookup(crossing_key(crossing))
            .map_err(io)?;
        let size = self.size();
        let mut locs = Vec::with_capacity(seqs.len());
        for s in seqs.into_iter().filter(|s| *s < size) {
            locs.extend(self.shared.files.locs(s, 1).map_err(io)?);
        }
        let segs = self
            .shared
            .segments
            .lock()
            .map_err(|_| LogError::Unavailable)?
            .clone();
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
        let size = self.size();
        let end = size.min(from.saturating_add(limit));
        if from >= end {
            return Ok(vec![]);
        }
        let locs = self.shared.files.locs(from, end - from).map_err(io)?;
        let segs = self
            .shared
            .segments
            .lock()
            .map_err(|_| LogError::Unavailable)?
            .clone();
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
    let mut out = Vec::with_capacity(cp.size.min(1 << 20) as usize);
    let (_, _, count) = scan_with(dir, |_, p| {
        if (out.len() as u64) < cp.size {
            if out.len() % 100_000 == 0 {
                progress(out.len() as u64, cp.size);
            }
            out.push(p.to_vec());
        }
        Ok(())
    })?;
    if count < cp.size {
        return Err(LogError::CheckpointMismatch(format!(
            "the checkpoint covers {} records, the log has {count}",
            cp.size
        )));
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
        let (start_seq, mut edge) = match self.shared.state.lock() {
            Ok(s) => (s.size, s.edge.clone()),
            Err(_) => return,
        };
        let mut buf = Vec::with_capacity(batch.len() * 700);
        let mut leaves: Vec<Hash> = Vec::with_capacity(batch.len());
        let mut locs: Vec<Loc> = Vec::with_capacity(batch.len());
        let mut upper: Vec<Stored> = Vec::new();
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
                    locs.push(Loc {
                        segment: self.segment,
                        offset: self.seg_len + buf.len() as u64 + FRAME_HEADER as u64,
                        len: bytes.len() as u32,
                    });
                    buf.extend_from_slice(&frame(&bytes));
                    keys.push(crossing_key(&r.crossing));
                    upper.extend(edge.push(leaf).into_iter().skip(1));
                    leaves.push(leaf);
                    prev = Some(leaf);
                    seq += 1;
                    replies.push((tx, Ok(())));
                }
                Err(e) => replies.push((tx, Err(LogError::Record(e)))),
            }
        }
        // The derived files first (nothing readable points past the durable log: readers see
        // the new size only after the segment is synced), then the log of record.
        let files = &self.shared.files;
        let derived = files
            .store_leaves(start_seq, &leaves)
            .and_then(|_| files.store(&upper))
            .and_then(|_| files.store_locs(start_seq, &locs));
        let write = derived.and_then(|_| {
            self.file
                .write_all(&buf)
                .and_then(|_| self.file.sync_data())
        });
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
        for (i, k) in keys.iter().enumerate() {
            self.shared.index.add(*k, start_seq + i as u64);
        }
        if let Ok(mut st) = self.shared.state.lock() {
            st.size = start_seq + leaves.len() as u64;
            st.edge = edge;
        }
        if let Err(e) = self
            .shared
            .index
            .maybe_flush(start_seq + leaves.len() as u64)
        {
            tracing::warn!(error = %e, "could not write a crossing index run; kept in memory");
        }
        let mut results = leaves.iter();
        let mut next_seq = start_seq;
        for (tx, r) in replies {
            let reply = match r {
                Ok(()) => {
                    let leaf = results.next().copied().unwrap_or([0; 32]);
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
            .size;
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
                .map(|(c, t)| (c.size == st.size, t.clone()))
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
            Ok(s) => s.checkpoint.as_ref().map(|(c, _)| c.size) != Some(s.size),
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
                if c.size == st.size {
                    return Ok(text.clone());
                }
            }
            (st.size, st.edge.root())
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

    /// Every frame's payload and location.
    #[allow(clippy::type_complexity)]
    fn scan(dir: &Path) -> Result<(Vec<Vec<u8>>, Vec<Loc>, (), ()), LogError> {
        let mut payloads = Vec::new();
        let mut locs = Vec::new();
        scan_with(dir, |l, p| {
            locs.push(l);
            payloads.push(p.to_vec());
            Ok(())
        })?;
        Ok((payloads, locs, (), ()))
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

    /// The tree lives on disk as tiles and the crossing index as runs: both are rebuilt when
    /// missing, found again on reopen, and a record edited on disk is caught although its leaf
    /// hash would otherwise be taken from the tiles.
    #[test]
    fn tiles_and_index_runs_on_disk() {
        use crate::audit::merkle::MerkleTree;
        use crate::store::crossings::RUN_RECORDS;
        let d = tempfile::tempdir().unwrap();
        let (k, der) = SigningKey::generate_ed25519().unwrap();
        let (log, _) = AuditLog::open(d.path(), "company.com", k).unwrap();
        let n = RUN_RECORDS as usize + 700;
        let rt = rt();
        rt.block_on(async {
            let mut hs = Vec::new();
            for i in 0..n {
                let l = log.clone();
                hs.push(tokio::spawn(async move { l.append(rec(i)).await.unwrap() }));
            }
            for h in hs {
                h.await.unwrap();
            }
        });
        assert!(log.indexed_in_memory() < RUN_RECORDS);
        let records = log.read(0, n as u64).unwrap();
        let mut full = MerkleTree::new();
        for r in &records {
            full.push(Record::leaf(r));
        }
        let check = |log: &AuditLog| {
            assert_eq!(log.size(), n as u64);
            assert_eq!(log.root(n as u64), full.root(n as u64));
            assert_eq!(log.root(1000), full.root(1000));
            assert_eq!(
                log.inclusion_proof(77, n as u64),
                full.inclusion_proof(77, n as u64)
            );
            assert_eq!(
                log.consistency_proof(5000, n as u64),
                full.consistency_proof(5000, n as u64)
            );
            let t = log
                .tile(TileRef {
                    level: Some(0),
                    index: 3,
                    width: 256,
                })
                .unwrap()
                .unwrap();
            assert_eq!(&t[..32], &full.leaf(768).unwrap());
            let b = log
                .tile(TileRef {
                    level: None,
                    index: 0,
                    width: 2,
                })
                .unwrap()
                .unwrap();
            assert_eq!(
                tiles::decode_bundle(&b).unwrap(),
                vec![&records[0][..], &records[1][..]]
            );
            // Past the end: no tile.
            assert!(log
                .tile(TileRef {
                    level: Some(0),
                    index: 1000,
                    width: 256
                })
                .unwrap()
                .is_none());
            // One crossing in a run file, one in memory.
            assert_eq!(log.crossing("c5").unwrap().len(), 1);
            assert_eq!(log.crossing(&format!("c{}", n - 1)).unwrap().len(), 1);
            assert!(log.crossing("none").unwrap().is_empty());
        };
        check(&log);
        let cp = log.latest_checkpoint().unwrap().0;
        assert_eq!(Some(cp.root), full.root(cp.size));
        log.shutdown();
        drop(log);
        let reopen = || {
            AuditLog::open(
                d.path(),
                "company.com",
                SigningKey::from_pkcs8(&der).unwrap(),
            )
        };
        let (log, _) = reopen().unwrap();
        check(&log);
        log.shutdown();
        drop(log);
        // The derived files gone: rebuilt from the segments.
        fs::remove_dir_all(d.path().join("tiles")).unwrap();
        fs::remove_dir_all(d.path().join("index")).unwrap();
        let (log, _) = reopen().unwrap();
        check(&log);
        log.shutdown();
        drop(log);
        // A record edited in place (same length, checksum fixed up) is refused.
        let (_, locs, _, _) = scan(d.path()).unwrap();
        let l = locs[300];
        let seg = list_segments(d.path()).unwrap()[l.segment as usize].clone();
        let mut data = fs::read(&seg).unwrap();
        let at = l.offset as usize;
        let body = &mut data[at..at + l.len as usize];
        let needle = b"\"crossing\":\"c";
        let pos = body
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        body[pos + needle.len()] = b'x';
        let crc = crc32fast::hash(&data[at..at + l.len as usize]);
        data[at - 4..at].copy_from_slice(&crc.to_be_bytes());
        fs::write(&seg, &data).unwrap();
        assert!(reopen().is_err());
    }
}
