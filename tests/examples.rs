//! The examples of examples/ run as a user runs them (`cargo run --example NAME`) and succeed.
#![allow(dead_code)]

#[path = "../examples/connect_to_vendor.rs"]
mod connect_to_vendor;

#[path = "../examples/accept_partner.rs"]
mod accept_partner;

#[path = "../examples/audit_reconcile.rs"]
mod audit_reconcile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_vendor_runs() {
    connect_to_vendor::run().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_partner_runs() {
    accept_partner::run().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reconcile_runs() {
    audit_reconcile::run().await.unwrap();
}
