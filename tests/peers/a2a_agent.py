#!/usr/bin/env python3
"""Test A2A agent "analytics" (official `a2a-sdk`, v1.0 with v0.3 compatibility on the same endpoint).

usage: a2a_agent.py --port P --log FILE [--host H] [--public-url URL] [--delay S]
                    [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]

Serves the AgentCard at /.well-known/agent-card.json (name "analytics", one skill
"analyze"; two JSON-RPC interfaces at the base URL, protocol versions 1.0 and 0.3, so the
card also carries the v0.3 top-level "url") and JSON-RPC at "/" (v1.0 `SendMessage`,
`GetTask`, ... and v0.3 `message/send`, `tasks/get`, ...). A message creates a task, which
completes (after --delay seconds, default 0) with an artifact "analysis" whose text is
"analysis of: <text>". Every HTTP request is appended to FILE as one JSON line (see README).
Prints `READY <port>` on stdout when listening (--port 0 picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from a2a.helpers import new_task_from_user_message, new_text_part  # noqa: E402
from a2a.server.agent_execution import AgentExecutor, RequestContext  # noqa: E402
from a2a.server.events import EventQueue  # noqa: E402
from a2a.server.request_handlers import DefaultRequestHandler  # noqa: E402
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes  # noqa: E402
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater  # noqa: E402
from a2a.types import (  # noqa: E402
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
)
from starlette.applications import Starlette  # noqa: E402

from _peer_common import RequestLog, jsonrpc_messages, serve  # noqa: E402


class AnalyticsExecutor(AgentExecutor):
    def __init__(self, delay: float):
        self.delay = delay

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        if self.delay:
            await asyncio.sleep(self.delay)
        text = context.get_user_input()
        await updater.add_artifact([new_text_part(f"analysis of: {text}")], name="analysis")
        await updater.complete()

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        await updater.cancel()


def build_card(url: str) -> AgentCard:
    return AgentCard(
        name="analytics",
        description="Test analytics agent for fedgate integration tests.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0"),
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="0.3"),
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="analyze", name="analyze", description="Analyze the given text.",
                           tags=["analytics"], examples=["analyze Q3 revenue"])],
    )


def _find_task_id(obj, depth=0):
    """A task id in JSON-RPC params or result: params.id / params.taskId / message.taskId..."""
    if depth > 4 or not isinstance(obj, dict):
        return None
    for key in ("taskId", "task_id"):
        if isinstance(obj.get(key), str):
            return obj[key]
    for key in ("message", "task", "params", "result", "statusUpdate", "artifactUpdate"):
        found = _find_task_id(obj.get(key), depth + 1)
        if found:
            return found
    return None


def extract_a2a(headers: dict, body: bytes) -> dict:
    out: dict = {"rpc_method": None, "rpc_id": None, "task_id": None,
                 "a2a_version": headers.get("a2a-version"), "a2a_extensions": headers.get("a2a-extensions")}
    msgs = jsonrpc_messages(body)
    if msgs:
        m = msgs[0]
        out["rpc_method"] = m.get("method")
        out["rpc_id"] = m.get("id")
        params = m.get("params") if isinstance(m.get("params"), dict) else {}
        tid = _find_task_id(params)
        if tid is None and out["rpc_method"] in ("GetTask", "CancelTask", "SubscribeToTask", "tasks/get",
                                                 "tasks/cancel", "tasks/resubscribe"):
            tid = params.get("id") or (params.get("name", "").removeprefix("tasks/") or None)
        out["task_id"] = tid
    return out


def extract_a2a_response(body: bytes) -> dict:
    """Task id and state from a JSON-RPC result (JSON body, or the last SSE data event)."""
    doc = None
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        msgs = jsonrpc_messages(body)
        doc = msgs[0] if msgs else None
    else:
        for line in text.splitlines():
            if line.startswith("data:"):
                msgs = jsonrpc_messages(line[5:].strip().encode())
                if msgs:
                    doc = msgs[0]
    out: dict = {}
    if not isinstance(doc, dict):
        return out
    if "error" in doc:
        out["rpc_error"] = doc["error"]
    result = doc.get("result")
    if isinstance(result, dict):
        task = result.get("task") if isinstance(result.get("task"), dict) else result
        tid = task.get("id") if isinstance(task.get("id"), str) and "status" in task else _find_task_id(result)
        if tid:
            out["response_task_id"] = tid
        status = task.get("status") if isinstance(task.get("status"), dict) else None
        if status is None and isinstance(result.get("statusUpdate"), dict):
            status = result["statusUpdate"].get("status")
        if isinstance(status, dict):
            out["response_state"] = status.get("state")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--log", required=True)
    ap.add_argument("--public-url", help="URL put in the card (default: this server's base URL)")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds the task stays 'working'")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca")
    args = ap.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")

    state: dict = {}

    async def card_modifier(card: AgentCard) -> AgentCard:
        if args.public_url or "port" not in state:
            return card
        c = AgentCard()
        c.CopyFrom(card)
        for i in c.supported_interfaces:
            i.url = state["base"]
        return c

    # The card's URL: --public-url, or our own base URL, known only once bound (port 0):
    # a card_modifier fills it in per request.
    placeholder = args.public_url or f"http://{args.host}:{args.port}/"
    card = build_card(placeholder)
    handler = DefaultRequestHandler(agent_executor=AnalyticsExecutor(args.delay),
                                    task_store=InMemoryTaskStore(), agent_card=card)
    routes = create_agent_card_routes(card, card_modifier=card_modifier) + create_jsonrpc_routes(
        handler, rpc_url="/", enable_v0_3_compat=True)
    app = Starlette(routes=routes)

    async def with_base(scope, receive, send):
        if scope["type"] == "http" and "port" not in state:
            server = scope.get("server") or (args.host, args.port)
            scheme = "https" if args.tls_cert else "http"
            host = server[0] if ":" not in server[0] else f"[{server[0]}]"
            state["port"] = server[1]
            state["base"] = f"{scheme}://{host}:{server[1]}/"
        await app(scope, receive, send)

    logged = RequestLog(with_base, args.log, extract=extract_a2a, extract_response=extract_a2a_response)
    serve(logged, args.host, args.port, certfile=args.tls_cert, keyfile=args.tls_key, cafile=args.tls_client_ca)


if __name__ == "__main__":
    main()
