//! The shared audit log end to end: two gateways run the seed story plus attacks, both exports
//! verify and reconcile clean, and each kind of tampering is detected with its kind. Also the
//! admin audit endpoints (checkpoint, records, inclusion and consistency proofs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use fedgate::audit::{merkle, Checkpoint, Record};
use http::Method;

fn fedgate_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fedgate"))
        .args(args)
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs crossings both ways, a replay, and denials on both sides.
async fn story(f: &Federation) {
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*", "cloud:read"],
        "task-12345",
    );
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let h = [
        ("Delegation-Chain", chain.as_str()),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "analytics:*"),
    ];
    let url = format!("https://{}/egress/analytics/run", f.co.internal);
    for _ in 0..3 {
        assert_eq!(
            call(&c, Method::POST, &url, &h, "{}").await.unwrap().status,
            200
        );
    }
    // Denied at egress (never reaches vendor).
    let bad = [
        ("Delegation-Chain", chain.as_str()),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "billing:*"),
    ];
    assert_eq!(
        call(&c, Method::POST, &url, &bad, "")
            .await
            .unwrap()
            .reason(),
        "scope_escalation"
    );
    // Token exchange, direct use, replay refused.
    let form = fedgate::demo::exchange_form(
        &chain,
        "spiffe://vendor.example/agent/analytics/a1",
        "analytics:run",
    );
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/v1/token", f.co.internal),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    )
    .await
    .unwrap();
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let direct = agent_client(&f.co, "planning/p1", &f.ve);
    let auth = format!("Bearer {token}");
    let iu = format!("https://{}/ingress/analytics/run", f.ve.federation);
    assert_eq!(
        call(
            &direct,
            Method::POST,
            &iu,
            &[("Authorization", auth.as_str())],
            ""
        )
        .await
        .unwrap()
        .status,
        200
    );
    assert_eq!(
        call(
            &direct,
            Method::POST,
            &iu,
            &[("Authorization", auth.as_str())],
            ""
        )
        .await
        .unwrap()
        .reason(),
        "replayed"
    );
    // A forged token at ingress (not authentic: not expected in company's log).
    assert_eq!(
        call(
            &direct,
            Method::POST,
            &iu,
            &[("Authorization", "Bearer a.b.c")],
            ""
        )
        .await
        .unwrap()
        .reason(),
        "malformed"
    );
    // Reverse crossing.
    let link = f.ve_up.seen.lock().unwrap()[0]
        .headers
        .get("delegation-chain")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let a = agent_client(&f.ve, "analytics/a1", &f.ve);
    let h = [
        ("Delegation-Chain", link.as_str()),
        ("Fedgate-Target", "spiffe://company.com/agent/report/r1"),
        ("Fedgate-Scope", "analytics:report-back"),
    ];
    assert_eq!(
        call(
            &a,
            Method::POST,
            &format!("https://{}/egress/reports/q3", f.ve.internal),
            &h,
            "{}"
        )
        .await
        .unwrap()
        .status,
        200
    );
}

fn export(d: &Domain, out: &Path) {
    let o = fedgate_cli(&[
        "audit",
        "export",
        "--data-dir",
        s(&d.dir.join("data")),
        "--out",
        s(out),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn checkpoint_of(p: &Path) -> PathBuf {
    PathBuf::from(format!("{}.checkpoint", p.display()))
}

/// Rewrites an export as a dishonest gateway operator holding the audit key could: edit the
/// records, re-chain them and sign a new checkpoint.
fn forge(src: &Path, dst: &Path, audit_key: &Path, edit: impl FnOnce(&mut Vec<Record>)) {
    let data = std::fs::read(src).unwrap();
    let mut recs: Vec<Record> = fedgate::audit::export::lines(&data)
        .iter()
        .map(|l| Record::from_canonical(l).unwrap())
        .collect();
    edit(&mut recs);
    let mut out = Vec::new();
    let mut leaves = Vec::new();
    for (i, r) in recs.iter_mut().enumerate() {
        r.seq = i as u64;
        r.prev = leaves
            .last()
            .map(|l: &merkle::Hash| fedgate::crypto::b64url(l))
            .unwrap_or_default();
        let b = r.canonical().unwrap();
        leaves.push(merkle::leaf_hash(&b));
        out.extend_from_slice(&b);
        out.push(b'\n');
    }
    let origin = fedgate::audit::origin_of(&recs[0].domain);
    let key = fedgate::files::read_signing_key(audit_key).unwrap();
    let note = Checkpoint {
        origin,
        size: leaves.len() as u64,
        root: merkle::root_of(&leaves),
    }
    .sign(&key)
    .unwrap();
    std::fs::write(dst, out).unwrap();
    std::fs::write(checkpoint_of(dst), note).unwrap();
}

fn reconcile(
    bundles: &Path,
    local: &Path,
    partner: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value) {
    let mut args = vec![
        "audit",
        "reconcile",
        "--bundles",
        s(bundles),
        s(local),
        s(partner),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = fedgate_cli(&args);
    (
        o.status.code().unwrap(),
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr))),
    )
}

fn kinds(v: &serde_json::Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .filter(|k| {
            k != "matched" && k != "pending" && k != "refused" && k != "failed" && k != "unanswered"
        })
        .collect()
}

fn copy_export(src: &Path, dst: &Path) {
    std::fs::copy(src, dst).unwrap();
    std::fs::copy(checkpoint_of(src), checkpoint_of(dst)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_logs_reconcile_clean_and_every_tampering_is_detected() {
    let mut f = Federation::start().await;
    story(&f).await;
    // Stop both: each writes a final checkpoint.
    if let Some(r) = f.co_gw.take() {
        r.shutdown().await;
    }
    if let Some(r) = f.ve_gw.take() {
        r.shutdown().await;
    }
    let t = f.tmp.path().join("auditor");
    std::fs::create_dir_all(t.join("bundles")).unwrap();
    std::fs::copy(
        f.co.bundles().join("company.com.json"),
        t.join("bundles/company.com.json"),
    )
    .unwrap();
    std::fs::copy(
        f.ve.bundles().join("vendor.example.json"),
        t.join("bundles/vendor.example.json"),
    )
    .unwrap();
    let b = t.join("bundles");
    let co = t.join("company.jsonl");
    let ve = t.join("vendor.jsonl");
    export(&f.co, &co);
    export(&f.ve, &ve);
    for log in [&co, &ve] {
        let o = fedgate_cli(&["audit", "verify", "--bundles", s(&b), s(log)]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let (code, v) = reconcile(&b, &co, &ve, &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["clean"], true);
    assert_eq!(
        v["summary"]["matched"], 5,
        "3 egress + 1 direct + 1 reverse: {v:#}"
    );
    // The people's table too.
    let o = fedgate_cli(&["audit", "reconcile", "--bundles", s(&b), s(&co), s(&ve)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("result: clean"));

    let ve_key = f.ve.dir.join("keys/audit.key");
    let co_key = f.co.dir.join("keys/audit.key");
    let ve_lines = |p: &Path| -> Vec<Vec<u8>> {
        fedgate::audit::export::lines(&std::fs::read(p).unwrap())
            .iter()
            .map(|l| l.to_vec())
            .collect()
    };
    let write_lines = |p: &Path, ls: &[Vec<u8>]| {
        let mut d = Vec::new();
        for l in ls {
            d.extend_from_slice(l);
            d.push(b'\n');
        }
        std::fs::write(p, d).unwrap();
    };

    // 1. A record deleted (without re-signing): tampered, naming the record.
    let x = t.join("deleted.jsonl");
    copy_export(&ve, &x);
    let mut ls = ve_lines(&x);
    ls.remove(2);
    write_lines(&x, &ls);
    let o = fedgate_cli(&["audit", "verify", "--bundles", s(&b), s(&x), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let vj: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vj["first_bad_record"], 2);
    assert_eq!(kinds(&reconcile(&b, &co, &x, &[]).1), vec!["tampered"]);

    // 2. A record edited (kept canonical): tampered, naming it.
    let x = t.join("edited.jsonl");
    copy_export(&ve, &x);
    let mut ls = ve_lines(&x);
    let i = ls
        .iter()
        .position(|l| String::from_utf8_lossy(l).contains("\"decision\":\"allow\""))
        .unwrap();
    ls[i] = String::from_utf8(ls[i].clone())
        .unwrap()
        .replace("\"decision\":\"allow\"", "\"decision\":\"deny\"")
        .into_bytes();
    write_lines(&x, &ls);
    let o = fedgate_cli(&["audit", "verify", "--bundles", s(&b), s(&x), "--json"]);
    let vj: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vj["first_bad_record"], i as u64);
    assert_eq!(kinds(&reconcile(&b, &co, &x, &[]).1), vec!["tampered"]);

    // 3. Two records swapped.
    let x = t.join("swapped.jsonl");
    copy_export(&co, &x);
    let mut ls = ve_lines(&x);
    ls.swap(1, 3);
    write_lines(&x, &ls);
    let o = fedgate_cli(&["audit", "verify", "--bundles", s(&b), s(&x), "--json"]);
    let vj: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(vj["first_bad_record"], 1);
    assert_eq!(kinds(&reconcile(&b, &x, &ve, &[]).1), vec!["tampered"]);

    // 4. A forged receipt, in a log re-signed by its own (dishonest) operator.
    let x = t.join("forged-receipt.jsonl");
    forge(&co, &x, &co_key, |recs| {
        let o = recs
            .iter_mut()
            .find(|r| r.kind == "outcome" && r.receipt.is_some())
            .unwrap();
        let (k, _) = fedgate::jose::SigningKey::generate_p256().unwrap();
        let fake = fedgate::federation::receipt::ReceiptClaims {
            crossing: o.crossing.clone(),
            seq: 0,
            leaf: "AAAA".into(),
            iat: 0,
            replica: None,
        };
        o.receipt = Some(fedgate::federation::receipt::mint_receipt(&k, &fake).unwrap());
    });
    // The forged receipt is invalid; rewriting the log after it also moved every later leaf,
    // so the vendor's receipts for company's later records no longer match either; and if the
    // vendor's witness had cosigned the original history by the export, the rewrite is a fork.
    let k = kinds(&reconcile(&b, &x, &ve, &[]).1);
    assert!(k.contains(&"receipt_invalid".to_string()), "{k:?}");
    assert!(
        k.iter()
            .all(|x| x == "receipt_invalid" || x == "receipt_mismatch" || x == "forked"),
        "{k:?}"
    );

    // 5. A partner record missing (the partner dropped it and re-signed its log).
    let x = t.join("partner-missing.jsonl");
    let mut dropped = String::new();
    forge(&ve, &x, &ve_key, |recs| {
        let i = recs
            .iter()
            .position(|r| {
                r.kind == "decision"
                    && r.direction == "inbound"
                    && r.is_allow()
                    && r.mode.as_deref() == Some("ingress")
            })
            .unwrap();
        dropped = recs[i].crossing.clone();
        recs.remove(i);
    });
    let (code, v) = reconcile(&b, &co, &x, &[]);
    assert_eq!(code, 1);
    let k = kinds(&v);
    assert!(
        k.contains(&"missing_in_partner".to_string())
            || k.contains(&"missing_in_local".to_string()),
        "{k:?}"
    );
    let f_missing = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["crossing"] == dropped.as_str())
        .unwrap();
    assert!(
        ["missing_in_partner", "missing_in_local"].contains(&f_missing["kind"].as_str().unwrap())
    );
    // Receipts the company holds now point at records that moved: receipt_mismatch.
    assert!(k.contains(&"receipt_mismatch".to_string()), "{k:?}");

    // 7. The partner claims it denied a crossing it signed a receipt for.
    let x = t.join("contradicted.jsonl");
    let mut flipped = String::new();
    forge(&ve, &x, &ve_key, |recs| {
        let r = recs
            .iter_mut()
            .find(|r| {
                r.kind == "decision"
                    && r.direction == "inbound"
                    && r.is_allow()
                    && r.partner.as_deref() == Some("company.com")
                    && r.source.as_deref() == Some("spiffe://company.com/agent/planning/p1")
            })
            .unwrap();
        r.decision = "deny".into();
        r.reason = Some("rule_denied".into());
        flipped = r.crossing.clone();
    });
    let (_, v) = reconcile(&b, &co, &x, &[]);
    let fnd = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["crossing"] == flipped.as_str())
        .unwrap();
    assert_eq!(fnd["kind"], "field_mismatch", "{fnd}");
    assert_eq!(fnd["fields"], serde_json::json!(["decision"]));

    // 6. A checkpoint from a forked log: the partner rewrote an early record and re-signed;
    // the auditor's earlier checkpoint proves the history changed.
    let x = t.join("forked.jsonl");
    forge(&ve, &x, &ve_key, |recs| {
        recs[0].time = "2000-01-01T00:00:00.000Z".into();
    });
    let o = fedgate_cli(&["audit", "verify", "--bundles", s(&b), s(&x)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "a re-signed fork verifies on its own"
    );
    let (code, v) = reconcile(&b, &co, &x, &["--previous-partner", s(&checkpoint_of(&ve))]);
    assert_eq!(code, 1);
    assert!(kinds(&v).contains(&"not_append_only".to_string()), "{v:#}");
    // The honest log extends the earlier checkpoint.
    let (code, _) = reconcile(
        &b,
        &co,
        &ve,
        &[
            "--previous-partner",
            s(&checkpoint_of(&ve)),
            "--previous-local",
            s(&checkpoint_of(&co)),
        ],
    );
    assert_eq!(code, 0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_audit_endpoints_serve_proofs() {
    let f = Federation::start().await;
    story(&f).await;
    let admin = admin_client(&f.co);
    let base = format!("https://{}", f.co.admin);
    let r = call(
        &admin,
        Method::GET,
        &format!("{base}/v1/audit/checkpoint"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let note = String::from_utf8(r.body.to_vec()).unwrap();
    let bundles = fedgate::files::load_bundle_dir(&f.co.bundles()).unwrap();
    let cp = fedgate::audit::checkpoint::verify_with_bundle(&note, bundles.get(&td(CO)).unwrap())
        .unwrap();
    assert!(cp.size >= 6);
    let r = call(
        &admin,
        Method::GET,
        &format!("{base}/v1/audit/records?from=1&limit=2"),
        &[],
        "",
    )
    .await
    .unwrap();
    let lines = fedgate::audit::export::lines(&r.body);
    assert_eq!(lines.len(), 2);
    let rec1 = Record::from_canonical(lines[0]).unwrap();
    assert_eq!(rec1.seq, 1);
    let r = call(
        &admin,
        Method::GET,
        &format!("{base}/v1/audit/proof/1"),
        &[],
        "",
    )
    .await
    .unwrap();
    let p = r.json();
    let size = p["tree_size"].as_u64().unwrap();
    let proof: Vec<merkle::Hash> = p["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            fedgate::crypto::b64std_decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    let cp2 = fedgate::audit::checkpoint::verify_with_bundle(
        p["checkpoint"].as_str().unwrap(),
        bundles.get(&td(CO)).unwrap(),
    )
    .unwrap();
    assert_eq!(cp2.size, size);
    assert!(merkle::verify_inclusion(
        &merkle::leaf_hash(lines[0]),
        1,
        size,
        &proof,
        &cp2.root
    ));
    let r = call(
        &admin,
        Method::GET,
        &format!("{base}/v1/audit/consistency?first=2&second={size}"),
        &[],
        "",
    )
    .await
    .unwrap();
    let c = r.json();
    let proof: Vec<merkle::Hash> = c["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            fedgate::crypto::b64std_decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    let r1: merkle::Hash = fedgate::crypto::b64std_decode(c["first_root"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    assert!(merkle::verify_consistency(2, size, &proof, &r1, &cp2.root));
    // The records of one crossing, by id.
    let c = rec1.crossing.clone();
    let r = call(
        &admin,
        Method::GET,
        &format!("{base}/v1/audit/crossing/{c}"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(fedgate::audit::export::lines(&r.body)
        .iter()
        .all(|l| Record::from_canonical(l).unwrap().crossing == c));
    assert_eq!(
        call(
            &admin,
            Method::GET,
            &format!("{base}/v1/audit/crossing/nope"),
            &[],
            ""
        )
        .await
        .unwrap()
        .status,
        404
    );
    let r = call(
        &admin,
        Method::GET,
        &format!("{base}/v1/audit/proof/999999"),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
    // Metrics, health, graph.
    let m = call(&admin, Method::GET, &format!("{base}/metrics"), &[], "")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("fedgate_crossings_total{direction=\"outbound\",decision=\"allow\"} 4"),
        "{text}"
    );
    assert_eq!(
        call(&admin, Method::GET, &format!("{base}/readyz"), &[], "")
            .await
            .unwrap()
            .status,
        200
    );
    let g = call(&admin, Method::GET, &format!("{base}/v1/graph"), &[], "")
        .await
        .unwrap()
        .json();
    assert!(g["edges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["from"] == "spiffe://company.com/agent/planning/p1"
            && e["allowed"].as_u64().unwrap() >= 3));
    // Not an admin: refused.
    let agent = client(
        &f.co.agent_pem("planning/p1"),
        &f.co.agent_key("planning/p1"),
        f.co.gateway_id(),
        &f.co,
    );
    assert_eq!(
        call(
            &agent,
            Method::GET,
            &format!("{base}/v1/audit/checkpoint"),
            &[],
            ""
        )
        .await
        .unwrap()
        .status,
        403
    );
    f.stop().await;
}
