//! The Python agent SDK's own suite (`clients/python`), run against this build of the binary:
//! `pip install ./clients/python[test]` in a fresh venv, then pytest (exit 5, no tests, fails).

#[test]
fn python_sdk_suite_passes_against_this_binary() {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = std::process::Command::new("bash")
        .arg(format!("{root}/clients/python/ci.sh"))
        .arg(env!("CARGO_BIN_EXE_fedgate"))
        .output()
        .expect("bash");
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "the SDK suite failed:\n{out}\n{err}");
    assert!(out.contains(" passed"), "{out}");
}
