//! MCP through the boundary. A `tools/call` of tool N needs scope `mcp:tools/N`; a method that
//! reads or does something else (`resources/read`, `prompts/get`, ...) needs `mcp:<method>`;
//! the session's own plumbing (initialize, discovery, listings, ping, notifications, a
//! client's answers to server requests, and the GET/DELETE of a Streamable HTTP session)
//! needs only that some MCP route of the flow be granted. The MCP server behind the gateway is
//! an OAuth resource server: it gets a token minted for its resource alone (RFC 8707
//! audience; RFC 9068 claims), never the federation token.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::RpcMessage;
use crate::scope::{Scope, ScopeSet};

/// The scope prefix of MCP tools in agreements: `mcp:tools/<tool name>`.
pub const TOOL_SCOPE_PREFIX: &str = "mcp:tools/";
/// Longest lifetime of a resource token: it is minted per crossing for one forwarded request
/// (a streamed answer may take longer, but the token is checked when the request arrives).
pub const MAX_RESOURCE_TOKEN_TTL: i64 = 300;
/// The JWS `typ` of resource tokens (RFC 9068 section 2.1).
pub const RESOURCE_TOKEN_TYP: &str = "at+jwt";

/// Methods that are the session's plumbing, not an action on the server's tools or data.
const SESSION_METHODS: &[&str] = &[
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "logging/setLevel",
];

/// What one message needs to be let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// Session plumbing: any MCP route of the flow, with an MCP scope granted.
    Session,
    /// This scope, covered by the route and granted.
    Scope(Scope),
}

/// The need of one message.
pub fn need(m: &RpcMessage) -> Result<Need, String> {
    let Some(method) = m.method.as_deref() else {
        // A client's answer to a server request (sampling, elicitation, roots).
        return Ok(Need::Session);
    };
    if method == "tools/call" {
        let name = m
            .params
            .as_ref()
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .ok_or("tools/call without a tool name (params.name)")?;
        return tool_scope(name).map(Need::Scope);
    }
    if SESSION_METHODS.contains(&method) || method.starts_with("notifications/") {
        return Ok(Need::Session);
    }
    Scope::parse(&format!("mcp:{method}"))
        .map(Need::Scope)
        .map_err(|_| format!("MCP method {method:?} cannot be named as a scope"))
}

/// `mcp:tools/<name>`; a name outside the scope alphabet (MCP allows `[A-Za-z0-9_.-]`) is
/// refused rather than mapped loosely.
pub fn tool_scope(name: &str) -> Result<Scope, String> {
    if name.is_empty() || name.contains('*') {
        return Err(format!("tool name {name:?} is not usable"));
    }
    Scope::parse(&format!("{TOOL_SCOPE_PREFIX}{name}"))
        .map_err(|_| format!("tool name {:?} cannot be named as a scope", short(name)))
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The needs of a body (a batch gives one per message).
pub fn needs(msgs: &[RpcMessage]) -> Result<Vec<Need>, String> {
    msgs.iter().map(need).collect()
}

/// What the sending gateway asks for when the agent did not say (`Fedgate-Scope` absent): the
/// scopes the calls need, or for pure plumbing every MCP scope the chain holds.
pub fn requested_scope(needs: &[Need], held: &ScopeSet) -> Result<ScopeSet, String> {
    let wanted: Vec<Scope> = needs
        .iter()
        .filter_map(|n| match n {
            Need::Scope(s) => Some(s.clone()),
            Need::Session => None,
        })
        .collect();
    if !wanted.is_empty() {
        return ScopeSet::from_scopes(wanted).map_err(|e| e.to_string());
    }
    let all = Scope::parse("mcp:*").map_err(|e| e.to_string())?;
    let mcp: Vec<Scope> = held
        .iter()
        .filter_map(|h| {
            if all.covers(h) {
                Some(h.clone())
            } else if h.covers(&all) {
                Some(all.clone())
            } else {
                None
            }
        })
        .collect();
    if mcp.is_empty() {
        return Err("the chain holds no MCP scope (mcp:...)".into());
    }
    ScopeSet::from_scopes(mcp).map_err(|e| e.to_string())
}

/// Whether a route with scope `route` lets `need` through under `granted`.
pub fn permits(route: &Scope, granted: &ScopeSet, need: &Need) -> bool {
    match need {
        Need::Scope(s) => route.covers(s) && granted.covers(s),
        Need::Session => granted.iter().any(|g| g.meet(route).is_some()),
    }
}

/// The claims of the token an MCP server behind the gateway receives (RFC 9068): issued by
/// this gateway, for that resource only, naming who acts (the foreign agent), for which
/// partner (`client_id`), which task and crossing, and the tool scopes granted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResourceClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    pub txn: String,
    pub crossing: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Expiry of a resource token: never later than the crossing link it accompanies.
pub fn resource_exp(now: i64, link_exp: i64) -> i64 {
    link_exp.min(now.saturating_add(MAX_RESOURCE_TOKEN_TTL))
}

/// Signs the resource token (`typ` at+jwt, `kid` = the gateway key's, in the local bundle).
pub fn mint_resource_token(
    key: &crate::jose::SigningKey,
    claims: &ResourceClaims,
) -> Result<String, crate::jose::JoseError> {
    crate::jose::sign_compact(key, RESOURCE_TOKEN_TYP, true, None, claims)
}

/// RFC 9728 protected-resource metadata for the MCP resource at `resource` (the gateway's own
/// ingress URL of it): bearer tokens in the header only, bound to the mTLS certificate
/// (RFC 8705), scopes as the agreements name them.
pub fn metadata(resource: &str, scopes: &[String]) -> Value {
    let mut doc = serde_json::json!({
        "resource": resource,
        "bearer_methods_supported": ["header"],
        "tls_client_certificate_bound_access_tokens": true,
        "resource_name": "MCP server behind a fedgate boundary gateway",
    });
    if !scopes.is_empty() {
        doc["scopes_supported"] = Value::from(scopes.to_vec());
    }
    doc
}

/// The RFC 9728 well-known path of a resource path (`/mcp` ->
/// `/.well-known/oauth-protected-resource/mcp`).
pub fn metadata_path(resource_path: &str) -> String {
    let p = resource_path.trim_end_matches('/');
    format!("/.well-known/oauth-protected-resource{p}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::protocol::parse_rpc;

    fn one(body: &str) -> Need {
        need(&parse_rpc(body.as_bytes()).unwrap()[0]).unwrap()
    }

    fn sc(s: &str) -> Scope {
        Scope::parse(s).unwrap()
    }

    #[test]
    fn tools_map_to_scopes_and_plumbing_is_session() {
        assert_eq!(
            one(
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"summarize","arguments":{}}}"#
            ),
            Need::Scope(sc("mcp:tools/summarize"))
        );
        for m in [
            "initialize",
            "tools/list",
            "server/discover",
            "notifications/initialized",
            "ping",
        ] {
            assert_eq!(
                one(&format!(r#"{{"jsonrpc":"2.0","id":1,"method":"{m}"}}"#)),
                Need::Session,
                "{m}"
            );
        }
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            Need::Session
        );
        assert_eq!(
            one(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"x"}}"#),
            Need::Scope(sc("mcp:resources/read"))
        );
        for bad in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a b"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x*"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"weird method"}"#,
        ] {
            assert!(
                need(&parse_rpc(bad.as_bytes()).unwrap()[0]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn requested_and_permitted() {
        let held = ScopeSet::parse_list(&["mcp:tools/summarize", "analytics:read"]).unwrap();
        let tool = Need::Scope(sc("mcp:tools/delete_records"));
        assert_eq!(
            requested_scope(std::slice::from_ref(&tool), &held)
                .unwrap()
                .to_strings(),
            vec!["mcp:tools/delete_records"]
        );
        assert_eq!(
            requested_scope(&[Need::Session], &held)
                .unwrap()
                .to_strings(),
            vec!["mcp:tools/summarize"]
        );
        let star = ScopeSet::parse_list(&["*"]).unwrap();
        assert_eq!(
            requested_scope(&[Need::Session], &star)
                .unwrap()
                .to_strings(),
            vec!["mcp:*"]
        );
        let none = ScopeSet::parse_list(&["analytics:read"]).unwrap();
        assert!(requested_scope(&[Need::Session], &none).is_err());

        let granted = ScopeSet::parse_list(&["mcp:tools/summarize"]).unwrap();
        let route = sc("mcp:tools/*");
        assert!(permits(
            &route,
            &granted,
            &Need::Scope(sc("mcp:tools/summarize"))
        ));
        assert!(!permits(&route, &granted, &tool));
        assert!(permits(&route, &granted, &Need::Session));
        assert!(!permits(
            &sc("mcp:tools/summarize"),
            &ScopeSet::parse_list(&["mcp:tools/delete_records"]).unwrap(),
            &Need::Session
        ));
    }

    #[test]
    fn resource_token_and_metadata() {
        assert_eq!(resource_exp(100, 1_000), 100 + MAX_RESOURCE_TOKEN_TTL);
        assert_eq!(resource_exp(100, 150), 150);
        let (k, _) = crate::jose::SigningKey::generate_ed25519().unwrap();
        let c = ResourceClaims {
            iss: "spiffe://vendor.example/gateway".into(),
            sub: "spiffe://company.com/agent/planning/p1".into(),
            aud: "http://127.0.0.1:1/mcp".into(),
            client_id: "spiffe://company.com/gateway".into(),
            scope: "mcp:tools/summarize".into(),
            txn: "t".into(),
            crossing: "c".into(),
            iat: 1,
            nbf: 1,
            exp: 2,
            jti: "j".into(),
        };
        let t = mint_resource_token(&k, &c).unwrap();
        let p = crate::jose::parse_compact(&t).unwrap();
        assert_eq!(p.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(p.header.kid.as_deref(), Some(k.kid()));
        p.verify_with(k.public()).unwrap();
        let back: ResourceClaims = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(back, c);
        let m = metadata("https://gw/ingress/mcp", &["mcp:tools/summarize".into()]);
        assert_eq!(m["resource"], "https://gw/ingress/mcp");
        assert_eq!(m["scopes_supported"][0], "mcp:tools/summarize");
        assert_eq!(
            metadata_path("/ingress/mcp/"),
            "/.well-known/oauth-protected-resource/ingress/mcp"
        );
    }
}
