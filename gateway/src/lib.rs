//! fedgate: a boundary gateway for zero-trust delegation between organizations whose AI
//! agents delegate work to each other. One gateway per SPIFFE trust domain verifies internal
//! delegation chains, strips internal credentials, re-issues bounded cross-domain tokens,
//! verifies foreign tokens against partner bundles and signed federation agreements, and keeps a
//! tamper-evident audit log both sides can reconcile.
//!
//! Pure modules (`spiffe`, `scope`, `chain`, `agreement`, `federation`, the core of `audit`)
//! take bytes, key material and the time as values; `store`, `server` and `cli` do the I/O.

pub mod agreement;
pub mod audit;
pub mod chain;
pub mod cli;
pub mod crypto;
pub mod demo;
pub mod devkit;
pub mod federation;
pub mod files;
pub mod hygiene;
pub mod jcs;
pub mod jose;
pub mod provision;
pub mod reason;
pub mod scope;
pub mod server;
pub mod spiffe;
pub mod store;
pub mod time;
pub mod witness;

pub use reason::Reason;
