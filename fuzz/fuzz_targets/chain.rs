//! Delegation chains from arbitrary text, verified against a fixed domain.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn bundles() -> &'static fedgate::spiffe::BundleSet {
    static B: OnceLock<fedgate::spiffe::BundleSet> = OnceLock::new();
    B.get_or_init(|| {
        let d = fedgate::devkit::DevDomain::new("company.com", 1_800_000_000).unwrap();
        fedgate::devkit::DevDomain::bundle_set(&[&d])
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = fedgate::chain::inspect(s);
        if let Ok(c) = fedgate::chain::UnverifiedChain::parse(s) {
            let _ = c.verify(
                bundles(),
                &fedgate::chain::Policy::default(),
                &fedgate::chain::NoRevocations,
                1_800_000_100,
            );
        }
    }
});
