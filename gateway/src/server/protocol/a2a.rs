//! A2A through the boundary. JSON-RPC methods (v1.0 names and their v0.3 equivalents) map to
//! scopes `a2a:<v0.3 method>` (`a2a:message/send`, `a2a:message/stream`, `a2a:tasks/get`,
//! `a2a:tasks/cancel`, ...); fetching the AgentCard needs `a2a:card`. The receiving gateway
//! serves the upstream agent's card re-signed with its own gateway key (A2A card signature:
//! a JWS with detached payload over the RFC 8785 canonical card without `signatures`), naming
//! its boundary as the agent's URL and mTLS plus the federation token as its security; the
//! sending gateway verifies that signature against the partner's bundle, the URL against the
//! agreement, and the skills against the route.

use serde_json::{Map, Value};

use super::RpcMessage;
use crate::scope::Scope;
use crate::spiffe::{Bundle, KeyRole};

/// Where an A2A agent publishes its card (A2A 0.3 and 1.0).
pub const CARD_PATH: &str = "/.well-known/agent-card.json";
/// The scope a card fetch needs.
pub const CARD_SCOPE: &str = "a2a:card";
/// Largest card the gateways read, re-sign and verify (real cards are a few KiB).
pub const MAX_CARD_BYTES: usize = 256 * 1024;
/// Most signatures looked at on one card.
pub const MAX_CARD_SIGNATURES: usize = 8;
/// Name of the security schemes the re-signed card declares.
pub const MTLS_SCHEME: &str = "fedgate_mtls";
pub const TOKEN_SCHEME: &str = "fedgate_federation_token";

/// v1.0 method names and their v0.3 equivalents; scopes use the v0.3 names.
const V1_NAMES: &[(&str, &str)] = &[
    ("SendMessage", "message/send"),
    ("SendStreamingMessage", "message/stream"),
    ("GetTask", "tasks/get"),
    ("CancelTask", "tasks/cancel"),
    ("ListTasks", "tasks/list"),
    ("SubscribeToTask", "tasks/resubscribe"),
    (
        "CreateTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/set",
    ),
    (
        "GetTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/get",
    ),
    (
        "ListTaskPushNotificationConfigs",
        "tasks/pushNotificationConfig/list",
    ),
    (
        "DeleteTaskPushNotificationConfig",
        "tasks/pushNotificationConfig/delete",
    ),
    ("GetExtendedAgentCard", "agent/getAuthenticatedExtendedCard"),
];

/// Whether `method` is an A2A method (either version).
pub fn is_a2a_method(method: &str) -> bool {
    V1_NAMES.iter().any(|(a, b)| *a == method || *b == method)
}

/// The v0.3 name of a method (v1.0 names translated; others as they are).
pub fn normalized(method: &str) -> &str {
    V1_NAMES
        .iter()
        .find(|(v1, _)| *v1 == method)
        .map(|(_, v03)| *v03)
        .unwrap_or(method)
}

/// The scope a JSON-RPC request needs. Only requests: A2A has no client notifications.
pub fn need(m: &RpcMessage) -> Result<Scope, String> {
    let method = m.method.as_deref().ok_or("an A2A request needs a method")?;
    if !is_a2a_method(method) {
        return Err(format!("{:?} is not an A2A method", short(method)));
    }
    // The extended card is a card the gateways cannot re-sign and check in transit (it is a
    // JSON-RPC answer, not the published card): it does not cross.
    if normalized(method) == "agent/getAuthenticatedExtendedCard" {
        return Err(
            "the authenticated extended AgentCard is not served across the boundary".into(),
        );
    }
    Scope::parse(&format!("a2a:{}", normalized(method))).map_err(|e| e.to_string())
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Whether a path is an AgentCard (the current name and the 0.2 one).
pub fn is_card_path(path: &str) -> bool {
    path.ends_with(CARD_PATH) || path.ends_with("/.well-known/agent.json")
}

/// The agent's base path of a card path (`/a/.well-known/agent-card.json` -> `/a/`).
pub fn card_base(path: &str) -> &str {
    let cut = path
        .strip_suffix(CARD_PATH)
        .or_else(|| path.strip_suffix("/.well-known/agent.json"))
        .unwrap_or(path);
    if cut.is_empty() {
        "/"
    } else {
        cut
    }
}

/// The URL of an A2A agent at a gateway's boundary: `<gateway_url>/ingress<base>/`, the base
/// being the path its card is under (`/` for a card at the root). Both gateways compute it the
/// same way: the receiving one writes it into the card, the sending one expects it there.
pub fn boundary_url(gateway_url: &str, card_path: &str) -> String {
    let base = card_base(card_path);
    let base = if base.ends_with('/') {
        base.to_string()
    } else {
        format!("{base}/")
    };
    format!("{}/ingress{base}", gateway_url.trim_end_matches('/'))
}

/// The A2A task id a request names: `params.id` (tasks/...), `params.message.taskId` or
/// `params.taskId` (message/... continuing a task).
pub fn task_in_request(m: &RpcMessage) -> Option<String> {
    let p = m.params.as_ref()?;
    let method = normalized(m.method.as_deref()?);
    let v = if method.starts_with("tasks/") {
        p.get("id").or_else(|| p.get("taskId"))
    } else {
        p.get("message")
            .and_then(|x| x.get("taskId"))
            .or_else(|| p.get("taskId"))
    };
    v.and_then(Value::as_str).map(short_id)
}

/// The task id an answer names: a v1.0 `{task:{id}}` or `{message:{taskId}}`, or a v0.3 Task
/// (`kind: task`, `id`) or Message (`taskId`).
pub fn task_in_response(body: &Value) -> Option<String> {
    let r = body.get("result")?;
    let v = r
        .get("task")
        .and_then(|t| t.get("id"))
        .or_else(|| r.get("message").and_then(|m| m.get("taskId")))
        .or_else(|| {
            if r.get("kind").and_then(Value::as_str) == Some("task") || r.get("status").is_some() {
                r.get("id")
            } else {
                None
            }
        })
        .or_else(|| r.get("taskId"));
    v.and_then(Value::as_str).map(short_id)
}

/// Task ids go into audit records: bounded, whatever the agent sent.
fn short_id(s: &str) -> String {
    s.chars().take(256).collect()
}

/// The card with the boundary as its address and security, without any earlier signature:
/// what the receiving gateway signs and the sending gateway verifies.
pub fn rewrite_card(card: &Value, url: &str) -> Result<Map<String, Value>, String> {
    let Value::Object(c) = card else {
        return Err("the AgentCard is not a JSON object".into());
    };
    let mut c = c.clone();
    c.remove("signatures");
    if c.contains_key("url") {
        c.insert("url".into(), Value::String(url.into()));
    }
    for key in ["supportedInterfaces", "additionalInterfaces"] {
        if let Some(Value::Array(list)) = c.get_mut(key) {
            for i in list.iter_mut() {
                if let Some(o) = i.as_object_mut() {
                    o.insert("url".into(), Value::String(url.into()));
                }
            }
        }
    }
    if !c.contains_key("url") && !c.contains_key("supportedInterfaces") {
        c.insert("url".into(), Value::String(url.into()));
    }
    c.insert(
        "securitySchemes".into(),
        serde_json::json!({
            MTLS_SCHEME: {"mtlsSecurityScheme": {
                "description": "mTLS with the partner gateway's SPIFFE X.509-SVID"}},
            TOKEN_SCHEME: {"httpAuthSecurityScheme": {
                "scheme": "Bearer", "bearerFormat": "JWT",
                "description": "a fedgate federation token, minted by the partner gateway per crossing"}},
        }),
    );
    c.insert(
        "securityRequirements".into(),
        serde_json::json!([{"schemes": {MTLS_SCHEME: {"list": []}, TOKEN_SCHEME: {"list": []}}}]),
    );
    Ok(c)
}

fn signing_input(protected_b64: &str, card: &Map<String, Value>) -> Result<String, String> {
    let canonical =
        crate::jcs::to_string(&Value::Object(card.clone())).map_err(|e| e.to_string())?;
    Ok(format!(
        "{protected_b64}.{}",
        crate::crypto::b64url(canonical.as_bytes())
    ))
}

/// Re-signs an upstream's card for the boundary at `url` with the gateway key.
pub fn sign_card(card: &Value, url: &str, key: &crate::jose::SigningKey) -> Result<Value, String> {
    let mut c = rewrite_card(card, url)?;
    let protected = serde_json::json!({"alg": key.alg().as_str(), "kid": key.kid(), "typ": "JOSE"});
    let protected_b64 = crate::crypto::b64url(protected.to_string().as_bytes());
    let input = signing_input(&protected_b64, &c)?;
    let sig = key.sign_raw(input.as_bytes()).map_err(|e| e.to_string())?;
    c.insert(
        "signatures".into(),
        serde_json::json!([{"protected": protected_b64, "signature": crate::crypto::b64url(&sig)}]),
    );
    Ok(Value::Object(c))
}

/// Verifies a partner's card: a signature by a gateway key of `bundle` over the card as it
/// is, every URL in it equal to `url` (the partner's boundary for this agent), and, when the
/// route lists skills, no skill outside them.
pub fn verify_card(
    card: &Value,
    bundle: &Bundle,
    url: &str,
    allowed_skills: &[String],
) -> Result<(), String> {
    let Value::Object(c) = card else {
        return Err("the AgentCard is not a JSON object".into());
    };
    let sigs = c
        .get("signatures")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
        .ok_or("the AgentCard is not signed")?;
    let mut body = c.clone();
    body.remove("signatures");
    let mut verified = false;
    let mut why = String::from("no signature by a gateway key of the partner's bundle");
    for s in sigs.iter().take(MAX_CARD_SIGNATURES) {
        let (Some(p), Some(sig)) = (
            s.get("protected").and_then(Value::as_str),
            s.get("signature").and_then(Value::as_str),
        ) else {
            continue;
        };
        let header: Value =
            match crate::crypto::b64url_decode(p).and_then(|b| serde_json::from_slice(&b).ok()) {
                Some(h) => h,
                None => continue,
            };
        let (Some(alg), Some(kid)) = (
            header
                .get("alg")
                .and_then(Value::as_str)
                .and_then(crate::jose::Alg::parse),
            header.get("kid").and_then(Value::as_str),
        ) else {
            continue;
        };
        let Ok(k) = bundle.jwt_key(kid, KeyRole::Gateway) else {
            why = format!(
                "key {kid:?} is not a gateway key of {}",
                bundle.trust_domain
            );
            continue;
        };
        let Some(raw) = crate::crypto::b64url_decode(sig) else {
            continue;
        };
        let input = signing_input(p, &body)?;
        match k.verify(alg, input.as_bytes(), &raw) {
            Ok(()) => {
                verified = true;
                break;
            }
            Err(e) => why = format!("signature by {kid}: {e}"),
        }
    }
    if !verified {
        return Err(why);
    }
    let mut urls = Vec::new();
    if let Some(u) = body.get("url") {
        urls.push(u.clone());
    }
    for key in ["supportedInterfaces", "additionalInterfaces"] {
        if let Some(Value::Array(list)) = body.get(key) {
            urls.extend(
                list.iter()
                    .map(|i| i.get("url").cloned().unwrap_or(Value::Null)),
            );
        }
    }
    if urls.is_empty() {
        return Err("the AgentCard names no URL".into());
    }
    if let Some(bad) = urls.iter().find(|u| u.as_str() != Some(url)) {
        return Err(format!(
            "the AgentCard names {bad}, not the partner's boundary {url}"
        ));
    }
    if !allowed_skills.is_empty() {
        let skills = body
            .get("skills")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for s in &skills {
            let id = s.get("id").and_then(Value::as_str).unwrap_or("");
            if !allowed_skills.iter().any(|a| a == id) {
                return Err(format!(
                    "skill {:?} is not one the agreement names",
                    short(id)
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::protocol::parse_rpc;

    fn msg(s: &str) -> RpcMessage {
        parse_rpc(s.as_bytes()).unwrap().remove(0)
    }

    #[test]
    fn methods_scopes_and_tasks() {
        for (m, s) in [
            ("SendMessage", "a2a:message/send"),
            ("message/send", "a2a:message/send"),
            ("SendStreamingMessage", "a2a:message/stream"),
            ("tasks/get", "a2a:tasks/get"),
            ("CancelTask", "a2a:tasks/cancel"),
        ] {
            let r = msg(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"{m}","params":{{}}}}"#
            ));
            assert_eq!(need(&r).unwrap().as_str(), s, "{m}");
        }
        assert!(need(&msg(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#)).is_err());
        assert!(need(&msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"GetExtendedAgentCard"}"#
        ))
        .is_err());
        let g = msg(r#"{"jsonrpc":"2.0","id":1,"method":"GetTask","params":{"id":"t-1"}}"#);
        assert_eq!(task_in_request(&g).as_deref(), Some("t-1"));
        let s = msg(
            r#"{"jsonrpc":"2.0","id":1,"method":"message/send","params":{"message":{"taskId":"t-2"}}}"#,
        );
        assert_eq!(task_in_request(&s).as_deref(), Some("t-2"));
        let fresh =
            msg(r#"{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{}}}"#);
        assert_eq!(task_in_request(&fresh), None);
        for (body, id) in [
            (r#"{"result":{"task":{"id":"a"}}}"#, "a"),
            (r#"{"result":{"message":{"taskId":"b"}}}"#, "b"),
            (r#"{"result":{"kind":"task","id":"c"}}"#, "c"),
            (
                r#"{"result":{"id":"d","status":{"state":"completed"}}}"#,
                "d",
            ),
            (
                r#"{"result":{"kind":"message","taskId":"e","messageId":"m"}}"#,
                "e",
            ),
        ] {
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(task_in_response(&v).as_deref(), Some(id), "{body}");
        }
        assert_eq!(task_in_response(&serde_json::json!({"error": {}})), None);
        assert!(is_card_path("/.well-known/agent-card.json"));
        assert_eq!(card_base("/.well-known/agent-card.json"), "/");
        assert_eq!(card_base("/x/.well-known/agent-card.json"), "/x");
    }

    fn card() -> Value {
        serde_json::json!({
            "name": "analytics",
            "url": "http://127.0.0.1:1/",
            "supportedInterfaces": [{"url": "http://127.0.0.1:1/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}],
            "skills": [{"id": "analyze", "name": "analyze"}],
            "signatures": [{"protected": "e30", "signature": "AA"}],
        })
    }

    #[test]
    fn cards_are_signed_and_verified() {
        let (k, _) = crate::jose::SigningKey::generate_p256().unwrap();
        let td = crate::spiffe::TrustDomain::parse("vendor.example").unwrap();
        let mut b = Bundle::new(td);
        b.add_jwt_authority(k.kid(), k.public().clone(), KeyRole::Gateway)
            .unwrap();
        let url = "https://vendor.example:9444/ingress/";
        let signed = sign_card(&card(), url, &k).unwrap();
        assert_eq!(signed["url"], url);
        assert_eq!(signed["supportedInterfaces"][0]["url"], url);
        assert_eq!(signed["signatures"].as_array().unwrap().len(), 1);
        assert!(signed["securitySchemes"][MTLS_SCHEME].is_object());
        verify_card(&signed, &b, url, &[]).unwrap();
        verify_card(&signed, &b, url, &["analyze".into()]).unwrap();
        // Tampered: a skill added, a description changed, the URL moved, the signature gone.
        let mut t = signed.clone();
        t["skills"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"id": "delete"}));
        assert!(verify_card(&t, &b, url, &[]).is_err());
        let mut t = signed.clone();
        t["name"] = "other".into();
        assert!(verify_card(&t, &b, url, &[]).is_err());
        assert!(verify_card(&signed, &b, "https://elsewhere/", &[]).is_err());
        assert!(verify_card(&signed, &b, url, &["report".into()])
            .unwrap_err()
            .contains("skill"));
        let mut t = signed.clone();
        t.as_object_mut().unwrap().remove("signatures");
        assert!(verify_card(&t, &b, url, &[])
            .unwrap_err()
            .contains("not signed"));
        // Another key (not in the bundle) signing the same card.
        let (other, _) = crate::jose::SigningKey::generate_p256().unwrap();
        assert!(verify_card(&sign_card(&card(), url, &other).unwrap(), &b, url, &[]).is_err());
        // A key of the bundle with another role.
        let (audit, _) = crate::jose::SigningKey::generate_ed25519().unwrap();
        b.add_jwt_authority(audit.kid(), audit.public().clone(), KeyRole::Audit)
            .unwrap();
        assert!(verify_card(&sign_card(&card(), url, &audit).unwrap(), &b, url, &[]).is_err());
    }
}
