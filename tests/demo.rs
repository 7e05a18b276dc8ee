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

/// The cosignatures the demo's gateways exchange verify with an independent Ed25519
/// implementation (OpenSSL) from the published format alone: the message is
/// `cosignature/v1\ntime <t>\n` + the note body, the signature `key id (4) || time (8, BE) ||
/// Ed25519 signature (64)`, the key the partner's bundle's audit key.
#[test]
fn cosignatures_verify_with_openssl_from_the_published_format() {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("openssl not installed: skipped");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let keep = t.path().join("demo");
    let o = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(["demo", "--keep", keep.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    for (me, partner) in [
        ("company.com", "vendor.example"),
        ("vendor.example", "company.com"),
    ] {
        let note =
            std::fs::read_to_string(keep.join(format!("{me}/data/audit/cosigned/{partner}.note")))
                .unwrap();
        let at = note.find("\n\n").unwrap();
        let body = &note[..at + 1];
        let name = format!("{partner}/fedgate-witness");
        let line = note
            .lines()
            .find(|l| l.starts_with(&format!("\u{2014} {name} ")))
            .unwrap_or_else(|| panic!("{me}: no cosignature of {partner}: {note}"));
        let blob = fedgate::crypto::b64std_decode(line.rsplit(' ').next().unwrap()).unwrap();
        assert_eq!(blob.len(), 4 + 8 + 64);
        let time = u64::from_be_bytes(blob[4..12].try_into().unwrap());
        let msg = format!("cosignature/v1\ntime {time}\n{body}");
        // The partner's audit key from its bundle (JWK `x`), as a SubjectPublicKeyInfo.
        let bundle: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(keep.join(format!("auditor/bundles/{partner}.json"))).unwrap(),
        )
        .unwrap();
        let x = bundle["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["fedgate_role"] == "audit")
            .unwrap()["x"]
            .as_str()
            .unwrap()
            .to_string();
        let raw = fedgate::crypto::b64url_decode(&x).unwrap();
        // The key id of tlog-cosignature, computed here.
        let mut kid = format!("{name}\n").into_bytes();
        kid.push(4);
        kid.extend_from_slice(&raw);
        assert_eq!(&fedgate::crypto::sha256(&kid)[..4], &blob[..4]);
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(&raw);
        let d = t.path().join(format!("{me}-{partner}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("pub.der"), &der).unwrap();
        std::fs::write(d.join("msg"), msg.as_bytes()).unwrap();
        std::fs::write(d.join("sig"), &blob[12..]).unwrap();
        let run = |msg: &str| {
            std::fs::write(d.join("msg"), msg.as_bytes()).unwrap();
            Command::new("openssl")
                .args(["pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey"])
                .arg(d.join("pub.der"))
                .arg("-rawin")
                .arg("-in")
                .arg(d.join("msg"))
                .arg("-sigfile")
                .arg(d.join("sig"))
                .output()
                .unwrap()
        };
        let ok = run(&msg);
        assert!(
            ok.status.success(),
            "{me}: openssl: {}{}",
            String::from_utf8_lossy(&ok.stdout),
            String::from_utf8_lossy(&ok.stderr)
        );
        // Another time line: OpenSSL refuses it.
        let bad = run(&format!("cosignature/v1\ntime {}\n{body}", time + 1));
        assert!(!bad.status.success());
    }
}
