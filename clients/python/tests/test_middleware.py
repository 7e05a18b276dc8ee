"""The receiving agent's ASGI middleware, in process: bare ASGI, Starlette and FastAPI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import Domain
from fedgate_agent import (
    CrossingContext,
    FedgateMiddleware,
    SigningKey,
    crossing_dependency,
    crossing_of,
    load_bundles,
)
from fedgate_agent.errors import ConfigError, ReceiveError
from kit import GATEWAY, INVENTORY, PLANNING, Kit

FOREIGN = "spiffe://vendor.example/agent/analytics/a1"


@pytest.fixture(scope="module")
def kit(company: Domain) -> Kit:
    return Kit.of(company)


def crossing_link(k: Kit, *, key: SigningKey | None = None, **over: Any) -> str:
    fields: dict[str, Any] = {
        "iss": GATEWAY,
        "sub": INVENTORY,
        "sub_type": "agent",
        "dlg": FOREIGN,
        "prev": "hash-of-the-federation-token",
        "crossing": "crossing-123",
        "dep": 2,
        "scope": ("analytics:run",),
        "task": "report-q3",
    }
    c = k.l0(**{**fields, **over})
    return k.kid(c, key or k.gateway)


async def bare(scope, receive, send):  # type: ignore[no-untyped-def]
    ctx = crossing_of(scope)
    body = json.dumps(
        {
            "holder": ctx.holder,
            "scope": ctx.scope.to_strings(),
            "task": ctx.task,
            "crossing": ctx.crossing,
            "foreign_actor": ctx.foreign_actor,
            "dep": ctx.dep,
            "principal": ctx.principal,
            "agreement": ctx.agreement,
            "depth": ctx.depth,
            "chain_holder": ctx.chain.holder,
            "bound": ctx.chain.svid is not None,
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def call(app, headers: dict[str, str] | list[tuple[str, str]] | None = None, path: str = "/x") -> httpx.Response:  # type: ignore[no-untyped-def]
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as c:
            return await c.post(path, headers=headers, json={})

    return asyncio.run(go())


def mw(k: Kit, **kw: Any) -> FedgateMiddleware:
    kw.setdefault("svid", k.inventory)
    return FedgateMiddleware(bare, bundles=k.co.bundles_dir, **kw)


def test_valid_crossing_link_is_exposed(kit: Kit) -> None:
    r = call(mw(kit), {"Delegation-Chain": crossing_link(kit)})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "holder": INVENTORY,
        "scope": ["analytics:run"],
        "task": "report-q3",
        "crossing": "crossing-123",
        "foreign_actor": FOREIGN,
        "dep": 2,
        "principal": None,
        "agreement": None,
        "depth": 3,
        "chain_holder": INVENTORY,
        "bound": True,
    }


def test_agr_and_prn_of_the_new_crossing_links(kit: Kit) -> None:
    link = crossing_link(kit, agr="company-vendor-analytics@sha256:ab12", prn="anon:xyz")
    r = call(mw(kit), {"Delegation-Chain": link})
    assert r.status_code == 200, r.text
    assert r.json()["principal"] == "anon:xyz"
    assert r.json()["agreement"] == "company-vendor-analytics@sha256:ab12"


@pytest.mark.parametrize(
    "make,status,reason",
    [
        (lambda k: None, 400, "malformed"),
        (lambda k: "not a chain", 400, "malformed"),
        (lambda k: crossing_link(k, iat=k.now - 7200, exp=k.now - 3600), 401, "expired"),
        (lambda k: crossing_link(k, sub=PLANNING), 401, "not_holder"),
        # The IdP key signing a crossing link as itself: its issuer is no gateway (bad_root, with
        # or without key roles); in the gateway's name: wrong_signer where keys carry roles, and
        # accepted by a bundle from before roles (any key of the domain).
        (lambda k: crossing_link(k, key=k.idp, iss="spiffe://company.com/idp"), 401, "bad_root"),
        (lambda k: crossing_link(k, key=k.idp), 401, "accepted|wrong_signer"),
        (lambda k: crossing_link(k, key=SigningKey.generate()), 401, "unknown_key"),
        (lambda k: "~".join(k.base()[0]), 401, "bad_root"),  # a human-rooted chain: not from the gateway
        (lambda k: crossing_link(k, dlg="spiffe://company.com/agent/x/y"), 401, "bad_root"),
    ],
)
def test_refusals(kit: Kit, make, status: int, reason: str) -> None:  # type: ignore[no-untyped-def]
    v = make(kit)
    r = call(mw(kit), {"Delegation-Chain": v} if v is not None else None)
    if "|" in reason:
        legacy, roles = reason.split("|")
        reason = roles if kit.co.bundles["company.com"].has_roles else legacy
    if reason == "accepted":
        assert r.status_code == 200, r.text
        return
    assert r.status_code == status, r.text
    assert r.json()["reason"] == reason and r.json()["error"] == "crossing link refused"


def test_a_link_of_another_gateway_or_a_longer_chain_is_refused(kit: Kit, vendor: Domain) -> None:
    # A crossing link the *vendor's* gateway minted, presented to company.com's agent.
    vk = vendor.key("gateway")
    c = kit.l0(
        iss="spiffe://vendor.example/gateway", sub=INVENTORY, sub_type="agent", dlg=FOREIGN,
        prev="x", crossing="c", dep=1,
    )
    r = call(
        FedgateMiddleware(bare, bundles=load_bundles(kit.co.bundles_dir).with_bundle(vendor.bundles["vendor.example"]), holder=INVENTORY),
        {"Delegation-Chain": kit.kid(c, vk)},
    )
    assert r.status_code == 401 and r.json()["reason"] == "bad_root"
    # The crossing link extended by one more hop: the agent is sent the link alone.
    link = crossing_link(kit)
    from fedgate_agent import Chain

    longer = Chain.parse(link, svid=kit.inventory).extend(PLANNING, "analytics:run")
    r = call(mw(kit, svid=None, holder=PLANNING), {"Delegation-Chain": str(longer)})
    assert r.status_code == 400 and r.json()["reason"] == "malformed"


def test_duplicate_header_and_exempt_paths(kit: Kit) -> None:
    link = crossing_link(kit)
    r = call(mw(kit), [("Delegation-Chain", link), ("Delegation-Chain", link)])
    assert r.status_code == 400
    app = mw(kit, exempt_paths=["/healthz"])

    async def ok(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app.app = ok
    assert call(app, path="/healthz").status_code == 204
    assert call(app, path="/other").status_code == 400


def test_configuration_errors(kit: Kit) -> None:
    with pytest.raises(ConfigError):
        FedgateMiddleware(bare, bundles=kit.co.bundles_dir)
    with pytest.raises(ConfigError):
        FedgateMiddleware(bare, bundles=kit.co.bundles_dir, holder="spiffe://vendor.example/agent/a/b")
    m = FedgateMiddleware(bare, bundles=kit.co.bundles_dir, trust_domain="company.com")
    assert m.gateway_id == GATEWAY and m.holder is None


def test_context_require(kit: Kit) -> None:
    ctx = mw(kit).verify(crossing_link(kit))
    assert isinstance(ctx, CrossingContext)
    assert ctx.allows("analytics:run") and not ctx.allows("analytics:other")
    ctx.require("analytics:run")
    with pytest.raises(ReceiveError) as e:
        ctx.require("pii:customers:read")
    assert e.value.reason == "scope_escalation"
    with pytest.raises(LookupError):
        crossing_of({"type": "http"})


def test_fastapi_and_starlette(kit: Kit) -> None:
    api = FastAPI()
    api.add_middleware(FedgateMiddleware, bundles=kit.co.bundles_dir, svid=kit.inventory)

    @api.post("/run")
    def run(request: Request, link: CrossingContext = Depends(crossing_dependency())) -> dict[str, Any]:
        assert request.state.fedgate is link
        return {"task": link.task, "holder": link.holder}

    assert call(api, {"Delegation-Chain": crossing_link(kit)}, "/run").json() == {"task": "report-q3", "holder": INVENTORY}
    assert call(api, None, "/run").status_code == 400

    async def star(request):  # type: ignore[no-untyped-def]
        return JSONResponse({"crossing": request.state.fedgate.crossing})

    st = Starlette(routes=[Route("/s", star, methods=["POST"])])
    st.add_middleware(FedgateMiddleware, bundles=kit.co.bundles_dir, holder=INVENTORY)
    assert call(st, {"Delegation-Chain": crossing_link(kit)}, "/s").json() == {"crossing": "crossing-123"}


def test_websocket_refused_without_link(kit: Kit) -> None:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    asyncio.run(mw(kit)({"type": "websocket", "path": "/ws", "headers": []}, receive, send))
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "malformed"}]
