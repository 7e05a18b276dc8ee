//! `fedgate init`, `svid verify` and `bundle inspect` as a user runs them: the output of init
//! validates with fedgate and with openssl, the bundle round-trips, and bad input gets a clear
//! error with exit 1 or 2, never a panic.

use std::path::Path;
use std::process::{Command, Output};

fn fedgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(args)
        .output()
        .expect("run fedgate")
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn no_panic(o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "panic: {err}");
}

fn init(dir: &Path, td: &str) {
    let out = dir.join(td);
    let o = fedgate(&[
        "init",
        "--trust-domain",
        td,
        "--out",
        out.to_str().unwrap(),
        "--agent",
        "planning/p1",
        "--agent",
        "inventory/i1",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn init_writes_the_spec_layout_with_private_modes() {
    let t = tempfile::tempdir().unwrap();
    init(t.path(), "company.com");
    let d = t.path().join("company.com");
    for f in [
        "bundles/company.com.json",
        "ca.pem",
        "gateway.toml",
        "gateway.pem",
        "agents/planning/p1.pem",
        "agents/planning/p1.key",
        "agents/inventory/i1.pem",
    ] {
        assert!(d.join(f).is_file(), "{f} missing");
    }
    use std::os::unix::fs::PermissionsExt;
    let mut keys = vec![
        d.join("agents/planning/p1.key"),
        d.join("agents/inventory/i1.key"),
    ];
    for e in std::fs::read_dir(d.join("keys")).unwrap() {
        keys.push(e.unwrap().path());
    }
    assert!(keys.len() >= 8);
    for k in keys {
        let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", k.display());
    }
    // Refuses to overwrite.
    let o = fedgate(&[
        "init",
        "--trust-domain",
        "company.com",
        "--out",
        d.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to overwrite"));
    // Bad trust domain and bad agent spellings are usage errors and write nothing.
    let bad = t.path().join("bad");
    assert_eq!(
        code(&fedgate(&[
            "init",
            "--trust-domain",
            "Company.COM",
            "--out",
            bad.to_str().unwrap()
        ])),
        2
    );
    assert_eq!(
        code(&fedgate(&[
            "init",
            "--trust-domain",
            "x.test",
            "--out",
            bad.to_str().unwrap(),
            "--agent",
            "noslash"
        ])),
        2
    );
    assert!(!bad.exists());
    // The written config is one `serve` can validate.
    let cfg = fedgate::server::config::load(&d.join("gateway.toml")).unwrap();
    assert_eq!(cfg.trust_domain.as_str(), "company.com");
}

#[test]
fn init_output_validates_with_fedgate_and_openssl() {
    let t = tempfile::tempdir().unwrap();
    init(t.path(), "company.com");
    let d = t.path().join("company.com");
    let bundles = d.join("bundles");
    for cert in ["agents/planning/p1.pem", "gateway.pem", "admin.pem"] {
        let o = fedgate(&[
            "svid",
            "verify",
            "--bundles",
            bundles.to_str().unwrap(),
            "--cert",
            d.join(cert).to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(
            code(&o),
            0,
            "{cert}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["valid"], true);
    }
    let o = fedgate(&[
        "svid",
        "verify",
        "--bundles",
        bundles.to_str().unwrap(),
        "--cert",
        d.join("agents/planning/p1.pem").to_str().unwrap(),
    ]);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "spiffe://company.com/agent/planning/p1"
    );
    // An SVID checked at a time after its expiry.
    let o = fedgate(&[
        "svid",
        "verify",
        "--bundles",
        bundles.to_str().unwrap(),
        "--cert",
        d.join("gateway.pem").to_str().unwrap(),
        "--at",
        "2099-01-01T00:00:00Z",
        "--json",
    ]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reason"], "bad_svid");
    // openssl agrees (when it is installed).
    if Command::new("openssl").arg("version").output().is_ok() {
        let o = Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(d.join("ca.pem"))
            .arg(d.join("agents/planning/p1.pem"))
            .arg(d.join("gateway.pem"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
    // A second domain's SVID does not validate against the first domain's bundle dir.
    init(t.path(), "vendor.example");
    let o = fedgate(&[
        "svid",
        "verify",
        "--bundles",
        bundles.to_str().unwrap(),
        "--cert",
        t.path()
            .join("vendor.example/agents/planning/p1.pem")
            .to_str()
            .unwrap(),
        "--json",
    ]);
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["reason"], "unknown_domain");
}

#[test]
fn bundle_round_trips_through_inspect() {
    let t = tempfile::tempdir().unwrap();
    init(t.path(), "company.com");
    let file = t.path().join("company.com/bundles/company.com.json");
    let o = fedgate(&["bundle", "inspect", file.to_str().unwrap(), "--json"]);
    assert_eq!(code(&o), 0);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["x509_authorities"].as_array().unwrap().len(), 1);
    assert_eq!(v["jwt_authorities"].as_array().unwrap().len(), 3);
    assert_eq!(v["spiffe_sequence"], 1);
    // Parse, serialize, parse: the same authorities.
    let td = fedgate::spiffe::TrustDomain::parse("company.com").unwrap();
    let b = fedgate::spiffe::Bundle::parse(td.clone(), &std::fs::read(&file).unwrap()).unwrap();
    let again = fedgate::spiffe::Bundle::parse(td, b.to_json().as_bytes()).unwrap();
    assert_eq!(b.x509[0].der, again.x509[0].der);
    assert_eq!(
        b.jwt.iter().map(|a| &a.kid).collect::<Vec<_>>(),
        again.jwt.iter().map(|a| &a.kid).collect::<Vec<_>>()
    );
}

/// A bundle written before keys had roles (wave 1) is upgraded by `bundle assign-roles`: each
/// key gets the role of the private key it matches, the sequence goes up once, a key nobody
/// here holds stays role-less (exit 1), and a second run changes nothing.
#[test]
fn assign_roles_upgrades_a_role_less_bundle() {
    let t = tempfile::tempdir().unwrap();
    init(t.path(), "company.com");
    let dir = t.path().join("company.com");
    let file = dir.join("bundles/company.com.json");
    let roles_of = |file: &Path| -> Vec<String> {
        let o = fedgate(&["bundle", "inspect", file.to_str().unwrap(), "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mut r: Vec<String> = v["jwt_authorities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["role"].as_str().unwrap_or("none").to_string())
            .collect();
        r.sort();
        r
    };
    assert_eq!(roles_of(&file), ["audit", "gateway", "idp"]);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    for k in v["keys"].as_array_mut().unwrap() {
        k.as_object_mut().unwrap().remove("fedgate_role");
    }
    std::fs::write(&file, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    assert_eq!(roles_of(&file), ["none", "none", "none"]);
    let cfg = dir.join("gateway.toml");
    let o = fedgate(&["bundle", "assign-roles", "--config", cfg.to_str().unwrap()]);
    no_panic(&o);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(roles_of(&file), ["audit", "gateway", "idp"]);
    let seq = |file: &Path| {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        v["spiffe_sequence"].as_u64().unwrap()
    };
    assert_eq!(seq(&file), 2);
    // Again: nothing to do, nothing written.
    let o = fedgate(&["bundle", "assign-roles", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("unchanged"));
    assert_eq!(seq(&file), 2);
    // A role-less key whose private key is not here stays role-less: exit 1.
    let other = tempfile::tempdir().unwrap();
    init(other.path(), "vendor.example");
    let theirs: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            other
                .path()
                .join("vendor.example/bundles/vendor.example.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut stranger = theirs["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["use"] == "jwt-svid")
        .unwrap()
        .clone();
    stranger.as_object_mut().unwrap().remove("fedgate_role");
    stranger["kid"] = "stranger".into();
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    v["keys"].as_array_mut().unwrap().push(stranger);
    std::fs::write(&file, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let o = fedgate(&["bundle", "assign-roles", "--config", cfg.to_str().unwrap()]);
    no_panic(&o);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("kid stranger: no private key"));
    assert_eq!(seq(&file), 2);
}

#[test]
fn bad_input_is_a_clear_error_never_a_panic() {
    let t = tempfile::tempdir().unwrap();
    init(t.path(), "company.com");
    let bundles = t.path().join("company.com/bundles");
    let b = bundles.to_str().unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = t.path().join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let corrupt = write(
        "corrupt.pem",
        b"-----BEGIN CERTIFICATE-----\nQ09SUlVQVA==\n-----END CERTIFICATE-----\n",
    );
    let not_pem = write("not.pem", b"not-pem\n");
    let empty = write("empty.pem", b"");
    let huge = write("huge.pem", &vec![b'A'; 10 * 1024 * 1024]);
    for (f, allowed) in [
        (&corrupt, [1, 2]),
        (&not_pem, [2, 2]),
        (&empty, [2, 2]),
        (&huge, [2, 2]),
    ] {
        let o = fedgate(&[
            "svid",
            "verify",
            "--bundles",
            b,
            "--cert",
            f.to_str().unwrap(),
        ]);
        no_panic(&o);
        assert!(
            allowed.contains(&code(&o)),
            "{}: exit {}",
            f.display(),
            code(&o)
        );
        assert!(!o.stderr.is_empty(), "{}: no message", f.display());
    }
    // Bundles: empty, huge, not JSON, duplicate keys.
    let good = std::fs::read_to_string(bundles.join("company.com.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    let dup = v["keys"][1].clone();
    v["keys"].as_array_mut().unwrap().push(dup);
    let dup = write("dup.json", serde_json::to_string(&v).unwrap().as_bytes());
    let empty_b = write("empty.json", b"");
    let huge_b = write("huge.json", &vec![b' '; 10 * 1024 * 1024]);
    let junk_b = write("junk.json", b"\xff\xfe{{{");
    for f in [&dup, &empty_b, &huge_b, &junk_b] {
        let o = fedgate(&[
            "bundle",
            "inspect",
            f.to_str().unwrap(),
            "--trust-domain",
            "company.com",
        ]);
        no_panic(&o);
        assert_eq!(code(&o), 1, "{}", f.display());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("invalid bundle")
                || String::from_utf8_lossy(&o.stderr).contains("larger")
        );
    }
    let o = fedgate(&[
        "bundle",
        "inspect",
        t.path().join("missing.json").to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2);
    // A bundle dir holding a bad file makes svid verify a usage error naming the file.
    std::fs::copy(&dup, bundles.join("partner.test.json")).unwrap();
    let o = fedgate(&[
        "svid",
        "verify",
        "--bundles",
        b,
        "--cert",
        t.path().join("company.com/gateway.pem").to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("partner.test.json"));
    // Unknown verbs and flags: usage, exit 2.
    assert_eq!(code(&fedgate(&["frobnicate"])), 2);
    assert_eq!(code(&fedgate(&["svid", "verify", "--nope"])), 2);
    assert_eq!(code(&fedgate(&["--help"])), 0);
}

#[test]
fn conformance_files_through_the_cli() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spiffe/bundles");
    for (f, want) in [
        ("spiffebundle_valid_1.json", 0),
        ("spiffebundle_valid_2.json", 0),
        ("spiffebundle_valid_with_wit.json", 0),
        ("spire_domain1.test.json", 0),
        ("spiffebundle_missing_kid.json", 1),
        ("spiffebundle_multiple_x509.json", 1),
        ("spiffebundle_no_keys.json", 1),
    ] {
        let o = fedgate(&[
            "bundle",
            "inspect",
            data.join(f).to_str().unwrap(),
            "--trust-domain",
            "example.org",
        ]);
        no_panic(&o);
        assert_eq!(code(&o), want, "{f}");
    }
}

#[test]
fn rotate_stages_one_key_at_a_time() {
    let t = tempfile::tempdir().unwrap();
    init(t.path(), "company.com");
    let data = t.path().join("company.com/data");
    let o = fedgate(&["rotate", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("rotation.json")).unwrap())
            .unwrap();
    assert_eq!(r["phase"], "requested");
    use std::os::unix::fs::PermissionsExt;
    let key = std::path::PathBuf::from(r["key"].as_str().unwrap());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(fedgate::files::read_signing_key(&key).is_ok());
    // A second rotation while one is in progress is refused.
    let o = fedgate(&["rotate", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(String::from_utf8_lossy(&o.stderr).contains("in progress"));
    // revoke without credentials in the current directory: a clear usage error.
    let o = Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .current_dir(t.path())
        .args([
            "revoke",
            "--admin-url",
            "https://127.0.0.1:1",
            "--agent",
            "spiffe://company.com/agent/x/y",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    no_panic(&o);
}
