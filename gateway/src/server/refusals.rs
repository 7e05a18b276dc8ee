//! Refusals that do not belong in the audit log of record (SPEC section 7): a request refused
//! before its peer was authenticated (no or an invalid client certificate; on the federation
//! listener no token at all), and requests from a source that is being rate-limited because it
//! keeps being denied. They are counted in metrics and written to a rate-limited, sampled side
//! log (`<data_dir>/refusals.jsonl`, rotated), so nobody outside can fill the log of record or
//! the disk. Authenticated denials stay records of the log of record.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines the side log writes per second at most; beyond that lines are counted, not written.
pub const SIDE_LOG_LINES_PER_SECOND: u32 = 20;
/// The side log is rotated (one previous file kept) past this size.
pub const SIDE_LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Lines waiting for the writer; more are dropped (and counted).
const SIDE_LOG_QUEUE: usize = 1024;
/// Longest message kept in a side-log line.
const MAX_MESSAGE_CHARS: usize = 200;
/// Sources tracked by the denial limiter; when full, idle buckets are dropped first, then all.
pub const MAX_TRACKED_SOURCES: usize = 65_536;

/// One side-log line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refusal {
    pub time: String,
    pub listener: &'static str,
    pub remote: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub reason: &'static str,
    pub message: String,
    /// Lines not written since the previous line (rate limit or full queue).
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

struct Window {
    second: Instant,
    written: u32,
    suppressed: u64,
}

/// The side log: a bounded queue drained by one writer thread.
pub struct RefusalLog {
    tx: Option<std::sync::mpsc::SyncSender<Refusal>>,
    window: Mutex<Window>,
}

impl RefusalLog {
    /// A side log writing to `path` (created with its directory); `None` path: count only.
    pub fn open(path: Option<PathBuf>) -> RefusalLog {
        let tx = path.map(|path| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Refusal>(SIDE_LOG_QUEUE);
            let _ = std::thread::Builder::new()
                .name("fedgate-refusals".into())
                .spawn(move || writer(path, rx));
            tx
        });
        RefusalLog {
            tx,
            window: Mutex::new(Window {
                second: Instant::now(),
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// Logs a refusal unless this second's budget is spent (then it is only counted).
    pub fn record(&self, mut r: Refusal) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        if w.second.elapsed() >= Duration::from_secs(1) {
            w.second = Instant::now();
            w.written = 0;
        }
        if w.written >= SIDE_LOG_LINES_PER_SECOND {
            w.suppressed += 1;
            return;
        }
        w.written += 1;
        r.suppressed = std::mem::take(&mut w.suppressed);
        r.message = r.message.chars().take(MAX_MESSAGE_CHARS).collect();
        if let Some(tx) = &self.tx {
            if tx.try_send(r).is_err() {
                w.suppressed += 1;
            }
        }
    }
}

fn writer(path: PathBuf, rx: std::sync::mpsc::Receiver<Refusal>) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let open = |p: &PathBuf| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    };
    let mut file = open(&path);
    let mut size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    for r in rx {
        let Ok(mut line) = serde_json::to_vec(&r) else {
            continue;
        };
        line.push(b'\n');
        if size + line.len() as u64 > SIDE_LOG_MAX_BYTES {
            let mut old = path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&path, &old);
            file = open(&path);
            size = 0;
        }
        if let Some(f) = file.as_mut() {
            if f.write_all(&line).is_ok() {
                size += line.len() as u64;
            }
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-source token buckets for denials: each denial takes a token; a source with none left is
/// refused up front (`rate_limited`) until tokens come back at `rate` per second.
pub struct DenialLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl DenialLimiter {
    pub fn new(rate: u32, burst: u32) -> DenialLimiter {
        DenialLimiter {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let dt = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.rate).min(self.burst);
        b.at = now;
    }

    /// Whether `source` may still be denied (and audited) now; does not take a token.
    pub fn allows(&self, source: &str) -> bool {
        let now = Instant::now();
        let Ok(mut m) = self.buckets.lock() else {
            return false;
        };
        match m.get_mut(source) {
            Some(b) => {
                self.refill(b, now);
                b.tokens >= 1.0
            }
            None => true,
        }
    }

    /// Takes a token for one denial of `source`; false when it had none left.
    pub fn take(&self, source: &str) -> bool {
        let now = Instant::now();
        let Ok(mut m) = self.buckets.lock() else {
            return false;
        };
        if !m.contains_key(source) && m.len() >= MAX_TRACKED_SOURCES {
            let burst = self.burst;
            let rate = self.rate;
            // Drop buckets that have refilled completely (idle sources) first.
            m.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if m.len() >= MAX_TRACKED_SOURCES {
                m.clear();
            }
        }
        let b = m.entry(source.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(b, now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_allows_a_burst_then_the_rate() {
        let l = DenialLimiter::new(1, 3);
        assert!(l.allows("a"));
        for _ in 0..3 {
            assert!(l.take("a"));
        }
        assert!(!l.take("a"));
        assert!(!l.allows("a"));
        assert!(l.allows("b"), "sources are independent");
        std::thread::sleep(Duration::from_millis(1100));
        assert!(l.allows("a"));
        assert!(l.take("a"));
    }

    #[test]
    fn side_log_is_rate_limited_and_counts_what_it_skips() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("refusals.jsonl");
        let log = RefusalLog::open(Some(path.clone()));
        let r = Refusal {
            time: "t".into(),
            listener: "federation",
            remote: "127.0.0.1:1".into(),
            peer: None,
            reason: "bad_svid",
            message: "x".repeat(1000),
            suppressed: 0,
        };
        for _ in 0..(SIDE_LOG_LINES_PER_SECOND * 3) {
            log.record(r.clone());
        }
        std::thread::sleep(Duration::from_millis(1100));
        log.record(r.clone());
        drop(log);
        std::thread::sleep(Duration::from_millis(200));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len() as u32, SIDE_LOG_LINES_PER_SECOND + 1);
        assert_eq!(
            lines[0]["message"].as_str().unwrap().len(),
            MAX_MESSAGE_CHARS
        );
        assert_eq!(
            lines.last().unwrap()["suppressed"],
            (SIDE_LOG_LINES_PER_SECOND * 2) as u64
        );
    }
}
