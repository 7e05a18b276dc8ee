//! The gateway server: config, mTLS listeners, egress and ingress handlers, admin endpoints.

pub mod config;
