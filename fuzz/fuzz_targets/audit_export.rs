//! Audit exports and signed checkpoints from arbitrary bytes.
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
    // The first line is the checkpoint note's origin line onwards; the rest the JSON Lines.
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (note, jsonl) = data.split_at(split);
    if let Ok(note) = std::str::from_utf8(note) {
        let _ = fedgate::audit::checkpoint::peek(note);
        let _ = fedgate::audit::export::verify(jsonl, note, bundles());
    }
    for line in fedgate::audit::export::lines(data) {
        let _ = fedgate::audit::Record::from_canonical(line);
    }
});
