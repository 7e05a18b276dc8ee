//! Federation tokens, receipts and revocation notices from arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct Fx {
    bundles: fedgate::spiffe::BundleSet,
    local: fedgate::spiffe::TrustDomain,
    gateway: fedgate::spiffe::SpiffeId,
    peer: fedgate::federation::PeerInfo,
    agreements: Vec<Arc<fedgate::agreement::Agreement>>,
}

fn fx() -> &'static Fx {
    static F: OnceLock<Fx> = OnceLock::new();
    F.get_or_init(|| {
        let co = fedgate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        let ve = fedgate::devkit::DevDomain::new("vendor.example", 1_800_000_000).unwrap();
        let a = fedgate::agreement::Agreement::parse(&fedgate::demo::agreement(
            ([127, 0, 0, 1], 1).into(),
            ([127, 0, 0, 1], 2).into(),
            1_800_000_000,
        ))
        .unwrap();
        Fx {
            bundles: fedgate::devkit::DevDomain::bundle_set(&[&co, &ve]),
            local: ve.td.clone(),
            gateway: ve.gateway_id.clone(),
            peer: fedgate::federation::PeerInfo {
                id: co.gateway_id.clone(),
                cert_sha256: [0; 32],
            },
            agreements: vec![Arc::new(a)],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let f = fx();
        let ctx = fedgate::federation::TokenContext {
            bundles: &f.bundles,
            local_td: &f.local,
            local_gateway: &f.gateway,
            agreements: &f.agreements,
            peer: &f.peer,
            now: 1_800_000_100,
        };
        let _ = fedgate::federation::verify_token(s, &ctx);
        if let Some(b) = f.bundles.get(&f.local) {
            let _ = fedgate::federation::receipt::verify_receipt(s, b);
        }
        let _ = fedgate::federation::notice::verify_notice(s, &f.bundles);
    }
});
