//! The real protocol peers of `tests/peers` (MCP, A2A, an RFC 9421 verifier, an OpenID
//! Provider), installed once into `target/peer-cache` from PyPI and the npm registry.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

/// `tests/peers`.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers")
}

/// The cache the peers are installed into.
pub fn cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/peer-cache")
}

/// Installs the peers (once per test binary; the installer itself is idempotent and locked)
/// and returns the venv's python.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let o = std::process::Command::new("bash")
            .arg(dir().join("install.sh"))
            .arg(cache())
            .output()
            .expect("bash");
        assert!(
            o.status.success(),
            "installing the test peers failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        PathBuf::from(out.lines().last().unwrap_or("").trim())
    })
    .clone()
}

/// Runs a peer script with the venv's python; returns (exit code, stdout, stderr).
pub fn run(script: &str, args: &[&str]) -> (i32, String, String) {
    let o = std::process::Command::new(python())
        .arg(dir().join(script))
        .args(args)
        .output()
        .expect("python");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}
