//! The audit log's Merkle tree and record locations on disk, so that the gateway's memory does
//! not grow with its log. `tiles/level-<L>.bin` holds the stored hashes of tile level `L` (tree
//! level `8L`) back to back, 32 bytes each: the C2SP tiles of that level are slices of it.
//! `tiles/offsets.bin` holds, per record, where its frame's payload is (segment number, length,
//! byte offset: 16 bytes). Both are derived from the segments, which stay the log of record:
//! they are written before a batch's segment write (so nothing readable ever points past the
//! durable log) and checked or rebuilt when the log is opened. Reads and writes are positional
//! (`pread`/`pwrite`), so readers never hold the log's lock while they read.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::audit::merkle::Hash;
use crate::audit::tiles::{Stored, TileLevels, MAX_TILE_LEVEL};

/// Bytes per location entry: segment (u32), length (u32), offset (u64), all big-endian.
const LOC_BYTES: u64 = 16;

/// Where a record's canonical bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub segment: u32,
    pub offset: u64,
    pub len: u32,
}

pub struct TileFiles {
    dir: PathBuf,
    levels: Mutex<Vec<std::sync::Arc<File>>>,
    offsets: File,
}

fn open_rw(p: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(p)
}

impl TileFiles {
    /// Opens (or creates) the files under `dir`.
    pub fn open(dir: &Path) -> io::Result<TileFiles> {
        fs::create_dir_all(dir)?;
        let mut levels = Vec::new();
        for l in 0..=MAX_TILE_LEVEL {
            let p = dir.join(format!("level-{l}.bin"));
            if !p.exists() {
                break;
            }
            levels.push(std::sync::Arc::new(open_rw(&p)?));
        }
        Ok(TileFiles {
            dir: dir.to_path_buf(),
            levels: Mutex::new(levels),
            offsets: open_rw(&dir.join("offsets.bin"))?,
        })
    }

    fn level(&self, level: u32, create: bool) -> io::Result<Option<std::sync::Arc<File>>> {
        let mut ls = self
            .levels
            .lock()
            .map_err(|_| io::Error::other("tile files poisoned"))?;
        while create && ls.len() <= level as usize {
            let p = self.dir.join(format!("level-{}.bin", ls.len()));
            ls.push(std::sync::Arc::new(open_rw(&p)?));
        }
        Ok(ls.get(level as usize).cloned())
    }

    /// Stores the hashes a push produced.
    pub fn store(&self, hashes: &[Stored]) -> io::Result<()> {
        for s in hashes {
            let f = self
                .level(s.level, true)?
                .ok_or_else(|| io::Error::other("no tile level file"))?;
            f.write_all_at(&s.hash, s.index * 32)?;
        }
        Ok(())
    }

    /// Stores consecutive level-0 hashes from `from` in one write.
    pub fn store_leaves(&self, from: u64, leaves: &[Hash]) -> io::Result<()> {
        let f = self
            .level(0, true)?
            .ok_or_else(|| io::Error::other("no tile level file"))?;
        let buf: Vec<u8> = leaves.iter().flatten().copied().collect();
        f.write_all_at(&buf, from * 32)
    }

    /// Reads `count` hashes of `level` from `from`; an error if the file does not have them.
    pub fn read(&self, level: u32, from: u64, count: u64) -> io::Result<Vec<Hash>> {
        let f = self
            .level(level, false)?
            .ok_or_else(|| io::Error::other(format!("tile level {level} is missing")))?;
        let mut buf = vec![0u8; (count * 32) as usize];
        f.read_exact_at(&mut buf, from * 32)?;
        Ok(buf
            .chunks(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }

    /// Hashes stored at `level` (whole ones).
    pub fn stored(&self, level: u32) -> io::Result<u64> {
        match self.level(level, false)? {
            Some(f) => Ok(f.metadata()?.len() / 32),
            None => Ok(0),
        }
    }

    /// Writes consecutive record locations from `from`.
    pub fn store_locs(&self, from: u64, locs: &[Loc]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(locs.len() * LOC_BYTES as usize);
        for l in locs {
            buf.extend_from_slice(&l.segment.to_be_bytes());
            buf.extend_from_slice(&l.len.to_be_bytes());
            buf.extend_from_slice(&l.offset.to_be_bytes());
        }
        self.offsets.write_all_at(&buf, from * LOC_BYTES)
    }

    /// Locations of records `[from, from + count)`.
    pub fn locs(&self, from: u64, count: u64) -> io::Result<Vec<Loc>> {
        let mut buf = vec![0u8; (count * LOC_BYTES) as usize];
        self.offsets.read_exact_at(&mut buf, from * LOC_BYTES)?;
        Ok(buf
            .chunks(LOC_BYTES as usize)
            .map(|c| Loc {
                segment: u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
                len: u32::from_be_bytes([c[4], c[5], c[6], c[7]]),
                offset: u64::from_be_bytes([c[8], c[9], c[10], c[11], c[12], c[13], c[14], c[15]]),
            })
            .collect())
    }

    /// Cuts every file back to what a tree of `size` leaves has (nothing past the log).
    pub fn truncate(&self, size: u64) -> io::Result<()> {
        let ls = self
            .levels
            .lock()
            .map_err(|_| io::Error::other("tile files poisoned"))?
            .clone();
        for (l, f) in ls.iter().enumerate() {
            f.set_len(crate::audit::tiles::level_count(size, l as u32) * 32)?;
        }
        self.offsets.set_len(size * LOC_BYTES)
    }

    /// A view of the first `size` leaves, for the proof algorithms.
    pub fn view(&self, size: u64) -> FileView<'_> {
        FileView { files: self, size }
    }
}

/// The tiles of a tree of `size` leaves, read from the files.
pub struct FileView<'a> {
    files: &'a TileFiles,
    size: u64,
}

impl TileLevels for FileView<'_> {
    type Error = io::Error;
    fn size(&self) -> u64 {
        self.size
    }
    fn hashes(&self, level: u32, from: u64, count: u64) -> io::Result<Vec<Hash>> {
        if from + count > crate::audit::tiles::level_count(self.size, level) {
            return Err(io::Error::other("hash past the tree"));
        }
        self.files.read(level, from, count)
    }
}
