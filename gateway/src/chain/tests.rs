//! Chain tests: valid chains of each shape, one failure per rule, and hostile inputs.

use super::*;
use crate::devkit::{DevAgent, DevDomain};
use crate::jose::SigningKey;
use crate::reason::Reason;
use crate::scope::ScopeSet;
use crate::spiffe::{BundleSet, SpiffeId};

const NOW: i64 = 1_800_000_000;

struct Fx {
    co: DevDomain,
    vendor: DevDomain,
    planning: DevAgent,
    inventory: DevAgent,
    cost: DevAgent,
    bundles: BundleSet,
}

fn fx() -> Fx {
    let co = DevDomain::new("company.com", NOW - 60).unwrap();
    let vendor = DevDomain::new("vendor.example", NOW - 60).unwrap();
    let planning = co.agent("planning", "p1", NOW - 60).unwrap();
    let inventory = co.agent("inventory", "i1", NOW - 60).unwrap();
    let cost = co.agent("cost", "c1", NOW - 60).unwrap();
    let bundles = DevDomain::bundle_set(&[&co, &vendor]);
    Fx {
        co,
        vendor,
        planning,
        inventory,
        cost,
        bundles,
    }
}

fn scopes(s: &[&str]) -> ScopeSet {
    ScopeSet::parse_list(s).unwrap()
}

fn verify(fx: &Fx, chain: &str) -> Result<VerifiedChain, ChainError> {
    verify_at(fx, chain, NOW)
}

fn verify_at(fx: &Fx, chain: &str, now: i64) -> Result<VerifiedChain, ChainError> {
    UnverifiedChain::parse(chain)?.verify(&fx.bundles, &Policy::default(), &NoRevocations, now)
}

fn reason(r: Result<VerifiedChain, ChainError>) -> (Reason, Option<usize>) {
    let e = r.expect_err("chain should be invalid");
    (e.reason(), e.link)
}

/// alice → planning (IdP-signed) → inventory (planning's SVID): the background's example.
fn seed_chain(fx: &Fx) -> String {
    let c = issue(
        &fx.co.idp_key,
        &fx.co.idp_id,
        "alice@company.com",
        &fx.planning.id,
        &scopes(&["cloud:read", "reports:write"]),
        "task-12345",
        NOW,
        7200,
    )
    .unwrap();
    extend(
        &c,
        &fx.planning.key,
        &fx.planning.certs,
        &fx.planning.id,
        &fx.inventory.id,
        &scopes(&["cloud:read"]),
        NOW + 5,
        3600,
    )
    .unwrap()
}

fn claims_of(link: &str) -> LinkClaims {
    let c = crate::jose::parse_compact(link).unwrap();
    serde_json::from_slice(&c.payload).unwrap()
}

/// Re-signs the last link of `chain` after `edit` changes its claims.
fn resign_last(
    chain: &str,
    key: &SigningKey,
    certs: Option<&[Vec<u8>]>,
    edit: impl FnOnce(&mut LinkClaims),
) -> String {
    let mut links: Vec<&str> = chain.split('~').collect();
    let last = links.pop().unwrap();
    let mut cl = claims_of(last);
    edit(&mut cl);
    let signer = match certs {
        Some(c) => LinkSigner::X5c(key, c),
        None => LinkSigner::Kid(key),
    };
    let l = mint_link(signer, &cl).unwrap();
    let mut out = links.join("~");
    if !out.is_empty() {
        out.push('~');
    }
    out.push_str(&l);
    out
}

#[test]
fn seed_example_verifies() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let v = verify(&fx, &chain).unwrap();
    assert_eq!(v.holder.agent(), Some(&fx.inventory.id));
    assert_eq!(v.scope, scopes(&["cloud:read"]));
    assert_eq!(v.task, "task-12345");
    assert_eq!(v.depth, 3);
    assert_eq!(v.root_principal(), "alice@company.com");
    assert_eq!(v.expires, NOW + 3605);
    assert_eq!(v.links[0].signer, SignerKind::Idp);
    assert_eq!(v.links[2].signer, SignerKind::Agent);
    assert_eq!(
        v.agents(),
        vec![fx.planning.id.as_str(), fx.inventory.id.as_str()]
    );
    assert_eq!(v.digest, chain_digest(&chain));
}

#[test]
fn depth_one_and_five() {
    let fx = fx();
    let c = issue(
        &fx.co.idp_key,
        &fx.co.idp_id,
        "alice@company.com",
        &fx.planning.id,
        &scopes(&["a:*"]),
        "t",
        NOW,
        600,
    )
    .unwrap();
    let l0 = c.split('~').next().unwrap();
    // A lone human grant verifies; its holder is the human, who cannot present it.
    let v = verify(&fx, l0).unwrap();
    assert_eq!(v.holder, Holder::Human("alice@company.com".into()));
    assert_eq!(v.depth, 1);
    let c3 = extend(
        &c,
        &fx.planning.key,
        &fx.planning.certs,
        &fx.planning.id,
        &fx.inventory.id,
        &scopes(&["a:b:*"]),
        NOW,
        600,
    )
    .unwrap();
    let c4 = extend(
        &c3,
        &fx.inventory.key,
        &fx.inventory.certs,
        &fx.inventory.id,
        &fx.cost.id,
        &scopes(&["a:b:c"]),
        NOW,
        600,
    )
    .unwrap();
    let c5 = extend(
        &c4,
        &fx.cost.key,
        &fx.cost.certs,
        &fx.cost.id,
        &fx.planning.id,
        &scopes(&["a:b:c"]),
        NOW,
        600,
    )
    .unwrap();
    let v = verify(&fx, &c5).unwrap();
    assert_eq!(v.depth, 5);
    assert_eq!(v.holder.agent(), Some(&fx.planning.id));
}

#[test]
fn rule1_parse_alg_signature_keys() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let links: Vec<&str> = chain.split('~').collect();
    // Tampered payload of link 1.
    let mut parts: Vec<String> = links[1].split('.').map(String::from).collect();
    let mut cl = claims_of(links[1]);
    cl.scope = vec!["cloud:*".into(), "reports:write".into()];
    parts[1] = crate::crypto::b64url(&serde_json::to_vec(&cl).unwrap());
    let forged = [links[0].to_string(), parts.join("."), links[2].to_string()].join("~");
    assert_eq!(
        reason(verify(&fx, &forged)),
        (Reason::BadSignature, Some(1))
    );
    // alg none / HS256.
    for alg in ["none", "HS256", "RS256"] {
        let h = crate::crypto::b64url(
            format!("{{\"alg\":\"{alg}\",\"typ\":\"delegation+jwt\",\"kid\":\"x\"}}").as_bytes(),
        );
        let p: Vec<&str> = links[1].split('.').collect();
        let bad = [
            links[0].to_string(),
            format!("{h}.{}.{}", p[1], p[2]),
            links[2].to_string(),
        ]
        .join("~");
        assert_eq!(
            reason(verify(&fx, &bad)),
            (Reason::BadAlg, Some(1)),
            "{alg}"
        );
    }
    // Unknown kid.
    let (stranger, _) = SigningKey::generate_p256().unwrap();
    let bad = resign_last(&links[..2].join("~"), &stranger, None, |_| {});
    assert_eq!(reason(verify(&fx, &bad)), (Reason::UnknownKey, Some(1)));
    // Wrong typ.
    let mut cl = claims_of(links[0]);
    cl.jti = "x".into();
    let l0 = crate::jose::sign_compact(&fx.co.idp_key, "JWT", true, None, &cl).unwrap();
    assert_eq!(reason(verify(&fx, &l0)), (Reason::Malformed, Some(0)));
    // Garbage.
    assert_eq!(
        reason(verify(&fx, "not-a-jws")),
        (Reason::Malformed, Some(0))
    );
    assert_eq!(reason(verify(&fx, "")).0, Reason::Malformed);
}

#[test]
fn rule1_x5c_must_be_a_valid_svid() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let two: String = chain.split('~').take(2).collect::<Vec<_>>().join("~");
    // An agent of vendor.example signing with its own (valid) SVID claiming to be planning:
    // the SVID verifies but names someone else.
    let evil = fx.vendor.agent("planning", "p1", NOW - 60).unwrap();
    let bad = extend_unchecked(
        &two,
        &evil,
        &fx.planning.id,
        &fx.inventory.id,
        &["cloud:read"],
    );
    assert_eq!(reason(verify(&fx, &bad)), (Reason::WrongSigner, Some(2)));
    // A self-signed certificate in x5c.
    let rogue_ca = crate::spiffe::pki::Ca::generate(&fx.co.td, NOW - 60, 86_400).unwrap();
    let rogue = rogue_ca
        .issue_svid(&fx.planning.id, NOW - 60, 3600, &[], &[])
        .unwrap();
    let rogue_agent = DevAgent {
        id: fx.planning.id.clone(),
        key: SigningKey::from_pkcs8(&rogue.key_pkcs8_der).unwrap(),
        certs: vec![rogue.cert_der.clone()],
        svid: rogue,
    };
    let bad = extend_unchecked(
        &two,
        &rogue_agent,
        &fx.planning.id,
        &fx.inventory.id,
        &["cloud:read"],
    );
    assert_eq!(reason(verify(&fx, &bad)), (Reason::BadSvid, Some(2)));
    // An SVID from a domain without a bundle.
    let far = DevDomain::new("unknown.test", NOW - 60).unwrap();
    let far_agent = far.agent("planning", "p1", NOW - 60).unwrap();
    let bad = extend_unchecked(
        &two,
        &far_agent,
        &fx.planning.id,
        &fx.inventory.id,
        &["cloud:read"],
    );
    assert_eq!(reason(verify(&fx, &bad)), (Reason::UnknownDomain, Some(2)));
}

/// Appends a link signed by `signer` claiming `iss = claimed` (no minting checks).
fn extend_unchecked(
    chain: &str,
    signer: &DevAgent,
    claimed: &SpiffeId,
    to: &SpiffeId,
    scope: &[&str],
) -> String {
    let last = chain.rsplit('~').next().unwrap();
    let p = claims_of(last);
    let cl = LinkClaims {
        iss: claimed.to_string(),
        sub: to.to_string(),
        sub_type: SUB_AGENT.into(),
        dlg: Some(p.sub.clone()),
        scope: scope.iter().map(|s| s.to_string()).collect(),
        task: p.task.clone(),
        iat: p.iat,
        exp: p.exp,
        prev: Some(link_hash(last)),
        jti: crate::crypto::random_id(),
        crossing: None,
        dep: None,
        agr: None,
        prn: None,
    };
    format!(
        "{chain}~{}",
        mint_link(LinkSigner::X5c(&signer.key, &signer.certs), &cl).unwrap()
    )
}

#[test]
fn rule2_bad_root() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let l0 = chain.split('~').next().unwrap();
    // A root signed by the gateway key but claiming to be a human grant from the gateway.
    let mut cl = claims_of(l0);
    cl.iss = fx.co.gateway_id.to_string();
    let bad = mint_link(LinkSigner::Kid(&fx.co.gateway_key), &cl).unwrap();
    assert_eq!(reason(verify(&fx, &bad)), (Reason::BadRoot, Some(0)));
    // A root signed by an agent's SVID.
    let bad = mint_link(
        LinkSigner::X5c(&fx.planning.key, &fx.planning.certs),
        &claims_of(l0),
    )
    .unwrap();
    assert_eq!(reason(verify(&fx, &bad)).0, Reason::BadRoot);
    // A human grant carrying prev.
    let mut cl = claims_of(l0);
    cl.prev = Some("x".into());
    let bad = mint_link(LinkSigner::Kid(&fx.co.idp_key), &cl).unwrap();
    assert_eq!(reason(verify(&fx, &bad)).0, Reason::BadRoot);
    // An explicit IdP list that does not include company.com's IdP.
    let p = Policy {
        idps: Some(vec![fx.vendor.idp_id.clone()]),
        ..Policy::default()
    };
    let r = UnverifiedChain::parse(&chain)
        .unwrap()
        .verify(&fx.bundles, &p, &NoRevocations, NOW);
    assert_eq!(reason(r).0, Reason::BadRoot);
}

#[test]
fn crossing_root_verifies_and_counts_dep() {
    let fx = fx();
    let analytics = fx.vendor.agent("analytics", "a1", NOW - 60).unwrap();
    let worker = fx.vendor.agent("worker", "w1", NOW - 60).unwrap();
    let link = mint_crossing_link(
        &fx.vendor.gateway_key,
        &CrossingLink {
            gateway: &fx.vendor.gateway_id,
            target: &analytics.id,
            foreign_actor: &fx.planning.id,
            federation_token: "the.federation.token",
            crossing: "jti-1",
            dep: 2,
            scope: &scopes(&["analytics:run"]),
            task: "task-12345",
            agreement: "a@sha256:00",
            principal: None,
            now: NOW,
            exp: NOW + 600,
        },
    )
    .unwrap();
    let v = verify(&fx, &link).unwrap();
    assert_eq!(v.depth, 3);
    assert_eq!(v.holder.agent(), Some(&analytics.id));
    assert!(matches!(&v.root, Root::Crossing { crossing, dep: 2, .. } if crossing == "jti-1"));
    let ext = extend(
        &link,
        &analytics.key,
        &analytics.certs,
        &analytics.id,
        &worker.id,
        &scopes(&["analytics:run"]),
        NOW,
        60,
    )
    .unwrap();
    assert_eq!(verify(&fx, &ext).unwrap().depth, 4);
    // dep pushes the count over the limit.
    let p = Policy {
        max_links: 3,
        ..Policy::default()
    };
    let r = UnverifiedChain::parse(&ext)
        .unwrap()
        .verify(&fx.bundles, &p, &NoRevocations, NOW);
    assert_eq!(reason(r), (Reason::TooDeep, Some(0)));
    // A crossing link for an agent of another domain is not a valid root.
    let bad = mint_crossing_link(
        &fx.vendor.gateway_key,
        &CrossingLink {
            gateway: &fx.vendor.gateway_id,
            target: &fx.inventory.id,
            foreign_actor: &fx.planning.id,
            federation_token: "t",
            crossing: "j",
            dep: 2,
            scope: &scopes(&["a"]),
            task: "t",
            agreement: "a@sha256:00",
            principal: None,
            now: NOW,
            exp: NOW + 60,
        },
    )
    .unwrap();
    assert_eq!(reason(verify(&fx, &bad)), (Reason::BadRoot, Some(0)));
    // The foreign actor must be foreign.
    let bad = mint_crossing_link(
        &fx.vendor.gateway_key,
        &CrossingLink {
            gateway: &fx.vendor.gateway_id,
            target: &analytics.id,
            foreign_actor: &worker.id,
            federation_token: "t",
            crossing: "j",
            dep: 2,
            scope: &scopes(&["a"]),
            task: "t",
            agreement: "a@sha256:00",
            principal: None,
            now: NOW,
            exp: NOW + 60,
        },
    )
    .unwrap();
    assert_eq!(reason(verify(&fx, &bad)).0, Reason::BadRoot);
}

#[test]
fn rule3_broken_links() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let two: String = chain.split('~').take(2).collect::<Vec<_>>().join("~");
    let bad = resign_last(&chain, &fx.planning.key, Some(&fx.planning.certs), |c| {
        c.prev = Some(link_hash("other"))
    });
    assert_eq!(reason(verify(&fx, &bad)), (Reason::BrokenLink, Some(2)));
    let bad = resign_last(&chain, &fx.planning.key, Some(&fx.planning.certs), |c| {
        c.dlg = Some(fx.cost.id.to_string())
    });
    assert_eq!(reason(verify(&fx, &bad)), (Reason::BrokenLink, Some(2)));
    // Links reordered.
    let links: Vec<&str> = chain.split('~').collect();
    let swapped = [links[1], links[0], links[2]].join("~");
    assert!(verify(&fx, &swapped).is_err());
    // A link removed from the middle.
    let cut = [links[0], links[2]].join("~");
    assert_eq!(reason(verify(&fx, &cut)).0, Reason::BrokenLink);
    // Splicing a link from another chain with the same parties.
    let other = seed_chain(&fx);
    let spliced = format!("{two}~{}", other.split('~').nth(2).unwrap());
    assert_eq!(reason(verify(&fx, &spliced)), (Reason::BrokenLink, Some(2)));
}

#[test]
fn rule4_wrong_signer() {
    let fx = fx();
    let chain = seed_chain(&fx);
    // Inventory signs a link that should be planning's (claims iss = planning).
    let two: String = chain.split('~').take(2).collect::<Vec<_>>().join("~");
    let bad = extend_unchecked(
        &two,
        &fx.inventory,
        &fx.planning.id,
        &fx.cost.id,
        &["cloud:read"],
    );
    assert_eq!(reason(verify(&fx, &bad)), (Reason::WrongSigner, Some(2)));
    // Planning signs honestly as itself but is not the delegator (holder is inventory).
    let bad = extend_unchecked(
        &chain,
        &fx.planning,
        &fx.planning.id,
        &fx.cost.id,
        &["cloud:read"],
    );
    assert_eq!(reason(verify(&fx, &bad)), (Reason::WrongSigner, Some(3)));
    // The human's delegation signed by an agent instead of the IdP.
    let l0 = chain.split('~').next().unwrap();
    let bad = extend_unchecked(
        l0,
        &fx.planning,
        &fx.planning.id,
        &fx.planning.id,
        &["cloud:read"],
    );
    assert_eq!(reason(verify(&fx, &bad)), (Reason::WrongSigner, Some(1)));
    // An agent link signed with a kid (the gateway key).
    let bad = resign_last(&chain, &fx.co.gateway_key, None, |c| {
        c.iss = fx.planning.id.to_string()
    });
    assert_eq!(reason(verify(&fx, &bad)), (Reason::WrongSigner, Some(2)));
}

#[test]
fn rule5_scope_escalation() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let bad = resign_last(&chain, &fx.planning.key, Some(&fx.planning.certs), |c| {
        c.scope = vec!["cloud:*".into()]
    });
    assert_eq!(
        reason(verify(&fx, &bad)),
        (Reason::ScopeEscalation, Some(2))
    );
    let bad = resign_last(&chain, &fx.planning.key, Some(&fx.planning.certs), |c| {
        c.scope = vec!["cloud:read".into(), "billing:read".into()]
    });
    assert_eq!(reason(verify(&fx, &bad)).0, Reason::ScopeEscalation);
}

#[test]
fn rule6_times() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let bad = resign_last(&chain, &fx.planning.key, Some(&fx.planning.certs), |c| {
        c.exp = NOW + 99_999
    });
    assert_eq!(
        reason(verify(&fx, &bad)),
        (Reason::ExpiryExtension, Some(2))
    );
    let bad = resign_last(&chain, &fx.planning.key, Some(&fx.planning.certs), |c| {
        c.iat = NOW - 10
    });
    assert_eq!(
        reason(verify(&fx, &bad)),
        (Reason::ExpiryExtension, Some(2))
    );
    // Expired at exactly exp; valid one second before.
    let v = verify(&fx, &chain).unwrap();
    assert!(verify_at(&fx, &chain, v.expires - 1).is_ok());
    assert_eq!(
        reason(verify_at(&fx, &chain, v.expires)),
        (Reason::Expired, Some(2))
    );
    // Issued beyond the skew.
    assert_eq!(
        reason(verify_at(&fx, &chain, NOW - 31)),
        (Reason::NotYetValid, Some(0))
    );
    assert!(verify_at(&fx, &chain, NOW - 25).is_ok());
}

#[test]
fn rule7_task_depth_size() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let bad = resign_last(&chain, &fx.planning.key, Some(&fx.planning.certs), |c| {
        c.task = "other".into()
    });
    assert_eq!(reason(verify(&fx, &bad)), (Reason::TaskMismatch, Some(2)));
    let p = Policy {
        max_links: 2,
        ..Policy::default()
    };
    let r = UnverifiedChain::parse(&chain)
        .unwrap()
        .verify(&fx.bundles, &p, &NoRevocations, NOW);
    assert_eq!(reason(r).0, Reason::TooDeep);
    let big = "a".repeat(MAX_CHAIN_BYTES + 1);
    assert_eq!(
        UnverifiedChain::parse(&big).unwrap_err().reason(),
        Reason::TooLarge
    );
    let big_link = format!("{}~{}", chain, "a".repeat(MAX_LINK_BYTES + 1));
    assert_eq!(
        UnverifiedChain::parse(&big_link).unwrap_err().reason(),
        Reason::TooLarge
    );
}

struct Rev(&'static str, RevocationKind, String);
impl Revocations for Rev {
    fn is_revoked(&self, d: &str, k: RevocationKind, v: &str, _: i64) -> bool {
        d == self.0 && k == self.1 && v == self.2
    }
}

#[test]
fn rule8_revocation() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let v = verify(&fx, &chain).unwrap();
    let cases = [
        Rev(
            "company.com",
            RevocationKind::Agent,
            fx.planning.id.to_string(),
        ),
        Rev(
            "company.com",
            RevocationKind::Agent,
            fx.inventory.id.to_string(),
        ),
        Rev("company.com", RevocationKind::Task, "task-12345".into()),
        Rev(
            "company.com",
            RevocationKind::Principal,
            "alice@company.com".into(),
        ),
        Rev("company.com", RevocationKind::Jti, v.links[1].jti.clone()),
    ];
    for r in &cases {
        let e =
            UnverifiedChain::parse(&chain)
                .unwrap()
                .verify(&fx.bundles, &Policy::default(), r, NOW);
        assert_eq!(reason(e).0, Reason::Revoked, "{:?}", r.1);
    }
    // The same task id revoked by another domain does not touch this chain.
    let other = Rev("vendor.example", RevocationKind::Task, "task-12345".into());
    assert!(UnverifiedChain::parse(&chain)
        .unwrap()
        .verify(&fx.bundles, &Policy::default(), &other, NOW)
        .is_ok());
}

#[test]
fn hostile_inputs_never_panic() {
    let fx = fx();
    let chain = seed_chain(&fx);
    // Every truncation of the chain.
    for cut in (0..chain.len()).step_by(7) {
        let _ = UnverifiedChain::parse(&chain[..cut])
            .and_then(|c| c.verify(&fx.bundles, &Policy::default(), &NoRevocations, NOW));
    }
    // A 2 MB link and a thousand links.
    assert_eq!(
        UnverifiedChain::parse(&"x".repeat(2 << 20))
            .unwrap_err()
            .reason(),
        Reason::TooLarge
    );
    let thousand = vec!["a.b.c"; 1000].join("~");
    assert_eq!(
        UnverifiedChain::parse(&thousand).unwrap_err().reason(),
        Reason::TooDeep
    );
    // Duplicate claims in JSON.
    let l0 = chain.split('~').next().unwrap();
    let parts: Vec<&str> = l0.split('.').collect();
    let payload = String::from_utf8(crate::crypto::b64url_decode(parts[1]).unwrap()).unwrap();
    let dup = payload.replacen('{', "{\"sub\":\"mallory@company.com\",", 1);
    let signing_input = format!("{}.{}", parts[0], crate::crypto::b64url(dup.as_bytes()));
    let sig = fx.co.idp_key.sign_raw(signing_input.as_bytes()).unwrap();
    let forged = format!("{signing_input}.{}", crate::crypto::b64url(&sig));
    assert_eq!(reason(verify(&fx, &forged)), (Reason::Malformed, Some(0)));
    // Non-JSON and non-UTF-8 payloads.
    let junk = format!(
        "{}.{}.{}",
        parts[0],
        crate::crypto::b64url(&[0xff, 0xfe, 0x00]),
        parts[2]
    );
    assert_eq!(reason(verify(&fx, &junk)).0, Reason::Malformed);
    // Empty links between separators.
    assert_eq!(
        reason(verify(&fx, &format!("{l0}~~{l0}"))).0,
        Reason::Malformed
    );
}

#[test]
fn inspect_is_readable() {
    let fx = fx();
    let chain = seed_chain(&fx);
    let v = inspect(&chain).unwrap();
    assert_eq!(v["chain"][0]["principal"], "alice@company.com");
    assert_eq!(v["chain"][0]["type"], "human");
    assert_eq!(v["chain"][2]["delegated_by"], fx.planning.id.as_str());
    assert!(inspect("garbage").is_err());
}

#[test]
fn minting_refuses_escalation() {
    let fx = fx();
    let chain = seed_chain(&fx);
    assert!(extend(
        &chain,
        &fx.inventory.key,
        &fx.inventory.certs,
        &fx.inventory.id,
        &fx.cost.id,
        &scopes(&["cloud:*"]),
        NOW,
        60
    )
    .is_err());
    assert!(extend(
        &chain,
        &fx.planning.key,
        &fx.planning.certs,
        &fx.planning.id,
        &fx.cost.id,
        &scopes(&["cloud:read"]),
        NOW,
        60
    )
    .is_err());
    assert!(issue(
        &fx.co.idp_key,
        &fx.co.idp_id,
        "has space",
        &fx.planning.id,
        &scopes(&["a"]),
        "t",
        NOW,
        60
    )
    .is_err());
}

#[test]
fn gateways_require_internal_chains_to_stay_in_their_domain() {
    let fx = fx();
    let analytics = fx.vendor.agent("analytics", "a1", NOW - 60).unwrap();
    let c = issue(
        &fx.co.idp_key,
        &fx.co.idp_id,
        "alice@company.com",
        &fx.planning.id,
        &scopes(&["analytics:*"]),
        "t",
        NOW,
        600,
    )
    .unwrap();
    // planning hands its chain straight to a vendor agent, which hands it back to inventory.
    let c = extend(
        &c,
        &fx.planning.key,
        &fx.planning.certs,
        &fx.planning.id,
        &analytics.id,
        &scopes(&["analytics:*"]),
        NOW,
        600,
    )
    .unwrap();
    let c = extend(
        &c,
        &analytics.key,
        &analytics.certs,
        &analytics.id,
        &fx.inventory.id,
        &scopes(&["analytics:run"]),
        NOW,
        600,
    )
    .unwrap();
    // Rules 1-8 alone accept it (both domains' bundles are trusted)...
    assert!(verify(&fx, &c).is_ok());
    // ...a gateway does not: the delegation left company.com without a crossing.
    let p = Policy {
        one_domain: true,
        ..Policy::default()
    };
    let r = UnverifiedChain::parse(&c)
        .unwrap()
        .verify(&fx.bundles, &p, &NoRevocations, NOW);
    assert_eq!(reason(r), (Reason::BrokenLink, Some(2)));
    // An all-internal chain passes the same policy.
    assert!(UnverifiedChain::parse(&seed_chain(&fx))
        .unwrap()
        .verify(&fx.bundles, &p, &NoRevocations, NOW)
        .is_ok());
}
