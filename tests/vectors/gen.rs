//! The generator of `tests/vectors/chains/`: delegation chains valid and invalid, one or more
//! per reason code of SPEC section 3 rules 1–7, each with its expected `chain verify --json`
//! result. Everything is deterministic — Ed25519 keys from fixed seeds (EdDSA signatures are
//! deterministic), fixed certificate serials and times, fixed `jti`s — so regenerating gives the
//! same bytes and CI can diff them.
//!
//! Regenerate with `FEDGATE_REGENERATE_VECTORS=1 cargo test --test chain_vectors`.

use fedgate::chain::{link_hash, mint_link, LinkClaims, LinkSigner};
use fedgate::crypto::{b64url, sha256};
use fedgate::jose::SigningKey;
use fedgate::spiffe::pki::{ed25519_from_seed, Ca};
use fedgate::spiffe::{Bundle, KeyRole, SpiffeId, TrustDomain};
use serde_json::{json, Value};

/// 2026-03-27T14:00:00Z: the time of the background article's example.
pub const T0: i64 = 1_774_620_000;
const CERT_FROM: i64 = 1_767_225_600; // 2026-01-01
const CERT_UNTIL: i64 = 2_082_758_400; // 2036-01-01

pub struct Generated {
    /// (path relative to tests/vectors/chains, content)
    pub files: Vec<(String, String)>,
}

fn seed(name: &str) -> [u8; 32] {
    sha256(format!("fedgate test vectors: {name}").as_bytes())
}

struct Party {
    id: SpiffeId,
    key: SigningKey,
    certs: Vec<Vec<u8>>,
}

struct Domain {
    td: TrustDomain,
    ca: Ca,
    idp: SpiffeId,
    idp_key: SigningKey,
    gw: SpiffeId,
    gw_key: SigningKey,
    bundle: Bundle,
    serial: std::cell::Cell<u64>,
}

fn signing(name: &str) -> SigningKey {
    let (_, der) = ed25519_from_seed(&seed(name)).unwrap();
    SigningKey::from_pkcs8(&der).unwrap()
}

impl Domain {
    fn new(td: &str) -> Domain {
        let tdv = TrustDomain::parse(td).unwrap();
        let (ca_key, _) = ed25519_from_seed(&seed(&format!("{td} ca"))).unwrap();
        let ca = Ca::with_key(&tdv, ca_key, CERT_FROM, CERT_UNTIL, Some(1)).unwrap();
        let idp_key = signing(&format!("{td} idp"));
        let gw_key = signing(&format!("{td} gateway"));
        let mut bundle = Bundle::new(tdv.clone());
        bundle.sequence = Some(1);
        bundle.add_x509_authority(ca.cert_der.clone()).unwrap();
        bundle
            .add_jwt_authority(idp_key.kid(), idp_key.public().clone(), KeyRole::Idp)
            .unwrap();
        bundle
            .add_jwt_authority(gw_key.kid(), gw_key.public().clone(), KeyRole::Gateway)
            .unwrap();
        Domain {
            idp: tdv.id_with_path("/idp").unwrap(),
            gw: tdv.id_with_path("/gateway").unwrap(),
            td: tdv,
            ca,
            idp_key,
            gw_key,
            bundle,
            serial: std::cell::Cell::new(100),
        }
    }

    fn agent(&self, path: &str) -> Party {
        self.party_signed_by(&self.ca, path)
    }

    fn party_signed_by(&self, ca: &Ca, path: &str) -> Party {
        let id = self.td.id_with_path(path).unwrap();
        let (key, der) = ed25519_from_seed(&seed(&format!("{id} svid"))).unwrap();
        let n = self.serial.get() + 1;
        self.serial.set(n);
        let svid = ca
            .issue_svid_with_key(&id, key, CERT_FROM, CERT_UNTIL, &[], &[], Some(n))
            .unwrap();
        Party {
            id,
            key: SigningKey::from_pkcs8(&der).unwrap(),
            certs: vec![svid.cert_der],
        }
    }
}

struct Builder {
    jti: std::cell::Cell<u32>,
}

impl Builder {
    fn jti(&self) -> String {
        let n = self.jti.get() + 1;
        self.jti.set(n);
        format!("vec-jti-{n:03}")
    }

    fn root(
        &self,
        d: &Domain,
        principal: &str,
        scope: &[&str],
        task: &str,
        exp: i64,
    ) -> (String, LinkClaims) {
        let c = LinkClaims {
            iss: d.idp.to_string(),
            sub: principal.into(),
            sub_type: "human".into(),
            dlg: None,
            scope: scope.iter().map(|s| s.to_string()).collect(),
            task: task.into(),
            iat: T0,
            exp,
            prev: None,
            jti: self.jti(),
            crossing: None,
            dep: None,
            agr: None,
            prn: None,
        };
        (mint_link(LinkSigner::Kid(&d.idp_key), &c).unwrap(), c)
    }

    /// A link after `prev` with `sub = to`, `iat = prev.iat + 5`, edited by `edit`.
    #[allow(clippy::too_many_arguments)]
    fn next(
        &self,
        prev: &(String, LinkClaims),
        to: &SpiffeId,
        scope: &[&str],
        exp: i64,
        signer: LinkSigner<'_>,
        iss: &str,
        edit: impl FnOnce(&mut LinkClaims),
    ) -> (String, LinkClaims) {
        let mut c = LinkClaims {
            iss: iss.into(),
            sub: to.to_string(),
            sub_type: "agent".into(),
            dlg: Some(prev.1.sub.clone()),
            scope: scope.iter().map(|s| s.to_string()).collect(),
            task: prev.1.task.clone(),
            iat: prev.1.iat + 5,
            exp,
            prev: Some(link_hash(&prev.0)),
            jti: self.jti(),
            crossing: None,
            dep: None,
            agr: None,
            prn: None,
        };
        edit(&mut c);
        (mint_link(signer, &c).unwrap(), c)
    }
}

fn join(links: &[&(String, LinkClaims)]) -> String {
    links
        .iter()
        .map(|l| l.0.as_str())
        .collect::<Vec<_>>()
        .join("~")
}

fn expect_valid(holder: &str, scope: &[&str]) -> Value {
    json!({"valid": true, "holder": holder, "scope": scope, "reason": null, "link": null})
}

fn expect_invalid(reason: &str, link: Option<usize>) -> Value {
    json!({"valid": false, "holder": null, "scope": [], "reason": reason, "link": link})
}

/// Replaces the header of a compact JWS (keeping payload and signature).
fn with_header(link: &str, header: &Value) -> String {
    let mut parts = link.splitn(3, '.');
    let (_, p, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    format!(
        "{}.{p}.{s}",
        b64url(serde_json::to_string(header).unwrap().as_bytes())
    )
}

pub fn generate() -> Generated {
    let co = Domain::new("company.com");
    let ve = Domain::new("vendor.example");
    let b = Builder {
        jti: std::cell::Cell::new(0),
    };
    let planning = co.agent("/agent/planning/abc123");
    let inventory = co.agent("/agent/inventory/def456");
    let cost = co.agent("/agent/cost/c1");
    let report = co.agent("/agent/report/r1");
    let analytics = ve.agent("/agent/analytics/a1");
    let worker = ve.agent("/agent/worker/w1");
    let rogue_ca = Ca::with_key(
        &co.td,
        ed25519_from_seed(&seed("rogue ca")).unwrap().0,
        CERT_FROM,
        CERT_UNTIL,
        Some(7),
    )
    .unwrap();
    let rogue_planning = co.party_signed_by(&rogue_ca, "/agent/planning/abc123");

    let mut vectors: Vec<(String, String, i64, String, Value)> = Vec::new();
    let at = T0 + 60;
    let mut add = |name: &str, chain: String, at: i64, desc: &str, expect: Value| {
        vectors.push((name.to_string(), chain, at, desc.to_string(), expect));
    };

    // The seed example: alice -> planning (IdP) -> inventory (planning's SVID).
    let l0 = b.root(
        &co,
        "alice@company.com",
        &["infrastructure:review", "cloud:read", "reports:write"],
        "task-12345",
        T0 + 7200,
    );
    let l1 = b.next(
        &l0,
        &planning.id,
        &["cloud:read", "reports:write"],
        T0 + 7200,
        LinkSigner::Kid(&co.idp_key),
        co.idp.as_str(),
        |_| {},
    );
    let l2 = b.next(
        &l1,
        &inventory.id,
        &["cloud:read"],
        T0 + 3600,
        LinkSigner::X5c(&planning.key, &planning.certs),
        planning.id.as_str(),
        |_| {},
    );
    add(
        "valid-depth1",
        join(&[&l0]),
        at,
        "a lone human grant: valid, held by the human",
        expect_valid(
            "alice@company.com",
            &["cloud:read", "infrastructure:review", "reports:write"],
        ),
    );
    add(
        "valid-depth3",
        join(&[&l0, &l1, &l2]),
        at,
        "alice -> planning -> inventory, the background's example",
        expect_valid(inventory.id.as_str(), &["cloud:read"]),
    );
    let l3 = b.next(
        &l2,
        &cost.id,
        &["cloud:read"],
        T0 + 3000,
        LinkSigner::X5c(&inventory.key, &inventory.certs),
        inventory.id.as_str(),
        |_| {},
    );
    let l4 = b.next(
        &l3,
        &report.id,
        &["cloud:read"],
        T0 + 2000,
        LinkSigner::X5c(&cost.key, &cost.certs),
        cost.id.as_str(),
        |_| {},
    );
    add(
        "valid-depth5",
        join(&[&l0, &l1, &l2, &l3, &l4]),
        at,
        "five links, scope and expiry narrowing",
        expect_valid(report.id.as_str(), &["cloud:read"]),
    );

    // A crossing-rooted chain inside vendor.example.
    let token_hash = link_hash("a.federation.token");
    let cross = LinkClaims {
        iss: ve.gw.to_string(),
        sub: analytics.id.to_string(),
        sub_type: "agent".into(),
        dlg: Some(planning.id.to_string()),
        scope: vec!["analytics:run".into()],
        task: "task-12345".into(),
        iat: T0,
        exp: T0 + 900,
        prev: Some(token_hash),
        jti: b.jti(),
        crossing: Some("crossing-0001".into()),
        dep: Some(2),
        agr: None,
        prn: None,
    };
    let c0 = (
        mint_link(LinkSigner::Kid(&ve.gw_key), &cross).unwrap(),
        cross,
    );
    let c1 = b.next(
        &c0,
        &worker.id,
        &["analytics:run"],
        T0 + 600,
        LinkSigner::X5c(&analytics.key, &analytics.certs),
        analytics.id.as_str(),
        |_| {},
    );
    add(
        "valid-crossing-root",
        join(&[&c0, &c1]),
        at,
        "vendor gateway's crossing link (dep 2) extended by analytics: depth 4",
        expect_valid(worker.id.as_str(), &["analytics:run"]),
    );
    // Keys have roles: an IdP key cannot sign a crossing link.
    add(
        "wrong_signer-idp-key-crossing",
        mint_link(LinkSigner::Kid(&ve.idp_key), &c0.1).unwrap(),
        at,
        "a crossing link signed with vendor.example's IdP key instead of its gateway key",
        expect_invalid("wrong_signer", Some(0)),
    );

    // Rule 1.
    add(
        "malformed-not-jws",
        "this is not a chain".into(),
        at,
        "not a compact JWS",
        expect_invalid("malformed", Some(0)),
    );
    let mut bad_typ = l1.1.clone();
    bad_typ.jti = b.jti();
    let bad_typ_link =
        fedgate::jose::sign_compact(&co.idp_key, "JWT", true, None, &bad_typ).unwrap();
    add(
        "malformed-typ",
        format!("{}~{}", l0.0, bad_typ_link),
        at,
        "typ is JWT, not delegation+jwt",
        expect_invalid("malformed", Some(1)),
    );
    let junk_payload = {
        let h = b64url(
            serde_json::to_string(
                &json!({"alg": "EdDSA", "typ": "delegation+jwt", "kid": co.idp_key.kid()}),
            )
            .unwrap()
            .as_bytes(),
        );
        let p =
            b64url(b"{\"iss\":\"spiffe://company.com/idp\",\"iss\":\"spiffe://company.com/idp\"}");
        let si = format!("{h}.{p}");
        let sig = co.idp_key.sign_raw(si.as_bytes()).unwrap();
        format!("{si}.{}", b64url(&sig))
    };
    add(
        "malformed-duplicate-claim",
        format!("{}~{}", l0.0, junk_payload),
        at,
        "signed claims with a duplicated member",
        expect_invalid("malformed", Some(1)),
    );
    add(
        "bad_alg-none",
        format!(
            "{}~{}",
            l0.0,
            with_header(
                &l1.0,
                &json!({"alg": "none", "typ": "delegation+jwt", "kid": co.idp_key.kid()})
            )
        ),
        at,
        "alg none",
        expect_invalid("bad_alg", Some(1)),
    );
    add(
        "bad_alg-hs256",
        format!(
            "{}~{}",
            l0.0,
            with_header(
                &l1.0,
                &json!({"alg": "HS256", "typ": "delegation+jwt", "kid": co.idp_key.kid()})
            )
        ),
        at,
        "an HMAC algorithm",
        expect_invalid("bad_alg", Some(1)),
    );
    add(
        "bad_alg-rs256",
        format!(
            "{}~{}",
            l0.0,
            with_header(
                &l1.0,
                &json!({"alg": "RS256", "typ": "delegation+jwt", "kid": co.idp_key.kid()})
            )
        ),
        at,
        "an RSA algorithm",
        expect_invalid("bad_alg", Some(1)),
    );
    add(
        "bad_alg-key-mismatch",
        format!(
            "{}~{}",
            l0.0,
            with_header(
                &l1.0,
                &json!({"alg": "ES256", "typ": "delegation+jwt", "kid": co.idp_key.kid()})
            )
        ),
        at,
        "ES256 in the header, Ed25519 key",
        expect_invalid("bad_alg", Some(1)),
    );
    let tampered = {
        let mut c = l1.1.clone();
        c.scope = vec!["cloud:*".into(), "reports:write".into()];
        let parts: Vec<&str> = l1.0.split('.').collect();
        format!(
            "{}.{}.{}",
            parts[0],
            b64url(serde_json::to_string(&c).unwrap().as_bytes()),
            parts[2]
        )
    };
    add(
        "bad_signature",
        format!("{}~{}", l0.0, tampered),
        at,
        "link 1's claims changed after signing",
        expect_invalid("bad_signature", Some(1)),
    );
    let stranger = signing("stranger");
    let (unknown, _) = b.root(
        &Domain {
            idp_key: stranger,
            ..Domain::new("company.com")
        },
        "alice@company.com",
        &["cloud:read"],
        "task-12345",
        T0 + 7200,
    );
    add(
        "unknown_key",
        unknown,
        at,
        "a root signed by a key that is not in the bundle",
        expect_invalid("unknown_key", Some(0)),
    );
    let forged = b.next(
        &l1,
        &inventory.id,
        &["cloud:read"],
        T0 + 3600,
        LinkSigner::X5c(&rogue_planning.key, &rogue_planning.certs),
        planning.id.as_str(),
        |_| {},
    );
    add(
        "bad_svid",
        join(&[&l0, &l1, &forged]),
        at,
        "x5c chains to a CA that is not company.com's",
        expect_invalid("bad_svid", Some(2)),
    );

    // Rule 2.
    let mut gw_root = l0.1.clone();
    gw_root.iss = co.gw.to_string();
    let gw_root = mint_link(LinkSigner::Kid(&co.gw_key), &gw_root).unwrap();
    add(
        "bad_root-gateway-human-grant",
        gw_root,
        at,
        "a human grant signed by the gateway",
        expect_invalid("bad_root", Some(0)),
    );
    let agent_root = mint_link(
        LinkSigner::X5c(&planning.key, &planning.certs),
        &LinkClaims {
            iss: planning.id.to_string(),
            ..l0.1.clone()
        },
    )
    .unwrap();
    add(
        "bad_root-agent-signed",
        agent_root,
        at,
        "a root signed by an agent",
        expect_invalid("bad_root", Some(0)),
    );

    // Rule 3.
    let bp = b.next(
        &l1,
        &inventory.id,
        &["cloud:read"],
        T0 + 3600,
        LinkSigner::X5c(&planning.key, &planning.certs),
        planning.id.as_str(),
        |c| c.prev = Some(link_hash("something else")),
    );
    add(
        "broken_link-prev",
        join(&[&l0, &l1, &bp]),
        at,
        "prev is not the hash of link 1",
        expect_invalid("broken_link", Some(2)),
    );
    let bd = b.next(
        &l1,
        &inventory.id,
        &["cloud:read"],
        T0 + 3600,
        LinkSigner::X5c(&planning.key, &planning.certs),
        planning.id.as_str(),
        |c| c.dlg = Some(cost.id.to_string()),
    );
    add(
        "broken_link-dlg",
        join(&[&l0, &l1, &bd]),
        at,
        "dlg is not link 1's sub",
        expect_invalid("broken_link", Some(2)),
    );
    add(
        "broken_link-removed",
        join(&[&l0, &l2]),
        at,
        "the middle link removed",
        expect_invalid("broken_link", Some(1)),
    );

    // Rule 4.
    let ws = b.next(
        &l1,
        &inventory.id,
        &["cloud:read"],
        T0 + 3600,
        LinkSigner::X5c(&inventory.key, &inventory.certs),
        planning.id.as_str(),
        |_| {},
    );
    add(
        "wrong_signer-other-agent",
        join(&[&l0, &l1, &ws]),
        at,
        "inventory signs a link claiming to be planning",
        expect_invalid("wrong_signer", Some(2)),
    );
    let ws2 = b.next(
        &l0,
        &planning.id,
        &["cloud:read"],
        T0 + 7200,
        LinkSigner::X5c(&planning.key, &planning.certs),
        planning.id.as_str(),
        |_| {},
    );
    // Keys have roles: the domain's gateway key cannot sign a human's grant.
    let (gw_grant, _) = b.root(
        &Domain {
            idp_key: signing("company.com gateway"),
            ..Domain::new("company.com")
        },
        "alice@company.com",
        &["cloud:read"],
        "task-12345",
        T0 + 7200,
    );
    add(
        "wrong_signer-gateway-key-grant",
        gw_grant,
        at,
        "a human grant signed with the gateway's key instead of the IdP's",
        expect_invalid("wrong_signer", Some(0)),
    );
    add(
        "wrong_signer-self-grant",
        join(&[&l0, &ws2]),
        at,
        "the human's delegation signed by the agent itself",
        expect_invalid("wrong_signer", Some(1)),
    );

    // Rule 5.
    let esc = b.next(
        &l1,
        &inventory.id,
        &["cloud:*"],
        T0 + 3600,
        LinkSigner::X5c(&planning.key, &planning.certs),
        planning.id.as_str(),
        |_| {},
    );
    add(
        "scope_escalation",
        join(&[&l0, &l1, &esc]),
        at,
        "planning grants cloud:* holding only cloud:read",
        expect_invalid("scope_escalation", Some(2)),
    );

    // Rule 6.
    let ext = b.next(
        &l1,
        &inventory.id,
        &["cloud:read"],
        T0 + 9999,
        LinkSigner::X5c(&planning.key, &planning.certs),
        planning.id.as_str(),
        |_| {},
    );
    add(
        "expiry_extension",
        join(&[&l0, &l1, &ext]),
        at,
        "link 2 expires after link 1",
        expect_invalid("expiry_extension", Some(2)),
    );
    add(
        "expired",
        join(&[&l0, &l1, &l2]),
        T0 + 3605,
        "verified after link 2's expiry",
        expect_invalid("expired", Some(2)),
    );
    add(
        "not_yet_valid",
        join(&[&l0, &l1, &l2]),
        T0 - 3600,
        "verified an hour before it was issued",
        expect_invalid("not_yet_valid", Some(0)),
    );

    // Rule 7.
    let tm = b.next(
        &l1,
        &inventory.id,
        &["cloud:read"],
        T0 + 3600,
        LinkSigner::X5c(&planning.key, &planning.certs),
        planning.id.as_str(),
        |c| c.task = "task-99999".into(),
    );
    add(
        "task_mismatch",
        join(&[&l0, &l1, &tm]),
        at,
        "link 2 names another task",
        expect_invalid("task_mismatch", Some(2)),
    );
    let mut deep = vec![l0.clone(), l1.clone()];
    let hops = [&planning, &inventory];
    for i in 0..15 {
        let from = hops[i % 2];
        let to = hops[(i + 1) % 2];
        let prev = deep.last().unwrap().clone();
        let l = b.next(
            &prev,
            &to.id,
            &["cloud:read"],
            T0 + 3600,
            LinkSigner::X5c(&from.key, &from.certs),
            from.id.as_str(),
            |_| {},
        );
        deep.push(l);
    }
    add(
        "too_deep",
        deep.iter()
            .map(|l| l.0.as_str())
            .collect::<Vec<_>>()
            .join("~"),
        at,
        "17 links, over the default 16",
        expect_invalid("too_deep", Some(16)),
    );
    let pad: String = "p".repeat(12_000);
    let mut big = vec![l0.0.clone()];
    for _ in 0..6 {
        let v = json!({"iss": co.idp.as_str(), "pad": pad});
        big.push(
            fedgate::jose::sign_compact(&co.idp_key, "delegation+jwt", true, None, &v).unwrap(),
        );
    }
    add(
        "too_large",
        big.join("~"),
        at,
        "a chain over 64 KiB",
        expect_invalid("too_large", None),
    );

    let mut files = Vec::new();
    files.push(("bundles/company.com.json".to_string(), co.bundle.to_json()));
    files.push((
        "bundles/vendor.example.json".to_string(),
        ve.bundle.to_json(),
    ));
    let mut manifest = Vec::new();
    for (name, chain, at, desc, expect) in vectors {
        let file = format!("{name}.chain");
        files.push((file.clone(), format!("{chain}\n")));
        manifest.push(json!({
            "name": name,
            "file": file,
            "at": fedgate::time::format_rfc3339(at),
            "description": desc,
            "expect": expect,
        }));
    }
    let mut m = serde_json::to_string_pretty(&json!({
        "generator": "tests/vectors/gen.rs",
        "bundles": "bundles/",
        "verify": "fedgate chain verify --bundles bundles --chain <file> --at <at> --json",
        "vectors": manifest,
    }))
    .unwrap();
    m.push('\n');
    files.push(("manifest.json".to_string(), m));
    Generated { files }
}
