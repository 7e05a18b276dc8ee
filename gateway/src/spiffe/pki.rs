//! A development PKI for `fedgate init`, the demo and tests: a P-256 CA per trust domain and
//! X509-SVIDs it signs, shaped exactly as the X509-SVID standard asks (one URI SAN, critical
//! `CA:false`, digitalSignature key usage, CA with keyCertSign and cRLSign). Production
//! deployments bring certificates from SPIRE or their own CA; fedgate only validates them.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::id::{SpiffeId, TrustDomain};
use crate::time::Instant;

#[derive(Debug, thiserror::Error)]
#[error("certificate generation failed: {0}")]
pub struct PkiError(String);

fn err(e: impl std::fmt::Display) -> PkiError {
    PkiError(e.to_string())
}

/// A CA: certificate and key.
pub struct Ca {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// An Ed25519 key pair derived from a 32-byte seed, as rcgen and PKCS#8 DER: deterministic
/// keys for reproducible test vectors. Never use for real identities.
pub fn ed25519_from_seed(seed: &[u8; 32]) -> Result<(KeyPair, Zeroizing<Vec<u8>>), PkiError> {
    let kp = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed).map_err(err)?;
    let der = Zeroizing::new(kp.to_pkcs8().map_err(err)?.as_ref().to_vec());
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_slice());
    let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519).map_err(err)?;
    Ok((key, der))
}

/// An issued SVID: leaf certificate and its PKCS#8 private key.
pub struct IssuedSvid {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pkcs8_der: Zeroizing<Vec<u8>>,
    pub key_pem: Zeroizing<String>,
}

fn when(t: Instant) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(t).map_err(err)
}

impl Ca {
    /// A self-signed P-256 CA for `td`, valid from `now - 5 min` for `validity_secs`.
    pub fn generate(td: &TrustDomain, now: Instant, validity_secs: i64) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        Self::with_key(td, key, now - 300, now + validity_secs, None)
    }

    /// A self-signed CA with a given key, validity and serial (deterministic test vectors use
    /// Ed25519 keys from fixed seeds and fixed times).
    pub fn with_key(
        td: &TrustDomain,
        key: KeyPair,
        not_before: Instant,
        not_after: Instant,
        serial: Option<u64>,
    ) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, td.as_str());
        dn.push(DnType::CommonName, format!("{} dev CA", td.as_str()));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.subject_alt_names = vec![SanType::URI(td.id_string().try_into().map_err(err)?)];
        params.not_before = when(not_before)?;
        params.not_after = when(not_after)?;
        params.use_authority_key_identifier_extension = false;
        if let Some(n) = serial {
            params.serial_number = Some(rcgen::SerialNumber::from(n));
        }
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Ca {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key PEM (as `init` wrote them).
    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(err)?;
        let der: rustls_pki_types::CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes()).map_err(err)?;
        let issuer = Issuer::from_ca_cert_der(&der, key).map_err(err)?;
        Ok(Ca {
            cert_der: der.to_vec(),
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.issuer.key().serialize_pem())
    }

    /// Issues an X509-SVID for `id`, valid from `now - 5 min` for `validity_secs`, with
    /// serverAuth and clientAuth EKUs; `dns`/`ips` add SANs so stock HTTPS clients (curl) can
    /// also check the name of a gateway's listener.
    pub fn issue_svid(
        &self,
        id: &SpiffeId,
        now: Instant,
        validity_secs: i64,
        dns: &[String],
        ips: &[std::net::IpAddr],
    ) -> Result<IssuedSvid, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
        self.issue_svid_with_key(id, key, now - 300, now + validity_secs, dns, ips, None)
    }

    /// Issues an X509-SVID for a given key, validity and serial.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_svid_with_key(
        &self,
        id: &SpiffeId,
        key: KeyPair,
        not_before: Instant,
        not_after: Instant,
        dns: &[String],
        ips: &[std::net::IpAddr],
        serial: Option<u64>,
    ) -> Result<IssuedSvid, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, id.trust_domain_str());
        params.distinguished_name = dn;
        let mut sans = vec![SanType::URI(id.as_str().try_into().map_err(err)?)];
        for d in dns {
            sans.push(SanType::DnsName(d.as_str().try_into().map_err(err)?));
        }
        for ip in ips {
            sans.push(SanType::IpAddress(*ip));
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = when(not_before)?;
        params.not_after = when(not_after)?;
        params.use_authority_key_identifier_extension = true;
        if let Some(n) = serial {
            params.serial_number = Some(rcgen::SerialNumber::from(n));
        }
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        Ok(IssuedSvid {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pkcs8_der: Zeroizing::new(key.serialize_der()),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spiffe::{verify_svid, Bundle, BundleSet, SvidError, SvidUsage};
    use rustls_pki_types::CertificateDer;

    #[test]
    fn issued_svid_validates_only_in_its_domain() {
        let now = 1_800_000_000;
        let td = TrustDomain::parse("company.com").unwrap();
        let ca = Ca::generate(&td, now, 86_400).unwrap();
        let id = SpiffeId::parse("spiffe://company.com/agent/planning/p1").unwrap();
        let svid = ca.issue_svid(&id, now, 3600, &[], &[]).unwrap();
        let mut b = Bundle::new(td.clone());
        b.add_x509_authority(ca.cert_der.clone()).unwrap();
        let mut set = BundleSet::new();
        set.insert(b);
        let chain = [CertificateDer::from(svid.cert_der.clone())];
        let v = verify_svid(&chain, &set, now, SvidUsage::Any).unwrap();
        assert_eq!(v.id, id);
        assert_eq!(
            verify_svid(&chain, &set, now + 7200, SvidUsage::Client),
            Err(SvidError::Expired)
        );
        assert_eq!(
            verify_svid(&chain, &set, now - 3600, SvidUsage::Server),
            Err(SvidError::NotYetValid)
        );

        // A foreign CA that issues an SVID claiming company.com is not trusted, even when the
        // foreign CA's own domain is in the set.
        let vtd = TrustDomain::parse("vendor.example").unwrap();
        let evil = Ca::generate(&vtd, now, 86_400).unwrap();
        let forged = evil.issue_svid(&id, now, 3600, &[], &[]).unwrap();
        let mut vb = Bundle::new(vtd);
        vb.add_x509_authority(evil.cert_der.clone()).unwrap();
        set.insert(vb);
        let r = verify_svid(
            &[CertificateDer::from(forged.cert_der)],
            &set,
            now,
            SvidUsage::Any,
        );
        assert!(matches!(r, Err(SvidError::Untrusted(_, _))), "{r:?}");

        // Reloading the CA from PEM issues certificates that still chain.
        let again = Ca::load(&ca.cert_pem, &ca.key_pem()).unwrap();
        let s2 = again.issue_svid(&id, now, 3600, &[], &[]).unwrap();
        verify_svid(
            &[CertificateDer::from(s2.cert_der)],
            &set,
            now,
            SvidUsage::Any,
        )
        .unwrap();
    }
}
