//! Ingress with two real gateways: every receiving rule of SPEC section 6 reached by a crafted
//! token, token exchange with `cnf`-bound direct use, replay across a restart, TLS-layer
//! refusals, and the reverse crossing back to company.com.

mod common;

use common::*;
use fedgate::federation::{mint_token, Actor, FederationClaims};
use http::Method;

fn company_key(f: &Federation) -> fedgate::jose::SigningKey {
    fedgate::files::read_signing_key(&f.co.dir.join("keys/gateway.key")).unwrap()
}

fn agr(f: &Federation) -> String {
    f.co_gw().gateway.trust.get().agreements[0].agr()
}

fn base_claims(f: &Federation) -> FederationClaims {
    let now = fedgate::time::now();
    FederationClaims {
        iss: "spiffe://company.com/gateway".into(),
        aud: "spiffe://vendor.example/gateway".into(),
        sub: Some("anon:xyz".into()),
        act: Actor {
            sub: "spiffe://company.com/agent/planning/p1".into(),
            act: None,
        },
        tgt: "spiffe://vendor.example/agent/analytics/a1".into(),
        scope: "analytics:*".into(),
        txn: "task-crafted".into(),
        agr: agr(f),
        chn: "digest".into(),
        dep: 2,
        cnf: None,
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: fedgate::crypto::random_id(),
    }
}

async fn present(f: &Federation, token: &str, method: Method, path: &str) -> Reply {
    let c = gateway_client(&f.co, &f.ve);
    let auth = format!("Bearer {token}");
    call(
        &c,
        method,
        &format!("https://{}/ingress{path}", f.ve.federation),
        &[("Authorization", auth.as_str())],
        "{}",
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_receiving_rule_has_its_reason() {
    let f = Federation::start().await;
    let key = company_key(&f);
    let good = mint_token(&key, &base_claims(&f)).unwrap();
    let r = present(&f, &good, Method::POST, "/analytics/run").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.headers.get("fedgate-receipt").is_some());

    let (stranger, _) = fedgate::jose::SigningKey::generate_p256().unwrap();
    type Edit = Box<dyn Fn(&mut FederationClaims)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "wrong audience (a token for another partner)",
            Box::new(|c| c.aud = "spiffe://other.test/gateway".into()),
            "wrong_audience",
        ),
        (
            "issuer is not the partner gateway",
            Box::new(|c| c.iss = "spiffe://company.com/agent/planning/p1".into()),
            "issuer_mismatch",
        ),
        (
            "issuer of an unknown domain",
            Box::new(|c| c.iss = "spiffe://elsewhere.test/gateway".into()),
            "unknown_domain",
        ),
        (
            "expired",
            Box::new(|c| {
                c.iat -= 2000;
                c.nbf -= 2000;
                c.exp -= 1500
            }),
            "expired",
        ),
        (
            "not yet valid",
            Box::new(|c| {
                c.nbf += 3600;
                c.iat += 3600;
                c.exp += 3600
            }),
            "not_yet_valid",
        ),
        (
            "lifetime over max_token_ttl",
            Box::new(|c| c.exp += 3600),
            "expiry_extension",
        ),
        (
            "agreement hash differs",
            Box::new(|c| c.agr = format!("company-vendor-analytics@sha256:{}", "0".repeat(64))),
            "agreement_mismatch",
        ),
        (
            "unknown agreement",
            Box::new(|c| c.agr = format!("other@sha256:{}", "0".repeat(64))),
            "no_agreement",
        ),
        (
            "actor without a flow",
            Box::new(|c| c.act.sub = "spiffe://company.com/agent/inventory/i1".into()),
            "rule_denied",
        ),
        (
            "target without a flow",
            Box::new(|c| c.tgt = "spiffe://vendor.example/agent/worker/w1".into()),
            "rule_denied",
        ),
        (
            "scope beyond max_scope",
            Box::new(|c| c.scope = "analytics:* billing:read".into()),
            "scope_exceeds_agreement",
        ),
        ("too deep", Box::new(|c| c.dep = 5), "too_deep"),
    ];
    for (name, edit, reason) in cases {
        let mut c = base_claims(&f);
        edit(&mut c);
        let t = mint_token(&key, &c).unwrap();
        let r = present(&f, &t, Method::POST, "/analytics/run").await;
        assert_eq!(
            r.reason(),
            reason,
            "{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.status.is_client_error());
    }
    // Route: the method and path must match a route whose scope the token grants.
    let t = mint_token(&key, &base_claims(&f)).unwrap();
    assert_eq!(
        present(&f, &t, Method::GET, "/analytics/run")
            .await
            .reason(),
        "route_denied"
    );
    let t = mint_token(&key, &base_claims(&f)).unwrap();
    assert_eq!(
        present(&f, &t, Method::POST, "/analytics/../admin")
            .await
            .reason(),
        "route_denied"
    );
    let t = mint_token(&key, &base_claims(&f)).unwrap();
    assert_eq!(
        present(&f, &t, Method::GET, "/customers/1").await.reason(),
        "route_denied"
    );
    // Replayed.
    assert_eq!(
        present(&f, &good, Method::POST, "/analytics/run")
            .await
            .reason(),
        "replayed"
    );
    // Signature, alg, key, framing.
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = fedgate::crypto::b64url(br#"{"iss":"spiffe://company.com/gateway"}"#);
    assert_eq!(
        present(&f, &parts.join("."), Method::POST, "/analytics/run")
            .await
            .reason(),
        "bad_signature"
    );
    let none = format!(
        "{}.{}.",
        fedgate::crypto::b64url(br#"{"alg":"none","typ":"federation+jwt"}"#),
        good.split('.').nth(1).unwrap()
    );
    assert_eq!(
        present(&f, &none, Method::POST, "/analytics/run")
            .await
            .reason(),
        "bad_alg"
    );
    let unknown = mint_token(&stranger, &base_claims(&f)).unwrap();
    assert_eq!(
        present(&f, &unknown, Method::POST, "/analytics/run")
            .await
            .reason(),
        "unknown_key"
    );
    assert_eq!(
        present(&f, "not.a-token", Method::POST, "/analytics/run")
            .await
            .reason(),
        "malformed"
    );
    let link = fedgate::jose::sign_compact(&key, "JWT", true, None, &base_claims(&f)).unwrap();
    assert_eq!(
        present(&f, &link, Method::POST, "/analytics/run")
            .await
            .reason(),
        "malformed"
    );
    // Revoked (as a company.com notice would file it).
    let t = mint_token(&key, &base_claims(&f)).unwrap();
    f.ve_gw()
        .gateway
        .state
        .revoke(&fedgate::store::Revocation {
            domain: CO.into(),
            kind: "agent".into(),
            value: "spiffe://company.com/agent/planning/p1".into(),
            until: 0,
            at: 0,
            notice_iat: None,
        })
        .await
        .unwrap();
    assert_eq!(
        present(&f, &t, Method::POST, "/analytics/run")
            .await
            .reason(),
        "revoked"
    );
    // Only the first, valid crossing reached the upstream.
    assert_eq!(f.ve_up.seen.lock().unwrap().len(), 1);
    // A token without cnf presented by an agent rather than the gateway.
    let t = mint_token(&key, &base_claims(&f)).unwrap();
    let c = agent_client(&f.co, "planning/p1", &f.ve);
    let auth = format!("Bearer {t}");
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/ingress/analytics/run", f.ve.federation),
        &[("Authorization", auth.as_str())],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.reason(), "issuer_mismatch");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_exchange_then_direct_use_with_cnf_and_replay_across_restart() {
    let mut f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
        "task-direct",
    );
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let form = fedgate::demo::exchange_form(
        &chain,
        "spiffe://vendor.example/agent/analytics/a1",
        "analytics:run analytics:report-back",
    );
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/v1/token", f.co.internal),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.clone(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let j = r.json();
    assert_eq!(
        j["issued_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(j["token_type"], "N_A");
    assert_eq!(j["scope"], "analytics:report-back analytics:run");
    assert!(j["expires_in"].as_i64().unwrap() <= 900);
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    let token = j["access_token"].as_str().unwrap().to_string();

    // The token verifies with a stock JOSE library given only company.com's bundle JWKS.
    let bundle: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(f.co.bundles().join("company.com.json")).unwrap(),
    )
    .unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("federation+jwt"));
    let jwk = bundle["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header.kid.clone().unwrap().as_str())
        .unwrap();
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(serde_json::json!({"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"], "kid": jwk["kid"]})).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["spiffe://vendor.example/gateway"]);
    v.set_issuer(&["spiffe://company.com/gateway"]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "nbf"]);
    v.leeway = 0;
    let d = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap(),
        &v,
    )
    .unwrap();
    assert_eq!(
        d.claims["act"]["sub"],
        "spiffe://company.com/agent/planning/p1"
    );
    assert!(d.claims["cnf"]["x5t#S256"].as_str().unwrap().len() == 43);

    let url = format!("https://{}/ingress/analytics/run", f.ve.federation);
    let auth = format!("Bearer {token}");
    let h = [("Authorization", auth.as_str())];
    // Another company agent's certificate: refused, and the token is not used up.
    let other = agent_client(&f.co, "inventory/i1", &f.ve);
    assert_eq!(
        call(&other, Method::POST, &url, &h, "")
            .await
            .unwrap()
            .reason(),
        "issuer_mismatch"
    );
    // The company gateway itself cannot use a cnf-bound token either.
    let gwc = gateway_client(&f.co, &f.ve);
    assert_eq!(
        call(&gwc, Method::POST, &url, &h, "")
            .await
            .unwrap()
            .reason(),
        "issuer_mismatch"
    );
    // The agent it was issued to can.
    let direct = agent_client(&f.co, "planning/p1", &f.ve);
    let r = call(&direct, Method::POST, &url, &h, "{}").await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = f.ve_up.seen.lock().unwrap().clone();
    let link = seen[0]
        .headers
        .get("delegation-chain")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let claims: fedgate::chain::LinkClaims =
        serde_json::from_slice(&fedgate::jose::parse_compact(&link).unwrap().payload).unwrap();
    assert_eq!(
        claims.scope,
        vec![
            "analytics:report-back".to_string(),
            "analytics:run".to_string()
        ],
        "granted ∩ route scope analytics:*"
    );
    assert_eq!(claims.dep, Some(2));
    // Once only — also after the vendor gateway restarts.
    assert_eq!(
        call(&direct, Method::POST, &url, &h, "")
            .await
            .unwrap()
            .reason(),
        "replayed"
    );
    f.restart_vendor().await;
    let direct = agent_client(&f.co, "planning/p1", &f.ve);
    assert_eq!(
        call(&direct, Method::POST, &url, &h, "")
            .await
            .unwrap()
            .reason(),
        "replayed"
    );

    // Token-exchange errors are RFC 6749 JSON with the reason.
    let bad = form.replace("token-exchange", "password");
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/v1/token", f.co.internal),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        bad,
    )
    .await
    .unwrap();
    assert_eq!(
        (
            r.status.as_u16(),
            r.json()["error"].as_str(),
            r.reason().as_str()
        ),
        (400, Some("invalid_request"), "malformed")
    );
    // ...and audited like every denial.
    assert!(records(f.co_gw())
        .iter()
        .any(|r| r.mode.as_deref() == Some("token_exchange")
            && r.reason.as_deref() == Some("malformed")));
    let wrong = form.replace("analytics%2Fa1", "worker%2Fw1");
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/v1/token", f.co.internal),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        wrong,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.json()["error"].as_str(), r.reason().as_str()),
        (Some("invalid_target"), "rule_denied")
    );
    let inv = agent_client(&f.co, "inventory/i1", &f.co);
    let r = call(
        &inv,
        Method::POST,
        &format!("https://{}/v1/token", f.co.internal),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status.as_u16(), r.reason().as_str()),
        (401, "not_holder")
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_layer_refuses_missing_foreign_and_expired_certificates() {
    let f = Federation::start().await;
    let url = format!("https://{}/egress/x", f.co.internal);
    // No client certificate at the internal listener.
    let anon = anonymous_client(f.co.gateway_id(), &f.co);
    assert!(call(&anon, Method::GET, &url, &[], "").await.is_err());
    // A vendor agent's certificate at company's internal listener.
    let foreign = client(
        &f.ve.agent_pem("analytics/a1"),
        &f.ve.agent_key("analytics/a1"),
        f.co.gateway_id(),
        &f.co,
    );
    assert!(call(&foreign, Method::GET, &url, &[], "").await.is_err());
    // An expired company certificate.
    let ca = fedgate::spiffe::pki::Ca::load(
        &std::fs::read_to_string(f.co.dir.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(f.co.dir.join("keys/ca.key")).unwrap(),
    )
    .unwrap();
    let now = fedgate::time::now();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let old = ca
        .issue_svid_with_key(
            &f.co.id("/agent/planning/p1"),
            key,
            now - 7200,
            now - 3600,
            &[],
            &[],
            None,
        )
        .unwrap();
    let dir = f.tmp.path();
    std::fs::write(dir.join("old.pem"), &old.cert_pem).unwrap();
    std::fs::write(dir.join("old.key"), old.key_pem.as_bytes()).unwrap();
    let expired = client(
        &dir.join("old.pem"),
        &dir.join("old.key"),
        f.co.gateway_id(),
        &f.co,
    );
    assert!(call(&expired, Method::GET, &url, &[], "").await.is_err());
    // The bundle endpoint needs no certificate; ingress does.
    let anon_ve = anonymous_client(f.ve.gateway_id(), &f.co);
    let r = call(
        &anon_ve,
        Method::GET,
        &format!("https://{}/bundle", f.ve.federation),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("content-type").unwrap(), "application/json");
    let r = call(
        &anon_ve,
        Method::POST,
        &format!("https://{}/ingress/analytics/run", f.ve.federation),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(r.reason(), "bad_svid");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_reports_back_across_the_reverse_flow() {
    let f = Federation::start().await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["analytics:*"],
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
    let r = call(
        &c,
        Method::POST,
        &format!("https://{}/egress/analytics/run", f.co.internal),
        &h,
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let link = f.ve_up.seen.lock().unwrap()[0]
        .headers
        .get("delegation-chain")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // Analytics presents its crossing-rooted chain to its own gateway's egress.
    let a = agent_client(&f.ve, "analytics/a1", &f.ve);
    let h = [
        ("Delegation-Chain", link.as_str()),
        ("Fedgate-Target", "spiffe://company.com/agent/report/r1"),
        ("Fedgate-Scope", "analytics:report-back"),
    ];
    let r = call(
        &a,
        Method::POST,
        &format!("https://{}/egress/reports/q3", f.ve.internal),
        &h,
        "{\"result\":42}",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let seen = f.co_up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/reports/q3");
    let back = seen[0]
        .headers
        .get("delegation-chain")
        .unwrap()
        .to_str()
        .unwrap();
    let cl: fedgate::chain::LinkClaims =
        serde_json::from_slice(&fedgate::jose::parse_compact(back).unwrap().payload).unwrap();
    assert_eq!(cl.scope, vec!["analytics:report-back"]);
    assert_eq!(
        cl.task, "task-12345",
        "the task id follows the work across both crossings"
    );
    assert_eq!(cl.dep, Some(3));
    assert_eq!(
        cl.dlg.as_deref(),
        Some("spiffe://vendor.example/agent/analytics/a1")
    );
    f.stop().await;
}
