#!/usr/bin/env python3
"""Test MCP server (official `mcp` SDK, MCPServer) over Streamable HTTP at /mcp.

usage: mcp_server.py --port P --log FILE [--host H] [--jwks FILE --resource URL]
                     [--progress-interval S] [--stateless] [--json-response]
                     [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]

Tools: summarize(text) -> str (3 progress notifications, --progress-interval apart,
before the result) and delete_records(table) -> str.
Every HTTP request is appended to FILE as one JSON line (see README.md).
With --jwks and --resource, every request outside /.well-known/ needs a valid bearer
JWS (ES256/EdDSA by kid from the JWKS/SPIFFE bundle file, aud == resource, exp not
passed); otherwise 401 with WWW-Authenticate: Bearer resource_metadata="...".
Prints `READY <port>` on stdout when listening (--port 0 picks a free port).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anyio  # noqa: E402
from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.server.transport_security import TransportSecuritySettings  # noqa: E402
from mcp.types import ToolAnnotations  # noqa: E402

from _peer_common import BearerJwsGuard, RequestLog, jsonrpc_messages, serve  # noqa: E402


def build_server(progress_interval: float) -> MCPServer:
    server = MCPServer("fedgate-test-mcp", version="1.0.0",
                       instructions="Test MCP server for fedgate integration tests.")

    @server.tool(description="Summarize a text. Reports progress three times before answering.",
                 annotations=ToolAnnotations(readOnlyHint=True))
    async def summarize(text: str, ctx: Context) -> str:
        for step in (1, 2, 3):
            await anyio.sleep(progress_interval)
            await ctx.report_progress(step, 3, f"summarizing: step {step} of 3")
        words = text.split()
        head = " ".join(words[:12])
        return f"Summary ({len(words)} words): {head}{' ...' if len(words) > 12 else ''}"

    @server.tool(description="Delete all records of a table (destructive; for policy tests).",
                 annotations=ToolAnnotations(destructiveHint=True, readOnlyHint=False))
    async def delete_records(table: str) -> str:
        return f"deleted 42 records from {table}"

    return server


def extract_mcp(headers: dict, body: bytes) -> dict:
    out: dict = {"tool": None, "rpc_method": None, "rpc_id": None,
                 "mcp": {k: v for k, v in headers.items() if k.startswith("mcp-")}}
    msgs = jsonrpc_messages(body)
    if msgs:
        first = msgs[0]
        out["rpc_method"] = first.get("method")
        out["rpc_id"] = first.get("id")
        for m in msgs:
            if m.get("method") == "tools/call" and isinstance(m.get("params"), dict):
                out["tool"] = m["params"].get("name")
                break
        if len(msgs) > 1:
            out["rpc_methods"] = [m.get("method") for m in msgs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--log", required=True)
    ap.add_argument("--jwks", help="JWKS / SPIFFE bundle JSON file ({'keys': [...]}) to verify bearer tokens")
    ap.add_argument("--resource", help="this resource's URL; the token's aud must equal it")
    ap.add_argument("--progress-interval", type=float, default=0.3)
    ap.add_argument("--stateless", action="store_true", help="stateless Streamable HTTP (no session id)")
    ap.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    args = ap.parse_args()
    if bool(args.jwks) != bool(args.resource):
        ap.error("--jwks and --resource go together")
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")

    server = build_server(args.progress_interval)
    app = server.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=args.stateless,
        json_response=args.json_response,
        # Behind the gateway the Host header is the gateway's choice: no DNS-rebinding check.
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        host=args.host,
    )
    guard = None
    if args.jwks:
        guard = BearerJwsGuard(args.jwks, args.resource)
        doc = json.dumps(guard.metadata_document()).encode()

        inner = app

        async def with_metadata(scope, receive, send):
            # RFC 9728 protected resource metadata, unauthenticated.
            if scope["type"] == "http" and scope["path"].startswith("/.well-known/oauth-protected-resource"):
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": doc})
                return
            await inner(scope, receive, send)

        app = with_metadata
    logged = RequestLog(app, args.log, extract=extract_mcp, guard=guard)
    serve(logged, args.host, args.port, certfile=args.tls_cert, keyfile=args.tls_key, cafile=args.tls_client_ca)


if __name__ == "__main__":
    main()
