//! Agreements through the CLI as the two domains and an auditor use them: the checked-in
//! example lints clean and verifies against the checked-in bundles, any edit breaks it, lint
//! names key paths, sign/verify work across two `fedgate init` domains, and `explain` says why.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fedgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(args)
        .output()
        .expect("run fedgate")
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn checked_in_example_lints_and_verifies() {
    let a = root().join("federation-agreements/company-vendor-analytics.toml");
    let b = root().join("trust-bundles");
    let o = fedgate(&["agreement", "lint", s(&a)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = fedgate(&["agreement", "verify", "--bundles", s(&b), s(&a), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["signatures"].as_array().unwrap().len(), 2);
    let h = fedgate(&["agreement", "hash", s(&a)]);
    assert_eq!(stdout(&h).trim(), v["hash"].as_str().unwrap());
    // The library agrees, loading the directory as a gateway would.
    let bundles = fedgate::files::load_bundle_dir(&b).unwrap();
    let list =
        fedgate::files::load_agreements(&root().join("federation-agreements"), &bundles, None)
            .unwrap();
    assert_eq!(list.len(), 1);

    // Any edit voids the signatures; a missing signature is reported.
    let t = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&a)
        .unwrap()
        .replace("max_token_ttl = \"15m\"", "max_token_ttl = \"16m\"");
    std::fs::write(t.path().join("company-vendor-analytics.toml"), text).unwrap();
    for td in ["company.com", "vendor.example"] {
        let sig = format!("company-vendor-analytics.{td}.sig");
        std::fs::copy(
            root().join("federation-agreements").join(&sig),
            t.path().join(&sig),
        )
        .unwrap();
    }
    let edited = t.path().join("company-vendor-analytics.toml");
    let o = fedgate(&["agreement", "verify", "--bundles", s(&b), s(&edited)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("INVALID"));
    std::fs::remove_file(t.path().join("company-vendor-analytics.vendor.example.sig")).unwrap();
    let err = fedgate::files::load_agreements(t.path(), &bundles, None).unwrap_err();
    assert!(err[0].contains("signature"), "{err:?}");
}

#[test]
fn lint_reports_key_paths_and_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let a = root().join("federation-agreements/company-vendor-analytics.toml");
    let text = std::fs::read_to_string(&a)
        .unwrap()
        .replace("max_chain_depth = 5", "max_chain_depth = 40")
        .replace(
            "scope = \"analytics:report-back\"",
            "scope = \"reports:delete\"",
        );
    let bad = t.path().join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let o = fedgate(&["agreement", "lint", s(&a), s(&bad), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["ok"], true);
    let paths: Vec<&str> = v[1]["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"max_chain_depth"), "{paths:?}");
    assert!(paths.contains(&"flows[1].routes[0].scope"), "{paths:?}");
    assert_eq!(
        fedgate(&["agreement", "lint", s(&t.path().join("missing.toml"))])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn two_domains_sign_and_explain() {
    let t = tempfile::tempdir().unwrap();
    let co = t.path().join("company.com");
    let ve = t.path().join("vendor.example");
    for (td, dir, agent) in [
        ("company.com", &co, "planning/p1"),
        ("vendor.example", &ve, "analytics/a1"),
    ] {
        let o = fedgate(&[
            "init",
            "--trust-domain",
            td,
            "--out",
            s(dir),
            "--agent",
            agent,
        ]);
        assert_eq!(o.status.code(), Some(0));
    }
    let bundles = t.path().join("bundles");
    std::fs::create_dir(&bundles).unwrap();
    std::fs::copy(
        co.join("bundles/company.com.json"),
        bundles.join("company.com.json"),
    )
    .unwrap();
    std::fs::copy(
        ve.join("bundles/vendor.example.json"),
        bundles.join("vendor.example.json"),
    )
    .unwrap();
    let agr = t.path().join("company-vendor-analytics.toml");
    std::fs::copy(
        root().join("federation-agreements/company-vendor-analytics.toml"),
        &agr,
    )
    .unwrap();
    // Unsigned: not valid. A key that is not the domain's: refused.
    assert_eq!(
        fedgate(&["agreement", "verify", "--bundles", s(&bundles), s(&agr)])
            .status
            .code(),
        Some(1)
    );
    let o = fedgate(&[
        "agreement",
        "sign",
        "--agreement",
        s(&agr),
        "--key",
        s(&ve.join("keys/gateway.key")),
        "--trust-domain",
        "company.com",
        "--bundles",
        s(&bundles),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = fedgate(&[
        "agreement",
        "sign",
        "--agreement",
        s(&agr),
        "--key",
        s(&co.join("keys/gateway.key")),
        "--trust-domain",
        "elsewhere.test",
    ]);
    assert_eq!(o.status.code(), Some(2));
    for (td, dir) in [("company.com", &co), ("vendor.example", &ve)] {
        let o = fedgate(&[
            "agreement",
            "sign",
            "--agreement",
            s(&agr),
            "--key",
            s(&dir.join("keys/gateway.key")),
            "--trust-domain",
            td,
            "--bundles",
            s(&bundles),
        ]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(
        fedgate(&["agreement", "verify", "--bundles", s(&bundles), s(&agr)])
            .status
            .code(),
        Some(0)
    );

    // A chain from company.com's IdP to planning, then explain crossings.
    let o = fedgate(&[
        "chain",
        "issue",
        "--dir",
        s(&co),
        "--human",
        "alice@company.com",
        "--to",
        "spiffe://company.com/agent/planning/p1",
        "--scope",
        "analytics:* cloud:read pii:*",
        "--task",
        "review-q3",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let chain = t.path().join("chain");
    std::fs::write(&chain, &o.stdout).unwrap();
    let explain = |target: &str, scope: &str| {
        let o = fedgate(&[
            "agreement",
            "explain",
            "--agreement",
            s(&agr),
            "--chain",
            s(&chain),
            "--target",
            target,
            "--scope",
            scope,
            "--bundles",
            s(&bundles),
            "--json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (o.status.code(), v)
    };
    let (code, v) = explain(
        "spiffe://vendor.example/agent/analytics/a1",
        "analytics:* cloud:read",
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["details"]["granted"], serde_json::json!(["analytics:*"]));
    assert_eq!(v["details"]["decision_record"]["result"], "allow");
    assert_eq!(
        v["details"]["decision_record"]["input_digest"]
            .as_str()
            .unwrap()
            .len(),
        43
    );
    let (code, v) = explain(
        "spiffe://vendor.example/agent/analytics/a1",
        "pii:customers:read",
    );
    assert_eq!(
        (code, v["reason"].as_str()),
        (Some(1), Some("approval_required"))
    );
    let (code, v) = explain("spiffe://vendor.example/agent/billing/b1", "analytics:run");
    assert_eq!((code, v["reason"].as_str()), (Some(1), Some("rule_denied")));
    let (code, v) = explain(
        "spiffe://vendor.example/agent/analytics/a1",
        "reports:write",
    );
    assert_eq!(
        (code, v["reason"].as_str()),
        (Some(1), Some("scope_escalation"))
    );
    // Without --bundles the chain is read as given, and the note says so.
    let o = fedgate(&[
        "agreement",
        "explain",
        "--agreement",
        s(&agr),
        "--chain",
        s(&chain),
        "--target",
        "spiffe://vendor.example/agent/analytics/a1",
        "--scope",
        "analytics:run",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("without verifying"));
}
