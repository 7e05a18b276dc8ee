//! Gateway key rotation with pre-publication: the new key is published in the local bundle
//! (sequence + 1), signs after `key_prepublish`, and the old key is dropped once every token it
//! signed has expired. The rotation state lives in the state store (a file next to sled, a row
//! in PostgreSQL), and each step is taken with compare-and-set: with replicas, whichever takes a
//! step first wins and every other replica converges on the result (the published local bundle
//! is shared through the store too). Every replica needs the new key file at the path the
//! rotation names (docs/spec-notes.md, "Rotation with replicas").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::swap_bundle;
use crate::jose::SigningKey;
use crate::server::config::Validated;
use crate::server::state::Gateway;
use crate::spiffe::{Bundle, KeyRole};

/// Longest rotation state document read.
const MAX_ROTATION_BYTES: usize = 64 * 1024;

/// Rotation state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Rotation {
    /// `requested` (by `fedgate rotate`), `published`, `active`, `done`.
    pub phase: String,
    /// The new key's PKCS#8 PEM file (at this path on every replica).
    pub key: PathBuf,
    pub requested_at: i64,
    #[serde(default)]
    pub new_kid: Option<String>,
    #[serde(default)]
    pub old_kid: Option<String>,
    #[serde(default)]
    pub activate_at: Option<i64>,
    #[serde(default)]
    pub retire_at: Option<i64>,
}

/// Where `fedgate rotate --data-dir` stages a rotation for a gateway on sled.
pub fn rotation_path(data_dir: &Path) -> PathBuf {
    data_dir.join("rotation.json")
}

pub fn parse_rotation(text: &str) -> Option<Rotation> {
    if text.len() > MAX_ROTATION_BYTES {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The rotation staged in `data_dir` (sled), if any.
pub fn read_rotation(data_dir: &Path) -> Option<Rotation> {
    let t = crate::files::read_text_limited(&rotation_path(data_dir), MAX_ROTATION_BYTES).ok()?;
    parse_rotation(&t)
}

fn to_text(r: &Rotation) -> Result<String, String> {
    serde_json::to_string_pretty(r).map_err(|e| e.to_string())
}

/// The longest token lifetime any active agreement allows, plus skew: how long an old key must
/// stay published after the last token it signed.
fn longest_ttl(gw: &Gateway) -> i64 {
    gw.trust
        .get()
        .agreements
        .iter()
        .map(|a| a.max_token_ttl + a.clock_skew)
        .max()
        .unwrap_or(0)
}

fn local_bundle(gw: &Gateway) -> Result<Bundle, String> {
    gw.trust
        .get()
        .bundles
        .get(&gw.cfg.trust_domain)
        .map(|b| (**b).clone())
        .ok_or_else(|| "no local bundle".to_string())
}

/// Publishes a new local bundle: the file, the shared store (other replicas serve it too) and
/// the trust in force.
async fn publish_local(gw: &Gateway, b: Bundle) -> Result<(), String> {
    let p = gw
        .cfg
        .bundles_dir
        .join(format!("{}.json", gw.cfg.trust_domain));
    crate::files::write_atomic(&p, b.to_json().as_bytes(), 0o644).map_err(|e| e.to_string())?;
    if gw.state.replica().is_some() {
        gw.state
            .save_bundle(
                gw.cfg.trust_domain.as_str(),
                b.sequence.unwrap_or(0),
                b.to_json().as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
    }
    swap_bundle(gw, b);
    Ok(())
}

/// With replicas: takes the local bundle another replica published, if it is newer.
async fn follow_local(gw: &Gateway) -> Result<(), String> {
    if gw.state.replica().is_none() {
        return Ok(());
    }
    let saved = gw.state.saved_bundles().await.map_err(|e| e.to_string())?;
    let td = gw.cfg.trust_domain.as_str();
    let Some((_, doc)) = saved.iter().find(|(t, _)| t == td) else {
        return Ok(());
    };
    let b = Bundle::parse(gw.cfg.trust_domain.clone(), doc).map_err(|e| e.to_string())?;
    let cur = local_bundle(gw)?.sequence.unwrap_or(0);
    if b.sequence.unwrap_or(0) > cur {
        let p = gw.cfg.bundles_dir.join(format!("{td}.json"));
        crate::files::write_atomic(&p, b.to_json().as_bytes(), 0o644).map_err(|e| e.to_string())?;
        swap_bundle(gw, b);
        tracing::info!("local bundle updated from another replica's rotation step");
    }
    Ok(())
}

/// The key the gateway signs with at start, honouring a rotation in progress.
pub fn initial_signing_key(
    cfg: &Validated,
    rotation: Option<&Rotation>,
) -> Result<SigningKey, String> {
    if let Some(r) = rotation {
        if r.phase == "active" || r.phase == "done" {
            return crate::files::read_signing_key(&r.key).map_err(|e| e.to_string());
        }
    }
    crate::files::read_signing_key(&cfg.signing_key).map_err(|e| e.to_string())
}

/// Takes the next step of a rotation if it is due, and makes this gateway's keys and bundle
/// match the rotation's phase (a replica that did not take a step follows the one that did).
pub async fn rotation_step(gw: &Gateway) -> Result<(), String> {
    let Some(raw) = gw.state.rotation().await.map_err(|e| e.to_string())? else {
        return Ok(());
    };
    let Some(mut r) = parse_rotation(&raw) else {
        return Err("the rotation state does not parse".into());
    };
    let now = crate::time::now();
    let _g = gw.reload_lock.lock().await;
    follow_local(gw).await?;
    match r.phase.as_str() {
        "requested" => {
            let key = crate::files::read_signing_key(&r.key).map_err(|e| e.to_string())?;
            let old = gw.keys.signing();
            let mut b = local_bundle(gw)?;
            let publish = b.authority(key.kid()).is_none();
            if publish {
                b.add_jwt_authority(key.kid(), key.public().clone(), KeyRole::Gateway)
                    .map_err(|e| e.to_string())?;
                b.sequence = Some(b.sequence.unwrap_or(0) + 1);
            }
            r.phase = "published".into();
            r.new_kid = Some(key.kid().to_string());
            r.old_kid = Some(old.kid().to_string());
            r.activate_at = Some(now + gw.cfg.key_prepublish);
            if gw
                .state
                .save_rotation(Some(&raw), &to_text(&r)?)
                .await
                .map_err(|e| e.to_string())?
            {
                if publish {
                    publish_local(gw, b).await?;
                }
                tracing::info!(kid = %key.kid(), activate_in = gw.cfg.key_prepublish, "new gateway key published");
            }
        }
        "published" if now >= r.activate_at.unwrap_or(i64::MAX) => {
            r.phase = "active".into();
            r.retire_at = Some(now + longest_ttl(gw));
            if gw
                .state
                .save_rotation(Some(&raw), &to_text(&r)?)
                .await
                .map_err(|e| e.to_string())?
            {
                tracing::info!("rotation: the new gateway key signs from now on");
            }
        }
        "active" if now >= r.retire_at.unwrap_or(i64::MAX) => {
            // The old key stays published while an agreement carries its signature: retiring
            // it would void the agreement on both sides at their next reload or restart.
            if let Some(old) = &r.old_kid {
                let held = crate::files::agreements_signed_by(
                    &gw.cfg.agreements_dir,
                    gw.cfg.trust_domain.as_str(),
                    old,
                );
                if !held.is_empty() {
                    tracing::warn!(
                        kid = %old,
                        agreements = %held.join(", "),
                        "old gateway key not retired: it signs these agreements; re-sign them with the new key (fedgate agreement sign, or propose a new version)"
                    );
                    gw.metrics
                        .set("fedgate_rotation_retire_blocked", &[], held.len() as f64);
                    return Ok(());
                }
            }
            gw.metrics.set("fedgate_rotation_retire_blocked", &[], 0.0);
            let mut b = local_bundle(gw)?;
            let mut changed = false;
            if let Some(old) = &r.old_kid {
                if old.as_str() != r.new_kid.as_deref().unwrap_or("") && b.remove_jwt_authority(old)
                {
                    b.sequence = Some(b.sequence.unwrap_or(0) + 1);
                    changed = true;
                }
            }
            r.phase = "done".into();
            if gw
                .state
                .save_rotation(Some(&raw), &to_text(&r)?)
                .await
                .map_err(|e| e.to_string())?
            {
                if changed {
                    publish_local(gw, b).await?;
                }
                tracing::info!("old gateway key retired");
            }
        }
        _ => {}
    }
    // Sign with the new key once the (possibly just advanced) shared phase says so.
    if r.phase == "active" || r.phase == "done" {
        if let Some(kid) = &r.new_kid {
            if gw.keys.signing().kid() != kid {
                let key = crate::files::read_signing_key(&r.key).map_err(|e| e.to_string())?;
                if let Ok(mut s) = gw.keys.signing.write() {
                    *s = Arc::new(key);
                }
                tracing::info!("signing with the new gateway key");
            }
        }
    }
    Ok(())
}

/// `fedgate rotate`: a new P-256 gateway key in `keys_dir`, and the rotation state document
/// that stages it (`previous`: the current state, which must be absent or `done`).
pub fn new_rotation(
    keys_dir: &Path,
    previous: Option<&str>,
) -> Result<(String, PathBuf, String), String> {
    if let Some(r) = previous.and_then(parse_rotation) {
        if r.phase != "done" {
            return Err(format!(
                "a rotation is already in progress (phase {})",
                r.phase
            ));
        }
    }
    let (key, der) = SigningKey::generate_p256().map_err(|e| e.to_string())?;
    let now = crate::time::now();
    let path = keys_dir.join(format!("gateway-{now}.key"));
    crate::files::write_private(
        &path,
        crate::files::pem_encode("PRIVATE KEY", &der).as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    let r = Rotation {
        phase: "requested".into(),
        key: path.clone(),
        requested_at: now,
        new_kid: Some(key.kid().into()),
        old_kid: None,
        activate_at: None,
        retire_at: None,
    };
    Ok((key.kid().to_string(), path, to_text(&r)?))
}

/// `fedgate rotate --data-dir`: stages a rotation for the gateway on sled using `data_dir`.
pub fn stage_rotation(data_dir: &Path) -> Result<(String, PathBuf), String> {
    let p = rotation_path(data_dir);
    let previous = crate::files::read_text_limited(&p, MAX_ROTATION_BYTES).ok();
    let (kid, path, text) = new_rotation(&data_dir.join("keys"), previous.as_deref())?;
    crate::files::write_atomic(&p, text.as_bytes(), 0o600).map_err(|e| e.to_string())?;
    Ok((kid, path))
}
