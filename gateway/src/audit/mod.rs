//! The shared, tamper-evident audit log (SPEC section 8): canonical records, the RFC 9162
//! Merkle tree, C2SP signed checkpoints, exports and their verification, and reconciliation of
//! two domains' exports. Pure: the log of record on disk is `store::log`.

pub mod checkpoint;
pub mod export;
pub mod merkle;
pub mod reconcile;
pub mod record;
pub mod tiles;

pub use checkpoint::{origin_of, Checkpoint, CheckpointError};
pub use merkle::{leaf_hash, Hash, MerkleTree};
pub use record::Record;
