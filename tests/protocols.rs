//! MCP and A2A through the boundary (issue 19), with the official SDKs as peers: a FastMCP
//! server (`mcp` from PyPI, two tools, one outside the agreement's routes) behind the vendor
//! gateway and the SDK's MCP client through the company gateway; an `a2a-sdk` agent behind the
//! vendor gateway and the SDK's A2A client through the company gateway. Real TLS on loopback,
//! real gateways, real audit logs.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::*;
use http::Method;

/// A peer process, killed when dropped.
struct Peer {
    child: Child,
    port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a peer server script with `--port 0` and waits for its `READY <port>` line.
fn start_peer(script: &str, args: &[&str]) -> Peer {
    let mut child = Command::new(peers::python())
        .arg(peers::dir().join(script))
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python");
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{script} did not start: {line:?}"));
    Peer { child, port }
}

fn log_lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The MCP resource the server behind vendor.example identifies as.
const RESOURCE: &str = "https://mcp.vendor.example/mcp";

/// The demo agreement (whose third flow is planning -> tools/*, the MCP server, routing
/// `summarize` only) plus flows to the A2A agent (agents/*, strict/*: the latter's card route
/// names a skill the agent does not have).
fn agreement(f: &Federation) -> String {
    let mut text = agreement_text(f.co.federation, f.ve.federation, fedgate::time::now());
    text.push_str(
        r#"
[[flows]]
from = "spiffe://company.com/agent/planning/*"
to = "spiffe://vendor.example/agent/agents/*"
max_scope = ["a2a:*"]

[[flows.routes]]
method = "GET"
path = "/.well-known/agent-card.json"
scope = "a2a:card"
protocol = "a2a"
skills = ["analyze"]

[[flows.routes]]
method = "POST"
path = "/"
scope = "a2a:message/*"
protocol = "a2a"
response = { stream = true }

[[flows.routes]]
method = "POST"
path = "/"
scope = "a2a:tasks/get"
protocol = "a2a"

[[flows]]
from = "spiffe://company.com/agent/planning/*"
to = "spiffe://vendor.example/agent/strict/*"
max_scope = ["a2a:card"]

[[flows.routes]]
method = "GET"
path = "/.well-known/agent-card.json"
scope = "a2a:card"
protocol = "a2a"
skills = ["report"]
"#,
    );
    text
}

/// Both gateways, with vendor.example's MCP and A2A upstreams in front of its plain one.
async fn federation(mcp_port: Option<u16>, a2a_port: Option<u16>) -> Federation {
    Federation::start_with(|f| {
        edit_config(&f.ve, |t| {
            let mut ups = vec![];
            if let Some(p) = mcp_port {
                let mut u = toml::Table::new();
                u.insert(
                    "target".into(),
                    "spiffe://vendor.example/agent/tools/*".into(),
                );
                u.insert("url".into(), format!("http://127.0.0.1:{p}").into());
                u.insert("protocol".into(), "mcp".into());
                u.insert("resource".into(), RESOURCE.into());
                ups.push(toml::Value::Table(u));
            }
            if let Some(p) = a2a_port {
                for target in [
                    "spiffe://vendor.example/agent/agents/*",
                    "spiffe://vendor.example/agent/strict/*",
                ] {
                    let mut u = toml::Table::new();
                    u.insert("target".into(), target.into());
                    u.insert("url".into(), format!("http://127.0.0.1:{p}").into());
                    u.insert("protocol".into(), "a2a".into());
                    ups.push(toml::Value::Table(u));
                }
            }
            if let Some(toml::Value::Array(old)) = t.get("upstreams") {
                ups.extend(old.iter().cloned());
            }
            t.insert("upstreams".into(), toml::Value::Array(ups));
        });
        sign_into(&agreement(f), &[&f.co, &f.ve]);
    })
    .await
}

fn agent_args(f: &Federation, chain: &str, target: &str) -> Vec<String> {
    vec![
        "--cert".into(),
        f.co.agent_pem("planning/p1").display().to_string(),
        "--key".into(),
        f.co.agent_key("planning/p1").display().to_string(),
        "--ca".into(),
        f.co.dir.join("ca.pem").display().to_string(),
        "--header".into(),
        format!("Delegation-Chain: {chain}"),
        "--header".into(),
        format!("Fedgate-Target: {target}"),
    ]
}

fn run_json(script: &str, args: &[String]) -> serde_json::Value {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = peers::run(script, &a);
    assert!(code == 0, "{script} exited {code}: {out} {err}");
    serde_json::from_str(out.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// The gateway's records once `ok` holds for them: outcome records are appended off the
/// response path, so they may land a moment after the client has its answer.
async fn records_when(
    r: &fedgate::server::Running,
    ok: impl Fn(&[fedgate::audit::Record]) -> bool,
) -> Vec<fedgate::audit::Record> {
    let t = std::time::Instant::now();
    loop {
        let recs = records(r);
        if ok(&recs) || t.elapsed() > std::time::Duration::from_secs(10) {
            return recs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn with_protocol<'a>(
    recs: &'a [fedgate::audit::Record],
    name: &str,
) -> Vec<&'a fedgate::audit::Record> {
    recs.iter()
        .filter(|r| r.protocol.as_ref().is_some_and(|p| p["name"] == name))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tools_cross_with_a_token_for_the_resource_only() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("mcp.jsonl");
    // The server's JWKS is vendor.example's own bundle (copied in once the domain exists; the
    // server re-reads it per request): it trusts tokens of that gateway only.
    let jwks = logs.path().join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let server = start_peer(
        "mcp_server.py",
        &[
            "--log",
            log.to_str().unwrap(),
            "--jwks",
            jwks.to_str().unwrap(),
            "--resource",
            RESOURCE,
            "--progress-interval",
            "0.5",
        ],
    );
    let f = federation(Some(server.port), None).await;
    std::fs::copy(f.ve.bundles().join("vendor.example.json"), &jwks).unwrap();
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["mcp:tools/*"],
        "task-mcp",
    );
    let target = "spiffe://vendor.example/agent/tools/t1";
    let url = format!("https://{}/egress/mcp", f.co.internal);
    let mut args = agent_args(&f, &chain, target);
    args.extend(["--url".into(), url.clone()]);

    // The allowed tool, end to end, its progress streamed (not buffered to the end).
    let mut ok = args.clone();
    ok.extend([
        "--tool".into(),
        "summarize".into(),
        "--args".into(),
        r#"{"text": "quarterly infrastructure review of every region"}"#.into(),
    ]);
    let r = run_json("mcp_client.py", &ok);
    assert_eq!(r["ok"], true, "{r}");
    let text = r["result"]["content"][0]["text"].as_str().unwrap_or("");
    assert!(text.starts_with("Summary (6 words)"), "{r}");
    let times: Vec<f64> = r["progress_times"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_f64())
        .collect();
    assert_eq!(times.len(), 3, "{r}");
    // The server sends one every 0.5 s. The sending gateway holds back only the latest
    // frame until the next one arrives (the end is released after the trailer signature
    // verifies), so the events still arrive spread out, not all with the result.
    assert!(
        times[2] - times[0] > 0.35,
        "progress arrived together, so the stream was buffered: {times:?}"
    );

    // The tool outside the agreement's routes: refused by the vendor gateway, in JSON-RPC's
    // shape, with the reason code and the crossing id; the server never sees the call.
    let mut bad = args.clone();
    bad.extend([
        "--tool".into(),
        "delete_records".into(),
        "--args".into(),
        r#"{"table": "customers"}"#.into(),
    ]);
    let r = run_json("mcp_client.py", &bad);
    assert_eq!(r["ok"], false, "{r}");
    // The SDK surfaces the JSON-RPC error (code, message, data); the peer script adds the HTTP
    // status beside it and keeps the SDK's `data` as `sdk_data`.
    assert_eq!(
        r["error"]["code"],
        fedgate::server::protocol::DENIED_CODE,
        "{r}"
    );
    let data = &r["error"]["data"]["sdk_data"];
    assert_eq!(data["reason"], "route_denied", "{r}");
    assert_eq!(r["error"]["data"]["http_status"], 403, "{r}");
    let denied_crossing = data["crossing"].as_str().unwrap().to_string();
    assert!(!denied_crossing.is_empty());

    // What the MCP server saw: only tokens minted for its resource by vendor.example's gateway,
    // never a federation token; no delete_records call; the crossing link beside the token.
    let seen = log_lines(&log);
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|l| l["tool"] != "delete_records"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|l| l["tool"] == "summarize"));
    for l in seen
        .iter()
        .filter(|l| !l["path"].as_str().unwrap_or("").starts_with("/.well-known"))
    {
        assert_eq!(l["auth"]["ok"], true, "{l}");
        let claims = &l["auth"]["claims"];
        assert_eq!(claims["aud"], RESOURCE, "{l}");
        assert_eq!(claims["iss"], "spiffe://vendor.example/gateway");
        assert_eq!(claims["client_id"], "spiffe://company.com/gateway");
        assert_eq!(claims["txn"], "task-mcp");
        assert_eq!(l["auth"]["typ"], "at+jwt");
        assert!(
            l["delegation_chain"].is_string(),
            "the crossing link is forwarded"
        );
        let all = l["headers"].to_string();
        assert!(!all.contains(&chain), "the internal chain leaked");
    }
    for l in &seen {
        // A federation token's audience is the vendor gateway; none reached the server.
        let a = l["authorization"].as_str().unwrap_or("");
        let jws = a.strip_prefix("Bearer ").unwrap_or("");
        if let Ok(c) = fedgate::jose::parse_compact(jws) {
            let v: serde_json::Value = serde_json::from_slice(&c.payload).unwrap();
            assert_ne!(v["aud"], "spiffe://vendor.example/gateway", "{l}");
        }
    }

    // A body another JSON decoder would read differently (case-folded twin members: Go's
    // encoding/json takes "Name") is refused before it crosses, with or without Fedgate-Scope,
    // and in JSON-RPC's shape.
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let twin = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"summarize","Name":"delete_records","arguments":{}}}"#;
    for scope in [None, Some("mcp:tools/summarize")] {
        let mut h = vec![
            ("delegation-chain", chain.as_str()),
            ("fedgate-target", target),
            ("content-type", "application/json"),
        ];
        if let Some(s) = scope {
            h.push(("fedgate-scope", s));
        }
        let r = call(&c, Method::POST, &url, &h, twin).await.unwrap();
        assert_eq!(r.status, 400, "{:?}", r.json());
        if scope.is_some() {
            assert_eq!(r.json()["jsonrpc"], "2.0", "{:?}", r.json());
            assert_eq!(r.json()["error"]["data"]["reason"], "malformed");
        }
    }

    // Both sides audited both calls, with the tool names.
    let denied_outcome = |r: &[fedgate::audit::Record]| {
        r.iter()
            .any(|x| x.kind == "outcome" && x.crossing == denied_crossing && x.status == Some(403))
    };
    let co = records_when(f.co_gw(), denied_outcome).await;
    let ve = records(f.ve_gw());
    let co_mcp = with_protocol(&co, "mcp");
    let ve_mcp = with_protocol(&ve, "mcp");
    let tool = |r: &&fedgate::audit::Record, t: &str| {
        r.protocol.as_ref().unwrap()["tools"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == t))
    };
    assert!(co_mcp
        .iter()
        .any(|r| r.kind == "decision" && r.decision == "allow" && tool(r, "summarize")));
    assert!(co_mcp
        .iter()
        .any(|r| r.kind == "decision" && r.decision == "allow" && tool(r, "delete_records")));
    assert!(ve_mcp
        .iter()
        .any(|r| r.kind == "decision" && r.decision == "allow" && tool(r, "summarize")));
    let refused = ve_mcp
        .iter()
        .find(|r| r.decision == "deny" && tool(r, "delete_records"))
        .expect("vendor.example audited the refusal");
    assert_eq!(refused.reason.as_deref(), Some("route_denied"));
    assert_eq!(refused.crossing, denied_crossing);
    assert!(co_mcp
        .iter()
        .any(|r| r.kind == "outcome" && r.crossing == denied_crossing && r.status == Some(403)));

    // Fedgate-Scope was optional, and session plumbing crossed under the MCP scope alone.
    assert!(co_mcp
        .iter()
        .any(|r| r.protocol.as_ref().unwrap()["methods"]
            .as_array()
            .is_some_and(|m| m
                .iter()
                .any(|x| x == "tools/list" || x == "server/discover" || x == "initialize"))));

    // RFC 9728 metadata of the resource, from the vendor's federation listener.
    let g = gateway_client(&f.co, &f.ve);
    let m = call(
        &g,
        Method::GET,
        &format!(
            "https://{}/.well-known/oauth-protected-resource/ingress/mcp",
            f.ve.federation
        ),
        &[],
        "",
    )
    .await
    .unwrap();
    assert_eq!(m.status, 200);
    let doc = m.json();
    assert_eq!(
        doc["resource"],
        format!("https://{}/ingress/mcp", f.ve.federation)
    );
    assert!(doc["scopes_supported"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "mcp:tools/summarize"));
    // And an MCP client without a token is told where it is.
    let noauth = call(
        &g,
        Method::POST,
        &format!("https://{}/ingress/mcp", f.ve.federation),
        &[("content-type", "application/json")],
        "{}",
    )
    .await
    .unwrap();
    let challenge = noauth.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("/.well-known/oauth-protected-resource/ingress/mcp"),
        "{challenge}"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a2a_cards_are_re_signed_and_tasks_are_audited_on_both_sides() {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("a2a.jsonl");
    let agent = start_peer("a2a_agent.py", &["--log", log.to_str().unwrap()]);
    let f = federation(None, Some(agent.port)).await;
    let chain = issue_chain(
        &f.co,
        "alice@company.com",
        "planning/p1",
        &["a2a:*"],
        "task-a2a",
    );
    let base = format!("https://{}/egress/", f.co.internal);
    let target = "spiffe://vendor.example/agent/agents/x1";

    // The card, fetched through the company gateway: re-signed by vendor.example's gateway,
    // naming its boundary, and verified by the company gateway before the agent got it.
    let mut card_args = agent_args(&f, &chain, target);
    card_args.extend(["--base".into(), base.clone(), "--card".into()]);
    let r = run_json("a2a_client.py", &card_args);
    assert_eq!(r["ok"], true, "{r}");
    let card = r["card"].clone();
    let boundary = format!("https://{}/ingress/", f.ve.federation);
    assert_eq!(card["supportedInterfaces"][0]["url"], boundary, "{card}");
    assert!(card["securitySchemes"]["fedgate_mtls"]["mtlsSecurityScheme"].is_object());
    let vb =
        fedgate::files::load_bundle_file(&f.co.bundles().join("vendor.example.json"), VE).unwrap();
    fedgate::server::protocol::a2a::verify_card(&card, &vb, &boundary, &["analyze".into()])
        .unwrap();
    // Tampered in transit (a skill added, a description changed): the signature fails.
    let mut t = card.clone();
    t["skills"][0]["description"] = "Also deletes records.".into();
    assert!(fedgate::server::protocol::a2a::verify_card(&t, &vb, &boundary, &[]).is_err());
    // A card whose skills the agreement's route does not name is refused by the gateway.
    let mut strict = agent_args(&f, &chain, "spiffe://vendor.example/agent/strict/s1");
    strict.extend(["--base".into(), base.clone(), "--card".into()]);
    let r = run_json("a2a_client.py", &strict);
    assert_eq!(r["ok"], false, "{r}");
    let refused = |co: &[fedgate::audit::Record]| {
        co.iter().any(|x| {
            x.kind == "outcome"
                && x.reason.as_deref() == Some("response_invalid")
                && x.target.as_deref() == Some("spiffe://vendor.example/agent/strict/s1")
        })
    };
    assert!(refused(&records_when(f.co_gw(), refused).await));
    // The same card fetched as plain HTTP (Fedgate-Scope given, no A2A header) is checked too:
    // the route is an A2A route.
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let plain = call(
        &c,
        Method::GET,
        &format!("{base}.well-known/agent-card.json"),
        &[
            ("delegation-chain", chain.as_str()),
            ("fedgate-target", "spiffe://vendor.example/agent/strict/s1"),
            ("fedgate-scope", "a2a:card"),
        ],
        "",
    )
    .await
    .unwrap();
    assert_eq!(plain.status, 502, "{:?}", plain.json());
    assert_eq!(plain.reason(), "response_invalid");

    // message/send (v1.0 SendMessage, and v0.3 message/send) crosses; the task id is in both
    // domains' outcome records beside the task id of the chain.
    let mut send = agent_args(&f, &chain, target);
    send.extend([
        "--base".into(),
        base.clone(),
        "--send".into(),
        "Q3 revenue".into(),
    ]);
    let r = run_json("a2a_client.py", &send);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "TASK_STATE_COMPLETED", "{r}");
    assert_eq!(r["artifact_text"], "analysis of: Q3 revenue");
    let task = r["task_id"].as_str().unwrap().to_string();
    let mut v03 = send.clone();
    v03.push("--v03".into());
    let r = run_json("a2a_client.py", &v03);
    assert_eq!(r["ok"], true, "{r}");

    let has_task = |recs: &[fedgate::audit::Record]| {
        recs.iter().any(|x| {
            x.kind == "outcome"
                && x.txn.as_deref() == Some("task-a2a")
                && x.protocol
                    .as_ref()
                    .is_some_and(|p| p["task"] == task.as_str())
        })
    };
    let co = records_when(f.co_gw(), |r| has_task(r)).await;
    let ve = records_when(f.ve_gw(), |r| has_task(r)).await;
    assert!(has_task(&co), "company.com's outcome names A2A task {task}");
    assert!(
        has_task(&ve),
        "vendor.example's outcome names A2A task {task}"
    );
    // tasks/get of that task names it in the decision records too.
    let mut get = agent_args(&f, &chain, target);
    get.extend(["--base".into(), base.clone(), "--get".into(), task.clone()]);
    let r = run_json("a2a_client.py", &get);
    assert_eq!(r["ok"], true, "{r}");
    let ve = records(f.ve_gw());
    assert!(ve.iter().any(|x| x.kind == "decision"
        && x.protocol
            .as_ref()
            .is_some_and(|p| p["task"] == task.as_str() && p["methods"][0] == "GetTask")));

    // A method the agreement has no route for: refused in JSON-RPC's shape, audited.
    let c = agent_client(&f.co, "planning/p1", &f.co);
    let cancel = format!(
        r#"{{"jsonrpc":"2.0","id":"c-1","method":"tasks/cancel","params":{{"id":"{task}"}}}}"#
    );
    let r = call(
        &c,
        Method::POST,
        &base,
        &[
            ("delegation-chain", chain.as_str()),
            ("fedgate-target", target),
            ("content-type", "application/json"),
        ],
        cancel,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 403);
    let j = r.json();
    assert_eq!(j["jsonrpc"], "2.0");
    assert_eq!(j["id"], "c-1");
    assert_eq!(j["error"]["data"]["reason"], "route_denied", "{j}");
    let crossing = j["error"]["data"]["crossing"].as_str().unwrap();
    let ve = records(f.ve_gw());
    assert!(ve
        .iter()
        .any(|x| x.crossing == crossing && x.decision == "deny"));
    // Nothing of a denied call reached the agent.
    assert!(log_lines(&log)
        .iter()
        .all(|l| l["rpc_method"] != "tasks/cancel" && l["rpc_method"] != "CancelTask"));
    f.stop().await;
}
