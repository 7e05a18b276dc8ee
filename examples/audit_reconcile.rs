//! An auditor reconciling two domains' audit logs.
//!
//! Each gateway keeps an append-only, Merkle-hashed log with signed checkpoints. The auditor
//! receives both exports (`fedgate audit export`) and the two domains' bundles, checks each log
//! against its signed checkpoint (`fedgate audit verify`), matches the crossings of both
//! (`fedgate audit reconcile`) and reads the report. Then one record is altered, and the
//! report says so.
//!
//!     cargo run --example audit_reconcile

use fedgate::audit::{export, reconcile};
use fedgate::demo::{self, call};
use http::Method;

pub async fn run() -> Result<(), String> {
    let root =
        std::env::temp_dir().join(format!("fedgate-example-{}", fedgate::crypto::random_id()));
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    let mut fed = demo::start(&root).await?;
    // Some traffic: three crossings and one refusal.
    let co = &fed.company;
    let idp = fedgate::files::read_signing_key(&co.dir.join("keys/idp.key"))
        .map_err(|e| e.to_string())?;
    let scope =
        fedgate::scope::ScopeSet::parse_list(&["analytics:*"]).map_err(|e| e.to_string())?;
    let chain = fedgate::chain::issue(
        &idp,
        &co.id("/idp")?,
        "alice@company.com",
        &co.id("/agent/planning/p1")?,
        &scope,
        "q3-review",
        fedgate::time::now(),
        600,
    )
    .map_err(|e| e.to_string())?;
    let c = demo::agent_client(co, "planning/p1", co)?;
    let url = format!("https://{}/egress/analytics/run", co.internal);
    for s in ["analytics:*", "analytics:*", "analytics:*", "billing:*"] {
        let h = [
            ("Delegation-Chain", chain.as_str()),
            (
                "Fedgate-Target",
                "spiffe://vendor.example/agent/analytics/a1",
            ),
            ("Fedgate-Scope", s),
        ];
        call(&c, Method::POST, &url, &h, "{}").await?;
    }
    fed.stop().await;

    // What the auditor receives: two exports and two bundles.
    let mut set = fedgate::spiffe::BundleSet::new();
    let mut exports = Vec::new();
    for d in [&fed.company, &fed.vendor] {
        set.insert(fedgate::files::load_bundle_file(
            &d.dir.join(format!("bundles/{}.json", d.td)),
            &d.td,
        )?);
        let (records, note) = fedgate::store::log::export(&d.dir.join("data/audit"), |_, _| {})
            .map_err(|e| e.to_string())?;
        let mut jsonl = Vec::new();
        for r in &records {
            jsonl.extend_from_slice(r);
            jsonl.push(b'\n');
        }
        exports.push((jsonl, note));
    }
    let local = export::verify(&exports[0].0, &exports[0].1, &set).map_err(|e| e.to_string())?;
    let partner = export::verify(&exports[1].0, &exports[1].1, &set).map_err(|e| e.to_string())?;
    println!("company.com: {} records, vendor.example: {} records, both hash to their signed checkpoints\n", local.records.len(), partner.records.len());
    let lb = set.get_str("company.com").ok_or("bundle")?;
    let pb = set.get_str("vendor.example").ok_or("bundle")?;
    let report = reconcile::reconcile(&local, &partner, lb, pb, 30, &Default::default());
    print!("{}", report.table());

    // Someone edits vendor.example's copy: an allowed crossing now reads as denied.
    let text = String::from_utf8_lossy(&exports[1].0).replacen(
        "\"decision\":\"allow\"",
        "\"decision\":\"deny\"",
        1,
    );
    match export::verify(text.as_bytes(), &exports[1].1, &set) {
        Ok(_) => return Err("a tampered log verified".into()),
        Err(e) => println!("\nthe edited copy of vendor.example's log: {e}"),
    }
    let _ = std::fs::remove_dir_all(&root);
    if report.clean {
        Ok(())
    } else {
        Err("the honest logs did not reconcile".into())
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("audit_reconcile: {e}");
        std::process::exit(1);
    }
}
