//! A vendor onboarding a partner: vendor.example accepts delegations from company.com.
//!
//! The steps a vendor's operator takes, with fedgate's library calls that the CLI verbs wrap:
//! create the domain (`fedgate init`), import the partner's bundle, write the agreement and
//! check it (`agreement lint`, `agreement hash`), sign it with the vendor's gateway key
//! (`agreement sign`), check the partner's signature (`agreement verify`), map target agents to
//! upstream services in gateway.toml, validate the config and serve. A partner's crossing then
//! arrives with only a crossing link as the credential.
//!
//!     cargo run --example accept_partner

use fedgate::demo::{self, call};
use http::Method;

pub async fn run() -> Result<(), String> {
    let root =
        std::env::temp_dir().join(format!("fedgate-example-{}", fedgate::crypto::random_id()));
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    // The partner's side, so there is someone to accept (company.com runs its own gateway).
    let mut fed = demo::start(&root).await?;
    // Take the vendor's gateway down, and rebuild vendor.example's onboarding step by step.
    if let Some(v) = fed.ve.take() {
        v.shutdown().await;
    }
    let ve = &fed.vendor;
    let co = &fed.company;

    // 1. The partner's bundle arrives out of band (then its bundle endpoint keeps it fresh).
    let b =
        fedgate::files::load_bundle_file(&ve.dir.join("bundles/company.com.json"), "company.com")?;
    println!(
        "1. company.com's bundle: {} CA(s), {} JWT key(s), sequence {:?}",
        b.x509.len(),
        b.jwt.len(),
        b.sequence
    );

    // 2. The agreement, as both parties drafted it: lint and hash.
    let path = ve.dir.join("agreements/company-vendor-analytics.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let a = fedgate::agreement::Agreement::parse(&text).map_err(|i| format!("{i:?}"))?;
    println!("2. agreement {} lints clean; hash {}", a.id, a.hash);
    for f in &a.flows {
        println!(
            "   flow {}: {} -> {} max [{}], {} route(s)",
            f.index,
            f.from,
            f.to,
            f.max_scope,
            f.routes.len()
        );
    }

    // 3. Sign with vendor.example's gateway key; check company.com's signature.
    let key = fedgate::files::read_signing_key(&ve.dir.join("keys/gateway.key"))
        .map_err(|e| e.to_string())?;
    let sig = fedgate::agreement::sign_agreement(&a.hash, &key).map_err(|e| e.to_string())?;
    std::fs::write(
        ve.dir
            .join("agreements/company-vendor-analytics.vendor.example.sig"),
        &sig,
    )
    .map_err(|e| e.to_string())?;
    let bundles =
        fedgate::files::load_bundle_dir(&ve.dir.join("bundles")).map_err(|p| p.join("; "))?;
    let theirs = std::fs::read_to_string(
        ve.dir
            .join("agreements/company-vendor-analytics.company.com.sig"),
    )
    .map_err(|e| e.to_string())?;
    fedgate::agreement::verify_signature(
        &theirs,
        &a.hash,
        bundles.get_str("company.com").ok_or("no bundle")?,
    )
    .map_err(|e| e.to_string())?;
    let active = fedgate::files::load_agreements(
        &ve.dir.join("agreements"),
        &bundles,
        Some(&fedgate::spiffe::TrustDomain::parse("vendor.example").map_err(|e| e.to_string())?),
    )
    .map_err(|p| p.join("; "))?;
    println!(
        "3. both signatures valid: {} agreement(s) will be active",
        active.len()
    );

    // 4. Upstream mapping: which local service serves which target agents.
    let cfg =
        fedgate::server::config::load(&ve.dir.join("gateway.toml")).map_err(|p| p.join("; "))?;
    for (pat, url) in &cfg.upstreams {
        println!("4. crossings for {pat} go to {}", url.url);
    }

    // 5. Serve, on the ports the agreement names.
    let l = fedgate::server::Listeners::bind(ve.internal, ve.federation, ve.admin)
        .map_err(|e| e.to_string())?;
    let running = fedgate::server::start(cfg, Some(l))
        .await
        .map_err(|p| p.join("; "))?;
    println!(
        "5. vendor.example's gateway serves federation on {}",
        running.federation
    );
    fed.ve = Some(running);

    // 6. company.com's planning agent crosses; the analytics service sees one credential.
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
        "onboarding-check",
        fedgate::time::now(),
        600,
    )
    .map_err(|e| e.to_string())?;
    let c = demo::agent_client(co, "planning/p1", co)?;
    let h = [
        ("Delegation-Chain", chain.as_str()),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "analytics:*"),
    ];
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/egress/analytics/hello", co.internal),
        &h,
        "{}",
    )
    .await?;
    let seen = fed
        .analytics
        .seen
        .lock()
        .map(|v| v.last().cloned())
        .ok()
        .flatten();
    let creds: Vec<String> = seen
        .map(|s| {
            s.headers
                .keys()
                .filter(|k| ["authorization", "cookie", "delegation-chain"].contains(&k.as_str()))
                .map(|k| k.to_string())
                .collect()
        })
        .unwrap_or_default();
    println!(
        "6. first crossing from company.com: HTTP {}; the analytics service received {:?}",
        r.status, creds
    );
    let ok = r.status == 200 && creds == vec!["delegation-chain".to_string()];
    fed.stop().await;
    let _ = std::fs::remove_dir_all(&root);
    if ok {
        Ok(())
    } else {
        Err("the partner's crossing did not arrive as expected".into())
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("accept_partner: {e}");
        std::process::exit(1);
    }
}
