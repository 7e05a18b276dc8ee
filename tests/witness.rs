//! Mutual witnessing with two real gateways (issue 14): each cosigns the other's checkpoints
//! (C2SP tlog-witness over the federation listener), publishes its checkpoint with both
//! signatures, and refuses every bad submission with the status tlog-witness names; a
//! checkpoint inconsistent with one cosigned (same size with another root, or a rewritten and
//! extended history) is refused, audited as `checkpoint_fork`, counted, and kept as evidence;
//! the witness state survives a restart. An auditor's reconcile finds a history rewritten after
//! the partner witnessed it, even when the rewriter drops its own cosignatures.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fedgate::audit::merkle::{leaf_hash, MerkleTree};
use fedgate::audit::{Checkpoint, Record};
use fedgate::witness::AddCheckpoint;
use http::Method;

async fn grow(r: &fedgate::server::Running, n: usize) {
    for i in 0..n {
        let rec = fedgate::server::base_record(
            &r.gateway,
            "outbound",
            &format!("w-{i}-{}", fedgate::time::now_millis()),
            true,
        );
        fedgate::server::append(&r.gateway, rec).await.unwrap();
    }
}

/// Waits until `r`'s latest checkpoint carries `partner`'s cosignature.
async fn cosigned(r: &fedgate::server::Running, partner: &str) -> String {
    let gw = &r.gateway;
    let t = Instant::now();
    loop {
        let note = gw.log.checkpoint_now().unwrap();
        let with = fedgate::server::lifecycle::cosigned_note(&gw.cfg.data_dir, &note);
        if with.contains(&format!("\u{2014} {partner}/fedgate-witness ")) {
            return with;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "not cosigned by {partner}: {with}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn submit(f: &Federation, body: String) -> Reply {
    let c = gateway_client(&f.co, &f.ve);
    call(
        &c,
        Method::POST,
        &format!("https://{}/v1/witness/add-checkpoint", f.ve.federation),
        &[],
        body,
    )
    .await
    .unwrap()
}

/// Verifies the `cosignature/v1` line of `name` in `note` with the `openssl` command line (an
/// Ed25519 implementation independent of ours), from the published formats only: the public key
/// is the `x` of the `fedgate_role = "audit"` JWK in the SPIFFE bundle file, the key hash is
/// SHA-256(name || 0x0A || 0x04 || key)[:4] (C2SP signed-note, cosignature type 0x04), and the
/// signed message is `cosignature/v1\ntime <T>\n` followed by the checkpoint body (C2SP
/// tlog-cosignature). Returns whether OpenSSL accepted the signature; any parse failure panics.
fn openssl_verifies_cosignature(note: &str, name: &str, bundle: &std::path::Path) -> bool {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle).unwrap()).unwrap();
    let jwk = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["fedgate_role"] == "audit" && k["crv"] == "Ed25519")
        .expect("an Ed25519 audit key in the bundle");
    let key = b64url.decode(jwk["x"].as_str().unwrap()).unwrap();
    assert_eq!(key.len(), 32);
    let (body, sigs) = note.split_once("\n\n").expect("a signed note");
    let body = format!("{body}\n");
    let prefix = format!("\u{2014} {name} ");
    let line = sigs
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .expect("the cosignature line");
    let blob = b64.decode(line).unwrap();
    assert_eq!(
        blob.len(),
        4 + 8 + 64,
        "cosignature/v1 is keyhash, timestamp, signature"
    );
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl");
        (out.status.success(), out.stdout)
    };
    let mut id = name.as_bytes().to_vec();
    id.push(b'\n');
    id.push(0x04);
    id.extend_from_slice(&key);
    std::fs::write(dir.path().join("id"), &id).unwrap();
    let (ok, digest) = run(&["dgst", "-sha256", "-binary", "id"]);
    assert!(ok);
    assert_eq!(&digest[..4], &blob[..4], "key hash of {name}");
    let time = u64::from_be_bytes(blob[4..12].try_into().unwrap());
    std::fs::write(
        dir.path().join("msg"),
        format!("cosignature/v1\ntime {time}\n{body}"),
    )
    .unwrap();
    std::fs::write(dir.path().join("sig"), &blob[12..]).unwrap();
    // SubjectPublicKeyInfo for Ed25519 (RFC 8410): a fixed 12-byte prefix, then the key.
    let mut spki = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    spki.extend_from_slice(&key);
    std::fs::write(dir.path().join("pub.der"), &spki).unwrap();
    let verify = |msg: &str| {
        run(&[
            "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "pub.der", "-rawin",
            "-in", msg, "-sigfile", "sig",
        ])
        .0
    };
    // The check can fail: the same signature over a message with another time is refused.
    std::fs::write(
        dir.path().join("other"),
        format!("cosignature/v1\ntime {}\n{body}", time + 1),
    )
    .unwrap();
    assert!(
        !verify("other"),
        "openssl accepted a cosignature over the wrong time"
    );
    verify("msg")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_witness_each_other_and_refuse_forks() {
    let mut f = Federation::start().await;
    grow(f.co_gw(), 5).await;
    grow(f.ve_gw(), 3).await;
    let co_note = cosigned(f.co_gw(), VE).await;
    cosigned(f.ve_gw(), CO).await;
    // Published with both signatures, and the cosignature verifies with the vendor's bundle.
    let a = call(
        &admin_client(&f.co),
        Method::GET,
        &format!("https://{}/v1/audit/checkpoint", f.co.admin),
        &[],
        "",
    )
    .await
    .unwrap();
    let published = String::from_utf8_lossy(&a.body).to_string();
    assert!(
        published.contains("\u{2014} company.com/fedgate-audit "),
        "{published}"
    );
    assert!(
        published.contains("\u{2014} vendor.example/fedgate-witness "),
        "{published}"
    );
    let vb =
        fedgate::files::load_bundle_file(&f.co.bundles().join("vendor.example.json"), VE).unwrap();
    let key = vb
        .keys_with_role(fedgate::spiffe::KeyRole::Audit)
        .next()
        .unwrap();
    assert!(fedgate::witness::verify_cosignature(
        &co_note,
        "vendor.example/fedgate-witness",
        key.key.raw(),
        fedgate::time::now() as u64
    )
    .unwrap()
    .is_some());

    // The same cosignature checked from the published formats alone, with OpenSSL's Ed25519.
    assert!(openssl_verifies_cosignature(
        &published,
        "vendor.example/fedgate-witness",
        &f.co.bundles().join("vendor.example.json"),
    ));

    // What the vendor's witness holds of company.com's log.
    let gw = &f.co_gw().gateway;
    let held = fedgate::audit::checkpoint::peek(&co_note).unwrap();
    let audit_key = fedgate::files::read_signing_key(&f.co.dir.join("keys/audit.key")).unwrap();
    let latest = gw.log.latest_checkpoint().unwrap().1;

    // 409 with the size held, for a wrong old size.
    let wrong = AddCheckpoint {
        old: 1,
        proof: vec![],
        checkpoint: latest.clone(),
    };
    let r = submit(&f, wrong.encode()).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.headers["content-type"], "text/x.tlog.size");
    assert_eq!(String::from_utf8_lossy(&r.body), format!("{}\n", held.size));
    // 400 for a malformed body, and for an old size above the checkpoint.
    assert_eq!(submit(&f, "old 01\n\nx".into()).await.status, 400);
    let above = AddCheckpoint {
        old: held.size + 100,
        proof: vec![],
        checkpoint: latest.clone(),
    };
    assert_eq!(submit(&f, above.encode()).await.status, 400);
    // 403 for a checkpoint not signed by company.com's audit key.
    let (stranger, _) = fedgate::jose::SigningKey::generate_ed25519().unwrap();
    let forged = Checkpoint {
        origin: held.origin.clone(),
        size: held.size,
        root: held.root,
    }
    .sign(&stranger)
    .unwrap();
    let r = submit(
        &f,
        AddCheckpoint {
            old: held.size,
            proof: vec![],
            checkpoint: forged,
        }
        .encode(),
    )
    .await;
    assert_eq!(r.status, 403);
    // 404 for a log that is not a partner's.
    let other = Checkpoint {
        origin: "other.example/fedgate-audit".into(),
        size: 1,
        root: [0; 32],
    }
    .sign(&audit_key)
    .unwrap();
    assert_eq!(
        submit(
            &f,
            AddCheckpoint {
                old: 0,
                proof: vec![],
                checkpoint: other
            }
            .encode()
        )
        .await
        .status,
        404
    );
    // A company.com client may not submit another domain's log (here vendor.example's own,
    // which its witness does not track): refused.
    let ve_latest = f.ve_gw().gateway.log.latest_checkpoint().unwrap().1;
    let r = submit(
        &f,
        AddCheckpoint {
            old: 0,
            proof: vec![],
            checkpoint: ve_latest,
        }
        .encode(),
    )
    .await;
    assert!(r.status == 403 || r.status == 404, "{}", r.status);

    // Forks. The history company.com's witness partner cosigned, rewritten at record 1.
    let mut forked = MerkleTree::new();
    for i in 0..held.size {
        forked.push(if i == 1 {
            leaf_hash(b"rewritten")
        } else {
            gw.log.leaf(i).unwrap()
        });
    }
    let same_size = Checkpoint {
        origin: held.origin.clone(),
        size: held.size,
        root: forked.root(held.size).unwrap(),
    }
    .sign(&audit_key)
    .unwrap();
    let r = submit(
        &f,
        AddCheckpoint {
            old: held.size,
            proof: vec![],
            checkpoint: same_size,
        }
        .encode(),
    )
    .await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    forked.push(leaf_hash(b"and extended"));
    let n = held.size + 1;
    let extended = Checkpoint {
        origin: held.origin.clone(),
        size: n,
        root: forked.root(n).unwrap(),
    }
    .sign(&audit_key)
    .unwrap();
    let r = submit(
        &f,
        AddCheckpoint {
            old: held.size,
            proof: forked.consistency_proof(held.size, n).unwrap(),
            checkpoint: extended,
        }
        .encode(),
    )
    .await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let vg = &f.ve_gw().gateway;
    assert_eq!(
        vg.metrics
            .get("fedgate_witness_forks_total", &[("partner", CO)]),
        2
    );
    let forks: Vec<Record> = records(f.ve_gw())
        .into_iter()
        .filter(|r| r.kind == "witness")
        .collect();
    assert_eq!(forks.len(), 2);
    for r in &forks {
        assert_eq!(r.reason.as_deref(), Some("checkpoint_fork"));
        assert_eq!(r.decision, "deny");
        assert_eq!(r.partner.as_deref(), Some(CO));
        let c = r.checkpoint.as_ref().unwrap();
        assert_eq!(c["cosigned_size"], held.size);
        let ev = c["evidence"].as_str().unwrap();
        let text = std::fs::read_to_string(ev).unwrap();
        assert!(
            text.contains("## cosigned before") && text.contains("old "),
            "{text}"
        );
    }
    // The forks changed nothing: the honest log keeps being cosigned as it grows.
    grow(f.co_gw(), 4).await;
    let again = cosigned(f.co_gw(), VE).await;
    assert!(fedgate::audit::checkpoint::peek(&again).unwrap().size > held.size);

    // The witness state survives a restart: an old size of 0 is answered with the size held.
    let held_now = fedgate::audit::checkpoint::peek(&again).unwrap().size;
    f.restart_vendor().await;
    let latest = f.co_gw().gateway.log.latest_checkpoint().unwrap().1;
    let r = submit(
        &f,
        AddCheckpoint {
            old: 0,
            proof: vec![],
            checkpoint: latest,
        }
        .encode(),
    )
    .await;
    assert_eq!(r.status, 409);
    let size: u64 = String::from_utf8_lossy(&r.body).trim().parse().unwrap();
    assert!(size >= held_now, "{size} < {held_now}");
    f.stop().await;
}

/// An operator rewrites company.com's exported history after vendor.example witnessed it,
/// re-signs it with the company's own audit key and drops its own witness file: the export
/// verifies on its own, but reconcile with the vendor's export finds the fork.
#[test]
fn reconcile_finds_a_history_rewritten_after_it_was_witnessed() {
    let t = tempfile::tempdir().unwrap();
    let keep = t.path().join("demo");
    let bin = env!("CARGO_BIN_EXE_fedgate");
    let o = std::process::Command::new(bin)
        .args(["demo", "--keep", keep.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success());
    let co = keep.join("company.com");
    let text = std::fs::read_to_string(co.join("audit.jsonl")).unwrap();
    let mut recs: Vec<Record> = text
        .lines()
        .map(|l| Record::from_canonical(l.as_bytes()).unwrap())
        .collect();
    // Rewrite record 2, then re-chain and re-sign everything after it.
    recs[2].decision = if recs[2].decision == "allow" {
        "deny".into()
    } else {
        "allow".into()
    };
    let mut out = String::new();
    let mut tree = MerkleTree::new();
    let mut prev = String::new();
    for r in recs.iter_mut() {
        r.prev = prev.clone();
        let b = r.canonical().unwrap();
        let leaf = leaf_hash(&b);
        tree.push(leaf);
        prev = fedgate::crypto::b64url(&leaf);
        out.push_str(&String::from_utf8(b).unwrap());
        out.push('\n');
    }
    let key = fedgate::files::read_signing_key(&co.join("keys/audit.key")).unwrap();
    let n = recs.len() as u64;
    let note = Checkpoint {
        origin: "company.com/fedgate-audit".into(),
        size: n,
        root: tree.root(n).unwrap(),
    }
    .sign(&key)
    .unwrap();
    let rewritten = t.path().join("co-rewritten.jsonl");
    std::fs::write(&rewritten, out).unwrap();
    std::fs::write(t.path().join("co-rewritten.jsonl.checkpoint"), note).unwrap();
    let bundles = keep.join("auditor/bundles");
    // On its own it verifies (the operator holds the key), unwitnessed.
    let o = std::process::Command::new(bin)
        .args([
            "audit",
            "verify",
            "--json",
            "--bundles",
            bundles.to_str().unwrap(),
            rewritten.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["witness"]["unwitnessed"], n, "{v}");
    // The vendor's export carries what its witness cosigned of company.com's log.
    let o = std::process::Command::new(bin)
        .args([
            "audit",
            "reconcile",
            "--json",
            "--bundles",
            bundles.to_str().unwrap(),
            rewritten.to_str().unwrap(),
            keep.join("vendor.example/audit.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"forked"), "{v}");
    assert_eq!(o.status.code(), Some(1));
    // The honest export reconciles without a fork, and its checkpoint carries the vendor's
    // cosignature or the witness file names one.
    let o = std::process::Command::new(bin)
        .args([
            "audit",
            "reconcile",
            "--json",
            "--bundles",
            bundles.to_str().unwrap(),
            co.join("audit.jsonl").to_str().unwrap(),
            keep.join("vendor.example/audit.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let kinds: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    assert!(!kinds.contains(&"forked"), "{v}");
    // Each side's witness status: the company's log cosigned by the vendor.
    let w = v["witness"].as_array().unwrap();
    let co_w = w.iter().find(|x| x["domain"] == "company.com").unwrap();
    assert_eq!(co_w["cosigned_by"][0][0], "vendor.example", "{v}");
    let o = std::process::Command::new(bin)
        .args([
            "audit",
            "verify",
            "--json",
            "--bundles",
            bundles.to_str().unwrap(),
            co.join("audit.jsonl").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], true, "{v}");
    assert!(
        !v["witness"]["cosigned_by"].as_array().unwrap().is_empty(),
        "{v}"
    );
}
