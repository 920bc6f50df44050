"""A small fake Kubernetes API server for tests, driven by the real ``kubernetes`` client.

There is no Kubernetes API server on this machine, so tests that exercise chaosk8s talk to
this one instead: aiohttp over HTTPS (a ``trustme`` CA) on ``127.0.0.1`` port 0, reached through
a generated kubeconfig file with a bearer token. It speaks the real wire protocol for the
few endpoints chaosk8s's pod and deployment activities use, with real object shapes:

- discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/apps/v1``;
- ``GET /api/v1/namespaces[/{ns}]``;
- ``GET /api/v1/namespaces/{ns}/pods`` (``labelSelector``, ``fieldSelector``; a ``PodList``
  with ``metadata.resourceVersion``), ``GET|DELETE .../pods/{name}``;
- ``GET /apis/apps/v1/namespaces/{ns}/deployments[/{name}]`` and ``PATCH`` (merge and
  strategic-merge patches) of a deployment, whose ``spec.replicas`` the fake reconciles.

Errors are ``Status`` objects (401 without the right token, 403 for a forbidden verb, 404 for
missing objects, 400 for a bad selector, 415 for a JSON patch). A deleted pod is marked with
``deletionTimestamp``, disappears after ``termination_delay``, and, like a ReplicaSet would,
the fake creates a replacement at once (``Pending``) that turns ``Running`` after
``startup_delay``. Every request is recorded; deletions and pod transitions too, with a
condition to wait on.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import secrets
import ssl
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trustme
import yaml
from aiohttp import web

__all__ = ["FakeKube", "RecordedRequest", "SelectorError", "parse_label_selector"]

JSON = dict[str, Any]
POD_FIELDS: dict[str, Callable[[JSON], str]] = {
    "metadata.name": lambda p: p["metadata"]["name"],
    "metadata.namespace": lambda p: p["metadata"]["namespace"],
    "spec.nodeName": lambda p: p["spec"].get("nodeName", ""),
    "spec.restartPolicy": lambda p: p["spec"].get("restartPolicy", ""),
    "spec.schedulerName": lambda p: p["spec"].get("schedulerName", ""),
    "spec.serviceAccountName": lambda p: p["spec"].get("serviceAccountName", ""),
    "status.phase": lambda p: p["status"].get("phase", ""),
    "status.podIP": lambda p: p["status"].get("podIP", ""),
}
BODY = web.RequestKey("body", object)  # the request's JSON body, parsed once when recorded
_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses for generated names


class SelectorError(ValueError):
    """A label or field selector the API server would reject (400)."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: Any
    content_type: str

    def param(self, key: str) -> str | None:
        return next((v for k, v in self.query if k == key), None)


Requirement = Callable[[dict[str, str]], bool]


def _split_requirements(selector: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, ch in enumerate(selector):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            yield selector[start:i].strip()
            start = i + 1
    yield selector[start:].strip()


_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^(?P<key>{_KEY})\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")
_EQ_RE = re.compile(rf"^(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})$")
_EXISTS_RE = re.compile(rf"^(?P<neg>!?)\s*(?P<key>{_KEY})$")


def _requirement(text: str) -> Requirement:
    if m := _SET_RE.match(text):
        key, values = m["key"], {v.strip() for v in m["values"].split(",")}
        if m["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if m := _EQ_RE.match(text):
        key, value = m["key"], m["value"]
        if m["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if m := _EXISTS_RE.match(text):
        key, negated = m["key"], bool(m["neg"])
        return lambda labels: (key in labels) != negated
    raise SelectorError(f"unable to parse requirement: {text!r}")


def parse_label_selector(selector: str) -> Requirement:
    """A predicate on a label mapping, from Kubernetes' label selector syntax
    (``a=b``, ``a==b``, ``a!=b``, ``a in (b,c)``, ``a notin (b)``, ``a``, ``!a``)."""
    if not selector.strip():
        return lambda labels: True
    requirements = [_requirement(r) for r in _split_requirements(selector)]
    return lambda labels: all(r(labels) for r in requirements)


def parse_field_selector(selector: str) -> Callable[[JSON], bool]:
    """A predicate on a pod, from a field selector (``status.phase=Running,spec.nodeName!=n``)."""
    if not selector.strip():
        return lambda pod: True
    checks: list[Callable[[JSON], bool]] = []
    for term in selector.split(","):
        m = re.match(r"^\s*(?P<field>[A-Za-z.]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^,]*?)\s*$", term)
        if not m:
            raise SelectorError(f"invalid field selector: {term!r}")
        getter = POD_FIELDS.get(m["field"])
        if getter is None:
            raise SelectorError(f"field label not supported: {m['field']}")
        checks.append(_field_check(getter, m["value"], negated=m["op"] == "!="))
    return lambda pod: all(c(pod) for c in checks)


def _field_check(
    getter: Callable[[JSON], str], value: str, negated: bool
) -> Callable[[JSON], bool]:
    return lambda pod: (getter(pod) == value) != negated


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, details: JSON | None = None) -> web.Response:
    body: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


def _merge(target: JSON, patch: JSON) -> None:
    """RFC 7386 merge; enough of strategic merge for scalar fields such as spec.replicas."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


@dataclass
class FakeKube:
    """In-memory cluster: namespace ``namespace`` with a deployment ``app`` of ``replicas``
    pods labelled ``app=<app>``, plus a ``db-0`` pod labelled ``app=db`` that no web
    selector should touch. ``forbidden`` holds ``(verb, resource)`` pairs answered with 403."""

    namespace: str = "shop"
    app: str = "web"
    replicas: int = 3
    termination_delay: float = 0.1
    startup_delay: float = 0.1
    forbidden: set[tuple[str, str]] = field(default_factory=set)
    user: str = "chaos-engineer"
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    requests: list[RecordedRequest] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    transitions: list[tuple[str, str]] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    url: str = ""

    def __post_init__(self) -> None:
        self._rv = itertools.count(1000)
        self._timers: set[asyncio.TimerHandle] = set()
        self._background: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._ca = trustme.CA()
        self.namespaces: dict[str, JSON] = {
            ns: self._stamp({"metadata": {"name": ns}, "status": {"phase": "Active"}})
            for ns in ("default", "kube-system", self.namespace)
        }
        self.pods: dict[tuple[str, str], JSON] = {}
        self.deployments: dict[tuple[str, str], JSON] = {}
        self._template_hash = "".join(secrets.choice(_NAME_CHARS) for _ in range(10))
        self._rs_uid = str(uuid.uuid4())
        self._add_deployment()
        for _ in range(self.replicas):
            self._add_pod(running=True)
        db = self._pod_body(
            "db-0", {"app": "db"}, {"kind": "StatefulSet", "name": "db"}, running=True
        )
        self.pods[(self.namespace, "db-0")] = db

    # -- the cluster model -------------------------------------------------------------

    def _stamp(self, obj: JSON) -> JSON:
        meta = obj["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["resourceVersion"] = str(next(self._rv))
        return obj

    def _pod_body(
        self, name: str, labels: dict[str, str], owner: dict[str, str], running: bool
    ) -> JSON:
        now = _now()
        container = {"name": labels["app"], "image": f"registry.example/{labels['app']}:1.4.2"}
        pod: JSON = {
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "apps/v1",
                        "uid": self._rs_uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                        **owner,
                    }
                ],
            },
            "spec": {
                "containers": [
                    {**container, "ports": [{"containerPort": 8080, "protocol": "TCP"}]}
                ],
                "nodeName": "node-1",
                "restartPolicy": "Always",
                "schedulerName": "default-scheduler",
                "serviceAccountName": "default",
                "terminationGracePeriodSeconds": 30,
            },
            "status": {"phase": "Pending", "qosClass": "BestEffort"},
        }
        self._stamp(pod)
        if running:
            self._set_running(pod, now)
        else:
            pod["status"]["conditions"] = [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now}
            ]
        return pod

    def _set_running(self, pod: JSON, now: str) -> None:
        container = pod["spec"]["containers"][0]
        digest = uuid.uuid5(uuid.NAMESPACE_DNS, container["image"]).hex * 2
        pod["status"] = {
            "phase": "Running",
            "qosClass": "BestEffort",
            "hostIP": "10.0.0.11",
            "podIP": f"10.244.1.{len(self.pods) + 10}",
            "startTime": now,
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": now}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": f"{container['image']}@sha256:{digest}",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }

    def _add_pod(self, running: bool) -> str:
        rs = f"{self.app}-{self._template_hash}"
        while True:
            name = f"{rs}-" + "".join(secrets.choice(_NAME_CHARS) for _ in range(5))
            if (self.namespace, name) not in self.pods:
                break
        labels = {"app": self.app, "pod-template-hash": self._template_hash}
        pod = self._pod_body(name, labels, {"kind": "ReplicaSet", "name": rs}, running)
        self.pods[(self.namespace, name)] = pod
        self.transitions.append(("created", name))
        if not running:
            self._later(self.startup_delay, self._start, name)
        return name

    def _add_deployment(self) -> None:
        labels = {"app": self.app}
        self.deployments[(self.namespace, self.app)] = self._stamp(
            {
                "metadata": {"name": self.app, "namespace": self.namespace, "generation": 1},
                "spec": {
                    "replicas": self.replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": self.app, "image": "web:1.4.2"}]},
                    },
                },
                "status": {},
            }
        )
        self._update_deployment_status()

    def _web_pods(self) -> list[JSON]:
        return [
            p
            for (ns, _), p in self.pods.items()
            if ns == self.namespace and p["metadata"]["labels"].get("app") == self.app
        ]

    def _update_deployment_status(self) -> None:
        dep = self.deployments[(self.namespace, self.app)]
        live = [p for p in self._web_pods() if "deletionTimestamp" not in p["metadata"]]
        ready = sum(1 for p in live if p["status"]["phase"] == "Running")
        dep["status"] = {
            "observedGeneration": dep["metadata"].get("generation", 1),
            "replicas": len(live),
            "updatedReplicas": len(live),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }

    def _reconcile(self) -> None:
        """What the ReplicaSet controller does: keep ``spec.replicas`` live pods."""
        want = self.deployments[(self.namespace, self.app)]["spec"]["replicas"]
        live = sorted(
            (p for p in self._web_pods() if "deletionTimestamp" not in p["metadata"]),
            key=lambda p: p["metadata"]["name"],
        )
        for _ in range(want - len(live)):
            self._add_pod(running=False)
        for pod in live[want:] if len(live) > want else []:
            self._terminate(pod, grace=None)
        self._update_deployment_status()

    def _terminate(self, pod: JSON, grace: int | None) -> None:
        meta = pod["metadata"]
        seconds = meta.get("deletionGracePeriodSeconds", 30) if grace is None else grace
        meta["deletionTimestamp"] = (datetime.now(UTC) + timedelta(seconds=seconds)).strftime(
            "%Y-%m-%dT%H:%M:%SZ"
        )
        meta["deletionGracePeriodSeconds"] = seconds
        self._stamp(pod)
        self.transitions.append(("terminating", meta["name"]))
        delay = 0.0 if seconds == 0 else self.termination_delay
        self._later(delay, self._remove, meta["name"])

    def _later(self, delay: float, fn: Callable[[str], None], name: str) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            fn(name)
            self._notify()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    def _remove(self, name: str) -> None:
        if self.pods.pop((self.namespace, name), None) is not None:
            self.transitions.append(("removed", name))
            self._update_deployment_status()

    def _start(self, name: str) -> None:
        pod = self.pods.get((self.namespace, name))
        if pod is not None and "deletionTimestamp" not in pod["metadata"]:
            self._set_running(pod, _now())
            self._stamp(pod)
            self.transitions.append(("running", name))
            self._update_deployment_status()

    def _notify(self) -> None:
        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()

        task = asyncio.get_running_loop().create_task(notify())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- what tests look at --------------------------------------------------------------

    def running_pods(self, app: str | None = None) -> list[str]:
        app = app or self.app
        return sorted(
            p["metadata"]["name"]
            for p in self.pods.values()
            if p["metadata"]["labels"].get("app") == app
            and p["status"]["phase"] == "Running"
            and "deletionTimestamp" not in p["metadata"]
        )

    def requests_for(self, method: str, path_prefix: str = "/") -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path.startswith(path_prefix)]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)

    def kubeconfig(self, path: Path, context: str = "kind-shop") -> Path:
        """A kubeconfig with ``context`` (this server, a valid token) and ``staging`` as the
        current context (the same server, a token it refuses), so a run only works when the
        experiment selects ``context`` (chaosk8s's ``KUBERNETES_CONTEXT``)."""
        ca = base64.b64encode(self._ca.cert_pem.bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "shop-cluster",
                    "cluster": {"server": self.url, "certificate-authority-data": ca},
                }
            ],
            "users": [
                {"name": self.user, "user": {"token": self.token}},
                {"name": "staging-user", "user": {"token": "not-a-valid-token"}},
            ],
            "contexts": [
                {"name": context, "context": {"cluster": "shop-cluster", "user": self.user}},
                {"name": "staging", "context": {"cluster": "shop-cluster", "user": "staging-user"}},
            ],
            "current-context": "staging",
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path

    # -- the server ----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record, self._authenticate])
        r = app.router
        r.add_get("/version", self._version)
        r.add_get("/api", self._api_versions)
        r.add_get("/api/v1", self._core_resources)
        r.add_get("/apis", self._api_groups)
        r.add_get("/apis/apps/v1", self._apps_resources)
        r.add_get("/api/v1/namespaces", self._list_namespaces)
        r.add_get("/api/v1/namespaces/{ns}", self._get_namespace)
        r.add_get("/api/v1/namespaces/{ns}/pods", self._list_pods)
        r.add_get("/api/v1/namespaces/{ns}/pods/{name}", self._get_pod)
        r.add_delete("/api/v1/namespaces/{ns}/pods/{name}", self._delete_pod)
        r.add_get("/apis/apps/v1/namespaces/{ns}/deployments", self._list_deployments)
        r.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._get_deployment)
        r.add_patch("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self._patch_deployment)

        server_cert = self._ca.issue_cert("127.0.0.1", "localhost")
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_cert.configure_cert(ssl_ctx)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_ctx)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}"

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for task in list(self._background):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        request[BODY] = body
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                tuple(request.query.items()),
                body,
                request.headers.get("Content-Type", ""),
            )
        )
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = _status(404, "NotFound", "the server could not find the requested resource")
        except web.HTTPMethodNotAllowed:
            response = _status(405, "MethodNotAllowed", "the server does not allow this method")
        self._notify()
        return response  # type: ignore[no-any-return]

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/version" and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)  # type: ignore[no-any-return]

    def _forbidden(self, verb: str, resource: str, name: str, ns: str) -> web.Response | None:
        if (verb, resource) not in self.forbidden:
            return None
        group = "apps" if resource == "deployments" else ""
        return _status(
            403,
            "Forbidden",
            f'{resource} "{name}" is forbidden: User "{self.user}" cannot {verb} resource '
            f'"{resource}" in API group "{group}" in the namespace "{ns}"',
            {"name": name, "kind": resource, **({"group": group} if group else {})},
        )

    @staticmethod
    def _typed(obj: JSON, api_version: str, kind: str) -> JSON:
        return {"apiVersion": api_version, "kind": kind, **obj}

    def _list(self, api_version: str, kind: str, items: list[JSON]) -> web.Response:
        return web.json_response(
            {
                "apiVersion": api_version,
                "kind": kind,
                "metadata": {"resourceVersion": str(next(self._rv))},
                "items": items,
            }
        )

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "major": "1",
                "minor": "31",
                "gitVersion": "v1.31.0-seismo-fake",
                "gitCommit": "0" * 40,
                "gitTreeState": "clean",
                "buildDate": "2024-08-13T07:28:49Z",
                "goVersion": "go1.22.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    async def _api_versions(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": self.url.removeprefix("https://")}
                ],
            }
        )

    async def _api_groups(self, request: web.Request) -> web.Response:
        version = {"groupVersion": "apps/v1", "version": "v1"}
        return web.json_response(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [{"name": "apps", "versions": [version], "preferredVersion": version}],
            }
        )

    @staticmethod
    def _resources(group_version: str, resources: list[tuple[str, str, bool, list[str]]]) -> JSON:
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": [
                {"name": n, "singularName": "", "namespaced": ns, "kind": k, "verbs": verbs}
                for n, k, ns, verbs in resources
            ],
        }

    async def _core_resources(self, request: web.Request) -> web.Response:
        return web.json_response(
            self._resources(
                "v1",
                [
                    ("namespaces", "Namespace", False, ["get", "list"]),
                    ("pods", "Pod", True, ["delete", "get", "list"]),
                ],
            )
        )

    async def _apps_resources(self, request: web.Request) -> web.Response:
        return web.json_response(
            self._resources(
                "apps/v1", [("deployments", "Deployment", True, ["get", "list", "patch"])]
            )
        )

    async def _list_namespaces(self, request: web.Request) -> web.Response:
        return self._list("v1", "NamespaceList", list(self.namespaces.values()))

    def _namespace_missing(self, ns: str) -> web.Response | None:
        if ns in self.namespaces:
            return None
        return _status(
            404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"}
        )

    async def _get_namespace(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        if missing := self._namespace_missing(ns):
            return missing
        return web.json_response(self._typed(self.namespaces[ns], "v1", "Namespace"))

    async def _list_pods(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        try:
            labels_ok = parse_label_selector(request.query.get("labelSelector", ""))
            fields_ok = parse_field_selector(request.query.get("fieldSelector", ""))
        except SelectorError as exc:
            return _status(400, "BadRequest", str(exc))
        items = [
            pod
            for (pod_ns, name), pod in sorted(self.pods.items())
            if pod_ns == ns and labels_ok(pod["metadata"]["labels"]) and fields_ok(pod)
        ]
        return self._list("v1", "PodList", items)  # a missing namespace lists nothing, as real

    def _pod_missing(self, ns: str, name: str) -> web.Response | None:
        if (ns, name) in self.pods:
            return None
        return _status(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})

    async def _get_pod(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if missing := self._pod_missing(ns, name):
            return missing
        return web.json_response(self._typed(self.pods[(ns, name)], "v1", "Pod"))

    async def _delete_pod(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if refused := self._forbidden("delete", "pods", name, ns):
            return refused
        if missing := self._pod_missing(ns, name):
            return missing
        sent = request[BODY]
        body: JSON = sent if isinstance(sent, dict) else {}
        grace = body.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
        pod = self.pods[(ns, name)]
        if "deletionTimestamp" not in pod["metadata"]:
            self.deleted.append(name)
            self._terminate(pod, None if grace is None else int(grace))
            self._reconcile()  # the ReplicaSet sees a terminating pod and replaces it at once
        return web.json_response(self._typed(pod, "v1", "Pod"))

    async def _list_deployments(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        items = [d for (d_ns, _), d in sorted(self.deployments.items()) if d_ns == ns]
        return self._list("apps/v1", "DeploymentList", items)

    def _deployment_missing(self, ns: str, name: str) -> web.Response | None:
        if (ns, name) in self.deployments:
            return None
        details = {"name": name, "group": "apps", "kind": "deployments"}
        return _status(404, "NotFound", f'deployments.apps "{name}" not found', details)

    async def _get_deployment(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if missing := self._deployment_missing(ns, name):
            return missing
        return web.json_response(self._typed(self.deployments[(ns, name)], "apps/v1", "Deployment"))

    async def _patch_deployment(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if refused := self._forbidden("patch", "deployments", name, ns):
            return refused
        if missing := self._deployment_missing(ns, name):
            return missing
        content_type = request.headers.get("Content-Type", "")
        if content_type not in (
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ):
            return _status(
                415, "UnsupportedMediaType", f"the fake does not support {content_type!r} patches"
            )
        patch = request[BODY]
        if not isinstance(patch, dict):
            return _status(400, "BadRequest", "the patch body must be a JSON object")
        dep = self.deployments[(ns, name)]
        before = json.dumps(dep["spec"], sort_keys=True)
        _merge(dep, {k: v for k, v in patch.items() if k in ("metadata", "spec")})
        if json.dumps(dep["spec"], sort_keys=True) != before:
            dep["metadata"]["generation"] = dep["metadata"].get("generation", 1) + 1
            self._stamp(dep)
            self._reconcile()
        return web.json_response(self._typed(dep, "apps/v1", "Deployment"))
