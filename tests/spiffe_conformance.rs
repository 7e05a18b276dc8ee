//! SPIFFE conformance data from go-spiffe, SPIRE and rust-spiffe (tests/data/spiffe/, see its
//! README and licences): every case gives the result those implementations expect.

use std::path::{Path, PathBuf};

use fedgate::spiffe::svid::{check_structure, verify_svid, SvidError, SvidUsage};
use fedgate::spiffe::{Bundle, BundleSet, TrustDomain};
use rustls_pki_types::CertificateDer;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/spiffe")
        .join(p)
}

fn td(s: &str) -> TrustDomain {
    TrustDomain::parse(s).unwrap()
}

fn bundle(name: &str) -> Result<Bundle, fedgate::spiffe::BundleError> {
    Bundle::parse(
        td("example.org"),
        &std::fs::read(data(&format!("bundles/{name}"))).unwrap(),
    )
}

#[test]
fn bundles_give_their_expected_results() {
    let b = bundle("spiffebundle_valid_1.json").unwrap();
    assert_eq!(
        (b.x509.len(), b.jwt.len(), b.sequence, b.refresh_hint),
        (1, 1, None, None)
    );
    let b = bundle("spiffebundle_valid_2.json").unwrap();
    assert_eq!(
        (b.x509.len(), b.jwt.len(), b.sequence, b.refresh_hint),
        (1, 6, Some(1), Some(60))
    );
    let b = bundle("spiffebundle_valid_with_wit.json").unwrap();
    assert_eq!((b.x509.len(), b.jwt.len()), (1, 2));
    assert_eq!(b.skipped.len(), 2, "wit-svid keys are skipped, not errors");
    let b = bundle("spire_domain1.test.json").unwrap();
    assert_eq!((b.x509.len(), b.jwt.len()), (1, 1));
    assert!(b.authority("KID").is_some());
    let summary = b.summary();
    assert_eq!(
        summary["x509_authorities"][0]["uri_sans"][0],
        "spiffe://domain1.test"
    );
    assert!(summary["x509_authorities"][0]["not_after"]
        .as_str()
        .unwrap()
        .starts_with("9999"));

    assert!(matches!(
        bundle("spiffebundle_missing_kid.json"),
        Err(fedgate::spiffe::BundleError::MissingKid(1))
    ));
    assert!(matches!(
        bundle("spiffebundle_multiple_x509.json"),
        Err(fedgate::spiffe::BundleError::X5cCount(0, 2))
    ));
    assert!(matches!(
        bundle("spiffebundle_no_keys.json"),
        Err(fedgate::spiffe::BundleError::MissingKeys)
    ));
}

#[test]
fn valid_bundles_round_trip() {
    for name in [
        "spiffebundle_valid_1.json",
        "spiffebundle_valid_2.json",
        "spiffebundle_valid_with_wit.json",
        "spire_domain1.test.json",
    ] {
        let b = bundle(name).unwrap();
        let again = Bundle::parse(td("example.org"), b.to_json().as_bytes()).unwrap();
        assert_eq!(again.x509.len(), b.x509.len(), "{name}");
        assert_eq!(again.jwt.len(), b.jwt.len(), "{name}");
        assert_eq!(again.sequence, b.sequence);
        assert_eq!(again.skipped.len(), b.skipped.len());
    }
}

fn pem_chain(name: &str) -> Vec<CertificateDer<'static>> {
    let p = data(&format!("x509svid/{name}"));
    fedgate::files::read_pem_certs(&p).unwrap()
}

#[test]
fn go_spiffe_x509svid_structure() {
    for good in [
        "good-leaf-only.pem",
        "good-leaf-and-intermediate.pem",
        "good-cert-and-key.pem",
        "good-key-and-cert.pem",
    ] {
        let id = check_structure(&pem_chain(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(id.as_str(), "spiffe://example.org/workload-1", "{good}");
    }
    let cases: &[(&str, SvidError)] = &[
        ("wrong-leaf-ca-true.pem", SvidError::LeafIsCa),
        ("wrong-leaf-cert-sign.pem", SvidError::LeafKeyCertSign),
        ("wrong-leaf-crl-sign.pem", SvidError::LeafCrlSign),
        (
            "wrong-leaf-no-digital-signature.pem",
            SvidError::NoDigitalSignature,
        ),
        ("wrong-leaf-empty-id.pem", SvidError::NoUriSan),
        (
            "wrong-intermediate-no-ca.pem",
            SvidError::IntermediateNotCa(1),
        ),
        (
            "wrong-intermediate-no-key-cert-sign.pem",
            SvidError::IntermediateNoKeyCertSign(1),
        ),
    ];
    for (file, want) in cases {
        assert_eq!(
            check_structure(&pem_chain(file)).as_ref(),
            Err(want),
            "{file}"
        );
    }
}

#[test]
fn go_spiffe_bad_inputs_are_clear_errors() {
    // A PEM block whose content is not a certificate.
    let certs = fedgate::files::read_pem_certs(&data("x509svid/corrupt-cert.pem")).unwrap();
    assert!(matches!(
        check_structure(&certs),
        Err(SvidError::Parse(0, _))
    ));
    // Not PEM at all.
    let e = fedgate::files::read_pem_certs(&data("x509svid/not-pem")).unwrap_err();
    assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    // Keys: the ECDSA key loads, the RSA and corrupt ones are refused with an error.
    assert!(fedgate::files::read_signing_key(&data("x509svid/key-pkcs8-ecdsa.pem")).is_ok());
    assert!(fedgate::files::read_signing_key(&data("x509svid/key-pkcs8-rsa.pem")).is_err());
    assert!(fedgate::files::read_signing_key(&data("x509svid/corrupt-key.pem")).is_err());
}

/// Splits concatenated DER certificates.
fn der_chain(name: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(data(&format!("rust-spiffe/svid-der/{name}"))).unwrap();
    let mut rest: &[u8] = &bytes;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (r, _) = x509_parser::parse_x509_certificate(rest).map_err(|e| e.to_string())?;
        let used = rest.len() - r.len();
        out.push(CertificateDer::from(rest[..used].to_vec()));
        rest = r;
    }
    Ok(out)
}

fn bundle_with(ca: &[u8]) -> BundleSet {
    let mut b = Bundle::new(td("example.org"));
    b.add_x509_authority(ca.to_vec()).unwrap();
    let mut s = BundleSet::new();
    s.insert(b);
    s
}

fn now() -> i64 {
    fedgate::time::now()
}

#[test]
fn rust_spiffe_der_chains() {
    let chain = der_chain("1-svid-chain.der").unwrap();
    let ca = chain.last().unwrap().to_vec();
    let set = bundle_with(&ca);
    let v = verify_svid(&chain[..chain.len() - 1], &set, now(), SvidUsage::Any).unwrap();
    assert_eq!(v.id.trust_domain_str(), "example.org");
    // The same chain with the root included verifies too (the root is skipped as an anchor).
    let expired = der_chain("expired-svid-chain.der").unwrap();
    let set = bundle_with(expired.last().unwrap());
    assert_eq!(
        verify_svid(&expired[..1], &set, now(), SvidUsage::Any),
        Err(SvidError::Expired)
    );
    let cases: &[(&str, SvidError)] = &[
        ("wrong-leaf-ca-true.der", SvidError::LeafIsCa),
        ("wrong-leaf-cert-sign.der", SvidError::LeafKeyCertSign),
        ("wrong-leaf-crl-sign.der", SvidError::LeafCrlSign),
        (
            "wrong-leaf-no-digital-signature.der",
            SvidError::NoDigitalSignature,
        ),
        ("wrong-leaf-empty-id.der", SvidError::NoUriSan),
        (
            "wrong-intermediate-no-ca.der",
            SvidError::IntermediateNotCa(1),
        ),
        (
            "wrong-intermediate-no-key-cert-sign.der",
            SvidError::IntermediateNoKeyCertSign(1),
        ),
    ];
    for (file, want) in cases {
        let c = der_chain(file).unwrap();
        assert_eq!(check_structure(&c).as_ref(), Err(want), "{file}");
    }
    for ok in ["svid-with-dns.der", "empty-subject-name.der"] {
        let c = der_chain(ok).unwrap();
        assert!(check_structure(&c[..1]).is_ok(), "{ok}");
    }
    assert!(der_chain("corrupted").is_err());
    let raw = std::fs::read(data("rust-spiffe/svid-der/corrupted")).unwrap();
    assert!(matches!(
        check_structure(&[CertificateDer::from(raw)]),
        Err(SvidError::Parse(0, _))
    ));
}

fn fixture(name: &str) -> CertificateDer<'static> {
    CertificateDer::from(
        std::fs::read(data(&format!("rust-spiffe/rustls-fixtures/{name}"))).unwrap(),
    )
}

#[test]
fn rust_spiffe_rustls_fixtures() {
    let set = bundle_with(&fixture("ca.der"));
    let at = fedgate::time::parse_rfc3339("2026-06-01T00:00:00Z").unwrap();
    let v = verify_svid(&[fixture("spiffe_leaf.der")], &set, at, SvidUsage::Client).unwrap();
    assert_eq!(v.id.as_str(), "spiffe://example.org/service");
    let after = fedgate::time::parse_rfc3339("2026-12-23T00:00:00Z").unwrap();
    assert_eq!(
        verify_svid(
            &[fixture("spiffe_leaf.der")],
            &set,
            after,
            SvidUsage::Client
        ),
        Err(SvidError::Expired)
    );
    assert_eq!(
        check_structure(&[fixture("no_spiffe_leaf.der")]),
        Err(SvidError::NoUriSan)
    );
    assert_eq!(
        check_structure(&[fixture("spiffe_leaf_no_digital_signature.der")]),
        Err(SvidError::NoDigitalSignature)
    );
    assert_eq!(
        check_structure(&[fixture("spiffe_leaf_no_key_usage.der")]),
        Err(SvidError::NoKeyUsage)
    );
    assert_eq!(
        check_structure(&[fixture("ca_with_spiffe_signing.der")]),
        Err(SvidError::LeafIsCa)
    );
    // The same leaf against a bundle of another domain: unknown domain, not a pass.
    let mut other = BundleSet::new();
    let mut b = Bundle::new(td("example.com"));
    b.add_x509_authority(fixture("ca.der").to_vec()).unwrap();
    other.insert(b);
    assert_eq!(
        verify_svid(&[fixture("spiffe_leaf.der")], &other, at, SvidUsage::Any),
        Err(SvidError::UnknownDomain("example.org".into()))
    );
}
