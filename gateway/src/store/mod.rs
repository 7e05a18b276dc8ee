//! Durable state: the audit log of record (append-only segments, group commit, fdatasync) and
//! sled for the replay cache, revocations, indexes and last-good partner bundles.

pub mod log;
pub mod state;

pub use log::{AuditLog, LogError, Recovery};
pub use state::{merge_until, Revocation, Revoked, State, StateError};
