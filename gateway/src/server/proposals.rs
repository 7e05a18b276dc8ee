//! Agreement versions agreed between the two gateways (issue 25): one operator proposes a new
//! version (its gateway signs it and sends it to the partner gateway), the partner's operator
//! reviews the diff and accepts (its gateway countersigns and sends the signature back) or
//! rejects. Both gateways then hold the version with both signatures in their agreements
//! directory and reload; nothing activates without both signatures, since activation itself
//! checks them. And termination: a signed notice (a revocation of kind `agreement`, delivered
//! and retried like every notice), after which both sides refuse every token under the id.
//!
//! Admin listener (the operator, through the CLI): `POST /v1/agreements/proposals` (body: the
//! TOML), `GET /v1/agreements/proposals`, `POST /v1/agreements/proposals/accept` and
//! `.../reject` (`{"agr": "<id>@<hash>"}`), `POST /v1/agreements/terminate` (`{"id": ...}`).
//! Federation listener (the partner gateway's own mTLS identity only): the same three
//! proposal paths, carrying `{"agreement", "signature"}`, `{"agr", "signature"}` and
//! `{"agr"}`. Every step is an audit record (`kind` `agreement`) on both sides.
//!
//! Proposals are kept as one JSON file each under `<data_dir>/proposals/`, written atomically.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::deny::Denial;
use super::state::Gateway;
use super::tls::ConnInfo;
use super::{append, base_record, proxy};
use crate::agreement::{self, Agreement, DomainTerms};
use crate::reason::Reason;

/// Proposals received from one partner and not yet decided: a partner cannot fill the disk
/// or the operator's list.
pub const MAX_PENDING_PROPOSALS: usize = 16;
/// A proposal's body: the agreement and one signature, in JSON.
pub const MAX_PROPOSAL_BODY_BYTES: usize =
    agreement::MAX_AGREEMENT_BYTES * 2 + crate::jose::MAX_JWS_BYTES + 1024;
/// Small control bodies (`{"agr": ...}`, `{"id": ...}`, a signature).
pub const MAX_CONTROL_BODY_BYTES: usize = crate::jose::MAX_JWS_BYTES + 1024;

/// How long before a version's first use (its `valid_from` less the sender's lead) it must be
/// accepted: both gateways must hold a version before either mints under it, and the accept
/// step (a call to the partner and a reload on each side) must end inside this notice.
pub const MIN_ACTIVATION_NOTICE_SECS: i64 = 5;

/// How long a partner's request waits for this gateway's proposal lock. The operator's own
/// steps hold it across a call to the partner, so two operators acting on each other at once
/// would otherwise wait on each other until `partner_timeout`: the partner's request is
/// answered `state_unavailable` (retry) instead.
pub const PARTNER_LOCK_WAIT: Duration = Duration::from_secs(1);

/// Serializes proposal file updates of one gateway (a read-modify-write of one file), keyed by
/// its data directory: several gateways may run in one process (tests, the demo).
fn lock_of(gw: &Gateway) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::Mutex<Vec<(PathBuf, Arc<tokio::sync::Mutex<()>>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut all = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, l)) = all.iter().find(|(d, _)| *d == gw.cfg.data_dir) {
        return l.clone();
    }
    let l = Arc::new(tokio::sync::Mutex::new(()));
    all.push((gw.cfg.data_dir.clone(), l.clone()));
    l
}

/// The lock for a partner's request, or the answer to retry.
async fn partner_lock(gw: &Gateway) -> Result<tokio::sync::OwnedMutexGuard<()>, Response> {
    tokio::time::timeout(PARTNER_LOCK_WAIT, lock_of(gw).lock_owned())
        .await
        .map_err(|_| {
            Denial::new(
                Reason::StateUnavailable,
                "busy with another agreement step; retry",
                &crate::crypto::random_id(),
            )
            .into_response()
        })
}

/// One proposal, as kept on disk and listed to the operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Proposal {
    /// `<id>@<hash>` of the proposed version.
    pub agr: String,
    pub id: String,
    pub version: u64,
    /// The other party's trust domain.
    pub partner: String,
    /// `sent` (we proposed) or `received`.
    pub direction: String,
    /// `proposed` (not delivered yet), `delivered`, `received`, `accepted` or `rejected`.
    pub status: String,
    /// The TOML document as proposed.
    pub agreement: String,
    /// Our signature, once we signed.
    pub ours: Option<String>,
    /// The partner's signature, once it signed.
    pub theirs: Option<String>,
    pub at: i64,
    pub updated: i64,
}

fn dir(gw: &Gateway) -> PathBuf {
    gw.cfg.data_dir.join("proposals")
}

fn path_of(gw: &Gateway, agr: &str) -> Option<PathBuf> {
    let (_, hash) = agr.split_once('@')?;
    let hash = agreement::AgreementHash::parse(hash)?;
    Some(dir(gw).join(format!(
        "{}.json",
        hash.as_str().trim_start_matches("sha256:")
    )))
}

fn load(gw: &Gateway, agr: &str) -> Option<Proposal> {
    let p = path_of(gw, agr)?;
    let text = crate::files::read_text_limited(&p, MAX_PROPOSAL_BODY_BYTES * 2).ok()?;
    serde_json::from_str(&text).ok()
}

fn save(gw: &Gateway, p: &Proposal) -> Result<(), String> {
    let path = path_of(gw, &p.agr).ok_or("bad agr")?;
    std::fs::create_dir_all(dir(gw)).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec_pretty(p).map_err(|e| e.to_string())?;
    crate::files::write_atomic(&path, &json, 0o600).map_err(|e| e.to_string())
}

/// Every proposal on disk, oldest first; unreadable files are skipped with a warning.
pub fn list_all(gw: &Gateway) -> Vec<Proposal> {
    let Ok(rd) = std::fs::read_dir(dir(gw)) else {
        return vec![];
    };
    let mut out: Vec<Proposal> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().and_then(|x| x.to_str()) == Some("json"))
        .filter_map(|e| {
            let t = crate::files::read_text_limited(&e.path(), MAX_PROPOSAL_BODY_BYTES * 2).ok()?;
            match serde_json::from_str::<Proposal>(&t) {
                Ok(p) => Some(p),
                Err(err) => {
                    tracing::warn!(file = %e.path().display(), error = %err, "unreadable proposal file skipped");
                    None
                }
            }
        })
        .collect();
    out.sort_by_key(|p| (p.at, p.agr.clone()));
    out
}

/// The partner's terms for reaching it: those of the highest version we hold of the id, else
/// of the proposal itself.
fn partner_terms(gw: &Gateway, a: &Agreement) -> Option<DomainTerms> {
    let trust = gw.trust.get();
    trust
        .agreements
        .iter()
        .filter(|h| h.id == a.id)
        .max_by_key(|h| h.version)
        .and_then(|h| h.partner_of(&gw.cfg.trust_domain).cloned())
        .or_else(|| a.partner_of(&gw.cfg.trust_domain).cloned())
}

/// An audit record of one step.
async fn audit(
    gw: &Gateway,
    step: &str,
    p: &Proposal,
    allow: bool,
    peer: Option<&str>,
    reason: Option<Reason>,
) -> Result<(), String> {
    let direction = if step.ends_with("received") || step.ends_with("by_partner") {
        "inbound"
    } else {
        "outbound"
    };
    let mut rec = base_record(gw, direction, &crate::crypto::random_id(), allow);
    rec.kind = "agreement".into();
    rec.mode = Some(step.to_string());
    rec.agreement = Some(p.agr.clone());
    rec.partner = Some(p.partner.clone());
    rec.peer = peer.map(str::to_string);
    rec.reason = reason.map(|r| r.code().to_string());
    rec.lifecycle = Some(serde_json::json!({
        "id": p.id,
        "status": p.status,
        "step": step,
        "version": p.version,
    }));
    append(gw, rec).await.map(|_| ()).map_err(|e| e.to_string())
}

/// An audited refusal of a partner's request about proposals.
async fn refuse(
    gw: &Gateway,
    step: &str,
    peer: &str,
    agr: Option<&str>,
    r: Reason,
    m: String,
) -> Response {
    let mut rec = base_record(gw, "inbound", &crate::crypto::random_id(), false);
    rec.kind = "agreement".into();
    rec.mode = Some(step.to_string());
    rec.partner = crate::spiffe::SpiffeId::parse(peer)
        .ok()
        .map(|p| p.trust_domain_str().to_string());
    rec.peer = Some(peer.to_string());
    rec.source = Some(peer.to_string());
    rec.agreement = agr.map(str::to_string);
    super::deny(gw, rec, r, m).await.into_response()
}

fn admin_error(r: Reason, m: impl Into<String>) -> Response {
    Denial::new(r, m, &crate::crypto::random_id())
        .described()
        .into_response()
}

/// Refuses a version whose first use is too near (or past) for both sides to install it first.
fn notice_ok(a: &Agreement, now: i64) -> Result<(), String> {
    let first_use = a.valid_from - agreement::versions::sender_lead(a);
    if first_use < now + MIN_ACTIVATION_NOTICE_SECS {
        return Err(format!(
            "valid_from {} is too soon: a version must be agreed at least {}s before it is first used ({}, valid_from less half its clock_skew), so both gateways hold it first",
            crate::time::format_rfc3339(a.valid_from),
            MIN_ACTIVATION_NOTICE_SECS,
            crate::time::format_rfc3339(first_use)
        ));
    }
    Ok(())
}

fn parse_lint(text: &str) -> Result<Agreement, String> {
    Agreement::parse(text).map_err(|issues| {
        issues
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// The highest version of `id` held now.
fn highest_held(gw: &Gateway, id: &str) -> Option<Arc<Agreement>> {
    gw.trust
        .get()
        .agreements
        .iter()
        .filter(|a| a.id == id)
        .max_by_key(|a| a.version)
        .cloned()
}

/// What the version changes against the highest one held, one line each.
fn changes(gw: &Gateway, a: &Agreement) -> Vec<String> {
    match highest_held(gw, &a.id) {
        Some(h) => agreement::diff::diff(&h, a)
            .iter()
            .map(|c| c.to_string())
            .collect(),
        None => vec![format!("a new agreement ({} flows)", a.flows.len())],
    }
}

async fn post_partner(
    gw: &Gateway,
    terms: &DomainTerms,
    path: &str,
    body: serde_json::Value,
) -> Result<(), String> {
    let client = gw.partner_client(&terms.gateway_id)?;
    let uri: http::Uri = format!("{}{path}", terms.gateway_url.trim_end_matches('/'))
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let req = http::Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .map_err(|e| e.to_string())?;
    let timeout = Duration::from_secs(gw.cfg.partner_timeout as u64);
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let b = proxy::read_body_within(
        Body::new(resp.into_body()),
        16 * 1024,
        Duration::from_secs(gw.cfg.partner_timeout as u64),
    )
    .await
    .unwrap_or_default();
    let reason = serde_json::from_slice::<serde_json::Value>(&b)
        .ok()
        .and_then(|v| v.get("reason").and_then(|r| r.as_str()).map(str::to_string))
        .unwrap_or_default();
    Err(format!("the partner answered {status} {reason}"))
}

/// Writes the version with both signatures into the agreements directory and reloads; on any
/// failure the files written are removed again, so nothing is left half-installed.
async fn install(
    gw: &Gateway,
    a: &Agreement,
    text: &str,
    sigs: [(&str, &str); 2],
) -> Result<serde_json::Value, String> {
    let d = &gw.cfg.agreements_dir;
    let stem = format!("{}.v{}", a.id, a.version);
    let toml = d.join(format!("{stem}.toml"));
    let mut written: Vec<PathBuf> = Vec::new();
    let undo = |w: &[PathBuf]| {
        for p in w {
            let _ = std::fs::remove_file(p);
        }
    };
    let write = |p: &Path, data: &[u8], w: &mut Vec<PathBuf>| -> Result<(), String> {
        if let Ok(existing) = std::fs::read(p) {
            if existing == data {
                return Ok(());
            }
            return Err(format!("{} exists with other content", p.display()));
        }
        crate::files::write_atomic(p, data, 0o644).map_err(|e| e.to_string())?;
        w.push(p.to_path_buf());
        Ok(())
    };
    for (td, sig) in sigs {
        let p = d.join(agreement::signature_file_name(&stem, td));
        if let Err(e) = write(&p, format!("{}\n", sig.trim()).as_bytes(), &mut written) {
            undo(&written);
            return Err(e);
        }
    }
    if let Err(e) = write(&toml, text.as_bytes(), &mut written) {
        undo(&written);
        return Err(e);
    }
    match super::lifecycle::reload(gw).await {
        Ok(summary) => Ok(summary),
        Err(problems) => {
            undo(&written);
            // Back to what was in force before.
            let _ = super::lifecycle::reload(gw).await;
            Err(problems.join("; "))
        }
    }
}

fn signatures_of<'a>(
    a: &Agreement,
    local: &str,
    ours: &'a str,
    theirs: &'a str,
) -> [(String, &'a str); 2] {
    let partner = a
        .domains
        .iter()
        .map(|d| d.trust_domain.as_str())
        .find(|td| *td != local)
        .unwrap_or("")
        .to_string();
    [(local.to_string(), ours), (partner, theirs)]
}

/// Both signatures activate the version against the current bundles.
fn check_both(
    gw: &Gateway,
    text: &str,
    a: &Agreement,
    ours: &str,
    theirs: &str,
) -> Result<(), String> {
    let sigs = signatures_of(a, gw.cfg.trust_domain.as_str(), ours, theirs);
    let trust = gw.trust.get();
    agreement::activate(
        text,
        &|td: &str| {
            sigs.iter()
                .find(|(d, _)| d == td)
                .map(|(_, s)| s.to_string())
        },
        &trust.bundles,
        Some(&gw.cfg.trust_domain),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

async fn finish_install(
    gw: &Gateway,
    p: &Proposal,
    a: &Agreement,
) -> Result<serde_json::Value, String> {
    let (Some(ours), Some(theirs)) = (p.ours.as_deref(), p.theirs.as_deref()) else {
        return Err("both signatures are needed".into());
    };
    let sigs = signatures_of(a, gw.cfg.trust_domain.as_str(), ours, theirs);
    install(
        gw,
        a,
        &p.agreement,
        [
            (sigs[0].0.as_str(), sigs[0].1),
            (sigs[1].0.as_str(), sigs[1].1),
        ],
    )
    .await
}

// ---- admin listener -------------------------------------------------------------------------

/// `POST /v1/agreements/proposals` (admin): sign a new version and send it to the partner.
pub async fn admin_propose(State(gw): State<Arc<Gateway>>, body: Body) -> Response {
    let bytes = match proxy::read_body_within(
        body,
        agreement::MAX_AGREEMENT_BYTES,
        gw.cfg.conn.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(_) => return admin_error(Reason::TooLarge, "the agreement is too large"),
    };
    let Ok(text) = String::from_utf8(bytes.to_vec()) else {
        return admin_error(Reason::Malformed, "the agreement is not UTF-8");
    };
    let a = match parse_lint(&text) {
        Ok(a) => a,
        Err(m) => {
            return admin_error(
                Reason::Malformed,
                format!("the agreement does not lint clean: {m}"),
            )
        }
    };
    let Some(partner) = a.partner_of(&gw.cfg.trust_domain).cloned() else {
        return admin_error(
            Reason::Malformed,
            format!("the agreement does not name {}", gw.cfg.trust_domain),
        );
    };
    if gw.trust.get().bundles.get(&partner.trust_domain).is_none() {
        return admin_error(
            Reason::UnknownDomain,
            format!("no bundle for {}", partner.trust_domain),
        );
    }
    if let Err(m) = notice_ok(&a, crate::time::now()) {
        return admin_error(Reason::Malformed, m);
    }
    if let Some(h) = highest_held(&gw, &a.id) {
        if a.version <= h.version {
            return admin_error(
                Reason::Malformed,
                format!(
                    "version {} does not exceed version {} held of {}",
                    a.version, h.version, a.id
                ),
            );
        }
        if let Some(m) = agreement::versions::conflicts(&[(*h).clone(), a.clone()])
            .into_iter()
            .next()
        {
            return admin_error(Reason::Malformed, m);
        }
    }
    let _g = lock_of(&gw).lock_owned().await;
    let now = crate::time::now();
    let mut p = match load(&gw, &a.agr()) {
        Some(p) if p.direction == "sent" && (p.status == "proposed" || p.status == "delivered") => {
            p
        }
        Some(p) => {
            return admin_error(
                Reason::Malformed,
                format!("{} is already {} ({})", p.agr, p.status, p.direction),
            )
        }
        None => {
            let sig = match agreement::sign_agreement(&a.hash, &gw.keys.signing()) {
                Ok(s) => s,
                Err(e) => return admin_error(Reason::StateUnavailable, e.to_string()),
            };
            let p = Proposal {
                agr: a.agr(),
                id: a.id.clone(),
                version: a.version,
                partner: partner.trust_domain.to_string(),
                direction: "sent".into(),
                status: "proposed".into(),
                agreement: text.clone(),
                ours: Some(sig),
                theirs: None,
                at: now,
                updated: now,
            };
            if let Err(e) = save(&gw, &p) {
                return admin_error(
                    Reason::StateUnavailable,
                    format!("cannot keep the proposal: {e}"),
                );
            }
            if let Err(e) = audit(&gw, "proposed", &p, true, None, None).await {
                return admin_error(Reason::AuditUnavailable, e);
            }
            p
        }
    };
    let terms = partner_terms(&gw, &a).unwrap_or(partner);
    let body = serde_json::json!({"agreement": p.agreement, "signature": p.ours});
    let changes = changes(&gw, &a);
    match post_partner(&gw, &terms, "/v1/agreements/proposals", body).await {
        Ok(()) => {
            p.status = "delivered".into();
            p.updated = crate::time::now();
            if let Err(e) = save(&gw, &p) {
                return admin_error(Reason::StateUnavailable, e);
            }
            if let Err(e) = audit(&gw, "delivered", &p, true, Some(terms.gateway_id.as_str()), None).await {
                return admin_error(Reason::AuditUnavailable, e);
            }
            axum::Json(serde_json::json!({"agr": p.agr, "status": p.status, "partner": p.partner, "changes": changes})).into_response()
        }
        Err(e) => admin_error(
            Reason::PartnerUnavailable,
            format!("kept as proposed; not delivered to {} yet (propose the same file again to resend): {e}", terms.gateway_id),
        ),
    }
}

/// `GET /v1/agreements/proposals` (admin): every proposal with what it changes.
pub async fn admin_list(State(gw): State<Arc<Gateway>>) -> Response {
    let list: Vec<serde_json::Value> = list_all(&gw)
        .into_iter()
        .map(|p| {
            let ch = parse_lint(&p.agreement).map(|a| changes(&gw, &a)).unwrap_or_default();
            serde_json::json!({
                "agr": p.agr, "id": p.id, "version": p.version, "partner": p.partner,
                "direction": p.direction, "status": p.status,
                "at": crate::time::format_rfc3339(p.at), "updated": crate::time::format_rfc3339(p.updated),
                "changes": ch,
            })
        })
        .collect();
    axum::Json(serde_json::json!({"proposals": list})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgrBody {
    agr: String,
}

async fn read_json<T: serde::de::DeserializeOwned>(gw: &Gateway, body: Body) -> Result<T, String> {
    let bytes = proxy::read_body_within(body, MAX_CONTROL_BODY_BYTES, gw.cfg.conn.body_timeout)
        .await
        .map_err(|_| "the request is too large".to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| format!("expected JSON: {e}"))
}

/// `POST /v1/agreements/proposals/accept` (admin): countersign a received proposal, send the
/// signature to the partner, and install the version once the partner has it.
pub async fn admin_accept(State(gw): State<Arc<Gateway>>, body: Body) -> Response {
    let req: AgrBody = match read_json(&gw, body).await {
        Ok(r) => r,
        Err(m) => return admin_error(Reason::Malformed, m),
    };
    let _g = lock_of(&gw).lock_owned().await;
    let Some(mut p) = load(&gw, &req.agr) else {
        return admin_error(Reason::NoAgreement, format!("no proposal {}", req.agr));
    };
    if p.direction != "received" || p.status != "received" {
        return admin_error(
            Reason::Malformed,
            format!(
                "{} is {} ({}), not a received proposal",
                p.agr, p.status, p.direction
            ),
        );
    }
    let a = match parse_lint(&p.agreement) {
        Ok(a) => a,
        Err(m) => return admin_error(Reason::Malformed, m),
    };
    if let Err(m) = notice_ok(&a, crate::time::now()) {
        return admin_error(
            Reason::Malformed,
            format!(
                "{m}; ask the partner for a version with a later valid_from, or reject this one"
            ),
        );
    }
    let ours = match agreement::sign_agreement(&a.hash, &gw.keys.signing()) {
        Ok(s) => s,
        Err(e) => return admin_error(Reason::StateUnavailable, e.to_string()),
    };
    let theirs = p.theirs.clone().unwrap_or_default();
    if let Err(e) = check_both(&gw, &p.agreement, &a, &ours, &theirs) {
        return admin_error(
            Reason::BadSignature,
            format!("the version would not activate: {e}"),
        );
    }
    let Some(terms) = partner_terms(&gw, &a) else {
        return admin_error(Reason::NoAgreement, "no terms to reach the partner");
    };
    // The partner installs first: a version we would mint under must be held over there.
    let body = serde_json::json!({"agr": p.agr, "signature": ours});
    if let Err(e) = post_partner(&gw, &terms, "/v1/agreements/proposals/accept", body).await {
        return admin_error(
            Reason::PartnerUnavailable,
            format!("not accepted: the partner did not take the countersignature: {e}"),
        );
    }
    p.ours = Some(ours);
    let summary = match finish_install(&gw, &p, &a).await {
        Ok(s) => s,
        Err(e) => {
            return admin_error(
                Reason::StateUnavailable,
                format!("the partner holds the version but it could not be installed here: {e}"),
            )
        }
    };
    p.status = "accepted".into();
    p.updated = crate::time::now();
    if let Err(e) = save(&gw, &p) {
        tracing::warn!(error = %e, agr = %p.agr, "accepted and installed, but the proposal file was not updated");
    }
    if let Err(e) = audit(
        &gw,
        "accepted",
        &p,
        true,
        Some(terms.gateway_id.as_str()),
        None,
    )
    .await
    {
        return admin_error(Reason::AuditUnavailable, e);
    }
    axum::Json(serde_json::json!({"agr": p.agr, "status": p.status, "reload": summary}))
        .into_response()
}

/// `POST /v1/agreements/proposals/reject` (admin): reject a received proposal and tell the
/// partner (the rejection holds here even when the partner cannot be told).
pub async fn admin_reject(State(gw): State<Arc<Gateway>>, body: Body) -> Response {
    let req: AgrBody = match read_json(&gw, body).await {
        Ok(r) => r,
        Err(m) => return admin_error(Reason::Malformed, m),
    };
    let _g = lock_of(&gw).lock_owned().await;
    let Some(mut p) = load(&gw, &req.agr) else {
        return admin_error(Reason::NoAgreement, format!("no proposal {}", req.agr));
    };
    if p.direction != "received" || p.status != "received" {
        return admin_error(
            Reason::Malformed,
            format!(
                "{} is {} ({}), not a received proposal",
                p.agr, p.status, p.direction
            ),
        );
    }
    p.status = "rejected".into();
    p.updated = crate::time::now();
    if let Err(e) = save(&gw, &p) {
        return admin_error(Reason::StateUnavailable, e);
    }
    if let Err(e) = audit(&gw, "rejected", &p, true, None, None).await {
        return admin_error(Reason::AuditUnavailable, e);
    }
    let told = match parse_lint(&p.agreement)
        .ok()
        .and_then(|a| partner_terms(&gw, &a))
    {
        Some(terms) => post_partner(
            &gw,
            &terms,
            "/v1/agreements/proposals/reject",
            serde_json::json!({"agr": p.agr}),
        )
        .await
        .map_err(|e| {
            tracing::warn!(agr = %p.agr, error = %e, "rejection not delivered to the partner");
            e
        })
        .is_ok(),
        None => false,
    };
    axum::Json(serde_json::json!({"agr": p.agr, "status": p.status, "partner_told": told}))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TerminateBody {
    id: String,
}

/// `POST /v1/agreements/terminate` (admin): terminate every version of an agreement here at
/// once and tell the partner with a signed notice (retried until it is acknowledged).
pub async fn admin_terminate(State(gw): State<Arc<Gateway>>, body: Body) -> Response {
    let req: TerminateBody = match read_json(&gw, body).await {
        Ok(r) => r,
        Err(m) => return admin_error(Reason::Malformed, m),
    };
    if highest_held(&gw, &req.id).is_none() {
        return admin_error(
            Reason::NoAgreement,
            format!("no agreement {} is held", req.id),
        );
    }
    let now = crate::time::now();
    match super::lifecycle::revoke(
        &gw,
        crate::chain::RevocationKind::Agreement,
        &req.id,
        0,
        now,
    )
    .await
    {
        Ok(n) => axum::Json(serde_json::json!({"terminated": req.id, "notified_partners": n}))
            .into_response(),
        Err(e) => admin_error(Reason::StateUnavailable, e),
    }
}

// ---- federation listener --------------------------------------------------------------------

/// The partner gateway calling, or the refusal to answer.
async fn partner_peer(gw: &Gateway, conn: &ConnInfo) -> Result<crate::spiffe::SpiffeId, Response> {
    let Some(peer) = conn.peer.clone() else {
        return Err(super::refuse_unauthenticated(
            gw,
            "federation",
            conn,
            Reason::BadSvid,
            "a client certificate is required",
        )
        .into_response());
    };
    if let Some(d) = super::over_budget(gw, "federation", conn, peer.id.as_str()) {
        return Err(d.into_response());
    }
    Ok(peer.id.clone())
}

/// Whether `peer` is the partner gateway of `a` (as the proposal names it) and, where we
/// already hold agreements with its domain, the gateway those name.
fn is_partner_gateway(gw: &Gateway, a: &Agreement, peer: &crate::spiffe::SpiffeId) -> bool {
    let named = a
        .partner_of(&gw.cfg.trust_domain)
        .map(|d| d.gateway_id == *peer)
        .unwrap_or(false);
    let trust = gw.trust.get();
    let held_ok = trust
        .agreements
        .iter()
        .filter_map(|h| {
            h.domain_str(peer.trust_domain_str())
                .filter(|_| h.domain(&gw.cfg.trust_domain).is_some())
        })
        .all(|d| d.gateway_id == *peer);
    named && held_ok
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProposalBody {
    agreement: String,
    signature: String,
}

/// `POST /v1/agreements/proposals` (federation): a partner gateway proposes a version.
pub async fn fed_receive(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Response {
    let peer = match partner_peer(&gw, &conn).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    const STEP: &str = "proposal_received";
    let bytes = match proxy::read_body_within(
        body,
        MAX_PROPOSAL_BODY_BYTES,
        gw.cfg.conn.body_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(_) => {
            return refuse(
                &gw,
                STEP,
                peer.as_str(),
                None,
                Reason::TooLarge,
                "proposal too large".into(),
            )
            .await
        }
    };
    let req: ProposalBody = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                &gw,
                STEP,
                peer.as_str(),
                None,
                Reason::Malformed,
                format!("expected {{agreement, signature}}: {e}"),
            )
            .await
        }
    };
    let a = match parse_lint(&req.agreement) {
        Ok(a) => a,
        Err(m) => {
            return refuse(
                &gw,
                STEP,
                peer.as_str(),
                None,
                Reason::Malformed,
                format!("the agreement does not lint clean: {m}"),
            )
            .await
        }
    };
    let agr = a.agr();
    if a.domain(&gw.cfg.trust_domain).is_none() || a.domain_str(peer.trust_domain_str()).is_none() {
        return refuse(
            &gw,
            STEP,
            peer.as_str(),
            Some(&agr),
            Reason::NoAgreement,
            format!(
                "the agreement is not between {} and {}",
                gw.cfg.trust_domain,
                peer.trust_domain_str()
            ),
        )
        .await;
    }
    if !is_partner_gateway(&gw, &a, &peer) {
        return refuse(
            &gw,
            STEP,
            peer.as_str(),
            Some(&agr),
            Reason::IssuerMismatch,
            format!("{peer} is not the partner's gateway"),
        )
        .await;
    }
    let trust = gw.trust.get();
    let Some(bundle) = trust.bundles.get_str(peer.trust_domain_str()) else {
        return refuse(
            &gw,
            STEP,
            peer.as_str(),
            Some(&agr),
            Reason::UnknownDomain,
            format!("no bundle for {}", peer.trust_domain_str()),
        )
        .await;
    };
    if let Err(e) = agreement::verify_signature(&req.signature, &a.hash, bundle) {
        return refuse(
            &gw,
            STEP,
            peer.as_str(),
            Some(&agr),
            Reason::BadSignature,
            format!("the proposer's signature: {e}"),
        )
        .await;
    }
    if let Some(h) = highest_held(&gw, &a.id) {
        if a.version <= h.version {
            return refuse(
                &gw,
                STEP,
                peer.as_str(),
                Some(&agr),
                Reason::Malformed,
                format!(
                    "version {} does not exceed version {} held",
                    a.version, h.version
                ),
            )
            .await;
        }
        if let Some(m) = agreement::versions::conflicts(&[(*h).clone(), a.clone()])
            .into_iter()
            .next()
        {
            return refuse(&gw, STEP, peer.as_str(), Some(&agr), Reason::Malformed, m).await;
        }
    }
    let _g = match partner_lock(&gw).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    if let Some(p) = load(&gw, &agr) {
        // Delivered again (the proposer retried): the same answer.
        return (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"agr": p.agr, "status": p.status})),
        )
            .into_response();
    }
    let pending = list_all(&gw)
        .iter()
        .filter(|p| {
            p.direction == "received"
                && p.status == "received"
                && p.partner == peer.trust_domain_str()
        })
        .count();
    if pending >= MAX_PENDING_PROPOSALS {
        return refuse(
            &gw,
            STEP,
            peer.as_str(),
            Some(&agr),
            Reason::RateLimited,
            format!(
                "{pending} proposals from {} wait for a decision already",
                peer.trust_domain_str()
            ),
        )
        .await;
    }
    let now = crate::time::now();
    let p = Proposal {
        agr: agr.clone(),
        id: a.id.clone(),
        version: a.version,
        partner: peer.trust_domain_str().to_string(),
        direction: "received".into(),
        status: "received".into(),
        agreement: req.agreement,
        ours: None,
        theirs: Some(req.signature),
        at: now,
        updated: now,
    };
    if let Err(e) = save(&gw, &p) {
        return Denial::new(Reason::StateUnavailable, e, &crate::crypto::random_id())
            .into_response();
    }
    if let Err(e) = audit(&gw, STEP, &p, true, Some(peer.as_str()), None).await {
        return Denial::new(Reason::AuditUnavailable, e, &crate::crypto::random_id())
            .into_response();
    }
    tracing::info!(agr = %p.agr, from = %peer, "agreement proposal received");
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({"agr": p.agr, "status": p.status})),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    agr: String,
    signature: String,
}

/// A proposal we sent, for the partner answering about it.
async fn sent_to(
    gw: &Gateway,
    step: &str,
    peer: &crate::spiffe::SpiffeId,
    agr: &str,
) -> Result<(Proposal, Agreement), Response> {
    let Some(p) = load(gw, agr).filter(|p| p.direction == "sent") else {
        return Err(refuse(
            gw,
            step,
            peer.as_str(),
            Some(agr),
            Reason::NoAgreement,
            format!("no proposal {agr} was sent"),
        )
        .await);
    };
    let a = match parse_lint(&p.agreement) {
        Ok(a) => a,
        Err(m) => {
            return Err(refuse(gw, step, peer.as_str(), Some(agr), Reason::Malformed, m).await)
        }
    };
    if p.partner != peer.trust_domain_str() || !is_partner_gateway(gw, &a, peer) {
        return Err(refuse(
            gw,
            step,
            peer.as_str(),
            Some(agr),
            Reason::IssuerMismatch,
            format!("{peer} is not the gateway {agr} was sent to"),
        )
        .await);
    }
    if p.status != "proposed" && p.status != "delivered" {
        return Err(refuse(
            gw,
            step,
            peer.as_str(),
            Some(agr),
            Reason::Malformed,
            format!("{agr} is {} already", p.status),
        )
        .await);
    }
    Ok((p, a))
}

/// `POST /v1/agreements/proposals/accept` (federation): the partner countersigned our proposal.
pub async fn fed_accepted(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Response {
    let peer = match partner_peer(&gw, &conn).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    const STEP: &str = "accepted_by_partner";
    let req: AcceptBody = match read_json(&gw, body).await {
        Ok(r) => r,
        Err(m) => return refuse(&gw, STEP, peer.as_str(), None, Reason::Malformed, m).await,
    };
    let _g = match partner_lock(&gw).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    // Told again (the partner's own install failed and its operator retries): the version is
    // installed here already; a valid countersignature gets the same answer.
    if let Some(p) = load(&gw, &req.agr).filter(|p| p.direction == "sent" && p.status == "accepted")
    {
        if let Ok(a) = parse_lint(&p.agreement) {
            let ours = p.ours.clone().unwrap_or_default();
            if p.partner == peer.trust_domain_str()
                && is_partner_gateway(&gw, &a, &peer)
                && check_both(&gw, &p.agreement, &a, &ours, &req.signature).is_ok()
            {
                return axum::Json(serde_json::json!({"agr": p.agr, "status": p.status}))
                    .into_response();
            }
        }
    }
    let (mut p, a) = match sent_to(&gw, STEP, &peer, &req.agr).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let ours = p.ours.clone().unwrap_or_default();
    if let Err(e) = check_both(&gw, &p.agreement, &a, &ours, &req.signature) {
        return refuse(
            &gw,
            STEP,
            peer.as_str(),
            Some(&p.agr),
            Reason::BadSignature,
            format!("the countersignature: {e}"),
        )
        .await;
    }
    p.theirs = Some(req.signature);
    if let Err(e) = finish_install(&gw, &p, &a).await {
        return Denial::new(
            Reason::StateUnavailable,
            format!("cannot install {}: {e}", p.agr),
            &crate::crypto::random_id(),
        )
        .into_response();
    }
    p.status = "accepted".into();
    p.updated = crate::time::now();
    if let Err(e) = save(&gw, &p) {
        tracing::warn!(error = %e, agr = %p.agr, "installed, but the proposal file was not updated");
    }
    if let Err(e) = audit(&gw, STEP, &p, true, Some(peer.as_str()), None).await {
        return Denial::new(Reason::AuditUnavailable, e, &crate::crypto::random_id())
            .into_response();
    }
    tracing::info!(agr = %p.agr, by = %peer, "agreement proposal accepted by the partner; installed");
    axum::Json(serde_json::json!({"agr": p.agr, "status": p.status})).into_response()
}

/// `POST /v1/agreements/proposals/reject` (federation): the partner rejected our proposal.
pub async fn fed_rejected(
    State(gw): State<Arc<Gateway>>,
    Extension(conn): Extension<ConnInfo>,
    body: Body,
) -> Response {
    let peer = match partner_peer(&gw, &conn).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    const STEP: &str = "rejected_by_partner";
    let req: AgrBody = match read_json(&gw, body).await {
        Ok(r) => r,
        Err(m) => return refuse(&gw, STEP, peer.as_str(), None, Reason::Malformed, m).await,
    };
    let _g = match partner_lock(&gw).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let (mut p, _) = match sent_to(&gw, STEP, &peer, &req.agr).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    p.status = "rejected".into();
    p.updated = crate::time::now();
    if let Err(e) = save(&gw, &p) {
        return Denial::new(Reason::StateUnavailable, e, &crate::crypto::random_id())
            .into_response();
    }
    if let Err(e) = audit(&gw, STEP, &p, true, Some(peer.as_str()), None).await {
        return Denial::new(Reason::AuditUnavailable, e, &crate::crypto::random_id())
            .into_response();
    }
    axum::Json(serde_json::json!({"agr": p.agr, "status": p.status})).into_response()
}
