//! The trust in force: bundles, active agreements, local Rego and the strip list, replaced
//! atomically as one value on every reload, refresh or rotation; and the bookkeeping of the
//! lifecycle tasks that replace it. Imports nothing else of the server, so the listeners'
//! verifiers, the state and the lifecycle can all depend on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant as Clock;

use crate::agreement::rego::LocalPolicy;
use crate::agreement::Agreement;
use crate::spiffe::{BundleSet, TrustDomain};

/// Everything a reload replaces, as one immutable value.
#[derive(Debug)]
pub struct Trust {
    pub bundles: BundleSet,
    pub agreements: Vec<Arc<Agreement>>,
    pub policy: Option<Arc<LocalPolicy>>,
    /// Extra header names stripped on egress (lower-case).
    pub strip_extra: Vec<http::HeaderName>,
    /// Extra header names stripped on ingress, before forwarding to an upstream.
    pub strip_ingress: Vec<http::HeaderName>,
    /// Trust domains named by an agreement with us.
    pub partners: Vec<TrustDomain>,
    pub generation: u64,
}

impl Trust {
    /// Trust in `bundles` alone: no agreements, policy or strip lists (clients of the CLI,
    /// the demo and tests that only verify peers).
    pub fn with_bundles(bundles: BundleSet) -> Trust {
        Trust {
            bundles,
            agreements: vec![],
            policy: None,
            strip_extra: vec![],
            strip_ingress: vec![],
            partners: vec![],
            generation: 0,
        }
    }

    pub fn is_partner(&self, td: &str) -> bool {
        self.partners.iter().any(|p| p.as_str() == td)
    }
}

/// The current trust, replaced atomically.
#[derive(Debug)]
pub struct TrustHandle(RwLock<Arc<Trust>>);

impl TrustHandle {
    pub fn new(t: Trust) -> Self {
        TrustHandle(RwLock::new(Arc::new(t)))
    }

    pub fn get(&self) -> Arc<Trust> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set(&self, t: Trust) {
        match self.0.write() {
            Ok(mut g) => *g = Arc::new(t),
            Err(p) => *p.into_inner() = Arc::new(t),
        }
    }
}

/// Runtime bookkeeping of the lifecycle tasks.
#[derive(Default)]
pub struct LifeState {
    pub refresh_wake: tokio::sync::Notify,
    pub notice_wake: tokio::sync::Notify,
    pub(crate) forced: Mutex<HashMap<String, Clock>>,
    pub(crate) fetch_lock: tokio::sync::Mutex<()>,
    pub(crate) last_ok: Mutex<HashMap<String, Clock>>,
}
