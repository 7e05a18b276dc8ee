//! `fedgate demo` as a newcomer runs it: every step behaves as expected, and `--keep DIR`
//! leaves what SPEC section 9 promises (two init directories whose gateway.toml `serve`
//! accepts, the signed agreement under each, each domain's audit export).

use std::process::Command;

#[test]
fn the_demo_passes_every_step_and_keeps_its_files() {
    let t = tempfile::tempdir().unwrap();
    let keep = t.path().join("demo");
    let o = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(["demo", "--json", "--keep", keep.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
    let failed: Vec<&serde_json::Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] != true)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(o.status.code(), Some(0));
    assert!(v["steps"].as_array().unwrap().len() >= 15);
    for td in ["company.com", "vendor.example"] {
        let d = keep.join(td);
        assert!(
            fedgate::server::config::load(&d.join("gateway.toml")).is_ok(),
            "{td}: gateway.toml"
        );
        assert!(d.join("agreements/company-vendor-analytics.toml").is_file());
        for sig in ["company.com", "vendor.example"] {
            assert!(d
                .join(format!("agreements/company-vendor-analytics.{sig}.sig"))
                .is_file());
        }
        assert!(d.join("audit.jsonl").is_file() && d.join("audit.jsonl.checkpoint").is_file());
        let o = Command::new(env!("CARGO_BIN_EXE_fedgate"))
            .args([
                "audit",
                "verify",
                "--bundles",
                d.join("bundles").to_str().unwrap(),
                d.join("audit.jsonl").to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Reconciled by the CLI as an auditor would.
    let o = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args([
            "audit",
            "reconcile",
            "--bundles",
            keep.join("auditor/bundles").to_str().unwrap(),
            keep.join("company.com/audit.jsonl").to_str().unwrap(),
            keep.join("vendor.example/audit.jsonl").to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    // The demo's hostile vendor step tampers with one answer: the one discrepancy.
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bad: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .filter(|k| !["matched", "pending", "refused", "failed", "unanswered"].contains(k))
        .collect();
    assert_eq!(bad, ["response_refused"], "{v}");
    // --keep refuses a non-empty directory.
    let o = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(["demo", "--keep", keep.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}
