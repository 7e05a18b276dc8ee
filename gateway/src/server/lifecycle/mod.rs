//! Trust that changes while the gateway runs, one file per loop: loading and live reload
//! (SIGHUP, `POST /v1/reload`, file changes; all or nothing) here, partner bundle refresh
//! (`bundles.rs`), gateway key rotation (`rotation.rs`), and revocation with signed notices to
//! every partner plus the replay-cache sweep (`revocation.rs`), and submitting our checkpoints
//! to partners' witnesses (`witness.rs`).

mod bundles;
mod revocation;
mod rotation;
mod witness;

pub use bundles::{
    apply_bundle, fetch_bundle, may_force, refresh_loop, refresh_now, request_refresh,
    DEFAULT_REFRESH, FORCED_REFRESH_MIN_GAP, MAX_BACKOFF, MIN_REFRESH,
};
pub use revocation::{notice_loop, revoke, sweep_loop, NOTICE_RETRY, SWEEP_INTERVAL};
pub use rotation::{
    initial_signing_key, new_rotation, parse_rotation, read_rotation, rotation_path, rotation_step,
    stage_rotation, Rotation,
};
pub use witness::{
    cosigned_note, cosigned_path, export_witness, witness_loop, witnessed_path,
    WITNESS_EVERY_RECORDS, WITNESS_INTERVAL,
};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::config::{self, Validated};
use super::state::Gateway;
use super::trust::Trust;
use crate::agreement::rego::{LocalPolicy, MAX_REGO_BYTES};
use crate::spiffe::{Bundle, TrustDomain};

/// How often files are checked for changes (reload within 2 s of a change).
pub const WATCH_INTERVAL: Duration = Duration::from_millis(750);

/// Loads everything reloadable: bundles (files, replaced by a saved last-good bundle of a
/// higher sequence — a partner's refreshed one, or with replicas our own after a rotation),
/// activated agreements, local Rego and the strip lists.
pub fn load_trust(
    cfg: &Validated,
    saved: &[(String, Vec<u8>)],
    generation: u64,
) -> Result<Trust, Vec<String>> {
    let mut problems = Vec::new();
    let mut bundles = crate::files::load_bundle_dir(&cfg.bundles_dir)?;
    if bundles.get(&cfg.trust_domain).is_none() {
        problems.push(format!(
            "{}: no bundle for the local domain {}",
            cfg.bundles_dir.display(),
            cfg.trust_domain
        ));
    }
    for (td, doc) in saved {
        let Ok(td) = TrustDomain::parse(td) else {
            continue;
        };
        // Only domains we have a bundle file for: the files say whom we trust at all.
        let Some(file_seq) = bundles.get(&td).map(|b| b.sequence.unwrap_or(0)) else {
            continue;
        };
        if let Ok(b) = Bundle::parse(td.clone(), doc) {
            if b.sequence.unwrap_or(0) > file_seq {
                bundles.insert(b);
            }
        }
    }
    let agreements =
        match crate::files::load_agreements(&cfg.agreements_dir, &bundles, Some(&cfg.trust_domain))
        {
            Ok(a) => a.into_iter().map(Arc::new).collect::<Vec<_>>(),
            Err(p) => {
                problems.extend(p);
                vec![]
            }
        };
    let mut modules = Vec::new();
    for r in &cfg.rego {
        match crate::files::read_text_limited(r, MAX_REGO_BYTES) {
            Ok(t) => modules.push((r.display().to_string(), t)),
            Err(e) => problems.push(e.to_string()),
        }
    }
    let policy = if modules.is_empty() {
        None
    } else {
        match LocalPolicy::compile(&modules) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                problems.push(format!("policy.rego: {e}"));
                None
            }
        }
    };
    let strip_extra = header_names(&cfg.strip_extra);
    let strip_ingress = header_names(&cfg.strip_ingress);
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut partners: Vec<TrustDomain> = agreements
        .iter()
        .flat_map(|a| a.domains.iter().map(|d| d.trust_domain.clone()))
        .filter(|td| *td != cfg.trust_domain)
        .collect();
    partners.sort();
    partners.dedup();
    Ok(Trust {
        bundles,
        agreements,
        policy,
        strip_extra,
        strip_ingress,
        partners,
        generation,
    })
}

fn header_names(list: &[String]) -> Vec<http::HeaderName> {
    list.iter()
        .filter_map(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
        .collect()
}

/// Reloads atomically: on any problem the old trust stays and every problem is returned.
pub async fn reload(gw: &Gateway) -> Result<serde_json::Value, Vec<String>> {
    let _g = gw.reload_lock.lock().await;
    let fresh = config::load(&gw.cfg.path)?;
    // Listeners, identity and keys are fixed for the life of the process; the rest reloads.
    let mut cfg = gw.cfg.clone();
    cfg.strip_extra = fresh.strip_extra;
    cfg.strip_ingress = fresh.strip_ingress;
    cfg.rego = fresh.rego;
    let old = gw.trust.get();
    // The strip lists of the new config live in the trust, since `gw.cfg` itself is immutable.
    let saved = gw
        .state
        .saved_bundles()
        .await
        .map_err(|e| vec![e.to_string()])?;
    let t = load_trust(&cfg, &saved, old.generation + 1)?;
    let summary = serde_json::json!({
        "reloaded": true,
        "generation": t.generation,
        "agreements": t.agreements.iter().map(|a| a.agr()).collect::<Vec<_>>(),
        "bundles": t.bundles.domains().map(|d| d.to_string()).collect::<Vec<_>>(),
        "rego_modules": t.policy.as_ref().map(|p| p.module_names().to_vec()).unwrap_or_default(),
        "strip_extra": t.strip_extra.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
        "strip_ingress": t.strip_ingress.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
    });
    gw.trust.set(t);
    gw.chains.clear();
    gw.metrics.inc("fedgate_reloads_total", &[("result", "ok")]);
    tracing::info!(generation = old.generation + 1, "trust reloaded");
    Ok(summary)
}

/// Replaces one bundle in the current trust (partner refresh, local rotation).
pub(crate) fn swap_bundle(gw: &Gateway, b: Bundle) {
    let old = gw.trust.get();
    let mut bundles = old.bundles.clone();
    bundles.insert(b);
    gw.trust.set(Trust {
        bundles,
        agreements: old.agreements.clone(),
        policy: old.policy.clone(),
        strip_extra: old.strip_extra.clone(),
        strip_ingress: old.strip_ingress.clone(),
        partners: old.partners.clone(),
        generation: old.generation + 1,
    });
    gw.chains.clear();
}

// ---- live reload on file change ----

fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut v = Vec::new();
    for p in paths {
        let mut entries = vec![p.clone()];
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                entries.extend(rd.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
        for e in entries {
            let m = std::fs::metadata(&e).ok();
            v.push((
                e,
                m.as_ref().map(|m| m.len()).unwrap_or(0),
                m.and_then(|m| m.modified().ok()),
            ));
        }
    }
    v.sort();
    v
}

fn watched(gw: &Gateway) -> Vec<PathBuf> {
    let mut v = vec![
        gw.cfg.path.clone(),
        gw.cfg.bundles_dir.clone(),
        gw.cfg.agreements_dir.clone(),
        rotation::rotation_path(&gw.cfg.data_dir),
    ];
    v.extend(gw.cfg.rego.iter().cloned());
    v
}

/// Reloads when a watched file changes; also drives key rotation.
pub async fn watch_loop(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut last = fingerprint(&watched(&gw));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = rotation_step(&gw).await {
            tracing::error!(error = %e, "key rotation step failed");
        }
        if !gw.cfg.watch {
            continue;
        }
        let now = fingerprint(&watched(&gw));
        if now != last {
            match reload(&gw).await {
                Ok(_) => {}
                Err(p) => {
                    gw.metrics
                        .inc("fedgate_reloads_total", &[("result", "rejected")]);
                    tracing::error!(problems = ?p, "reload rejected; keeping the previous trust");
                }
            }
            last = fingerprint(&watched(&gw));
        }
    }
}
