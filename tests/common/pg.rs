//! A real PostgreSQL for the tests that share state between replicas: Debian's package (installed
//! with apt-get when missing and we are root), an unprivileged cluster in a temp dir started as
//! the `postgres` user when we are root, on a free loopback port below the ephemeral range; and
//! a small TCP round-robin balancer standing in front of replicas.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The newest installed PostgreSQL's bin directory, installing the Debian package if needed.
pub fn pg_bin() -> PathBuf {
    fn find() -> Option<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        v.sort();
        v.pop()
    }
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(b) = find() {
        return b;
    }
    if is_root() {
        let _ = Command::new("apt-get").arg("update").status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "postgresql"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    find().expect("PostgreSQL is not installed: apt-get install postgresql (the tests start their own cluster)")
}

/// A free loopback TCP port below the ephemeral range (a port a restarted server must get back
/// cannot be one a client socket may take meanwhile).
pub fn free_low_port() -> u16 {
    let mut b = [0u8; 2];
    for _ in 0..200 {
        fedgate::crypto::random_bytes(&mut b);
        let p = 20_000 + (u16::from_be_bytes(b) % 12_000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

pub struct Pg {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
}

impl Pg {
    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        c.args(args).current_dir(self.dir.path());
        c.output().unwrap_or_else(|e| panic!("{tool}: {e}"))
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// A fresh cluster with a `fedgate` superuser (trust authentication on loopback only) and
    /// a database `fedgate`.
    pub fn start() -> Pg {
        let bin = pg_bin();
        let dir = tempfile::tempdir().unwrap();
        let as_postgres = is_root();
        if as_postgres {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let pg = Pg {
            port: free_low_port(),
            dir,
            bin,
            as_postgres,
        };
        let o = pg.run(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "fedgate",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            o.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nmax_connections = 200\nfsync = on\n",
            pg.port,
            pg.dir.path().display()
        );
        let cpath = pg.dir.path().join("data/postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&cpath).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&cpath, existing).unwrap();
        pg.start_again();
        let o = pg.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "fedgate",
                "fedgate",
            ],
        );
        assert!(
            o.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        pg
    }

    /// Starts the (stopped) cluster again on the same port.
    pub fn start_again(&self) {
        let log = self.dir.path().join("pg.log").display().to_string();
        let o = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-l", &log, "-w", "-t", "30", "start"],
        );
        assert!(
            o.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&o.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the cluster (fast: open connections are cut).
    pub fn stop(&self) {
        let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://fedgate@127.0.0.1:{}/fedgate", self.port)
    }

    /// Runs SQL with psql (for checks).
    pub fn sql(&self, q: &str) -> String {
        let o = self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "fedgate",
                "-d",
                "fedgate",
                "-At",
                "-c",
                q,
            ],
        );
        assert!(
            o.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

/// A TCP round-robin balancer on `listen`, forwarding to `backends`; a backend that refuses the
/// connection is skipped (as a load balancer's health check would).
pub struct Balancer {
    pub addr: SocketAddr,
    pub backends: Arc<Mutex<Vec<SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    pub async fn start(listen: std::net::TcpListener, backends: Vec<SocketAddr>) -> Balancer {
        listen.set_nonblocking(true).unwrap();
        let addr = listen.local_addr().unwrap();
        let l = tokio::net::TcpListener::from_std(listen).unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let b2 = backends.clone();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = l.accept().await else {
                    continue;
                };
                let list = b2.lock().unwrap().clone();
                let start = next.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    for i in 0..list.len() {
                        let target = list[(start + i) % list.len()];
                        if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer {
            addr,
            backends,
            task,
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies a domain directory (an `init` output) for another replica: same keys, certificates,
/// bundles and agreements; its own data dir, listeners and replica name.
pub fn clone_domain(src: &Path, dst: &Path) {
    let o = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = std::fs::remove_dir_all(dst.join("data"));
}
