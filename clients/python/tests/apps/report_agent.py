"""company.com's report agent for the end-to-end test: a bare ASGI app (no framework) behind
FedgateMiddleware, answering with what the crossing link told it. On `/reports/refused-here` it
answers 409 with a body shaped like a gateway denial: its own answer, which its gateway marks
with a receipt, so the calling agent's SDK must hand it back as a response."""

from __future__ import annotations

import json
import os

from fedgate_agent import FedgateMiddleware, crossing_of


async def report(scope, receive, send):
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    ctx = crossing_of(scope)
    if scope["path"] == "/reports/refused-here":
        no = json.dumps({"error": "not today", "reason": "rule_denied", "crossing": "made-up"}).encode()
        await send({"type": "http.response.start", "status": 409, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": no})
        return
    out = json.dumps(
        {
            "service": "company reports",
            "path": scope["path"],
            "holder": ctx.holder,
            "scope": ctx.scope.to_strings(),
            "task": ctx.task,
            "crossing": ctx.crossing,
            "foreign_actor": ctx.foreign_actor,
            "dep": ctx.dep,
            "principal": ctx.principal,
            "agreement": ctx.agreement,
            "received": json.loads(body or b"null"),
            "headers": sorted(k.decode() for k, _ in scope["headers"]),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": out})


app = FedgateMiddleware(
    report,
    bundles=os.environ["FEDGATE_BUNDLES"],
    holder=os.environ["REPORT_AGENT"],
)
