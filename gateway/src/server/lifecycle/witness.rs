//! Submitting our own checkpoints to each partner's witness (C2SP tlog-witness) and keeping
//! the cosignatures: every `WITNESS_INTERVAL` while the log grows, and at once when it has grown
//! by `WITNESS_EVERY_RECORDS`. A partner's cosigned checkpoint of our log is kept in
//! `<data_dir>/audit/cosigned/<partner>.note` (our signature and the partner's), which
//! `GET /v1/audit/checkpoint` and `fedgate audit export` publish.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;

use super::super::state::Gateway;
use crate::audit::checkpoint::{self, Checkpoint};
use crate::spiffe::{KeyRole, SpiffeId};
use crate::witness::{self, AddCheckpoint};

/// How often a growing log's latest checkpoint is submitted to each partner.
pub const WITNESS_INTERVAL: Duration = Duration::from_secs(2);
/// Submitted sooner when the log has grown by this many records since the last submission.
pub const WITNESS_EVERY_RECORDS: u64 = 1_000;
/// How often the loop looks at the log's size.
const TICK: Duration = Duration::from_millis(200);
/// The largest witness answer read (a few signature lines).
const MAX_ANSWER_BYTES: usize = 8 * 1024;

/// Where a partner's cosigned checkpoint of our log is kept.
pub fn cosigned_path(data_dir: &std::path::Path, partner: &str) -> PathBuf {
    data_dir
        .join("audit")
        .join("cosigned")
        .join(format!("{partner}.note"))
}

/// Where a partner log's checkpoint that our witness cosigned is mirrored for exports.
pub fn witnessed_path(data_dir: &std::path::Path, origin: &str) -> PathBuf {
    data_dir
        .join("witness")
        .join("witnessed")
        .join(format!("{}.note", origin.replace('/', "_")))
}

/// Our latest checkpoint with every cosignature we hold for exactly that tree head.
pub fn cosigned_note(data_dir: &std::path::Path, note: &str) -> String {
    let Ok(body) = witness::body(note) else {
        return note.to_string();
    };
    let mut out = note.to_string();
    let Ok(rd) = std::fs::read_dir(data_dir.join("audit").join("cosigned")) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for p in paths {
        let Ok(c) = crate::files::read_text_limited(&p, checkpoint::MAX_NOTE_BYTES) else {
            continue;
        };
        if witness::body(&c).ok() == Some(body) {
            out = witness::add_signatures(&out, &c[body.len()..]);
        }
    }
    out
}

/// What an export carries beside its checkpoint (`FILE.witness`): the checkpoints of our log
/// that partners cosigned (`cosigned`) and the partner checkpoints our witness cosigned
/// (`witnessed`), each a whole signed note.
pub fn export_witness(data_dir: &std::path::Path) -> serde_json::Value {
    let read_all = |dir: PathBuf| -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.sort();
        paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "note"))
            .filter_map(|p| crate::files::read_text_limited(p, checkpoint::MAX_NOTE_BYTES).ok())
            .collect()
    };
    serde_json::json!({
        "cosigned": read_all(data_dir.join("audit").join("cosigned")),
        "witnessed": read_all(data_dir.join("witness").join("witnessed")),
    })
}

/// Every partner gateway we hold an agreement with: trust domain → (gateway id, URL).
fn partners(gw: &Gateway) -> HashMap<String, (SpiffeId, String)> {
    let trust = gw.trust.get();
    let mut out = HashMap::new();
    for a in trust.agreements.iter() {
        if let Some(d) = a.partner_of(&gw.cfg.trust_domain) {
            out.entry(d.gateway_id.trust_domain_str().to_string())
                .or_insert_with(|| (d.gateway_id.clone(), d.gateway_url.clone()));
        }
    }
    out
}

pub async fn witness_loop(gw: Arc<Gateway>, mut stop: tokio::sync::watch::Receiver<bool>) {
    // Per partner: the size it last cosigned, and when we last submitted.
    let mut cosigned: HashMap<String, u64> = HashMap::new();
    let mut last_try: HashMap<String, (Instant, u64)> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        let Some((cp, note)) = gw.log.latest_checkpoint() else {
            continue;
        };
        if cp.size == 0 {
            continue;
        }
        for (td, (gid, url)) in partners(&gw) {
            let known = *cosigned.entry(td.clone()).or_insert_with(|| {
                crate::files::read_text_limited(
                    &cosigned_path(&gw.cfg.data_dir, &td),
                    checkpoint::MAX_NOTE_BYTES,
                )
                .ok()
                .and_then(|n| checkpoint::peek(&n).ok())
                .map(|c| c.size)
                .unwrap_or(0)
            });
            if known == cp.size {
                continue;
            }
            if let Some((at, size)) = last_try.get(&td) {
                let due = at.elapsed() >= WITNESS_INTERVAL
                    || cp.size.saturating_sub(*size) >= WITNESS_EVERY_RECORDS;
                if !due {
                    continue;
                }
            }
            last_try.insert(td.clone(), (Instant::now(), cp.size));
            match submit(&gw, &td, &gid, &url, &cp, &note, known).await {
                Ok(size) => {
                    cosigned.insert(td.clone(), size);
                }
                Err(Failure::Behind(size)) => {
                    // The partner has cosigned another size: the next round proves from there.
                    cosigned.insert(td.clone(), size);
                }
                Err(Failure::Other(e)) => {
                    gw.metrics
                        .inc("fedgate_witness_submit_failures_total", &[("partner", &td)]);
                    tracing::warn!(partner = %td, error = %e, "checkpoint not cosigned yet; will retry");
                }
            }
        }
    }
}

enum Failure {
    /// 409 with the size the witness holds.
    Behind(u64),
    Other(String),
}

async fn submit(
    gw: &Gateway,
    td: &str,
    gid: &SpiffeId,
    url: &str,
    cp: &Checkpoint,
    note: &str,
    old: u64,
) -> Result<u64, Failure> {
    let other = |e: String| Failure::Other(e);
    let proof = if old == 0 || old == cp.size {
        vec![]
    } else {
        gw.log
            .consistency_proof(old, cp.size)
            .ok_or_else(|| other(format!("no consistency proof from {old} to {}", cp.size)))?
    };
    let body = AddCheckpoint {
        old,
        proof,
        checkpoint: note.to_string(),
    }
    .encode();
    let client = gw.partner_client(gid).map_err(other)?;
    let uri: http::Uri = format!("{url}/v1/witness/add-checkpoint")
        .parse()
        .map_err(|e: http::uri::InvalidUri| other(e.to_string()))?;
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(axum::body::Body::from(body))
        .map_err(|e| other(e.to_string()))?;
    let timeout = Duration::from_secs(gw.cfg.partner_timeout as u64);
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| other("timed out".into()))?
        .map_err(|e| other(e.to_string()))?;
    let status = resp.status();
    let answer = tokio::time::timeout(
        timeout,
        http_body_util::Limited::new(resp.into_body(), MAX_ANSWER_BYTES).collect(),
    )
    .await
    .map_err(|_| other("answer timed out".into()))?
    .map_err(|e| other(e.to_string()))?
    .to_bytes();
    let answer = String::from_utf8_lossy(&answer).to_string();
    if status == http::StatusCode::CONFLICT {
        if let Ok(size) = answer.trim_end_matches('\n').parse::<u64>() {
            if size > cp.size {
                gw.metrics
                    .inc("fedgate_witness_rollback_total", &[("partner", td)]);
                tracing::error!(partner = %td, cosigned = size, ours = cp.size, "the partner cosigned a larger tree of our log than we have: our log lost records, or another signer uses our origin");
                return Err(other(format!(
                    "partner holds size {size}, larger than ours"
                )));
            }
            return Err(Failure::Behind(size));
        }
    }
    if !status.is_success() {
        return Err(other(format!(
            "witness answered {status}: {}",
            answer.trim()
        )));
    }
    // Keep only the partner witness's cosignatures that verify with its bundle.
    let bundle = {
        let trust = gw.trust.get();
        crate::spiffe::TrustDomain::parse(td)
            .ok()
            .and_then(|t| trust.bundles.get(&t).cloned())
    }
    .ok_or_else(|| other(format!("no bundle for {td}")))?;
    let name = witness::witness_name(td);
    let merged = witness::add_signatures(note, &answer);
    let now = crate::time::now().max(0) as u64;
    let valid = bundle.keys_with_role(KeyRole::Audit).any(|k| {
        matches!(
            witness::verify_cosignature(&merged, &name, k.key.raw(), now),
            Ok(Some(_))
        )
    });
    if !valid {
        return Err(other(
            "the answer carries no valid cosignature of the partner's witness".into(),
        ));
    }
    let path = cosigned_path(&gw.cfg.data_dir, td);
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| other(e.to_string()))?;
    }
    // Our signature and the partner's, nothing else.
    let lines: String = answer
        .split('\n')
        .filter(|l| l.starts_with(&format!("{}{name} ", checkpoint::SIG_PREFIX)))
        .map(|l| format!("{l}\n"))
        .collect();
    let keep = witness::add_signatures(note, &lines);
    crate::files::write_atomic(&path, keep.as_bytes(), 0o644).map_err(|e| other(e.to_string()))?;
    gw.metrics.set(
        "fedgate_witness_cosigned_size",
        &[("partner", td)],
        cp.size as f64,
    );
    tracing::debug!(partner = %td, size = cp.size, "checkpoint cosigned by the partner");
    Ok(cp.size)
}
