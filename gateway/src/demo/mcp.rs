//! The demo's MCP tool server: a loopback stand-in for a vendor's MCP server (Streamable HTTP
//! with JSON answers) with two tools, `summarize` and `delete_records`. It records what it
//! receives so the demo can show what crossed. The tests drive the real `mcp` SDK instead
//! (tests/protocols.rs); this one only keeps the demo free of anything but Rust.

use std::sync::{Arc, Mutex};

use axum::body::Body;

use super::{Seen, Upstream};

/// The resource the demo's MCP server identifies as (the `aud` of the tokens it accepts).
pub const RESOURCE: &str = "https://mcp.vendor.example/mcp";

fn answer(req: &serde_json::Value) -> serde_json::Value {
    let id = req.get("id").cloned().unwrap_or(serde_json::Value::Null);
    let method = req.get("method").and_then(|m| m.as_str()).unwrap_or("");
    let params = req.get("params").cloned().unwrap_or_default();
    let result = match method {
        "initialize" => serde_json::json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "vendor-tools", "version": "1.0.0"},
        }),
        "tools/list" => serde_json::json!({"tools": [
            {"name": "summarize", "inputSchema": {"type": "object"}},
            {"name": "delete_records", "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" => {
            let name = params.get("name").and_then(|n| n.as_str()).unwrap_or("");
            let text = match name {
                "summarize" => {
                    let t = params["arguments"]["text"].as_str().unwrap_or("");
                    format!("Summary ({} words)", t.split_whitespace().count())
                }
                "delete_records" => "deleted 42 records".to_string(),
                _ => {
                    return serde_json::json!({"jsonrpc": "2.0", "id": id,
                        "error": {"code": -32602, "message": format!("unknown tool {name}")}})
                }
            };
            serde_json::json!({"content": [{"type": "text", "text": text}], "isError": false})
        }
        _ => serde_json::json!({}),
    };
    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// Starts the tool server on a loopback port.
pub async fn tools() -> Result<Upstream, String> {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(move |req: http::Request<Body>| {
            let s = s.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = http_body_util::BodyExt::collect(body)
                    .await
                    .map(|c| c.to_bytes())
                    .unwrap_or_default();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if let Ok(mut list) = s.lock() {
                    list.push(Seen {
                        method: parts.method.to_string(),
                        path: parts.uri.path().to_string(),
                        headers: parts.headers.clone(),
                        body,
                    });
                }
                axum::Json(answer(&v))
            }
        }),
    );
    let addr = super::serve_loopback(app).await?;
    Ok(Upstream { addr, seen })
}
