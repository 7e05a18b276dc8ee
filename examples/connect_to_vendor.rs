//! An organization's agent reaching a vendor's agent through fedgate.
//!
//! company.com's planning agent holds a delegation chain from Alice (through company.com's
//! IdP). It exchanges the chain at its own gateway for a short, scope-bounded federation token
//! (RFC 8693, bound to its certificate) and calls vendor.example's analytics agent with it.
//! Its internal chain never leaves company.com.
//!
//!     cargo run --example connect_to_vendor
//!
//! Both gateways run in this process on loopback ports, created with `fedgate init` in a
//! temporary directory; in a deployment they are two organizations' separate gateways.

use fedgate::demo::{self, agent_client, call};
use http::Method;

pub async fn run() -> Result<(), String> {
    let dir =
        std::env::temp_dir().join(format!("fedgate-example-{}", fedgate::crypto::random_id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut fed = demo::start(&dir).await?;
    let co = &fed.company;
    let ve = &fed.vendor;

    // 1. The chain Alice's request started (normally handed to the agent by its orchestrator).
    let idp = fedgate::files::read_signing_key(&co.dir.join("keys/idp.key"))
        .map_err(|e| e.to_string())?;
    let scope = fedgate::scope::ScopeSet::parse_list(&["analytics:*", "cloud:read"])
        .map_err(|e| e.to_string())?;
    let chain = fedgate::chain::issue(
        &idp,
        &co.id("/idp")?,
        "alice@company.com",
        &co.id("/agent/planning/p1")?,
        &scope,
        "quarterly-infra-review",
        fedgate::time::now(),
        3600,
    )
    .map_err(|e| e.to_string())?;
    println!(
        "1. planning holds a chain from alice@company.com ({} links)",
        chain.split('~').count()
    );

    // 2. Token exchange at company.com's gateway, over mTLS with planning's X509-SVID.
    let me = agent_client(co, "planning/p1", co)?;
    let token = demo::exchange(
        &me,
        co.internal,
        &chain,
        "spiffe://vendor.example/agent/analytics/a1",
        "analytics:run",
    )
    .await?;
    let claims: serde_json::Value = fedgate::jose::parse_compact(&token)
        .ok()
        .and_then(|c| serde_json::from_slice(&c.payload).ok())
        .unwrap_or_default();
    println!(
        "2. federation token: scope [{}], expires in {} s, actor {}, principal {}",
        claims["scope"].as_str().unwrap_or(""),
        claims["exp"].as_i64().unwrap_or(0) - claims["iat"].as_i64().unwrap_or(0),
        claims["act"]["sub"],
        claims["sub"]
    );
    println!(
        "   bound to planning's certificate: cnf x5t#S256 = {}",
        claims["cnf"]["x5t#S256"].as_str().unwrap_or("")
    );

    // 3. Call the vendor's analytics agent directly through vendor.example's gateway.
    let to_vendor = agent_client(co, "planning/p1", ve)?;
    let auth = format!("Bearer {token}");
    let r = call(
        &to_vendor,
        Method::POST,
        &format!("https://{}/ingress/analytics/run", ve.federation),
        &[("Authorization", auth.as_str())],
        r#"{"quarter":"Q3"}"#,
    )
    .await?;
    println!(
        "3. vendor.example answered {}: {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    println!(
        "   receipt (vendor's signed audit position): {}…",
        r.headers
            .get("fedgate-receipt")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .chars()
            .take(40)
            .collect::<String>()
    );

    // 4. Or let the gateway do it all: the egress proxy verifies, mints, strips and forwards.
    let h = [
        ("Delegation-Chain", chain.as_str()),
        (
            "Fedgate-Target",
            "spiffe://vendor.example/agent/analytics/a1",
        ),
        ("Fedgate-Scope", "analytics:*"),
        ("Authorization", "Bearer internal-key"),
    ];
    let r = call(
        &me,
        Method::POST,
        &format!("https://{}/egress/analytics/run", co.internal),
        &h,
        "{}",
    )
    .await?;
    println!(
        "4. through the egress proxy: {} (the internal Authorization header was stripped)",
        r.status
    );
    let ok = r.status == 200;
    fed.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    if ok {
        Ok(())
    } else {
        Err("the egress crossing failed".into())
    }
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("connect_to_vendor: {e}");
        std::process::exit(1);
    }
}
