//! SPIFFE identities (pure): SPIFFE IDs and trust domains, trust bundles, and X509-SVID
//! validation against the bundle of an ID's own trust domain.

pub mod bundle;
pub mod id;
pub mod pki;
pub mod svid;

pub use bundle::{Bundle, BundleError, BundleSet, KeyError, KeyRole};
pub use id::{IdError, IdPattern, SpiffeId, TrustDomain};
pub use svid::{verify_svid, SvidError, SvidUsage, VerifiedSvid};
