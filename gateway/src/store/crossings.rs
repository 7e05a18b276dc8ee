//! Which records belong to a crossing, with memory that does not grow with the log: the
//! records since the last flush are indexed in memory; every `RUN_RECORDS` records that index
//! is written out as a sorted run file (`index/crossings-<from>-<to>.idx`, 16-byte entries:
//! key, seq) and dropped from memory. A lookup searches the memory index and each run by
//! binary search. Keys are the first 8 bytes of the crossing id's SHA-256; the log reads the
//! records and keeps exact matches, so a collision costs a read, not a mistake. Runs are
//! derived from the log and rebuilt from it when missing.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Records indexed in memory before they are written out as a run: at about 80 bytes per entry
/// in memory this bounds the index's memory near 5 MiB, and makes 153 runs of 1 MiB for 10 M
/// records (a lookup costs 17 reads per run, from the page cache).
pub const RUN_RECORDS: u64 = 65_536;
const ENTRY: u64 = 16;

/// The index key of a crossing id: the first 8 bytes of its SHA-256.
pub fn crossing_key(crossing: &str) -> u64 {
    let h = crate::crypto::sha256(crossing.as_bytes());
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

struct Run {
    from: u64,
    to: u64,
    file: Arc<File>,
    entries: u64,
}

struct Inner {
    runs: Vec<Run>,
    /// Seqs `[mem_from, ..)` are indexed here.
    mem_from: u64,
    mem: HashMap<u64, Vec<u64>>,
    mem_count: u64,
}

pub struct CrossingIndex {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn run_name(from: u64, to: u64) -> String {
    format!("crossings-{from:020}-{to:020}.idx")
}

impl CrossingIndex {
    /// Opens the runs under `dir` that cover a contiguous prefix of a log of `size` records;
    /// any other run file (a gap, past the log, a bad length) is removed. Returns the index and
    /// the first seq it does not cover: the caller adds the records from there.
    pub fn open(dir: &Path, size: u64) -> io::Result<(CrossingIndex, u64)> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(dir)? {
            let p = e?.path();
            let Some(n) = p.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
                continue;
            };
            let parsed = n
                .strip_prefix("crossings-")
                .and_then(|r| r.strip_suffix(".idx"))
                .and_then(|r| r.split_once('-'))
                .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
            match parsed {
                Some((a, b)) => names.push((a, b, p)),
                None if n.ends_with(".tmp") => {
                    let _ = fs::remove_file(&p);
                }
                None => {}
            }
        }
        names.sort();
        let mut runs = Vec::new();
        let mut at = 0u64;
        for (from, to, p) in names {
            let file = File::open(&p)?;
            let len = file.metadata()?.len();
            let ok = from == at
                && to > from
                && to <= size
                && len % ENTRY == 0
                && len / ENTRY == to - from;
            if ok {
                runs.push(Run {
                    from,
                    to,
                    file: Arc::new(file),
                    entries: len / ENTRY,
                });
                at = to;
            } else {
                tracing::warn!(run = %p.display(), "crossing index run does not fit the log; rebuilt");
                fs::remove_file(&p)?;
            }
        }
        Ok((
            CrossingIndex {
                dir: dir.to_path_buf(),
                inner: Mutex::new(Inner {
                    runs,
                    mem_from: at,
                    mem: HashMap::new(),
                    mem_count: 0,
                }),
            },
            at,
        ))
    }

    /// Indexes record `seq` (records arrive in order).
    pub fn add(&self, key: u64, seq: u64) {
        if let Ok(mut i) = self.inner.lock() {
            i.mem.entry(key).or_default().push(seq);
            i.mem_count += 1;
        }
    }

    /// Writes the memory index out as a run once it holds `RUN_RECORDS` records, `size` being
    /// the log's size after them. A failure keeps the index in memory (tried again next time).
    pub fn maybe_flush(&self, size: u64) -> io::Result<()> {
        let Ok(mut i) = self.inner.lock() else {
            return Ok(());
        };
        if size - i.mem_from < RUN_RECORDS {
            return Ok(());
        }
        let mut entries: Vec<(u64, u64)> = i
            .mem
            .iter()
            .flat_map(|(k, v)| v.iter().map(move |s| (*k, *s)))
            .collect();
        entries.sort_unstable();
        let (from, to) = (i.mem_from, size);
        if entries.len() as u64 != to - from {
            return Err(io::Error::other("crossing index out of step with the log"));
        }
        let mut buf = Vec::with_capacity(entries.len() * ENTRY as usize);
        for (k, s) in &entries {
            buf.extend_from_slice(&k.to_be_bytes());
            buf.extend_from_slice(&s.to_be_bytes());
        }
        let name = run_name(from, to);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        fs::rename(&tmp, &path)?;
        let file = Arc::new(File::open(&path)?);
        i.runs.push(Run {
            from,
            to,
            file,
            entries: entries.len() as u64,
        });
        i.mem_from = to;
        i.mem = HashMap::new();
        i.mem_count = 0;
        Ok(())
    }

    /// Seqs of the records whose crossing has this key, in log order.
    pub fn lookup(&self, key: u64) -> io::Result<Vec<u64>> {
        let (files, mut mem): (Vec<(Arc<File>, u64)>, Vec<u64>) = {
            let i = self
                .inner
                .lock()
                .map_err(|_| io::Error::other("index poisoned"))?;
            let files = i.runs.iter().map(|r| (r.file.clone(), r.entries)).collect();
            (files, i.mem.get(&key).cloned().unwrap_or_default())
        };
        let mut out = Vec::new();
        for (f, n) in files {
            let read = |i: u64| -> io::Result<(u64, u64)> {
                let mut b = [0u8; 16];
                f.read_exact_at(&mut b, i * ENTRY)?;
                let mut k = [0u8; 8];
                let mut s = [0u8; 8];
                k.copy_from_slice(&b[..8]);
                s.copy_from_slice(&b[8..]);
                Ok((u64::from_be_bytes(k), u64::from_be_bytes(s)))
            };
            // First entry with a key >= key.
            let (mut lo, mut hi) = (0u64, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if read(mid)?.0 < key {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            let mut at = lo;
            while at < n {
                let (k, s) = read(at)?;
                if k != key {
                    break;
                }
                out.push(s);
                at += 1;
            }
        }
        out.append(&mut mem);
        out.sort_unstable();
        Ok(out)
    }

    /// Records indexed in memory now (for the memory bound's test).
    pub fn in_memory(&self) -> u64 {
        self.inner.lock().map(|i| i.mem_count).unwrap_or(0)
    }

    /// Seqs covered by run files.
    pub fn runs_cover(&self) -> u64 {
        self.inner
            .lock()
            .map(|i| i.runs.last().map(|r| r.to).unwrap_or(0))
            .unwrap_or(0)
    }

    /// The seq ranges of the run files.
    pub fn run_bounds(&self) -> Vec<(u64, u64)> {
        self.inner
            .lock()
            .map(|i| i.runs.iter().map(|r| (r.from, r.to)).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_written_found_and_reopened() {
        let d = tempfile::tempdir().unwrap();
        let n = RUN_RECORDS * 2 + 10;
        let (idx, from) = CrossingIndex::open(d.path(), 0).unwrap();
        assert_eq!(from, 0);
        for s in 0..n {
            idx.add(crossing_key(&format!("c{}", s % 1000)), s);
            idx.maybe_flush(s + 1).unwrap();
        }
        assert_eq!(
            idx.run_bounds(),
            vec![(0, RUN_RECORDS), (RUN_RECORDS, 2 * RUN_RECORDS)]
        );
        assert_eq!(idx.in_memory(), 10);
        let want: Vec<u64> = (0..n).filter(|s| s % 1000 == 7).collect();
        assert_eq!(idx.lookup(crossing_key("c7")).unwrap(), want);
        assert!(idx.lookup(crossing_key("nope")).unwrap().is_empty());
        drop(idx);
        // Reopened against a log that has them all: both runs kept.
        let (idx, from) = CrossingIndex::open(d.path(), n).unwrap();
        assert_eq!(from, 2 * RUN_RECORDS);
        assert_eq!(idx.runs_cover(), 2 * RUN_RECORDS);
        drop(idx);
        // Against a shorter log: the run past it is dropped.
        let (idx, from) = CrossingIndex::open(d.path(), RUN_RECORDS + 5).unwrap();
        assert_eq!(from, RUN_RECORDS);
        assert_eq!(idx.run_bounds(), vec![(0, RUN_RECORDS)]);
    }
}
