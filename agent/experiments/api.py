"""The runs API of the agent, mounted by agent.server.

    POST /api/v1/runs                   start a run (bearer token): 202, 400, 409
    GET  /api/v1/runs?limit=N           runs, newest first (status, deviated, exit, partial)
    GET  /api/v1/runs/{id}              the journal (partial while running) plus live state
    GET  /api/v1/runs/{id}/events?after=SEQ
                                        the run's event log after ``seq`` (for followers)
    POST /api/v1/runs/{id}/abort        stop after the rollbacks (bearer token): 202, 404, 409

The body of ``POST /api/v1/runs`` is one of:

- an experiment, as YAML or JSON;
- ``{"name": "<file in experiments.dir>", "vars": {...}}``;
- ``{"experiment": {...} or "<YAML text>", "vars": {...}, "source": "exp.yaml"}``.

It is validated before anything runs; problems come back as 400 with a ``problems`` list.
A malformed run id is 400 and an unknown one 404, never a 500.

    add_routes(app, service, token=lambda: agent.token)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from agent.auth import check_bearer
from agent.experiments.errors import ExperimentError, ExperimentInvalid, Problem
from agent.experiments.events import read_events
from agent.experiments.journal import exit_code
from agent.experiments.loader import parse_experiment
from agent.experiments.service import ExperimentService, RunActive, RunNotActive
from agent.experiments.store import RUN_ID

__all__ = ["SERVICE", "TOKEN", "add_routes"]

SERVICE: web.AppKey[ExperimentService] = web.AppKey("experiments", ExperimentService)
TOKEN: web.AppKey[Callable[[], str | None]] = web.AppKey("api_token")

PREFIX = "/api/v1/runs"
DEFAULT_LIMIT = 50
MAX_EVENTS = 1000


def add_routes(
    app: web.Application, service: ExperimentService, token: Callable[[], str | None]
) -> None:
    """Mount the runs API on ``app``; ``token()`` is the current bearer token (or None)."""
    app[SERVICE] = service
    app[TOKEN] = token
    app.router.add_post(PREFIX, submit)
    app.router.add_get(PREFIX, list_runs)
    app.router.add_get(PREFIX + "/{run_id}", get_run)
    app.router.add_get(PREFIX + "/{run_id}/events", get_events)
    app.router.add_post(PREFIX + "/{run_id}/abort", abort)


def _links(run_id: str) -> dict[str, str]:
    return {
        "self": f"{PREFIX}/{run_id}",
        "events": f"{PREFIX}/{run_id}/events",
        "abort": f"{PREFIX}/{run_id}/abort",
    }


def _invalid(problems: tuple[Problem, ...] | list[Problem], message: str) -> web.Response:
    return web.json_response(
        {
            "error": message,
            "problems": [
                {"where": p.where, "message": p.message, "rule": p.rule} for p in problems
            ],
        },
        status=400,
    )


def _bad(message: str, rule: str = "request") -> web.Response:
    return _invalid([Problem("", message, rule)], message)


async def _experiment_from(
    request: web.Request, service: ExperimentService
) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(experiment, source, vars) from the request body; raises ExperimentInvalid."""
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ExperimentInvalid([Problem("", "the body is not UTF-8 text", "syntax")]) from None
    if not text.strip():
        raise ExperimentInvalid([Problem("", "the body is empty; send an experiment", "syntax")])
    data = parse_experiment(text, "request")
    envelope = set(data) <= {"name", "vars", "experiment", "source"}
    if not envelope or ("name" in data) == ("experiment" in data):
        return data, "request", {}
    config_vars = data.get("vars") or {}
    if not isinstance(config_vars, Mapping) or not all(isinstance(k, str) for k in config_vars):
        raise ExperimentInvalid([Problem("vars", "vars must be an object", "request")])
    if "name" in data:
        name = data["name"]
        if not isinstance(name, str):
            raise ExperimentInvalid([Problem("name", "name must be a string", "request")])
        experiment, source = await service.load_named(name)
        return experiment, source, dict(config_vars)
    inner = data["experiment"]
    source = str(data.get("source") or "request")
    if isinstance(inner, str):
        inner = parse_experiment(inner, source)
    if not isinstance(inner, dict):
        raise ExperimentInvalid(
            [Problem("experiment", "experiment must be an object or YAML text", "request")]
        )
    return inner, source, dict(config_vars)


async def submit(request: web.Request) -> web.Response:
    check_bearer(request, request.app[TOKEN]())
    service = request.app[SERVICE]
    try:
        experiment, source, config_vars = await _experiment_from(request, service)
        run = await service.submit(experiment, source=source, origin="api", config_vars=config_vars)
    except ExperimentInvalid as exc:
        return _invalid(exc.problems, "invalid experiment")
    except RunActive as exc:
        return web.json_response(
            {
                "error": "a run is already active on this agent (one at a time)",
                "active_run_id": exc.run_id,
                "links": _links(exc.run_id),
            },
            status=409,
        )
    except ExperimentError as exc:
        return web.json_response({"error": str(exc)}, status=503)
    return web.json_response(
        {"run_id": run.run_id, "status": "running", "links": _links(run.run_id)},
        status=202,
        headers={"Location": f"{PREFIX}/{run.run_id}"},
    )


async def list_runs(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    raw = request.rel_url.query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or int(raw) < 1:
        return _bad(f"limit {raw!r} must be a positive integer")
    limit = int(raw)

    def collect() -> list[dict[str, Any]]:
        out = []
        for run_id in reversed(service.store.run_ids()):
            try:
                out.append(service.store.summary(run_id).to_json())
            except (KeyError, OSError, ValueError):
                continue  # removed by retention meanwhile, or unreadable
            if len(out) >= limit:
                break
        return out

    runs = await asyncio.to_thread(collect)
    active = service.active
    for run in runs:
        if active is not None and run["run_id"] == active.run_id:
            run.update(status="running", exit_code=None, partial=False, live=active.live())
    return web.json_response({"runs": runs})


def _run_id(request: web.Request) -> str:
    run_id = request.match_info["run_id"]
    if not RUN_ID.match(run_id):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{run_id!r} is not a run id"}),
            content_type="application/json",
        )
    return run_id


def _not_found(run_id: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(
        text=json.dumps({"error": f"no run {run_id!r}"}), content_type="application/json"
    )


async def get_run(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    run_id = _run_id(request)
    active = service.active
    live = active.live() if active is not None and active.run_id == run_id else None
    try:
        journal = await asyncio.to_thread(service.store.load, run_id)
    except KeyError:
        raise _not_found(run_id) from None
    if live is not None:
        status, code = live["status"], None
    else:
        status, code = str(journal.get("status") or "unknown"), exit_code(journal)
    return web.json_response(
        {
            "run_id": run_id,
            "status": status,
            "deviated": bool(journal.get("deviated")),
            "exit_code": code,
            "live": live,
            "journal": journal,
            "links": _links(run_id),
        },
        dumps=lambda obj: json.dumps(obj, default=str),
    )


async def get_events(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    run_id = _run_id(request)
    raw = request.rel_url.query.get("after", "-1")
    try:
        after = int(raw)
    except ValueError:
        return _bad(f"after {raw!r} must be an integer (an event's seq)")
    try:
        path = service.store.run_dir(run_id) / "events.jsonl"
    except KeyError:
        raise _not_found(run_id) from None
    events = await asyncio.to_thread(read_events, path)
    fresh = [e for e in events if isinstance(e.get("seq"), int) and e["seq"] > after]
    return web.json_response(
        {"run_id": run_id, "events": fresh[:MAX_EVENTS]},
        dumps=lambda obj: json.dumps(obj, default=str),
    )


async def abort(request: web.Request) -> web.Response:
    check_bearer(request, request.app[TOKEN]())
    service = request.app[SERVICE]
    run_id = _run_id(request)
    try:
        run = service.abort(
            run_id, {"kind": "abort", "source": "api", "message": "aborted via the API"}
        )
    except KeyError:
        raise _not_found(run_id) from None
    except RunNotActive:
        return web.json_response({"error": f"run {run_id} is not running"}, status=409)
    return web.json_response(
        {"run_id": run.run_id, "status": "aborting", "links": _links(run.run_id)}, status=202
    )
