//! In-memory development domains: a CA, IdP, gateway and audit keys, agents with X509-SVIDs,
//! and the matching bundle. Used by `fedgate init`, the demo, tests, the chain test-vector
//! generator and benches, so all of them build identities the same way.

use crate::jose::SigningKey;
use crate::spiffe::pki::{Ca, IssuedSvid, PkiError};
use crate::spiffe::{Bundle, BundleSet, KeyRole, SpiffeId, TrustDomain};
use crate::time::Instant;

/// Validity of a dev CA.
pub const DEV_CA_VALIDITY: i64 = 365 * 86_400;
/// Validity of dev SVIDs: long enough for a development setup, short enough to notice.
pub const DEV_SVID_VALIDITY: i64 = 30 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("{0}")]
    Other(String),
}

fn other(e: impl std::fmt::Display) -> DevError {
    DevError::Other(e.to_string())
}

/// An agent (or any workload) with its SVID.
pub struct DevAgent {
    pub id: SpiffeId,
    pub key: SigningKey,
    /// SVID chain, DER, leaf first.
    pub certs: Vec<Vec<u8>>,
    pub svid: IssuedSvid,
}

/// A whole development trust domain.
pub struct DevDomain {
    pub td: TrustDomain,
    pub ca: Ca,
    pub idp_id: SpiffeId,
    pub idp_key: SigningKey,
    pub idp_key_der: zeroize::Zeroizing<Vec<u8>>,
    pub gateway_id: SpiffeId,
    pub gateway_key: SigningKey,
    pub gateway_key_der: zeroize::Zeroizing<Vec<u8>>,
    pub gateway_svid: IssuedSvid,
    pub audit_key: SigningKey,
    pub audit_key_der: zeroize::Zeroizing<Vec<u8>>,
    pub bundle: Bundle,
}

impl DevDomain {
    /// A fresh domain `td` whose certificates are valid from `now`.
    pub fn new(td: &str, now: Instant) -> Result<DevDomain, DevError> {
        let td = TrustDomain::parse(td).map_err(other)?;
        let ca = Ca::generate(&td, now, DEV_CA_VALIDITY)?;
        let idp_id = td.id_with_path("/idp").map_err(other)?;
        let gateway_id = td.id_with_path("/gateway").map_err(other)?;
        let (idp_key, idp_key_der) = SigningKey::generate_p256().map_err(other)?;
        let (gateway_key, gateway_key_der) = SigningKey::generate_p256().map_err(other)?;
        let (audit_key, audit_key_der) = SigningKey::generate_ed25519().map_err(other)?;
        let gateway_svid = ca.issue_svid(
            &gateway_id,
            now,
            DEV_SVID_VALIDITY,
            &["localhost".to_string()],
            &[std::net::IpAddr::from([127, 0, 0, 1])],
        )?;
        let mut bundle = Bundle::new(td.clone());
        bundle.sequence = Some(1);
        bundle.refresh_hint = Some(300);
        bundle
            .add_x509_authority(ca.cert_der.clone())
            .map_err(other)?;
        bundle
            .add_jwt_authority(idp_key.kid(), idp_key.public().clone(), KeyRole::Idp)
            .map_err(other)?;
        bundle
            .add_jwt_authority(
                gateway_key.kid(),
                gateway_key.public().clone(),
                KeyRole::Gateway,
            )
            .map_err(other)?;
        bundle
            .add_jwt_authority(audit_key.kid(), audit_key.public().clone(), KeyRole::Audit)
            .map_err(other)?;
        Ok(DevDomain {
            td,
            ca,
            idp_id,
            idp_key,
            idp_key_der,
            gateway_id,
            gateway_key,
            gateway_key_der,
            gateway_svid,
            audit_key,
            audit_key_der,
            bundle,
        })
    }

    /// An SVID for `spiffe://<td>/agent/<kind>/<instance>`.
    pub fn agent(&self, kind: &str, instance: &str, now: Instant) -> Result<DevAgent, DevError> {
        let id = self
            .td
            .id_with_path(&format!("/agent/{kind}/{instance}"))
            .map_err(other)?;
        self.workload(id, now)
    }

    /// An SVID for any SPIFFE ID of this domain.
    pub fn workload(&self, id: SpiffeId, now: Instant) -> Result<DevAgent, DevError> {
        let svid = self.ca.issue_svid(&id, now, DEV_SVID_VALIDITY, &[], &[])?;
        let key = SigningKey::from_pkcs8(&svid.key_pkcs8_der).map_err(other)?;
        Ok(DevAgent {
            id,
            key,
            certs: vec![svid.cert_der.clone()],
            svid,
        })
    }

    /// A bundle set holding this domain's bundle (and any others given).
    pub fn bundle_set(domains: &[&DevDomain]) -> BundleSet {
        let mut s = BundleSet::new();
        for d in domains {
            s.insert(d.bundle.clone());
        }
        s
    }
}
