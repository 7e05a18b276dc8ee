//! The chain test vectors of tests/vectors/chains/: they are exactly what the checked-in
//! generator produces (CI regenerates and diffs), and each verifies — through the library and
//! through `fedgate chain verify --json` — to its expected result.

use std::path::{Path, PathBuf};

#[path = "vectors/gen.rs"]
mod gen;

use fedgate::chain::{NoRevocations, Policy, UnverifiedChain};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/chains")
}

#[test]
fn vectors_are_current() {
    let g = gen::generate();
    let regenerate = std::env::var("FEDGATE_REGENERATE_VECTORS").is_ok();
    let mut stale = Vec::new();
    for (path, content) in &g.files {
        let p = dir().join(path);
        if regenerate {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        } else if std::fs::read_to_string(&p).ok().as_deref() != Some(content.as_str()) {
            stale.push(path.clone());
        }
    }
    // The generator is deterministic: a second run gives the same bytes.
    let again = gen::generate();
    assert_eq!(
        g.files, again.files,
        "the vector generator is not deterministic"
    );
    assert!(
        stale.is_empty(),
        "tests/vectors/chains is out of date for {stale:?}; run FEDGATE_REGENERATE_VECTORS=1 cargo test --test chain_vectors"
    );
}

fn manifest() -> Vec<serde_json::Value> {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("manifest.json")).unwrap())
            .unwrap();
    m["vectors"].as_array().unwrap().clone()
}

fn result_json(
    r: &Result<fedgate::chain::VerifiedChain, fedgate::chain::ChainError>,
) -> serde_json::Value {
    match r {
        Ok(v) => {
            serde_json::json!({"valid": true, "holder": v.holder.as_str(), "scope": v.scope.to_strings(), "reason": null, "link": null})
        }
        Err(e) => {
            serde_json::json!({"valid": false, "holder": null, "scope": [], "reason": e.reason().code(), "link": e.link})
        }
    }
}

#[test]
fn every_vector_verifies_as_expected() {
    let bundles = fedgate::files::load_bundle_dir(&dir().join("bundles")).unwrap();
    let vectors = manifest();
    assert!(vectors.len() >= 25);
    let mut reasons = std::collections::BTreeSet::new();
    for v in &vectors {
        let raw = std::fs::read_to_string(dir().join(v["file"].as_str().unwrap())).unwrap();
        let at = fedgate::time::parse_rfc3339(v["at"].as_str().unwrap()).unwrap();
        let r = UnverifiedChain::parse(raw.trim())
            .and_then(|c| c.verify(&bundles, &Policy::default(), &NoRevocations, at));
        assert_eq!(
            result_json(&r),
            v["expect"],
            "vector {}: {:?}",
            v["name"],
            r.err().map(|e| e.to_string())
        );
        if let Some(reason) = v["expect"]["reason"].as_str() {
            reasons.insert(reason.to_string());
        }
    }
    // At least one invalid vector per reason code of rules 1-7.
    for code in [
        "malformed",
        "bad_alg",
        "bad_signature",
        "unknown_key",
        "bad_svid",
        "bad_root",
        "broken_link",
        "wrong_signer",
        "scope_escalation",
        "expiry_extension",
        "expired",
        "not_yet_valid",
        "task_mismatch",
        "too_deep",
        "too_large",
    ] {
        assert!(reasons.contains(code), "no vector for {code}");
    }
}

#[test]
fn every_vector_through_the_cli() {
    let bundles = dir().join("bundles");
    for v in manifest() {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
            .args(["chain", "verify", "--json", "--bundles"])
            .arg(&bundles)
            .arg("--chain")
            .arg(dir().join(v["file"].as_str().unwrap()))
            .args(["--at", v["at"].as_str().unwrap()])
            .output()
            .unwrap();
        let out: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}: {}", v["name"], String::from_utf8_lossy(&o.stderr)));
        for k in ["valid", "holder", "scope", "reason", "link"] {
            assert_eq!(out[k], v["expect"][k], "vector {} field {k}", v["name"]);
        }
        let want = if v["expect"]["valid"] == true { 0 } else { 1 };
        assert_eq!(o.status.code(), Some(want), "vector {}", v["name"]);
    }
}
