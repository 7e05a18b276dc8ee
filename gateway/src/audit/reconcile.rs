//! Reconciliation of two domains' exports (filled in below).
