"""The faults API, mounted by the agent's server. Every mutating call needs the bearer token.

    GET    /api/v1/faults                     active faults, recent history, capabilities
    POST   /api/v1/faults                     apply {"kind", "target", "params", "ttl", "owner"}
    DELETE /api/v1/faults[?owner=run:ID]      the kill switch: revert everything (or one owner's)
    GET    /api/v1/faults/{id}                one fault
    DELETE /api/v1/faults/{id}                revert one fault
    POST   /api/v1/faults/heartbeat           {"owner": "run:ID"}: the run is alive

Errors: 400 bad input (``problems`` name the thing and the rule), 409 refused by the node or
the policy, 500 apply failed (the inverse was run), 401/403 without the right token.

    app.add_routes(routes(engine_getter, token_getter))
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from agent.auth import check_bearer
from agent.faults.engine import FaultEngine, FaultFailed, FaultInvalid, FaultRefused
from agent.faults.ledger import FaultEntry
from probes.modules import parse_duration

__all__ = ["entry_json", "routes"]

EngineGetter = Callable[[web.Request], FaultEngine | None]
TokenGetter = Callable[[web.Request], str | None]


def entry_json(entry: FaultEntry, *, steps: bool = False) -> dict[str, Any]:
    doc = entry.to_json()
    if not steps:
        doc.pop("apply")
        doc.pop("revert")
    return doc


def routes(engine_of: EngineGetter, token_of: TokenGetter) -> list[web.RouteDef]:
    def engine(request: web.Request) -> FaultEngine:
        found = engine_of(request)
        if found is None:
            raise web.HTTPServiceUnavailable(
                text="fault injection is not available on this agent\n"
            )
        return found

    def problems(status: type[web.HTTPException], items: list[str]) -> web.HTTPException:
        return status(text=json.dumps({"problems": items}), content_type="application/json")

    async def list_faults(request: web.Request) -> web.Response:
        eng = engine(request)
        return web.json_response(
            {
                "faults": [entry_json(e) for e in eng.active()],
                "capabilities": {"present": sorted(eng.caps.present), "missing": eng.caps.details},
                "kinds": sorted(eng.kinds()),
                "policy": eng.settings.model_dump(),
            }
        )

    async def get_fault(request: web.Request) -> web.Response:
        entry = engine(request).get(request.match_info["id"])
        if entry is None:
            raise web.HTTPNotFound(text=f"no fault {request.match_info['id']!r}\n")
        return web.json_response(entry_json(entry, steps=True))

    async def apply(request: web.Request) -> web.Response:
        check_bearer(request, token_of(request))
        eng = engine(request)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise problems(web.HTTPBadRequest, ["the body must be a JSON object"]) from None
        if not isinstance(body, dict):
            raise problems(web.HTTPBadRequest, ["the body must be a JSON object"])
        unknown = set(body) - {"kind", "target", "params", "ttl", "owner"}
        if unknown:
            raise problems(web.HTTPBadRequest, [f"unknown field {k!r}" for k in sorted(unknown)])
        kind, target = body.get("kind"), body.get("target")
        params = body.get("params", {})
        if not isinstance(kind, str) or not isinstance(target, str) or not isinstance(params, dict):
            raise problems(
                web.HTTPBadRequest, ["kind and target are required strings; params is an object"]
            )
        ttl: float | None = None
        if body.get("ttl") is not None:
            try:
                ttl = parse_duration(body["ttl"])
            except ValueError as exc:
                raise problems(web.HTTPBadRequest, [f"ttl: {exc}"]) from None
        owner = body.get("owner", "api")
        if not isinstance(owner, str) or not owner or len(owner) > 128:
            raise problems(web.HTTPBadRequest, ["owner must be a string of 1-128 characters"])
        try:
            entry = await eng.apply(kind, target, params, ttl=ttl, owner=owner)
        except FaultInvalid as exc:
            raise problems(web.HTTPBadRequest, exc.problems) from None
        except FaultRefused as exc:
            raise problems(web.HTTPConflict, exc.problems) from None
        except FaultFailed as exc:
            raise problems(web.HTTPInternalServerError, exc.problems) from None
        return web.json_response(entry_json(entry), status=201)

    async def revert_one(request: web.Request) -> web.Response:
        check_bearer(request, token_of(request))
        entry = await engine(request).revert(request.match_info["id"], "api")
        if entry is None:
            raise web.HTTPNotFound(text=f"no fault {request.match_info['id']!r}\n")
        return web.json_response(entry_json(entry))

    async def clear(request: web.Request) -> web.Response:
        check_bearer(request, token_of(request))
        eng = engine(request)
        owner = request.rel_url.query.get("owner")
        reverted = await (
            eng.revert_owner(owner, "rollback") if owner else eng.clear("kill_switch")
        )
        still = [entry_json(e) for e in eng.active() if owner is None or e.owner == owner]
        return web.json_response(
            {"reverted": [entry_json(e) for e in reverted if not e.active], "still_active": still},
            status=200 if not still else 500,
        )

    async def heartbeat(request: web.Request) -> web.Response:
        check_bearer(request, token_of(request))
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        owner = body.get("owner") if isinstance(body, dict) else None
        if not isinstance(owner, str) or not owner.startswith("run:"):
            raise problems(web.HTTPBadRequest, ["owner must be 'run:<id>'"])
        return web.json_response({"owner": owner, "active": engine(request).heartbeat(owner)})

    return [
        web.get("/api/v1/faults", list_faults),
        web.post("/api/v1/faults", apply),
        web.delete("/api/v1/faults", clear),
        web.post("/api/v1/faults/heartbeat", heartbeat),
        web.get("/api/v1/faults/{id}", get_fault),
        web.delete("/api/v1/faults/{id}", revert_one),
    ]
