//! Agreement TOML from arbitrary text: lint and hash never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = fedgate::agreement::Agreement::parse(s);
        let _ = fedgate::agreement::hash_text(s);
    }
});
