"""A Chaos Toolkit experiment that uses chaosk8s and chaoslib's built-in providers runs with
seismo unchanged (issue 3, "Done when").

The experiment file (``tests/fixtures/ctk/kill-one-web-pod.json``) is what a Chaos Toolkit user
writes: chaosk8s pod probes and ``terminate_pods``, an ``http`` probe, a chaosk8s rollback,
the Kubernetes context selected through ``secrets``. ``seismo run`` runs it in a subprocess
against :class:`FakeKube`, a fake API server spoken to by the real ``kubernetes`` client
over HTTPS through a generated kubeconfig (``KUBECONFIG``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.agent.experiments.fake_kube import FakeKube, parse_label_selector
from tests.agent.experiments.support import REPO, DemoTarget, run_seismo, seismo_env, seismo_ext

EXPERIMENT = REPO / "tests" / "fixtures" / "ctk" / "kill-one-web-pod.json"
PODS = "/api/v1/namespaces/shop/pods"


@pytest.fixture
async def kube() -> AsyncIterator[FakeKube]:
    fake = FakeKube()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


def k8s_env(kube: FakeKube, demo: DemoTarget, tmp_path: Path) -> dict[str, str]:
    env = seismo_env(
        KUBECONFIG=str(kube.kubeconfig(tmp_path / "kubeconfig")),
        STOREFRONT_URL=demo.base_url,
    )
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        env.pop(key, None)  # chaosk8s hands HTTP_PROXY to the client; this is loopback
    for key in ("KUBERNETES_CONTEXT", "KUBERNETES_HOST", "CHAOSTOOLKIT_IN_POD"):
        env.pop(key, None)
    return env


def activity(journal: dict[str, Any], name: str, section: str = "run") -> dict[str, Any]:
    (found,) = [a for a in journal[section] if a["activity"]["name"] == name]
    assert isinstance(found, dict)
    return found


async def test_validate_accepts_the_experiment_unchanged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _, code, out, err = await run_seismo(["validate", str(EXPERIMENT)], data)
    assert code == 0, out + err
    assert "valid experiment 'The storefront survives losing one web pod'" in out


async def test_run_kills_one_web_pod_and_the_steady_state_holds(
    kube: FakeKube, demo: DemoTarget, tmp_path: Path
) -> None:
    original = set(kube.running_pods())
    data = tmp_path / "data"
    proc, code, out, err = await run_seismo(
        ["run", str(EXPERIMENT), "--data-dir", str(data)], data, k8s_env(kube, demo, tmp_path)
    )

    assert code == 0, out + err
    deletes = kube.requests_for("DELETE")
    assert len(deletes) == 1
    (victim,) = kube.deleted
    assert victim in original
    assert deletes[0].path == f"{PODS}/{victim}"
    # terminate_pods selected its victim through the label selector, never the db pod
    lists = kube.requests_for("GET", PODS)
    assert lists, "no pod was listed"
    assert {r.param("labelSelector") for r in lists} == {"app=web"}
    assert "db-0" not in kube.deleted
    # the fake ReplicaSet replaced the pod, and the after-hypothesis saw three running pods
    (replacement,) = [
        n for event, n in kube.transitions if event == "created" and n not in original
    ]
    assert set(kube.running_pods()) == original - {victim} | {replacement}
    # the rollback (scale_deployment) ran: a strategic merge patch of spec.replicas
    (patch,) = kube.requests_for("PATCH")
    assert patch.path == "/apis/apps/v1/namespaces/shop/deployments/web"
    assert patch.body == {"spec": {"replicas": 3}}
    assert patch.content_type == "application/strategic-merge-patch+json"
    assert demo.count("GET", "/healthz") == 2

    journal = proc.journal()
    assert journal["status"] == "completed"
    assert journal["deviated"] is False
    assert journal["experiment"]["title"] == "The storefront survives losing one web pod"
    assert journal["steady_states"]["before"]["steady_state_met"] is True
    assert journal["steady_states"]["after"]["steady_state_met"] is True
    kill = activity(journal, "terminate-one-web-pod")
    assert kill["status"] == "succeeded"
    assert kill["output"] == [victim]
    outputs = {
        p["activity"]["name"]: p["output"] for p in journal["steady_states"]["after"]["probes"]
    }
    assert outputs["all-web-pods-are-running"] is True
    assert outputs["three-web-pods-are-running"] == 3
    assert outputs["storefront-answers"]["status"] == 200
    rollback = activity(journal, "web-deployment-has-three-replicas", "rollbacks")
    assert rollback["status"] == "succeeded"
    # the context came from the experiment's secrets, and is redacted in the journal copy
    assert journal["experiment"]["secrets"]["k8s"]["KUBERNETES_CONTEXT"] == "***"
    assert seismo_ext(journal)["rollbacks"]["played"] is True


async def test_forbidden_delete_is_a_failed_action_and_rollbacks_run(
    kube: FakeKube, demo: DemoTarget, tmp_path: Path
) -> None:
    kube.forbidden.add(("delete", "pods"))
    original = kube.running_pods()
    data = tmp_path / "data"
    proc, code, out, err = await run_seismo(
        ["run", str(EXPERIMENT), "--data-dir", str(data)], data, k8s_env(kube, demo, tmp_path)
    )

    # As in Chaos Toolkit: a failed action is recorded as such and the run goes on; the
    # steady state still holds, so the run is completed, not deviated, and seismo exits 0.
    assert code == 0, out + err
    (delete,) = kube.requests_for("DELETE")
    assert delete.path.rsplit("/", 1)[1] in original
    assert kube.deleted == []
    assert kube.running_pods() == original

    journal = proc.journal()
    assert journal["status"] == "completed"
    assert journal["deviated"] is False
    kill = activity(journal, "terminate-one-web-pod")
    assert kill["status"] == "failed"
    assert "(403)" in "".join(kill["exception"])
    assert "Forbidden" in "".join(kill["exception"])
    assert len(kube.requests_for("PATCH")) == 1
    rollback = activity(journal, "web-deployment-has-three-replicas", "rollbacks")
    assert rollback["status"] == "succeeded"


async def test_without_the_experiments_context_the_cluster_refuses(
    kube: FakeKube, demo: DemoTarget, tmp_path: Path
) -> None:
    """The kubeconfig's current context has a token the server refuses, so the run above can
    only pass because chaosk8s received ``KUBERNETES_CONTEXT`` from the experiment's secrets."""
    experiment = json.loads(EXPERIMENT.read_text())
    experiment["secrets"]["k8s"]["KUBERNETES_CONTEXT"] = "staging"
    path = tmp_path / "staging.json"
    path.write_text(json.dumps(experiment))
    data = tmp_path / "data"
    proc, code, out, err = await run_seismo(
        ["run", str(path), "--data-dir", str(data)], data, k8s_env(kube, demo, tmp_path)
    )

    assert code == 1, out + err
    assert kube.requests_for("DELETE") == []
    journal = proc.journal()
    assert journal["steady_states"]["before"]["steady_state_met"] is False
    (probe, *_) = journal["steady_states"]["before"]["probes"]
    assert "Unauthorized" in "".join(probe["exception"])


# -- the fake API server itself, driven by the real client --------------------------------


def _core_api(kube: FakeKube, tmp_path: Path) -> client.CoreV1Api:
    api_client = config.new_client_from_config(
        str(kube.kubeconfig(tmp_path / "kubeconfig")), context="kind-shop"
    )
    return client.CoreV1Api(api_client)


async def test_fake_kube_speaks_the_api_to_the_real_client(kube: FakeKube, tmp_path: Path) -> None:
    v1 = _core_api(kube, tmp_path)

    def calls() -> dict[str, Any]:
        web = v1.list_namespaced_pod("shop", label_selector="app in (web),pod-template-hash")
        db = v1.list_namespaced_pod("shop", label_selector="app!=web")
        running = v1.list_namespaced_pod("shop", field_selector="status.phase=Running")
        none = v1.list_namespaced_pod("nowhere")
        errors: dict[str, int | None] = {}
        for name, call in {
            "missing_pod": lambda: v1.read_namespaced_pod("nope", "shop"),
            "missing_ns": lambda: v1.read_namespace("nowhere"),
            "bad_selector": lambda: v1.list_namespaced_pod("shop", label_selector="a in b"),
        }.items():
            try:
                call()
            except ApiException as exc:
                errors[name] = exc.status
                errors[name + "_kind"] = json.loads(exc.body)["kind"]
        victim = web.items[0].metadata.name
        deleted = v1.delete_namespaced_pod(victim, "shop")
        return {
            "web": [p.metadata.name for p in web.items],
            "rv": web.metadata.resource_version,
            "db": [p.metadata.name for p in db.items],
            "running": len(running.items),
            "none": none.items,
            "errors": errors,
            "victim": victim,
            "deleted": deleted,
        }

    got = await asyncio.wait_for(asyncio.to_thread(calls), 30)

    assert len(got["web"]) == 3 and all(n.startswith("web-") for n in got["web"])
    assert got["rv"]
    assert got["db"] == ["db-0"]
    assert got["running"] == 4
    assert got["none"] == []
    assert got["errors"] == {
        "missing_pod": 404,
        "missing_pod_kind": "Status",
        "missing_ns": 404,
        "missing_ns_kind": "Status",
        "bad_selector": 400,
        "bad_selector_kind": "Status",
    }
    assert got["deleted"].metadata.name == got["victim"]
    assert got["deleted"].metadata.deletion_timestamp is not None
    # like a ReplicaSet: the victim goes away and a new pod becomes Running
    await kube.wait_until(
        lambda: got["victim"] not in kube.running_pods() and len(kube.running_pods()) == 3
    )
    assert ("removed", got["victim"]) in kube.transitions


async def test_fake_kube_refuses_a_wrong_token(kube: FakeKube, tmp_path: Path) -> None:
    api_client = config.new_client_from_config(
        str(kube.kubeconfig(tmp_path / "kubeconfig")), context="staging"
    )
    v1 = client.CoreV1Api(api_client)
    with pytest.raises(ApiException) as caught:
        await asyncio.wait_for(asyncio.to_thread(v1.list_namespaced_pod, "shop"), 30)
    assert caught.value.status == 401


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web,tier", {"app": "web"}, False),
        ("app!=web", {}, True),
        ("app in (web, api),!canary", {"app": "api"}, True),
        ("app notin (web)", {"app": "web"}, False),
        ("", {"x": "y"}, True),
    ],
)
def test_label_selector(selector: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_label_selector(selector)(labels) is matches
