//! Interop with a stock JOSE library (jsonwebtoken): links it mints following SPEC section 3
//! verify with fedgate, and links fedgate mints verify with it given only the bundle's JWK.

use fedgate::chain::{link_hash, LinkClaims, NoRevocations, Policy, UnverifiedChain};
use fedgate::devkit::DevDomain;
use fedgate::scope::ScopeSet;

const NOW: i64 = 1_800_000_000;

fn jwk_of(bundle_json: &str, kid: &str) -> jsonwebtoken::jwk::Jwk {
    let v: serde_json::Value = serde_json::from_str(bundle_json).unwrap();
    let k = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid)
        .unwrap()
        .clone();
    // SPIFFE's `use` values are not RFC 7517's; a third party keeps only the key members.
    let mut m = serde_json::Map::new();
    for f in ["kty", "crv", "x", "y", "kid"] {
        if let Some(x) = k.get(f) {
            m.insert(f.into(), x.clone());
        }
    }
    serde_json::from_value(serde_json::Value::Object(m)).unwrap()
}

#[test]
fn links_minted_by_jsonwebtoken_verify_here() {
    let co = DevDomain::new("company.com", NOW - 60).unwrap();
    let planning = co.agent("planning", "p1", NOW - 60).unwrap();
    let key = jsonwebtoken::EncodingKey::from_ec_der(&co.idp_key_der);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.typ = Some("delegation+jwt".into());
    header.kid = Some(co.idp_key.kid().to_string());
    let l0c = LinkClaims {
        iss: co.idp_id.to_string(),
        sub: "alice@company.com".into(),
        sub_type: "human".into(),
        dlg: None,
        scope: vec!["cloud:read".into()],
        task: "t-1".into(),
        iat: NOW,
        exp: NOW + 600,
        prev: None,
        jti: "a".into(),
        crossing: None,
        dep: None,
        agr: None,
        prn: None,
    };
    let l0 = jsonwebtoken::encode(&header, &l0c, &key).unwrap();
    let l1c = LinkClaims {
        sub: planning.id.to_string(),
        sub_type: "agent".into(),
        dlg: Some("alice@company.com".into()),
        prev: Some(link_hash(&l0)),
        jti: "b".into(),
        ..l0c.clone()
    };
    let l1 = jsonwebtoken::encode(&header, &l1c, &key).unwrap();
    let bundles = DevDomain::bundle_set(&[&co]);
    let chain = format!("{l0}~{l1}");
    let v = UnverifiedChain::parse(&chain)
        .unwrap()
        .verify(&bundles, &Policy::default(), &NoRevocations, NOW)
        .unwrap();
    assert_eq!(v.holder.agent(), Some(&planning.id));
}

#[test]
fn links_minted_here_verify_with_jsonwebtoken() {
    let co = DevDomain::new("company.com", NOW - 60).unwrap();
    let planning = co.agent("planning", "p1", NOW - 60).unwrap();
    let chain = fedgate::chain::issue(
        &co.idp_key,
        &co.idp_id,
        "alice@company.com",
        &planning.id,
        &ScopeSet::parse_list(&["cloud:read"]).unwrap(),
        "t-1",
        fedgate::time::now(),
        600,
    )
    .unwrap();
    let jwk = jwk_of(&co.bundle.to_json(), co.idp_key.kid());
    let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
    let mut val = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    val.validate_aud = false;
    val.set_required_spec_claims(&["exp", "iss"]);
    val.set_issuer(&[co.idp_id.as_str()]);
    for link in chain.split('~') {
        let d = jsonwebtoken::decode::<LinkClaims>(link, &key, &val).unwrap();
        assert_eq!(d.header.typ.as_deref(), Some("delegation+jwt"));
        assert_eq!(d.claims.task, "t-1");
    }
}
