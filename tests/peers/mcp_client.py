#!/usr/bin/env python3
"""Test MCP client (official `mcp` SDK `Client`) over Streamable HTTP.

usage: mcp_client.py --url URL [--cert PEM --key KEY] [--ca CA] [--header 'Name: value']...
                     --tool NAME --args JSON [--protocol-version V] [--timeout S]

Connects (mTLS when --cert/--key; --ca is the trust anchor for the server certificate),
negotiates, calls the tool with a progress callback, and prints ONE JSON object:
  {"ok": bool, "result": <CallToolResult as JSON> | null,
   "error": {"code", "message", "data"} | null,
   "progress_times": [seconds after the call started, one per progress notification],
   "progress": [{"progress", "total", "message"}...],
   "elapsed": seconds for the call, "protocol_version": negotiated version,
   "stage": "connect" | "call" | "done", "is_error": tool-level isError,
   "http_errors": [{"method","url","status","www_authenticate","content_type","body"}...],
   "error_kind": "rpc" | "http" | "transport" | "other" (only on failure)}
A tool result with isError gives ok=false, error=null, is_error=true. A non-2xx HTTP answer,
which the SDK reports as a generic JSON-RPC error (-32603 or -32601), gives error_kind "http"
and error.data = {"http_status", "www_authenticate", "body" (JSON if it was JSON), "sdk_data"}.
Exit 0 whenever the server answered (JSON-RPC error, tool error, HTTP error status:
inspect the JSON); 2 on bad usage or when no HTTP exchange was possible (connection
refused, TLS handshake failure, timeout).
--protocol-version: unset = the SDK's "auto" (server/discover probe, fallback to the
initialize handshake); a modern version (2026-07-28) is pinned without a probe; a
handshake-era version (e.g. 2025-11-25) runs the initialize handshake offering that version.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer_common import client_ssl_context, emit, parse_headers  # noqa: E402


def _walk_exceptions(exc: BaseException):
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        if e.__cause__ is not None:
            stack.append(e.__cause__)
        if e.__context__ is not None:
            stack.append(e.__context__)


def classify(exc: BaseException) -> tuple[str, dict]:
    """-> (kind, error) where kind is 'rpc', 'http' or 'transport'."""
    import httpx2
    from mcp.shared.exceptions import MCPError

    for e in _walk_exceptions(exc):
        if isinstance(e, MCPError):
            return "rpc", {"code": e.code, "message": e.message, "data": e.data}
    for e in _walk_exceptions(exc):
        if isinstance(e, httpx2.HTTPStatusError):
            r = e.response
            try:
                body = r.text
            except Exception:
                body = None
            try:
                body_json = json.loads(body) if body else None
            except ValueError:
                body_json = None
            return "http", {"code": None, "message": f"HTTP {r.status_code}",
                            "data": {"http_status": r.status_code, "headers": dict(r.headers),
                                     "body": body_json if body_json is not None else body}}
    for e in _walk_exceptions(exc):
        if isinstance(e, (httpx2.TransportError, OSError, TimeoutError)):
            return "transport", {"code": None, "message": f"{type(e).__name__}: {e}", "data": None}
    leaf = exc
    for e in _walk_exceptions(exc):
        if not isinstance(e, BaseExceptionGroup):
            leaf = e
            break
    return "other", {"code": None, "message": f"{type(leaf).__name__}: {leaf}", "data": None}


async def run(args) -> int:
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS

    mode = "auto"
    if args.protocol_version:
        v = args.protocol_version
        if v in MODERN_PROTOCOL_VERSIONS:
            mode = v
        elif v in HANDSHAKE_PROTOCOL_VERSIONS:
            mode = "legacy"
            # The SDK's initialize() always offers LATEST_HANDSHAKE_VERSION; offer V instead.
            import mcp.client.session as _session
            _session.LATEST_HANDSHAKE_VERSION = v
        else:
            print(f"unknown protocol version {v!r}; known: "
                  f"{list(HANDSHAKE_PROTOCOL_VERSIONS) + list(MODERN_PROTOCOL_VERSIONS)}", file=sys.stderr)
            return 2

    try:
        tool_args = json.loads(args.args)
    except ValueError as e:
        print(f"--args is not JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(tool_args, dict):
        print("--args must be a JSON object", file=sys.stderr)
        return 2

    out = {"ok": False, "result": None, "error": None, "progress_times": [], "progress": [],
           "elapsed": None, "protocol_version": None, "stage": "connect", "is_error": None,
           "http_errors": []}

    async def on_response(response):
        # The SDK turns a non-2xx answer into a generic JSON-RPC error; keep what the HTTP
        # layer said (status, challenge, JSON denial body) for the caller.
        if response.status_code >= 400:
            try:
                raw = await response.aread()
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
            except Exception as e:  # noqa: BLE001
                body = f"<unreadable: {e}>"
            out["http_errors"].append({
                "method": response.request.method, "url": str(response.request.url),
                "status": response.status_code,
                "www_authenticate": response.headers.get("www-authenticate"),
                "content_type": response.headers.get("content-type"), "body": body})

    verify = client_ssl_context(args.ca, args.cert, args.key)
    http = httpx2.AsyncClient(
        verify=verify, headers=parse_headers(args.header), trust_env=False,
        timeout=httpx2.Timeout(args.timeout, read=args.timeout),
        event_hooks={"response": [on_response]},
    )
    t0 = None

    async def on_progress(progress, total, message):
        out["progress_times"].append(round(time.monotonic() - t0, 4) if t0 else None)
        out["progress"].append({"progress": progress, "total": total, "message": message})

    try:
        async with http:
            transport = streamable_http_client(args.url, http_client=http)
            async with Client(transport, mode=mode, read_timeout_seconds=args.timeout) as client:
                out["protocol_version"] = client.protocol_version
                out["stage"] = "call"
                t0 = time.monotonic()
                result = await client.call_tool(args.tool, tool_args, progress_callback=on_progress)
                out["elapsed"] = round(time.monotonic() - t0, 4)
                out["stage"] = "done"
                out["result"] = result.model_dump(mode="json", by_alias=True, exclude_none=True)
                out["is_error"] = bool(getattr(result, "is_error", False))
                out["ok"] = not out["is_error"]
    except BaseException as exc:  # noqa: BLE001 - report, do not crash
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if t0 is not None and out["elapsed"] is None:
            out["elapsed"] = round(time.monotonic() - t0, 4)
        if out["stage"] == "done":
            # The call succeeded; a failure while closing the session does not change that.
            kind, err = classify(exc)
            out["close_error"] = err
            emit(out)
            return 0
        kind, err = classify(exc)
        if out["http_errors"] and kind == "rpc":
            last = out["http_errors"][-1]
            err["data"] = {"http_status": last["status"], "www_authenticate": last["www_authenticate"],
                           "body": last["body"], "sdk_data": err.get("data")}
            kind = "http"
        out["ok"] = False
        out["error"] = err
        out["error_kind"] = kind
        emit(out)
        return 0 if kind in ("rpc", "http") else 2
    emit(out)
    return 0


async def run_bounded(args) -> int:
    import anyio

    try:
        with anyio.fail_after(args.timeout * 3):
            return await run(args)
    except TimeoutError:
        emit({"ok": False, "result": None, "progress_times": [], "elapsed": None, "stage": "timeout",
              "error": {"code": None, "message": f"overall timeout {args.timeout * 3}s", "data": None},
              "error_kind": "transport"})
        return 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--ca")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--tool", required=True)
    ap.add_argument("--args", default="{}")
    ap.add_argument("--protocol-version")
    ap.add_argument("--timeout", type=float, default=20.0, help="per-operation timeout in seconds")
    try:
        args = ap.parse_args()
    except SystemExit as e:
        sys.exit(2 if e.code else 0)
    if bool(args.cert) != bool(args.key):
        print("--cert and --key go together", file=sys.stderr)
        sys.exit(2)
    import anyio

    try:
        code = anyio.run(run_bounded, args)
    except KeyboardInterrupt:
        code = 2
    sys.stdout.flush()
    # Do not let lingering SDK tasks or threads hold the process open.
    os._exit(code)


if __name__ == "__main__":
    main()
