//! SPIFFE IDs, trust domains, ID patterns and scopes from arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = fedgate::spiffe::SpiffeId::parse(s) {
            assert_eq!(id.as_str(), s);
            let _ = id.agent_type();
        }
        let _ = fedgate::spiffe::TrustDomain::parse(s);
        let _ = fedgate::spiffe::IdPattern::parse(s);
        let _ = fedgate::scope::ScopeSet::parse_spaced(s);
    }
});
