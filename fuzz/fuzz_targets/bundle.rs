//! SPIFFE bundle documents from arbitrary bytes: parse, and re-parse what serializes.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let td = fedgate::spiffe::TrustDomain::parse("example.org").unwrap();
    if let Ok(b) = fedgate::spiffe::Bundle::parse(td.clone(), data) {
        let again = fedgate::spiffe::Bundle::parse(td, b.to_json().as_bytes())
            .expect("a parsed bundle re-parses");
        assert_eq!(again.jwt.len(), b.jwt.len());
    }
});
