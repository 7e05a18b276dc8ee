//! Agent protocols through the boundary (MCP and A2A, beside plain HTTP): which protocol an
//! upstream or route speaks, bounded JSON-RPC parsing, the scope each call needs, and each
//! protocol's own error shape. Pure: no sockets, files or clocks (time comes in as a value).
//!
//! - `mcp.rs`: Model Context Protocol (JSON-RPC over Streamable HTTP): `tools/call` of tool N
//!   needs scope `mcp:tools/N`; the session plumbing needs any MCP scope the route grants; the
//!   resource token minted for the MCP server (RFC 9068 shape, audience = the resource only);
//!   RFC 9728 protected-resource metadata.
//! - `a2a.rs`: Agent2Agent (JSON-RPC, v1.0 and v0.3 method names): method -> scope
//!   `a2a:<v0.3 method>`, task ids in requests and answers, AgentCards re-signed by the gateway
//!   (JWS over the RFC 8785 canonical card) and verified against the partner's bundle.

pub mod a2a;
pub mod mcp;

use serde_json::Value;

use crate::reason::Reason;

/// What an upstream (gateway config) or a route (agreement) speaks. `Http` is the default, so
/// configurations and agreements written before protocols existed mean what they meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http,
    Mcp,
    A2a,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "http" => Some(Protocol::Http),
            "mcp" => Some(Protocol::Mcp),
            "a2a" => Some(Protocol::A2a),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Mcp => "mcp",
            Protocol::A2a => "a2a",
        }
    }

    pub fn is_rpc(self) -> bool {
        self != Protocol::Http
    }
}

/// Largest JSON-RPC request body the gateway reads whole to classify (tool name, method). MCP
/// and A2A requests are small (a call and its arguments); a larger one is refused `too_large`
/// in the protocol's error shape rather than forwarded unclassified.
pub const MAX_RPC_BODY_BYTES: usize = 1024 * 1024;
/// Most messages in one JSON-RPC batch. MCP 2025-06-18 and later forbid batches and A2A never
/// had them; a few are accepted for older MCP clients, each classified on its own.
pub const MAX_RPC_BATCH: usize = 16;
/// Longest JSON-RPC method name considered (the longest MCP/A2A method is under 64 bytes).
pub const MAX_RPC_METHOD_BYTES: usize = 128;
/// The JSON-RPC error code of every gateway denial (in the implementation-defined server-error
/// range -32000..-32099, clear of the codes MCP and A2A assign: -32001..-32007, -32042). The
/// reason code and crossing id are in `error.data`.
pub const DENIED_CODE: i64 = -32050;

/// One JSON-RPC message of a request body: a request or notification (`method`), or a
/// client's answer to a server request (no `method`).
#[derive(Debug, Clone, PartialEq)]
pub struct RpcMessage {
    pub id: Option<Value>,
    pub method: Option<String>,
    pub params: Option<Value>,
}

/// JSON-RPC 2.0's message members; a message with any other member is refused.
const MESSAGE_MEMBERS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];

/// A member name as a case-insensitive JSON decoder matches it (Go's `encoding/json` folds
/// case, and `ſ` to `s` and the Kelvin sign to `k`): two names with one fold are refused, so
/// the server behind the gateway cannot read another member than the one classified.
fn fold(name: &str) -> String {
    name.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '\u{17f}' => 's',
            '\u{212a}' => 'k',
            c => c,
        })
        .collect()
}

/// A JSON document parsed strictly: no object anywhere in it has two members with the same
/// name, or with names that fold to the same (see [`fold`]). serde_json alone keeps the last
/// of two duplicates, while other decoders keep the first or match case-insensitively: what
/// the gateway classified must be what the upstream reads.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        let mut folded = std::collections::HashSet::new();
        while let Some(k) = map.next_key::<String>()? {
            if !folded.insert(fold(&k)) {
                return Err(serde::de::Error::custom(format!(
                    "member {:?} appears twice (or twice but for case)",
                    k.chars().take(64).collect::<String>()
                )));
            }
            let Strict(v) = map.next_value()?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// Parses a JSON-RPC 2.0 body: one message or a batch of at most [`MAX_RPC_BATCH`]. Every
/// message must be an object with `"jsonrpc": "2.0"` and only JSON-RPC's members; ids are
/// strings, numbers or null; no object has duplicate (or case-folded duplicate) members.
pub fn parse_rpc(body: &[u8]) -> Result<Vec<RpcMessage>, String> {
    if body.len() > MAX_RPC_BODY_BYTES {
        return Err(format!("JSON-RPC body over {MAX_RPC_BODY_BYTES} bytes"));
    }
    let Strict(v) = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let items = match v {
        Value::Array(a) => {
            if a.is_empty() {
                return Err("an empty JSON-RPC batch".into());
            }
            if a.len() > MAX_RPC_BATCH {
                return Err(format!("a JSON-RPC batch of more than {MAX_RPC_BATCH}"));
            }
            a
        }
        one => vec![one],
    };
    items.into_iter().map(message).collect()
}

fn message(v: Value) -> Result<RpcMessage, String> {
    let Value::Object(mut m) = v else {
        return Err("a JSON-RPC message must be an object".into());
    };
    if let Some(k) = m.keys().find(|k| !MESSAGE_MEMBERS.contains(&k.as_str())) {
        return Err(format!(
            "a JSON-RPC message has no member {:?}",
            k.chars().take(64).collect::<String>()
        ));
    }
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("not JSON-RPC 2.0 (\"jsonrpc\": \"2.0\" is missing)".into());
    }
    let id = m.remove("id");
    if let Some(i) = &id {
        if !(i.is_string() || i.is_number() || i.is_null()) {
            return Err("a JSON-RPC id must be a string, a number or null".into());
        }
    }
    let method = match m.remove("method") {
        None => {
            if !m.contains_key("result") && !m.contains_key("error") {
                return Err("a JSON-RPC message needs a method, a result or an error".into());
            }
            None
        }
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_RPC_METHOD_BYTES => Some(s),
        Some(_) => return Err("the JSON-RPC method must be a short non-empty string".into()),
    };
    Ok(RpcMessage {
        id,
        method,
        params: m.remove("params"),
    })
}

/// The id to answer with: the first request's (a batch is refused whole), else null.
pub fn answer_id(msgs: &[RpcMessage]) -> Value {
    msgs.iter()
        .find_map(|m| m.method.as_ref().and(m.id.clone()))
        .unwrap_or(Value::Null)
}

/// A denial in JSON-RPC's shape: `{"jsonrpc":"2.0","id":ID,"error":{"code":-32050,"message",
/// "data":{"reason","crossing"[,"detail"]}}}`. `detail` only for the local agent (internal
/// listener), as for every other denial.
pub fn rpc_denial(id: &Value, reason: Reason, crossing: &str, detail: Option<&str>) -> Value {
    let mut data = serde_json::json!({"reason": reason.code(), "crossing": crossing});
    if let Some(d) = detail {
        data["detail"] = Value::String(d.to_string());
    }
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": DENIED_CODE,
            "message": format!("fedgate denied the call: {}", reason.code()),
            "data": data,
        }
    })
}

/// One request of an MCP or A2A client, classified: what it calls and what each call needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub protocol: Protocol,
    /// The id refusals answer with (`None`: not a JSON-RPC request, e.g. a card fetch).
    pub id: Option<Value>,
    pub methods: Vec<String>,
    pub tools: Vec<String>,
    pub needs: Vec<mcp::Need>,
    /// The A2A task the request names.
    pub task: Option<String>,
    /// An A2A AgentCard fetch.
    pub card: bool,
}

/// A refusal while classifying: reason, detail, the JSON-RPC id to answer with (null when
/// the body could not be read as JSON-RPC), and what was understood of the call, for the
/// audit record.
pub type Refused = (Reason, String, Option<Value>, Option<Value>);

/// Classifies a request to an MCP or A2A upstream (`body` read whole, at most
/// [`MAX_RPC_BODY_BYTES`]). MCP: a POST carries JSON-RPC; a GET (the server's event stream)
/// or DELETE (session end) without a body is session plumbing. A2A: a GET of the card needs
/// [`a2a::CARD_SCOPE`]; everything else is a JSON-RPC POST.
pub fn classify(
    protocol: Protocol,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Call, Refused> {
    let mut call = Call {
        protocol,
        id: None,
        methods: Vec::new(),
        tools: Vec::new(),
        needs: Vec::new(),
        task: None,
        card: false,
    };
    let bodiless = body.iter().all(u8::is_ascii_whitespace);
    match protocol {
        Protocol::Http => {
            return Err((
                Reason::Malformed,
                "not an MCP or A2A request".into(),
                None,
                None,
            ))
        }
        Protocol::A2a if method == "GET" && a2a::is_card_path(path) && bodiless => {
            let s = crate::scope::Scope::parse(a2a::CARD_SCOPE)
                .map_err(|e| (Reason::Malformed, e.to_string(), None, None))?;
            call.card = true;
            call.needs.push(mcp::Need::Scope(s));
            return Ok(call);
        }
        Protocol::Mcp if (method == "GET" || method == "DELETE") && bodiless => {
            call.needs.push(mcp::Need::Session);
            return Ok(call);
        }
        _ => {}
    }
    if method != "POST" {
        let m = format!(
            "{} calls are JSON-RPC POSTs, not {method}",
            protocol.as_str()
        );
        return Err((Reason::RouteDenied, m, Some(Value::Null), None));
    }
    let msgs = parse_rpc(body).map_err(|m| (Reason::Malformed, m, Some(Value::Null), None))?;
    call.id = Some(answer_id(&msgs));
    for m in &msgs {
        if let Some(name) = &m.method {
            call.methods.push(name.clone());
        }
        let need = match protocol {
            Protocol::Mcp => {
                if m.method.as_deref() == Some("tools/call") {
                    if let Some(t) = m
                        .params
                        .as_ref()
                        .and_then(|p| p.get("name"))
                        .and_then(Value::as_str)
                    {
                        call.tools.push(t.chars().take(128).collect());
                    }
                }
                mcp::need(m)
            }
            _ => {
                if call.task.is_none() {
                    call.task = a2a::task_in_request(m);
                }
                a2a::need(m).map(mcp::Need::Scope)
            }
        };
        match need {
            Ok(n) => call.needs.push(n),
            Err(e) => {
                return Err((
                    Reason::RouteDenied,
                    e,
                    call.id.clone(),
                    Some(call.describe()),
                ))
            }
        }
    }
    Ok(call)
}

impl Call {
    /// The route of `flow` that lets every call through with `granted`: for each need, a route
    /// of this protocol matching the method and path whose scope covers it (or, for session
    /// plumbing, meets a granted scope). Returns the first need's route (its response rules).
    pub fn route<'f>(
        &self,
        flow: &'f crate::agreement::Flow,
        method: &str,
        path: &str,
        granted: &crate::scope::ScopeSet,
    ) -> Result<&'f crate::agreement::Route, String> {
        let mut first = None;
        for n in &self.needs {
            let r = flow.routes.iter().find(|r| {
                r.protocol == self.protocol
                    && r.matches(method, path)
                    && mcp::permits(&r.scope, granted, n)
            });
            match r {
                Some(r) => {
                    first.get_or_insert(r);
                }
                None => {
                    let what = match n {
                        mcp::Need::Scope(s) => format!("{s}"),
                        mcp::Need::Session => format!("the {} session", self.protocol.as_str()),
                    };
                    return Err(format!(
                        "no {} route of flow {} allows {what} at {method} {path} with [{granted}]",
                        self.protocol.as_str(),
                        flow.index
                    ));
                }
            }
        }
        first.ok_or_else(|| "nothing to call".to_string())
    }

    /// What the crossing link carries: the scopes called, or for plumbing alone what of the
    /// route's scope was granted.
    pub fn granted(
        &self,
        granted: &crate::scope::ScopeSet,
        route: &crate::agreement::Route,
    ) -> crate::scope::ScopeSet {
        let called: Vec<crate::scope::Scope> = self
            .needs
            .iter()
            .filter_map(|n| match n {
                mcp::Need::Scope(s) => Some(s.clone()),
                mcp::Need::Session => None,
            })
            .collect();
        if called.is_empty() {
            let r =
                crate::scope::ScopeSet::from_scopes(vec![route.scope.clone()]).unwrap_or_default();
            return granted.intersect(&r);
        }
        crate::scope::ScopeSet::from_scopes(called).unwrap_or_default()
    }

    /// The audit record's `protocol` member.
    pub fn describe(&self) -> Value {
        let mut v = serde_json::json!({"name": self.protocol.as_str()});
        if !self.methods.is_empty() {
            v["methods"] = Value::from(self.methods.clone());
        }
        if !self.tools.is_empty() {
            v["tools"] = Value::from(self.tools.clone());
        }
        if self.card {
            v["card"] = Value::Bool(true);
        }
        if let Some(t) = &self.task {
            v["task"] = Value::String(t.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_batch_and_answers() {
        let m =
            parse_rpc(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#)
                .unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].method.as_deref(), Some("tools/call"));
        assert_eq!(answer_id(&m), serde_json::json!(1));
        let b = parse_rpc(
            br#"[{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"a","result":{}}]"#,
        )
        .unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].method, None);
        assert_eq!(answer_id(&b), Value::Null);
    }

    #[test]
    fn refuses_what_is_not_json_rpc() {
        for bad in [
            &b"not json"[..],
            br#"[]"#,
            br#"{"id":1,"method":"x"}"#,
            br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":{"a":1},"method":"x"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
            br#"5"#,
        ] {
            assert!(parse_rpc(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let many = format!(
            "[{}]",
            vec![r#"{"jsonrpc":"2.0","method":"ping","id":1}"#; MAX_RPC_BATCH + 1].join(",")
        );
        assert!(parse_rpc(many.as_bytes()).is_err());
        assert!(parse_rpc(&vec![b' '; MAX_RPC_BODY_BYTES + 1]).is_err());
    }

    #[test]
    fn refuses_what_another_decoder_would_read_otherwise() {
        for bad in [
            // A duplicate member: serde_json keeps the last, other decoders the first.
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"summarize","name":"delete_records"}}"#[..],
            // Case-folded twins: Go's encoding/json matches either, the last one wins.
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"summarize","Name":"delete_records"}}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"arguments\":{\"task\":1,\"tas\u{212a}\":2,\"\u{17f}\":3,\"s\":4}}}".as_bytes(),
            // A member JSON-RPC does not have (a case-insensitive decoder reads it as method).
            br#"{"jsonrpc":"2.0","id":1,"result":{},"Method":"tools/call","Params":{"name":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","extra":1}"#,
            // Deep inside too.
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"t":1,"T":2}}}"#,
        ] {
            assert!(parse_rpc(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(fold("\u{17f}ummarize"), "summarize");
        // Classified refusals of unreadable bodies answer JSON-RPC's shape with a null id.
        let e = classify(Protocol::Mcp, "POST", "/mcp", b"{").unwrap_err();
        assert_eq!(e.2, Some(Value::Null));
    }

    #[test]
    fn denial_shape() {
        let d = rpc_denial(
            &serde_json::json!(7),
            Reason::RouteDenied,
            "c1",
            Some("why"),
        );
        assert_eq!(d["jsonrpc"], "2.0");
        assert_eq!(d["id"], 7);
        assert_eq!(d["error"]["code"], DENIED_CODE);
        assert_eq!(d["error"]["data"]["reason"], "route_denied");
        assert_eq!(d["error"]["data"]["crossing"], "c1");
        assert_eq!(d["error"]["data"]["detail"], "why");
        assert!(
            rpc_denial(&Value::Null, Reason::Revoked, "c", None)["error"]["data"]
                .get("detail")
                .is_none()
        );
    }

    #[test]
    fn protocol_names() {
        for p in [Protocol::Http, Protocol::Mcp, Protocol::A2a] {
            assert_eq!(Protocol::parse(p.as_str()), Some(p));
        }
        assert_eq!(Protocol::parse("grpc"), None);
        assert_eq!(Protocol::default(), Protocol::Http);
    }
}
