"""The receiving agent's ASGI middleware, in process: bare ASGI, Starlette and FastAPI; key
roles, the holder check, one-time links (replay cache), the TLS peer, revocation of the
disclosed principal, and bundles re-read on a gateway key rotation."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from conftest import Domain
from fedgate_agent import (
    BundleStore,
    Chain,
    CrossingContext,
    CrossingContextMissing,
    FedgateMiddleware,
    Gateway,
    MemoryReplayCache,
    ReplayCacheFull,
    SigningKey,
    crossing_dependency,
    crossing_of,
    load_bundles,
    random_id,
)
from fedgate_agent.errors import ConfigError, ReceiveError
from kit import GATEWAY, INVENTORY, PLANNING, Kit, with_roles

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
        "jti": random_id(),
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
        # The IdP key signing a crossing link as itself: its issuer is no gateway (bad_root);
        # in the gateway's name: wrong_signer (it is an idp key), as is the audit key's.
        (lambda k: crossing_link(k, key=k.idp, iss="spiffe://company.com/idp"), 401, "bad_root"),
        (lambda k: crossing_link(k, key=k.idp), 401, "wrong_signer"),
        (lambda k: crossing_link(k, key=k.co.key("audit")), 401, "wrong_signer"),
        (lambda k: crossing_link(k, key=SigningKey.generate()), 401, "unknown_key"),
        (lambda k: "~".join(k.base()[0]), 401, "bad_root"),  # a human-rooted chain: not from the gateway
        (lambda k: crossing_link(k, dlg="spiffe://company.com/agent/x/y"), 401, "bad_root"),
    ],
)
def test_refusals(kit: Kit, make, status: int, reason: str) -> None:  # type: ignore[no-untyped-def]
    v = make(kit)
    r = call(mw(kit), {"Delegation-Chain": v} if v is not None else None)
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
    with pytest.raises(ConfigError):
        FedgateMiddleware(bare, bundles=kit.co.bundles_dir, svid=kit.inventory, holder=PLANNING)
    with pytest.raises(ConfigError):
        FedgateMiddleware(bare, bundles=kit.co.bundles_dir, holder=[INVENTORY, FOREIGN])
    m = FedgateMiddleware(bare, bundles=kit.co.bundles_dir, holder=INVENTORY)
    assert m.gateway_id == GATEWAY and m.holder == INVENTORY


def test_the_holder_check_cannot_be_left_out(kit: Kit) -> None:
    """A trust domain or gateway alone is not enough: the middleware must know which agent it
    serves, and refuses a link for any other agent of the domain."""
    for kw in ({"trust_domain": "company.com"}, {"gateway_id": GATEWAY}, {}):
        with pytest.raises(ConfigError, match="identity"):
            FedgateMiddleware(bare, bundles=kit.co.bundles_dir, **kw)
    app = FedgateMiddleware(bare, bundles=kit.co.bundles_dir, holder=INVENTORY)
    r = call(app, {"Delegation-Chain": crossing_link(kit, sub=PLANNING)})
    assert (r.status_code, r.json()["reason"], r.json()["link"]) == (401, "not_holder", 0)
    # An app serving two agent identities names both: each link for one of them is accepted,
    # a third agent's is not.
    both = FedgateMiddleware(bare, bundles=kit.co.bundles_dir, holder=[INVENTORY, PLANNING])
    assert call(both, {"Delegation-Chain": crossing_link(kit, sub=PLANNING)}).json()["holder"] == PLANNING
    assert call(both, {"Delegation-Chain": crossing_link(kit)}).json()["holder"] == INVENTORY
    r = call(both, {"Delegation-Chain": crossing_link(kit, sub="spiffe://company.com/agent/report/r1")})
    assert (r.status_code, r.json()["reason"]) == (401, "not_holder")


def test_a_gateway_gives_bundles_svid_and_gateway_id(kit: Kit) -> None:
    # Nothing connects before the first request: a Gateway to nowhere is enough here.
    with Gateway("https://127.0.0.1:1", kit.inventory, bundles=kit.co.bundles_dir) as gw:
        app = FedgateMiddleware(bare, gateway=gw)
        assert app.holder == INVENTORY and app.gateway_id == GATEWAY
        assert isinstance(app.bundles, BundleStore) and app.bundles is gw.bundles
        body = call(app, {"Delegation-Chain": crossing_link(kit)}).json()
        assert body["holder"] == INVENTORY and body["bound"] is True


def test_a_bundle_without_gateway_keys_is_refused_at_start(kit: Kit, tmp_path: Path) -> None:
    none = with_roles(kit.co, tmp_path / "none", {"idp": None, "gateway": None, "audit": None})
    with pytest.raises(ConfigError, match="assign-roles"):
        FedgateMiddleware(bare, bundles=none, holder=INVENTORY)


# ---- one-time links ----------------------------------------------------------------------------


def test_a_link_is_accepted_once(kit: Kit) -> None:
    app = mw(kit)
    link = crossing_link(kit)
    assert call(app, {"Delegation-Chain": link}).status_code == 200
    r = call(app, {"Delegation-Chain": link})
    assert (r.status_code, r.json()["reason"], r.json()["link"]) == (401, "replayed", 0)
    # Another crossing's link is a new link.
    assert call(app, {"Delegation-Chain": crossing_link(kit)}).status_code == 200


def test_a_delegate_cannot_replay_the_link_it_holds(kit: Kit) -> None:
    """The agent extends its crossing-rooted chain to a local delegate, which thereby holds the
    crossing link as its chain's L0; presenting that link alone back to the agent is a replay."""
    app = mw(kit)
    link = crossing_link(kit, scope=("analytics:*",))
    r = call(app, {"Delegation-Chain": link})
    assert r.status_code == 200
    delegated = Chain.parse(link, svid=kit.inventory).extend(PLANNING, ["analytics:run"])
    stolen = delegated.links[0].compact
    assert stolen == link
    for _ in range(2):
        r = call(app, {"Delegation-Chain": stolen})
        assert (r.status_code, r.json()["reason"]) == (401, "replayed")


def test_the_replay_cache_is_bounded_and_fails_closed(kit: Kit) -> None:
    now = [float(kit.now)]
    cache = MemoryReplayCache(max_entries=2)
    app = mw(kit, replay_cache=cache, clock=lambda: now[0])
    short = crossing_link(kit, exp=kit.now + 10)
    assert call(app, {"Delegation-Chain": short}).status_code == 200
    assert call(app, {"Delegation-Chain": crossing_link(kit)}).status_code == 200
    # Full of unexpired links: a new one is refused (503), none is forgotten.
    third = crossing_link(kit)
    r = call(app, {"Delegation-Chain": third})
    assert (r.status_code, r.json()["reason"]) == (503, "state_unavailable"), r.text
    assert "replay cache full" in r.json()["message"]
    assert len(cache) == 2
    with pytest.raises(ReplayCacheFull):
        cache.first_use("x", kit.now + 100, kit.now)
    # The short link's entry lives until its exp plus the skew (30 s), then makes room.
    now[0] = kit.now + 10 + 30 - 1
    assert call(app, {"Delegation-Chain": third}).status_code == 503
    now[0] = kit.now + 10 + 30
    assert call(app, {"Delegation-Chain": third}).status_code == 200
    r = call(app, {"Delegation-Chain": third})
    assert r.json()["reason"] == "replayed"
    r = call(app, {"Delegation-Chain": short})  # its entry is gone, and so is the link's life
    assert r.json()["reason"] == "expired"


def test_replicas_share_a_replay_cache(kit: Kit) -> None:
    shared = MemoryReplayCache()  # stands in for a shared store (Redis, PostgreSQL, ...)
    r1, r2 = mw(kit, replay_cache=shared), mw(kit, replay_cache=shared)
    link = crossing_link(kit)
    assert call(r1, {"Delegation-Chain": link}).status_code == 200
    assert call(r2, {"Delegation-Chain": link}).json()["reason"] == "replayed"
    # Without one, each replica only knows its own: the documented reason to share it.
    alone = mw(kit)
    assert call(alone, {"Delegation-Chain": link}).status_code == 200

    class Down:
        def first_use(self, jti: str, until: int, now: int) -> bool:
            raise ConnectionError("store unreachable")

    r = call(mw(kit, replay_cache=Down()), {"Delegation-Chain": crossing_link(kit)})
    assert (r.status_code, r.json()["reason"]) == (503, "state_unavailable")


# ---- the TLS peer ------------------------------------------------------------------------------


def _tls_scope(link: str, chain_pems: list[str] | None, *, with_ext: bool = True) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/x",
        "headers": [(b"delegation-chain", link.encode())],
    }
    if with_ext:
        scope["extensions"] = {"tls": {"client_cert_chain": chain_pems or [], "tls_version": 0x0304}}
    return scope


def _run(app: Any, scope: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m: dict[str, Any]) -> None:
        sent.append(m)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_the_tls_peer_may_be_required_to_be_the_gateway(kit: Kit) -> None:
    gateway_pem = (kit.co.dir / "gateway.pem").read_text()
    agent_pem = (kit.co.dir / "agents/planning/p1.pem").read_text()
    app = mw(kit, require_gateway_peer=True)
    status, body = _run(app, _tls_scope(crossing_link(kit), [gateway_pem]))
    assert status == 200 and body["holder"] == INVENTORY
    for pems, with_ext, why in [
        ([agent_pem], True, "not the local gateway"),
        ([], True, "no TLS client certificate"),
        (None, False, "does not expose the TLS connection"),
    ]:
        status, body = _run(app, _tls_scope(crossing_link(kit), pems, with_ext=with_ext))
        assert (status, body["reason"]) == (401, "bad_svid") and why in body["message"], body
    # Off by default: an ASGI server without the extension is fine.
    status, _ = _run(mw(kit), _tls_scope(crossing_link(kit), None, with_ext=False))
    assert status == 200


# ---- revocation of the disclosed principal ------------------------------------------------------


def test_revoking_the_disclosed_principal_stops_the_link(kit: Kit) -> None:
    revoked = {("vendor.example", "principal", "anon:xyz")}
    app = mw(kit, revoked=lambda d, k, v: (d, k, v) in revoked)
    r = call(app, {"Delegation-Chain": crossing_link(kit, prn="anon:xyz")})
    assert (r.status_code, r.json()["reason"], r.json()["link"]) == (403, "revoked", 0)
    assert "principal anon:xyz" in r.json()["message"]
    # Filed under the sending domain only (spec-notes 13): the same value elsewhere is not it.
    assert call(app, {"Delegation-Chain": crossing_link(kit, prn="anon:other")}).status_code == 200


# ---- bundles follow a gateway key rotation ------------------------------------------------------


def _add_gateway_key(bundle_file: Path, key: SigningKey, *, drop_kid: str | None = None) -> None:
    doc = json.loads(bundle_file.read_text())
    keys = [k for k in doc["keys"] if k.get("kid") != drop_kid]
    keys.append({"use": "jwt-svid", "kid": key.kid, **key.public.jwk_members(), "fedgate_role": "gateway"})
    doc["keys"] = keys
    doc["spiffe_sequence"] = doc.get("spiffe_sequence", 0) + 1
    tmp = bundle_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(bundle_file)  # as the gateway publishes: whole, by rename


def test_a_gateway_key_rotation_is_followed(kit: Kit, tmp_path: Path) -> None:
    d = tmp_path / "bundles"
    shutil.copytree(kit.co.bundles_dir, d)
    app = FedgateMiddleware(bare, bundles=d, svid=kit.inventory)
    assert call(app, {"Delegation-Chain": crossing_link(kit)}).status_code == 200
    # The gateway publishes a new key (a rotation) and signs crossing links with it.
    new = SigningKey.generate("ES256")
    r = call(app, {"Delegation-Chain": crossing_link(kit, key=new)})
    assert r.json()["reason"] == "unknown_key"  # not published yet
    _add_gateway_key(d / "company.com.json", new)
    r = call(app, {"Delegation-Chain": crossing_link(kit, key=new)})
    assert r.status_code == 200, r.text
    # ... and later drops the old one: links it signed are refused from then on.
    assert call(app, {"Delegation-Chain": crossing_link(kit)}).status_code == 200
    _add_gateway_key(d / "company.com.json", SigningKey.generate("ES256"), drop_kid=kit.gateway.kid)
    assert call(app, {"Delegation-Chain": crossing_link(kit)}).json()["reason"] == "unknown_key"
    assert call(app, {"Delegation-Chain": crossing_link(kit, key=new)}).status_code == 200


def test_an_unknown_kid_forces_one_re_read(kit: Kit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the file's change cannot be seen (a coarse clock, a copy that kept its times), the
    first unknown kid re-reads the bundle once, then verifies again."""
    import fedgate_agent.bundle as bundle_mod

    d = tmp_path / "bundles"
    shutil.copytree(kit.co.bundles_dir, d)
    store = BundleStore(d, clock=lambda: 0.0)
    app = FedgateMiddleware(bare, bundles=store, svid=kit.inventory)
    monkeypatch.setattr(bundle_mod, "_signature", lambda path: ("never changes",))
    store._sig = ("never changes",)
    new = SigningKey.generate("ES256")
    _add_gateway_key(d / "company.com.json", new)
    r = call(app, {"Delegation-Chain": crossing_link(kit, key=new)})
    assert r.status_code == 200, r.text
    assert store.reloads == 1
    # At most once per interval: a stream of made-up kids does not re-read per request.
    for _ in range(3):
        assert call(app, {"Delegation-Chain": crossing_link(kit, key=SigningKey.generate())}).json()["reason"] == "unknown_key"
    assert store.reloads == 1


def test_a_broken_bundle_file_keeps_the_last_good_one(kit: Kit, tmp_path: Path) -> None:
    d = tmp_path / "bundles"
    shutil.copytree(kit.co.bundles_dir, d)
    app = FedgateMiddleware(bare, bundles=d, svid=kit.inventory)
    (d / "company.com.json").write_text('{"keys": [')  # caught mid-write
    assert call(app, {"Delegation-Chain": crossing_link(kit)}).status_code == 200


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
    with pytest.raises(CrossingContextMissing):
        crossing_of({"type": "http"})
    d = ctx.to_dict()
    assert d == {
        "holder": INVENTORY,
        "scope": ["analytics:run"],
        "task": "report-q3",
        "crossing": "crossing-123",
        "foreign_actor": FOREIGN,
        "dep": 2,
        "principal": None,
        "agreement": None,
        "expires": ctx.expires,
    }
    assert json.loads(json.dumps(d)) == d


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
