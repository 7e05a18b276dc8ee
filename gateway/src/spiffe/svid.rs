//! X509-SVID validation (the SPIFFE X509-SVID standard) against a [`BundleSet`] at a given time.
//!
//! The SPIFFE-specific rules are checked here with x509-parser (exactly one URI SAN holding a
//! SPIFFE ID with a path; leaf not a CA; key usage present with digitalSignature and without
//! keyCertSign/cRLSign; intermediates are CAs with keyCertSign). The path itself — signatures,
//! validity, basic constraints, EKU — is verified by rustls-webpki, using *only* the
//! `x509-svid` authorities of the SPIFFE ID's own trust domain as anchors, so a partner's CA can
//! never vouch for an identity in our domain.

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::{EndEntityCert, ExtendedKeyUsageValidator, KeyPurposeIdIter, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::bundle::BundleSet;
use super::id::{IdError, SpiffeId};
use crate::jose::VerifyingKey;
use crate::time::Instant;

/// Most certificates in a presented SVID chain (leaf + intermediates). Real deployments use one
/// or two intermediates; more only costs path-building time.
pub const MAX_SVID_CHAIN_CERTS: usize = 8;
/// Largest certificate accepted in a chain, as rustls bounds certificate sizes.
pub const MAX_SVID_CERT_BYTES: usize = 64 * 1024;

/// Which extended key usage the certificate must allow, if it lists any (RFC 5280: an absent
/// EKU extension allows every use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidUsage {
    /// Any EKU: signing delegation links, `svid verify`.
    Any,
    /// TLS client authentication (mTLS peers).
    Client,
    /// TLS server authentication (partner gateways, bundle endpoints).
    Server,
}

impl ExtendedKeyUsageValidator for SvidUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        match self {
            SvidUsage::Any => {
                for id in iter {
                    id?;
                }
                Ok(())
            }
            SvidUsage::Client => KeyUsage::client_auth().validate(iter),
            SvidUsage::Server => KeyUsage::server_auth().validate(iter),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
    #[error("no certificate presented")]
    Empty,
    #[error("chain has more than {MAX_SVID_CHAIN_CERTS} certificates or a certificate over {MAX_SVID_CERT_BYTES} bytes")]
    TooLarge,
    #[error("certificate {0} does not parse: {1}")]
    Parse(usize, String),
    #[error("leaf has no URI SAN")]
    NoUriSan,
    #[error("leaf has more than one URI SAN")]
    MultipleUriSans,
    #[error("leaf URI SAN is not a valid SPIFFE ID: {0}")]
    BadId(IdError),
    #[error("leaf SPIFFE ID has no path (a trust domain ID cannot be an SVID)")]
    RootId,
    #[error("leaf is a CA")]
    LeafIsCa,
    #[error("leaf has no key usage extension")]
    NoKeyUsage,
    #[error("leaf key usage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf key usage has keyCertSign")]
    LeafKeyCertSign,
    #[error("leaf key usage has cRLSign")]
    LeafCrlSign,
    #[error("intermediate {0} is not a CA")]
    IntermediateNotCa(usize),
    #[error("intermediate {0} lacks keyCertSign")]
    IntermediateNoKeyCertSign(usize),
    #[error("no bundle for trust domain {0}")]
    UnknownDomain(String),
    #[error("certificate expired")]
    Expired,
    #[error("certificate not yet valid")]
    NotYetValid,
    #[error("path does not verify to an authority of {0}: {1}")]
    Untrusted(String, String),
}

impl SvidError {
    /// The SPEC section 10 reason code for this failure.
    pub fn reason(&self) -> crate::reason::Reason {
        match self {
            SvidError::UnknownDomain(_) => crate::reason::Reason::UnknownDomain,
            _ => crate::reason::Reason::BadSvid,
        }
    }
}

/// A validated X509-SVID.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedSvid {
    pub id: SpiffeId,
    pub not_after: Instant,
    /// SHA-256 of the leaf DER (RFC 8705 `x5t#S256`).
    pub leaf_sha256: [u8; 32],
}

fn signature_algorithms() -> &'static [&'static dyn SignatureVerificationAlgorithm] {
    webpki::ALL_VERIFICATION_ALGS
}

/// Extracts the single SPIFFE ID of a leaf certificate, with the structural checks of the
/// X509-SVID standard that do not need a bundle.
pub fn leaf_spiffe_id(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Parse(0, format!("subjectAltName: {e}")))?
        .ok_or(SvidError::NoUriSan)?;
    let mut uris = san.value.general_names.iter().filter_map(|g| match g {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let uri = uris.next().ok_or(SvidError::NoUriSan)?;
    if uris.next().is_some() {
        return Err(SvidError::MultipleUriSans);
    }
    let id = SpiffeId::parse(uri).map_err(SvidError::BadId)?;
    if id.path().is_empty() {
        return Err(SvidError::RootId);
    }
    Ok(id)
}

fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let id = leaf_spiffe_id(cert)?;
    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidError::Parse(0, format!("basicConstraints: {e}")))?;
    if bc.map(|b| b.value.ca).unwrap_or(false) {
        return Err(SvidError::LeafIsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Parse(0, format!("keyUsage: {e}")))?
        .ok_or(SvidError::NoKeyUsage)?;
    if !ku.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(SvidError::LeafKeyCertSign);
    }
    if ku.value.crl_sign() {
        return Err(SvidError::LeafCrlSign);
    }
    Ok(id)
}

fn check_intermediate(i: usize, cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidError::Parse(i, format!("basicConstraints: {e}")))?;
    if !bc.map(|b| b.value.ca).unwrap_or(false) {
        return Err(SvidError::IntermediateNotCa(i));
    }
    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Parse(i, format!("keyUsage: {e}")))?;
    if !ku.map(|k| k.value.key_cert_sign()).unwrap_or(false) {
        return Err(SvidError::IntermediateNoKeyCertSign(i));
    }
    Ok(())
}

fn parse_cert(i: usize, der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| SvidError::Parse(i, e.to_string()))?;
    if !rest.is_empty() {
        return Err(SvidError::Parse(
            i,
            "trailing data after certificate".into(),
        ));
    }
    Ok(cert)
}

/// Checks only the structural rules (no bundle, no time): for conformance data whose roots are
/// not at hand.
pub fn check_structure(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, SvidError> {
    let leaf = chain.first().ok_or(SvidError::Empty)?;
    if chain.len() > MAX_SVID_CHAIN_CERTS || chain.iter().any(|c| c.len() > MAX_SVID_CERT_BYTES) {
        return Err(SvidError::TooLarge);
    }
    let id = check_leaf(&parse_cert(0, leaf)?)?;
    for (i, c) in chain.iter().enumerate().skip(1) {
        check_intermediate(i, &parse_cert(i, c)?)?;
    }
    Ok(id)
}

/// Validates an X509-SVID chain (leaf first) at `now` against the bundle of the leaf's own trust
/// domain.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: Instant,
    usage: SvidUsage,
) -> Result<VerifiedSvid, SvidError> {
    let id = check_structure(chain)?;
    let bundle = bundles
        .get_str(id.trust_domain_str())
        .ok_or_else(|| SvidError::UnknownDomain(id.trust_domain_str().to_string()))?;
    let leaf = &chain[0];
    let ee = EndEntityCert::try_from(leaf).map_err(|e| SvidError::Parse(0, format!("{e:?}")))?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.max(0) as u64));
    ee.verify_for_usage(
        signature_algorithms(),
        bundle.trust_anchors(),
        &chain[1..],
        time,
        usage,
        None,
        None,
    )
    .map_err(|e| match e {
        webpki::Error::CertExpired { .. } => SvidError::Expired,
        webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
        webpki::Error::CaUsedAsEndEntity => SvidError::LeafIsCa,
        other => SvidError::Untrusted(id.trust_domain_str().to_string(), format!("{other:?}")),
    })?;
    let not_after = parse_cert(0, leaf)?.validity().not_after.timestamp();
    Ok(VerifiedSvid {
        id,
        not_after,
        leaf_sha256: crate::crypto::sha256(leaf),
    })
}

/// The public key of a leaf certificate, for verifying a JWS it signed (P-256 or Ed25519 only).
pub fn leaf_verifying_key(leaf: &[u8]) -> Result<VerifyingKey, SvidError> {
    let cert = parse_cert(0, leaf)?;
    VerifyingKey::from_spki(cert.public_key()).map_err(|e| SvidError::Parse(0, e.to_string()))
}

#[cfg(test)]
mod tests {
    // Conformance data is exercised in tests/spiffe_conformance.rs; generated PKI in
    // tests/init_pki.rs. Here: inputs that must fail before any bundle is consulted.
    use super::*;

    #[test]
    fn empty_and_garbage() {
        let bundles = BundleSet::new();
        assert_eq!(
            verify_svid(&[], &bundles, 0, SvidUsage::Any),
            Err(SvidError::Empty)
        );
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            verify_svid(&[junk], &bundles, 0, SvidUsage::Any),
            Err(SvidError::Parse(0, _))
        ));
        let big = CertificateDer::from(vec![0u8; MAX_SVID_CERT_BYTES + 1]);
        assert_eq!(
            verify_svid(&[big], &bundles, 0, SvidUsage::Any),
            Err(SvidError::TooLarge)
        );
        let many: Vec<CertificateDer<'static>> = (0..=MAX_SVID_CHAIN_CERTS)
            .map(|_| CertificateDer::from(vec![0u8; 4]))
            .collect();
        assert_eq!(
            verify_svid(&many, &bundles, 0, SvidUsage::Any),
            Err(SvidError::TooLarge)
        );
    }
}
