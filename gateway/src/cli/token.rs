//! `fedgate token verify`: check a federation token with nothing but the bundles (and, given
//! `--agreement`, against the agreement's hash and flows).

use std::path::PathBuf;

use clap::Subcommand;

use super::{at_or_now, load_bundles, print_json, usage, CliError, CliResult};
use crate::federation::{FederationClaims, TYP_TOKEN};
use crate::reason::Reason;
use crate::spiffe::SpiffeId;

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Verify a federation token's signature, type, audience and times.
    Verify {
        #[arg(long)]
        bundles: PathBuf,
        #[arg(long)]
        token: PathBuf,
        /// The receiving gateway's SPIFFE ID (the token's `aud`).
        #[arg(long)]
        audience: String,
        /// Also check `agr` and the flows against this agreement.
        #[arg(long)]
        agreement: Option<PathBuf>,
        #[arg(long)]
        at: Option<String>,
        #[arg(long, default_value = "30s")]
        skew: String,
        #[arg(long)]
        json: bool,
    },
}

fn check(
    raw: &str,
    bundles: &crate::spiffe::BundleSet,
    audience: &SpiffeId,
    agreement: Option<&crate::agreement::Agreement>,
    now: i64,
    skew: i64,
) -> Result<FederationClaims, (Reason, String)> {
    use crate::jose::{parse_compact, JoseError};
    let c = parse_compact(raw).map_err(|e| match e {
        JoseError::BadAlg(a) => (Reason::BadAlg, format!("alg {a:?} is not allowed")),
        JoseError::BadSignature => (Reason::BadSignature, "bad signature".into()),
        e => (Reason::Malformed, e.to_string()),
    })?;
    if c.header.typ.as_deref() != Some(TYP_TOKEN) {
        return Err((Reason::Malformed, format!("typ must be {TYP_TOKEN}")));
    }
    let claims: FederationClaims =
        serde_json::from_slice(&c.payload).map_err(|e| (Reason::Malformed, e.to_string()))?;
    let iss = SpiffeId::parse(&claims.iss).map_err(|e| (Reason::Malformed, format!("iss: {e}")))?;
    let bundle = bundles.get_str(iss.trust_domain_str()).ok_or((
        Reason::UnknownDomain,
        format!("no bundle for {}", iss.trust_domain_str()),
    ))?;
    let kid = c
        .header
        .kid
        .as_deref()
        .ok_or((Reason::Malformed, "no kid".to_string()))?;
    let key = bundle
        .jwt_key(kid, crate::spiffe::KeyRole::Gateway)
        .map_err(|e| (e.reason(), e.to_string()))?;
    c.verify_with(key).map_err(|_| {
        (
            Reason::BadSignature,
            "signature does not verify".to_string(),
        )
    })?;
    if claims.aud != audience.as_str() {
        return Err((Reason::WrongAudience, format!("aud is {}", claims.aud)));
    }
    if claims.nbf > now.saturating_add(skew) || claims.iat > now.saturating_add(skew) {
        return Err((Reason::NotYetValid, "not yet valid".into()));
    }
    if now >= claims.exp.saturating_add(skew) {
        return Err((
            Reason::Expired,
            format!("expired at {}", crate::time::format_rfc3339(claims.exp)),
        ));
    }
    if let Some(a) = agreement {
        if claims.agr != a.agr() {
            return Err((
                Reason::AgreementMismatch,
                format!("agr {} is not {}", claims.agr, a.agr()),
            ));
        }
        if a.domain_str(iss.trust_domain_str())
            .map(|d| d.gateway_id != iss)
            .unwrap_or(true)
        {
            return Err((
                Reason::IssuerMismatch,
                format!("{iss} is not a gateway of the agreement"),
            ));
        }
        let actor =
            SpiffeId::parse(&claims.act.sub).map_err(|e| (Reason::Malformed, e.to_string()))?;
        let target =
            SpiffeId::parse(&claims.tgt).map_err(|e| (Reason::Malformed, e.to_string()))?;
        let scope = crate::scope::ScopeSet::parse_spaced(&claims.scope)
            .map_err(|e| (Reason::Malformed, e.to_string()))?;
        let local = audience.trust_domain();
        let req = crate::agreement::CrossingRequest {
            direction: crate::agreement::Direction::Inbound,
            local: &local,
            actor: &actor,
            target: &target,
            requested: &scope,
            held: &scope,
            depth: claims.dep as usize,
            expires: claims.exp,
            links: &[],
            now,
        };
        let d = crate::agreement::decide_among([a], &req);
        if !d.allow {
            return Err((d.reason.unwrap_or(Reason::RuleDenied), d.message));
        }
    }
    Ok(claims)
}

pub fn run(cmd: TokenCmd) -> CliResult {
    match cmd {
        TokenCmd::Verify {
            bundles,
            token,
            audience,
            agreement,
            at,
            skew,
            json,
        } => {
            let now = at_or_now(&at)?;
            let set = load_bundles(&bundles)?;
            let aud = SpiffeId::parse(&audience).map_err(|e| usage(format!("--audience: {e}")))?;
            let skew = crate::time::parse_duration(&skew).map_err(usage)?;
            let a = match agreement {
                Some(p) => {
                    let text =
                        crate::files::read_text_limited(&p, crate::agreement::MAX_AGREEMENT_BYTES)
                            .map_err(usage)?;
                    Some(crate::agreement::Agreement::parse(&text).map_err(|i| {
                        usage(format!(
                            "{}: {}",
                            p.display(),
                            i.iter()
                                .map(|x| x.to_string())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ))
                    })?)
                }
                None => None,
            };
            let raw =
                crate::files::read_text_limited(&token, crate::federation::token::MAX_TOKEN_BYTES)
                    .map_err(|e| match e {
                        crate::files::FileError::TooLarge { .. } => {
                            CliError::Invalid(format!("too_large: {e}"))
                        }
                        other => usage(other),
                    })?;
            match check(raw.trim(), &set, &aud, a.as_ref(), now, skew) {
                Ok(c) => {
                    if json {
                        let mut v = serde_json::to_value(&c).unwrap_or_default();
                        v["valid"] = true.into();
                        print_json(&v);
                    } else {
                        println!(
                            "valid: {} -> {} for {} [{}], expires {}",
                            c.act.sub,
                            c.tgt,
                            c.aud,
                            c.scope,
                            crate::time::format_rfc3339(c.exp)
                        );
                    }
                    Ok(0)
                }
                Err((r, m)) => {
                    if json {
                        print_json(
                            &serde_json::json!({"valid": false, "reason": r.code(), "message": m}),
                        );
                    } else {
                        println!("invalid ({r}): {m}");
                    }
                    Ok(1)
                }
            }
        }
    }
}
