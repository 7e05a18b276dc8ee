#!/usr/bin/env python3
"""Test A2A client (official `a2a-sdk` client: ClientFactory/BaseClient over JSON-RPC).

usage: a2a_client.py --base URL [--cert PEM --key KEY] [--ca CA] [--header 'Name: value']...
                     (--card | --send TEXT [--stream] | --get TASK_ID) [--v03] [--timeout S]

--base is the agent's base URL (through the gateway: the URL that reaches the agent's "/").
The card is never used to pick the endpoint: the SDK client is built from a card that names
--base as its only JSON-RPC interface (protocol version 1.0, or 0.3 with --v03), so every
request goes exactly to --base, with the extra headers and the mTLS identity.

--card   GET <base>/.well-known/agent-card.json with the SDK's A2ACardResolver; prints
         {"ok", "http_status", "card": <the served JSON, as received>, "name", "error"}
--send   v1.0 `SendMessage` (v0.3 `message/send` with --v03; with --stream `SendStreamingMessage`
         / `message/stream`); prints {"ok", "task_id", "state", "artifact_text",
         "response": <raw JSON-RPC response body, or the list of SSE events with --stream>,
         "http_status", "error": {"code","message","data"} | null, "protocol": "1.0"|"0.3"}
--get    v1.0 `GetTask` (v0.3 `tasks/get`), same output as --send.
Exit 0 when the agent (or a gateway in front) answered, whatever the answer; 2 on bad usage
or when no HTTP exchange was possible (connection refused, TLS failure, timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer_common import client_ssl_context, emit, parse_headers  # noqa: E402


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


async def run(args) -> int:
    import httpx
    from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
    from a2a.client.errors import A2AClientError
    from a2a.types import (AgentCapabilities, AgentCard, AgentInterface, GetTaskRequest, Message, Part,
                           Role, SendMessageRequest, TaskState)
    from a2a.utils.errors import A2AError

    protocol = "0.3" if args.v03 else "1.0"
    exchanges: list[dict] = []

    async def on_response(response: httpx.Response):
        entry = {"method": response.request.method, "url": str(response.request.url),
                 "status": response.status_code, "content_type": response.headers.get("content-type")}
        ctype = (entry["content_type"] or "").lower()
        if "text/event-stream" not in ctype:
            raw = await response.aread()
            try:
                entry["body"] = json.loads(raw) if raw else None
            except ValueError:
                entry["body"] = raw.decode("utf-8", "replace")
        exchanges.append(entry)

    headers = parse_headers(args.header)
    if not args.card and not args.v03:
        headers.setdefault("A2A-Version", "1.0")  # what ClientFactory sets on its own clients
    http = httpx.AsyncClient(verify=client_ssl_context(args.ca, args.cert, args.key), headers=headers,
                             trust_env=False, timeout=httpx.Timeout(args.timeout),
                             event_hooks={"response": [on_response]})

    def transport_error(e: BaseException) -> bool:
        return any(isinstance(x, (httpx.TransportError, OSError, TimeoutError)) for x in _chain(e)) \
            and not exchanges

    async with http:
        if args.card:
            out = {"ok": False, "http_status": None, "card": None, "name": None, "error": None}
            try:
                resolver = A2ACardResolver(http, args.base)
                card = await resolver.get_agent_card()
                out["ok"] = True
                out["name"] = card.name
            except Exception as e:  # noqa: BLE001
                out["error"] = {"code": getattr(e, "status_code", None), "message": f"{type(e).__name__}: {e}",
                                "data": None}
                if transport_error(e):
                    emit(out)
                    return 2
            if exchanges:
                out["http_status"] = exchanges[-1]["status"]
                out["card"] = exchanges[-1].get("body")
                if not out["ok"]:
                    out["error"]["data"] = exchanges[-1].get("body")
            emit(out)
            return 0

        card = AgentCard(
            name="target", description="", version="",
            supported_interfaces=[AgentInterface(url=args.base, protocol_binding="JSONRPC",
                                                 protocol_version=protocol)],
            capabilities=AgentCapabilities(streaming=bool(args.stream)),
            default_input_modes=["text/plain"], default_output_modes=["text/plain"], skills=[],
        )
        client = ClientFactory(ClientConfig(streaming=bool(args.stream), httpx_client=http)).create(card)
        out = {"ok": False, "protocol": protocol, "task_id": None, "state": None, "artifact_text": None,
               "response": None, "http_status": None, "error": None}
        events: list = []
        try:
            if args.get:
                task = await client.get_task(GetTaskRequest(id=args.get))
                events.append(task)
            else:
                msg = Message(message_id=str(uuid.uuid4()), role=Role.ROLE_USER, parts=[Part(text=args.send)])
                async for ev in client.send_message(SendMessageRequest(message=msg)):
                    events.append(ev)
            task = None
            for ev in events:
                if hasattr(ev, "HasField") and ev.DESCRIPTOR.name == "Task":
                    task = ev
                elif ev.HasField("task"):
                    task = ev.task
                elif ev.HasField("status_update"):
                    out["task_id"] = ev.status_update.task_id
                    out["state"] = TaskState.Name(ev.status_update.status.state)
                elif ev.HasField("artifact_update"):
                    out["task_id"] = ev.artifact_update.task_id
                    texts = [p.text for p in ev.artifact_update.artifact.parts if p.HasField("text")]
                    out["artifact_text"] = "\n".join(texts)
                elif ev.HasField("message"):
                    out["message_text"] = "\n".join(p.text for p in ev.message.parts if p.HasField("text"))
            if task is not None:
                out["task_id"] = task.id
                if not (args.stream and out["state"]):
                    out["state"] = TaskState.Name(task.status.state)
                texts = [p.text for a in task.artifacts for p in a.parts if p.HasField("text")]
                if texts:
                    out["artifact_text"] = "\n".join(texts)
            out["ok"] = out["task_id"] is not None or "message_text" in out
        except Exception as e:  # noqa: BLE001
            if transport_error(e):
                out["error"] = {"code": None, "message": f"{type(e).__name__}: {e}", "data": None}
                emit(out)
                return 2
            code = None
            last = exchanges[-1] if exchanges else {}
            body = last.get("body")
            if isinstance(body, dict) and isinstance(body.get("error"), dict):
                code = body["error"].get("code")
                out["error"] = {"code": code, "message": body["error"].get("message"),
                                "data": body["error"].get("data")}
            else:
                out["error"] = {"code": None, "message": f"{type(e).__name__}: {e}",
                                "data": body if last.get("status", 200) >= 400 else None}
            if not isinstance(e, (A2AError, A2AClientError)):
                out["error"]["exception"] = f"{type(e).__name__}: {e}"
        posts = [x for x in exchanges if x["method"] == "POST"]
        if posts:
            out["http_status"] = posts[-1]["status"]
            out["response"] = posts[-1].get("body")
        if args.stream:
            from google.protobuf.json_format import MessageToDict
            out["response"] = [MessageToDict(ev) for ev in events]
        emit(out)
        return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--ca")
    ap.add_argument("--header", action="append", default=[])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--card", action="store_true")
    g.add_argument("--send", metavar="TEXT")
    g.add_argument("--get", metavar="TASK_ID")
    ap.add_argument("--v03", action="store_true", help="speak A2A v0.3 (message/send, tasks/get)")
    ap.add_argument("--stream", action="store_true", help="with --send: streaming (SSE) variant")
    ap.add_argument("--timeout", type=float, default=20.0)
    try:
        args = ap.parse_args()
    except SystemExit as e:
        sys.exit(2 if e.code else 0)
    if bool(args.cert) != bool(args.key):
        print("--cert and --key go together", file=sys.stderr)
        sys.exit(2)

    async def bounded():
        try:
            return await asyncio.wait_for(run(args), args.timeout * 3)
        except asyncio.TimeoutError:
            emit({"ok": False, "error": {"code": None, "message": f"overall timeout {args.timeout * 3}s",
                                         "data": None}})
            return 2

    code = asyncio.run(bounded())
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
