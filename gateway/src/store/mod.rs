//! Durable state: the audit log of record (append-only segments, group commit, fdatasync), and
//! the rest of a gateway's state behind [`StateBackend`]: embedded sled for a single gateway,
//! PostgreSQL for several replicas of one domain.

pub mod backend;
pub mod crossings;
pub mod io;
pub mod log;
pub mod postgres;
pub mod sled;
pub mod tiles;

pub use backend::{
    merge_until, QueuedNotice, Revocation, RevocationCache, Revoked, StateBackend, StateError,
};
pub use log::{AuditLog, LogError, Recovery};
/// The embedded (sled) state store.
pub type State = sled::State;
