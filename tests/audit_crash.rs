//! kill -9 under concurrent load: every crossing the gateway acknowledged (here: audited
//! denials, each made durable before the answer) is in the log after a restart, and the log
//! verifies against its signed checkpoint.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Method;

/// Kills the child if the test fails half-way, so no gateway outlives it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cfg: &std::path::Path) -> (Guard, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .env("FEDGATE_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Guard(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("gateway started") {
                let addr = line
                    .split("internal=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .map(|s| s.to_string());
                let _ = tx.send(addr);
                sent = true;
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("gateway did not start")
        .expect("no address in the start line");
    (child, addr.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_record_is_lost_after_kill_9() {
    let (f, _l1, _l2) = Federation::prepare().await;
    // Let the OS pick the ports for the child process.
    let cfg = f.co.config();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text
        .replace(
            &format!("internal = \"{}\"", f.co.internal),
            "internal = \"127.0.0.1:0\"",
        )
        .replace(
            &format!("federation = \"{}\"", f.co.federation),
            "federation = \"127.0.0.1:0\"",
        )
        .replace(
            &format!("admin = \"{}\"", f.co.admin),
            "admin = \"127.0.0.1:0\"",
        );
    std::fs::write(&cfg, &text).unwrap();
    let (mut child, addr) = spawn(&cfg);
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let c = agent_client(&f.co, "planning/p1", &f.co);
        let acked = acked.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let url = format!("https://{addr}/egress/x");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let h = [
                    ("Delegation-Chain", "x.y.z"),
                    (
                        "Fedgate-Target",
                        "spiffe://vendor.example/agent/analytics/a1",
                    ),
                    ("Fedgate-Scope", "a"),
                ];
                match call(&c, Method::POST, &url, &h, "").await {
                    Ok(r) => {
                        let id = r.json()["crossing"].as_str().unwrap_or("").to_string();
                        if r.reason() == "malformed" && !id.is_empty() {
                            acked.lock().unwrap().push(id);
                        }
                    }
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGKILL in the middle of the load.
    child.0.kill().unwrap();
    let _ = child.0.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too little load to mean anything: {}",
        acked.len()
    );

    // Restart: recovery succeeds; then stop cleanly and audit the log.
    let (child2, _) = spawn(&cfg);
    let _ = Command::new("kill")
        .args(["-TERM", &child2.0.id().to_string()])
        .status();
    let mut child2 = child2;
    let _ = child2.0.wait();
    let out = f.tmp.path().join("after-crash.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args([
            "audit",
            "export",
            "--data-dir",
            f.co.dir.join("data").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args([
            "audit",
            "verify",
            "--bundles",
            f.co.bundles().to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = std::fs::read(&out).unwrap();
    let logged: std::collections::HashSet<String> = fedgate::audit::export::lines(&data)
        .iter()
        .map(|l| fedgate::audit::Record::from_canonical(l).unwrap().crossing)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|c| !logged.contains(*c)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost (of {})",
        lost.len(),
        acked.len()
    );
}
