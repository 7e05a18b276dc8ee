//! Where the audit log's bytes go. The log's writer appends, syncs, truncates and creates
//! segments, and replaces its checkpoint, only through [`LogIo`]: [`FsIo`] is the file system;
//! [`FaultIo`] is the file system with faults injected on demand (a disk that fills up, a sync
//! that fails, every write failing), so the tests can show what the gateway does when the disk
//! does not cooperate. Reading the log at start goes straight to the file system.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// One open segment, appended to.
pub trait SegmentFile: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file back to `len` bytes (a failed write's partial bytes).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
}

/// The file operations of the log's writer.
pub trait LogIo: Send + Sync + 'static {
    /// Opens an existing segment for appending.
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Creates a new, empty segment (it must not exist) and makes it durable.
    fn create_segment(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>>;
    /// Replaces a small file atomically (write a temporary, sync, rename, sync the directory).
    fn replace(&self, path: &Path, data: &[u8]) -> io::Result<()>;
}

/// The file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FsIo;

struct FsFile(File);

impl SegmentFile for FsFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(d) => File::open(d)?.sync_all(),
        None => Ok(()),
    }
}

impl LogIo for FsIo {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(FsFile(
            OpenOptions::new().append(true).open(path)?,
        )))
    }

    fn create_segment(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        let f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)?;
        f.sync_all()?;
        sync_dir(path)?;
        Ok(Box::new(FsFile(f)))
    }

    fn replace(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        crate::files::write_atomic(path, data, 0o644).map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Faults to inject, shared between a test and the [`FaultIo`] it gave the gateway.
#[derive(Debug)]
pub struct Faults {
    /// Bytes that may still be written before the disk is full (`u64::MAX`: no limit). A
    /// write larger than what is left writes what fits, then fails with `ENOSPC`, as a full
    /// disk does.
    space: AtomicU64,
    /// Every `sync_data` fails with `EIO`.
    fail_sync: AtomicBool,
    /// Every write fails with `EIO` before writing anything.
    fail_writes: AtomicBool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            space: AtomicU64::new(u64::MAX),
            fail_sync: AtomicBool::new(false),
            fail_writes: AtomicBool::new(false),
        }
    }
}

impl Faults {
    /// The disk has `bytes` left.
    pub fn set_space(&self, bytes: u64) {
        self.space.store(bytes, Ordering::SeqCst);
    }
    /// The disk has room again.
    pub fn unlimited(&self) {
        self.set_space(u64::MAX);
    }
    pub fn fail_sync(&self, on: bool) {
        self.fail_sync.store(on, Ordering::SeqCst);
    }
    pub fn fail_writes(&self, on: bool) {
        self.fail_writes.store(on, Ordering::SeqCst);
    }

    /// Takes room for `n` bytes: how many fit.
    fn take(&self, n: u64) -> u64 {
        let mut cur = self.space.load(Ordering::SeqCst);
        loop {
            if cur == u64::MAX {
                return n;
            }
            let fit = cur.min(n);
            match self
                .space
                .compare_exchange(cur, cur - fit, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return fit,
                Err(now) => cur = now,
            }
        }
    }

    fn write_error(&self) -> Option<io::Error> {
        self.fail_writes
            .load(Ordering::SeqCst)
            .then(|| io::Error::from_raw_os_error(libc_eio()))
    }
}

fn libc_eio() -> i32 {
    5 // EIO on Linux and the BSDs
}

fn libc_enospc() -> i32 {
    28 // ENOSPC on Linux and the BSDs
}

/// The file system with [`Faults`] injected.
#[derive(Debug, Clone)]
pub struct FaultIo {
    pub faults: Arc<Faults>,
}

impl FaultIo {
    pub fn new() -> (FaultIo, Arc<Faults>) {
        let f = Arc::new(Faults::default());
        (FaultIo { faults: f.clone() }, f)
    }
}

struct FaultFile {
    inner: Box<dyn SegmentFile>,
    faults: Arc<Faults>,
}

impl SegmentFile for FaultFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some(e) = self.faults.write_error() {
            return Err(e);
        }
        let fit = self.faults.take(buf.len() as u64) as usize;
        self.inner.write_all(&buf[..fit])?;
        if fit < buf.len() {
            return Err(io::Error::from_raw_os_error(libc_enospc()));
        }
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        self.inner.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn size(&self) -> io::Result<u64> {
        self.inner.size()
    }
}

impl LogIo for FaultIo {
    fn open_append(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        Ok(Box::new(FaultFile {
            inner: FsIo.open_append(path)?,
            faults: self.faults.clone(),
        }))
    }

    fn create_segment(&self, path: &Path) -> io::Result<Box<dyn SegmentFile>> {
        if let Some(e) = self.faults.write_error() {
            return Err(e);
        }
        Ok(Box::new(FaultFile {
            inner: FsIo.create_segment(path)?,
            faults: self.faults.clone(),
        }))
    }

    fn replace(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if let Some(e) = self.faults.write_error() {
            return Err(e);
        }
        // All or nothing: a temporary that does not fit is never renamed into place.
        let n = data.len() as u64;
        if self.faults.take(n) < n {
            return Err(io::Error::from_raw_os_error(libc_enospc()));
        }
        if self.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc_eio()));
        }
        FsIo.replace(path, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_writes_what_fits_then_fails() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seg");
        let (io, faults) = FaultIo::new();
        let mut f = io.create_segment(&p).unwrap();
        f.write_all(b"hello").unwrap();
        faults.set_space(3);
        let e = f.write_all(b"world").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(28));
        assert_eq!(std::fs::read(&p).unwrap(), b"hellowor");
        f.set_len(5).unwrap();
        faults.unlimited();
        f.write_all(b"!").unwrap();
        f.sync_data().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"hello!");
        faults.fail_sync(true);
        assert!(f.sync_data().is_err());
        faults.fail_sync(false);
        faults.fail_writes(true);
        assert!(f.write_all(b"x").is_err());
        assert!(io.replace(&d.path().join("cp"), b"x").is_err());
    }
}
