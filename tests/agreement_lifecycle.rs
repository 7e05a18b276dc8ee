//! Agreement lifecycle with two real gateways (issue 25): a new version proposed by one
//! operator, reviewed and accepted by the other, installed on both sides and switched to at its
//! `valid_from` while traffic runs; tokens under the old version refused after the switch;
//! proposals from anyone but the partner gateway refused; rejection; termination enforced by
//! both sides within 2 s. Every step drives the real CLI against the admin listeners.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;

const ID: &str = "company-vendor-analytics";

/// `fedgate ARGS...` (blocking, off the runtime's threads): exit code, stdout, stderr.
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_fedgate"))
            .args(&args)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    })
    .await
    .unwrap()
}

/// An admin verb against `d`'s gateway, with `d`'s admin identity.
async fn admin(d: &Domain, verb: &[&str]) -> (i32, String, String) {
    let mut args: Vec<String> = vec!["agreement".into(), verb[0].into()];
    args.push("--admin-url".into());
    args.push(format!("https://{}", d.admin));
    args.push("--dir".into());
    args.push(d.dir.display().to_string());
    args.extend(verb[1..].iter().map(|s| s.to_string()));
    cli(args).await
}

/// The demo agreement as version `v`, in force from `from`, with `edit` applied.
fn version(f: &Federation, v: u64, from: i64, edit: &[(&str, &str)]) -> String {
    let mut text: String = agreement_text(f.co.federation, f.ve.federation, fedgate::time::now())
        .lines()
        .map(|l| {
            if l.starts_with("valid_from = ") {
                format!("valid_from = {}", fedgate::time::format_rfc3339(from))
            } else if l == "version = 1" {
                format!("version = {v}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    for (a, b) in edit {
        assert!(text.contains(a), "{a}");
        text = text.replacen(a, b, 1);
    }
    text
}

async fn egress(c: &TlsClient, f_internal: std::net::SocketAddr, chain: &str) -> (u16, String) {
    let h = [
        ("Delegation-Chain", chain),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "analytics:*"),
    ];
    match call(
        c,
        Method::POST,
        &format!("https://{f_internal}/egress/analytics/run"),
        &h,
        "{}",
    )
    .await
    {
        Ok(r) => (r.status.as_u16(), r.reason()),
        Err(e) => (0, e),
    }
}

/// A federation token for direct use at vendor.example, minted now.
async fn direct_token(f: &Federation, chain: &str) -> String {
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let form = fedgate::demo::exchange_form(
        chain,
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
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_string()
}

async fn use_direct(f: &Federation, token: &str) -> (u16, String) {
    let c = agent_client(&f.co, "planning/p1", &f.ve);
    let auth = format!("Bearer {token}");
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/ingress/analytics/run", f.ve.federation),
        &[("Authorization", auth.as_str())],
        "{}",
    )
    .await
    .unwrap();
    (r.status.as_u16(), r.reason())
}

fn lifecycle_steps(r: &fedgate::server::Running) -> Vec<String> {
    records(r)
        .into_iter()
        .filter(|x| x.kind == "agreement")
        .map(|x| format!("{} {}", x.mode.unwrap_or_default(), x.decision))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_agreed_and_switched_to_under_load() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-rollover",
    );
    let v1 = f.co_gw().gateway.trust.get().agreements[0].agr();
    // Version 2 tightens the TTL and the skew and drops the PII route, in force 12 s from now.
    let switch = fedgate::time::now() + 12;
    let v2_text = version(
        &f,
        2,
        switch,
        &[
            ("max_token_ttl = \"15m\"", "max_token_ttl = \"10m\""),
            ("clock_skew = \"30s\"", "clock_skew = \"4s\""),
            (
                "[[flows.routes]]\nmethod = \"GET\"\npath = \"/customers/*\"\nscope = \"pii:customers:read\"\n",
                "",
            ),
        ],
    );
    let v2 = fedgate::agreement::Agreement::parse(&v2_text)
        .unwrap()
        .agr();
    let file = f.tmp.path().join("v2.toml");
    std::fs::write(&file, &v2_text).unwrap();

    // What v2 changes, as the reviewing operator sees it.
    let v1_file = f.co.dir.join(format!("agreements/{ID}.toml"));
    let (rc, out, err) = cli(vec![
        "agreement".into(),
        "diff".into(),
        v1_file.display().to_string(),
        file.display().to_string(),
    ])
    .await;
    assert_eq!(rc, 0, "{err}");
    for want in [
        "changed   version",
        "tightened ttl        max_token_ttl: 900s → 600s",
        "tightened skew",
        "tightened route",
        "route GET /customers/* removed",
    ] {
        assert!(out.contains(want), "{want} in\n{out}");
    }

    // A token minted under v1 now, for direct use after the switch.
    let old_token = direct_token(&f, &chain).await;

    // Traffic runs from before the proposal until after the switch.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let c = agent_client(&f.co, "planning/p1", &f.co);
        let internal = f.co.internal;
        let chain = chain.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(egress(&c, internal, &chain).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };

    // company.com proposes; vendor.example lists, reviews and accepts.
    let (rc, out, err) = admin(&f.co, &["propose", file.to_str().unwrap()]).await;
    assert_eq!(rc, 0, "{out}{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["status"], "delivered");
    assert_eq!(j["agr"], v2.as_str());
    let (rc, out, err) = admin(&f.ve, &["proposals", "--json"]).await;
    assert_eq!(rc, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &list["proposals"][0];
    assert_eq!(p["agr"], v2.as_str());
    assert_eq!(p["direction"], "received");
    assert_eq!(p["status"], "received");
    assert_eq!(p["partner"], CO);
    assert!(p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c.as_str().unwrap().contains("max_token_ttl: 900s → 600s")));
    let (rc, text, _) = admin(&f.ve, &["proposals"]).await;
    assert_eq!(rc, 0);
    assert!(text.contains("v2 received received"), "{text}");
    // Not in force anywhere before the acceptance: one version held on each side.
    assert_eq!(f.ve_gw().gateway.trust.get().agreements.len(), 1);
    assert_eq!(f.co_gw().gateway.trust.get().agreements.len(), 1);

    let (rc, out, err) = admin(&f.ve, &["accept", &v2]).await;
    assert_eq!(rc, 0, "{out}{err}");
    // Both sides hold both versions, each with both signatures, in their agreements dir.
    for (d, gw) in [(&f.co, f.co_gw()), (&f.ve, f.ve_gw())] {
        let held: Vec<u64> = gw
            .gateway
            .trust
            .get()
            .agreements
            .iter()
            .map(|a| a.version)
            .collect();
        assert_eq!(held.len(), 2, "{}: {held:?}", d.td);
        let dir = d.dir.join("agreements");
        assert!(dir.join(format!("{ID}.v2.toml")).exists());
        for td in [CO, VE] {
            assert!(dir.join(format!("{ID}.v2.{td}.sig")).exists(), "{td}");
        }
        let (rc, out, _) = cli(vec![
            "agreement".into(),
            "verify".into(),
            "--bundles".into(),
            d.bundles().display().to_string(),
            dir.join(format!("{ID}.v2.toml")).display().to_string(),
        ])
        .await;
        assert_eq!(rc, 0, "{out}");
    }
    // Accepting again is refused (nothing is pending).
    let (rc, _, err) = admin(&f.ve, &["accept", &v2]).await;
    assert_eq!(rc, 1, "{err}");

    // Until two seconds past the switch.
    while fedgate::time::now() < switch + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert!(seen.len() >= 20, "only {} crossings ran", seen.len());
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} crossings failed: {failed:?}",
        failed.len(),
        seen.len()
    );
    // vendor.example took crossings under v1 before the switch and under v2 after it.
    let allowed: Vec<String> = records(f.ve_gw())
        .into_iter()
        .filter(|r| r.kind == "decision" && r.decision == "allow" && r.direction == "inbound")
        .filter_map(|r| r.agreement)
        .collect();
    assert!(allowed.contains(&v1), "no crossing under v1");
    assert!(allowed.contains(&v2), "no crossing under v2");
    assert_eq!(allowed.last().unwrap(), &v2);

    // The token minted under v1 is refused after the switch, audited at vendor.example.
    assert_eq!(
        use_direct(&f, &old_token).await,
        (403, "agreement_superseded".to_string())
    );
    assert!(records(f.ve_gw())
        .iter()
        .any(|r| r.reason.as_deref() == Some("agreement_superseded")
            && r.agreement.as_deref() == Some(v1.as_str())));
    // A fresh token is minted under v2 and works.
    let new_token = direct_token(&f, &chain).await;
    assert_eq!(use_direct(&f, &new_token).await.0, 200);

    // Each step is an audit record on both sides.
    let co_steps = lifecycle_steps(f.co_gw());
    let ve_steps = lifecycle_steps(f.ve_gw());
    assert_eq!(
        co_steps,
        [
            "proposed allow",
            "delivered allow",
            "accepted_by_partner allow"
        ],
        "{co_steps:?}"
    );
    assert_eq!(
        ve_steps,
        ["proposal_received allow", "accepted allow"],
        "{ve_steps:?}"
    );
    let rec = records(f.ve_gw())
        .into_iter()
        .find(|r| r.mode.as_deref() == Some("accepted"))
        .unwrap();
    assert_eq!(rec.agreement.as_deref(), Some(v2.as_str()));
    assert_eq!(rec.lifecycle.unwrap()["version"], 2);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_come_only_from_the_partner_gateway_and_can_be_rejected() {
    let f = Federation::start().await;
    let from = fedgate::time::now() + 3600;
    let v2_text = version(
        &f,
        2,
        from,
        &[("max_chain_depth = 5", "max_chain_depth = 4")],
    );
    let a = fedgate::agreement::Agreement::parse(&v2_text).unwrap();
    let url = format!("https://{}/v1/agreements/proposals", f.ve.federation);
    let co_key = fedgate::files::read_signing_key(&f.co.dir.join("keys/gateway.key")).unwrap();
    let sig = fedgate::agreement::sign_agreement(&a.hash, &co_key).unwrap();
    let body = serde_json::json!({"agreement": v2_text, "signature": sig}).to_string();
    let h = [("Content-Type", "application/json")];

    // A company agent (not its gateway) with a validly signed proposal: refused and audited.
    let agent = agent_client(&f.co, "planning/p1", &f.ve);
    let r = call(&agent, Method::POST, &url, &h, body.clone())
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.reason().as_str()),
        (401, "issuer_mismatch")
    );
    // The company gateway with the agent's signature instead of its own: refused.
    let agent_key = fedgate::files::read_signing_key(&f.co.agent_key("planning/p1")).unwrap();
    let bad = serde_json::json!({"agreement": v2_text, "signature": fedgate::agreement::sign_agreement(&a.hash, &agent_key).unwrap()}).to_string();
    let gwc = gateway_client(&f.co, &f.ve);
    let r = call(&gwc, Method::POST, &url, &h, bad).await.unwrap();
    assert_eq!(r.reason(), "bad_signature");
    // Garbage, and a version that does not exceed the one held: refused.
    let r = call(&gwc, Method::POST, &url, &h, "{\"agreement\": 1}")
        .await
        .unwrap();
    assert_eq!(r.reason(), "malformed");
    let v1_text = std::fs::read_to_string(f.ve.dir.join(format!("agreements/{ID}.toml"))).unwrap();
    let v1 = fedgate::agreement::Agreement::parse(&v1_text).unwrap();
    let same = serde_json::json!({"agreement": v1_text, "signature": fedgate::agreement::sign_agreement(&v1.hash, &co_key).unwrap()}).to_string();
    let r = call(&gwc, Method::POST, &url, &h, same).await.unwrap();
    assert_eq!(r.reason(), "malformed");
    // Nothing was kept; each refusal is audited with its reason.
    let (_, out, _) = admin(&f.ve, &["proposals", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["proposals"],
        serde_json::json!([])
    );
    let refused: Vec<String> = records(f.ve_gw())
        .into_iter()
        .filter(|r| r.kind == "agreement" && r.decision == "deny")
        .filter_map(|r| r.reason)
        .collect();
    assert_eq!(
        refused,
        ["issuer_mismatch", "bad_signature", "malformed", "malformed"]
    );
    // Accepting or rejecting a proposal that was never received: refused.
    let (rc, _, err) = admin(&f.ve, &["accept", &a.agr()]).await;
    assert_eq!(rc, 1);
    assert!(err.contains("no_agreement"), "{err}");

    // A real proposal, rejected by vendor.example: company.com learns it, nothing activates.
    let file = f.tmp.path().join("v2.toml");
    std::fs::write(&file, &v2_text).unwrap();
    let (rc, out, err) = admin(&f.co, &["propose", file.to_str().unwrap()]).await;
    assert_eq!(rc, 0, "{out}{err}");
    // The same file again is delivered again, not a second proposal.
    let (rc, _, _) = admin(&f.co, &["propose", file.to_str().unwrap()]).await;
    assert_eq!(rc, 0);
    let (rc, out, err) = admin(&f.ve, &["reject", &a.agr()]).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["partner_told"],
        true
    );
    let (_, out, _) = admin(&f.co, &["proposals", "--json"]).await;
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["proposals"][0]["status"], "rejected");
    assert_eq!(list["proposals"][0]["direction"], "sent");
    for gw in [f.co_gw(), f.ve_gw()] {
        assert_eq!(gw.gateway.trust.get().agreements.len(), 1);
    }
    let (rc, _, _) = admin(&f.ve, &["accept", &a.agr()]).await;
    assert_eq!(rc, 1, "a rejected proposal cannot be accepted");
    assert!(lifecycle_steps(f.co_gw()).contains(&"rejected_by_partner allow".to_string()));
    assert!(lifecycle_steps(f.ve_gw()).contains(&"rejected allow".to_string()));

    // A version whose first use is too soon for both sides to install it first: refused.
    let soon = version(&f, 3, fedgate::time::now() + 2, &[]);
    let file = f.tmp.path().join("v3.toml");
    std::fs::write(&file, &soon).unwrap();
    let (rc, _, err) = admin(&f.co, &["propose", file.to_str().unwrap()]).await;
    assert_eq!(rc, 1);
    assert!(err.contains("too soon"), "{err}");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn termination_is_enforced_by_both_sides_within_two_seconds() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-terminate",
    );
    let c = agent_client(&f.co, "planning/p1", &f.co);
    assert_eq!(egress(&c, f.co.internal, &chain).await.0, 200);
    let token = direct_token(&f, &chain).await;

    // An unknown id is refused; then company.com terminates the agreement.
    let (rc, _, err) = admin(&f.co, &["terminate", "no-such-agreement"]).await;
    assert_eq!(rc, 1);
    assert!(err.contains("no_agreement"), "{err}");
    let t0 = std::time::Instant::now();
    let (rc, out, err) = admin(&f.co, &["terminate", ID]).await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["notified_partners"],
        1
    );
    // company.com refuses at once; vendor.example once the notice arrives (within 2 s).
    assert_eq!(
        egress(&c, f.co.internal, &chain).await,
        (403, "agreement_terminated".to_string())
    );
    let mut at_vendor = (0, String::new());
    while t0.elapsed() < Duration::from_secs(2) {
        at_vendor = use_direct(&f, &token).await;
        if at_vendor.1 == "agreement_terminated" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(at_vendor, (403, "agreement_terminated".to_string()));
    assert!(t0.elapsed() < Duration::from_secs(2));
    // vendor.example's own egress under the agreement refuses too.
    let report = issue_chain(
        &f.ve,
        "bob@vendor.example",
        "analytics/a1",
        &["analytics:report-back"],
        "task-report",
    );
    let vc = agent_client(&f.ve, "analytics/a1", &f.ve);
    let h = [
        ("Delegation-Chain", report.as_str()),
        ("Fedgate-Target", "spiffe://company.com/agent/report/r1"),
        ("Fedgate-Scope", "analytics:report-back"),
    ];
    let r = call(
        &vc,
        Method::POST,
        &format!("https://{}/egress/reports/q3", f.ve.internal),
        &h,
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r.reason(), "agreement_terminated");
    // Audited on both sides: the termination, its delivery, and the refusals.
    let co = records(f.co_gw());
    assert!(co.iter().any(|r| r.kind == "revocation"
        && r.revocation
            .as_ref()
            .map(|v| v["kind"] == "agreement" && v["value"] == ID)
            == Some(true)));
    assert!(co
        .iter()
        .any(|r| r.reason.as_deref() == Some("agreement_terminated")));
    let ve = records(f.ve_gw());
    assert!(ve.iter().any(|r| r.kind == "revocation"
        && r.revocation.as_ref().map(|v| v["kind"] == "agreement") == Some(true)));
    assert!(
        ve.iter()
            .filter(|r| r.reason.as_deref() == Some("agreement_terminated"))
            .count()
            >= 2
    );
    // Termination survives a restart of vendor.example.
    let mut f = f;
    f.restart_vendor().await;
    assert_eq!(use_direct(&f, &token).await.1, "agreement_terminated");
    f.stop().await;
}
