"""A stand-in for the few Kubernetes API endpoints the bridge calls, because no Kubernetes
API server can run on our machines.

Its answers are shaped after the Kubernetes API reference (v1 ``Node``/``NodeList``,
``Pod``/``PodList``, ``policy/v1`` ``Eviction`` and the ``Status`` of a refusal): node
list (with ``labelSelector``), node get, node patch (strategic merge: ``spec`` fields and
``metadata.annotations``, ``null`` deleting one), pod list by namespace (with
``fieldSelector=spec.nodeName=…``) and eviction create (``201``, ``404`` for a missing
pod, ``429`` while a PodDisruptionBudget allows no disruption). It checks the bearer
token a kubeconfig would carry and records every request.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from idlecloud.dev.services import free_port

__all__ = ["StandIn"]

TOKEN = "stand-in-token"


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    return web.json_response(body, status=code)


def _list(kind: str, items: list[dict[str, Any]]) -> web.Response:
    return web.json_response({"kind": kind, "apiVersion": "v1",
                              "metadata": {"resourceVersion": "1"}, "items": items})  # fmt: skip


def _meta(name: str, namespace: str | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": "1",
                            "creationTimestamp": "2026-12-01T08:00:00Z", **extra}  # fmt: skip
    if namespace is not None:
        meta["namespace"] = namespace
    return meta


@dataclass
class StandIn:
    """Nodes, pods and disruption budgets in memory, served over HTTP on loopback."""

    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refusals: dict[tuple[str, str], int] = field(default_factory=dict)  # 429s left per pod
    requests: list[tuple[str, str]] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_node(self, name: str, *, labels: dict[str, str] | None = None,
                 unschedulable: bool = False) -> None:  # fmt: skip
        self.nodes[name] = {
            "kind": "Node", "apiVersion": "v1",
            "metadata": _meta(name, labels={"kubernetes.io/hostname": name, **(labels or {})},
                              annotations={}),
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }  # fmt: skip

    def add_pod(self, namespace: str, name: str, node: str, *, owner: str = "ReplicaSet",
                phase: str = "Running", budget_refusals: int = 0) -> None:  # fmt: skip
        owners = [{"apiVersion": "apps/v1", "kind": owner, "name": f"{name}-owner",
                   "uid": str(uuid.uuid4()), "controller": True}]  # fmt: skip
        self.pods[(namespace, name)] = {
            "kind": "Pod", "apiVersion": "v1",
            "metadata": _meta(name, namespace, ownerReferences=owners),
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": phase},
        }  # fmt: skip
        if budget_refusals:
            self.refusals[(namespace, name)] = budget_refusals

    def unschedulable(self, node: str) -> bool:
        return bool(self.nodes[node]["spec"].get("unschedulable"))

    def annotations(self, node: str) -> dict[str, str]:
        return dict(self.nodes[node]["metadata"].get("annotations") or {})

    def calls(self, method: str, fragment: str = "") -> list[str]:
        return [path for m, path in self.requests if m == method and fragment in path]

    def kubeconfig(self, folder: Path) -> Path:
        """A kubeconfig (JSON is YAML) that points at the stand-in with its token."""
        path = folder / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
            "users": [{"name": "bridge", "user": {"token": TOKEN}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "bridge"}}],
        }))  # fmt: skip
        return path

    async def start(self) -> StandIn:
        app = web.Application(middlewares=[self._check])
        app.router.add_get("/api/v1/nodes", self._list_nodes)
        app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        app.router.add_patch("/api/v1/nodes/{name}", self._patch_node)
        app.router.add_get("/api/v1/namespaces/{namespace}/pods", self._list_pods)
        app.router.add_post("/api/v1/namespaces/{namespace}/pods/{name}/eviction", self._evict)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        """The API server goes away (its port stops answering)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _check(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    async def _list_nodes(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector", "")
        key, _, value = selector.partition("=")

        def selected(node: dict[str, Any]) -> bool:
            labels = node["metadata"]["labels"]
            return not key or (key in labels and (not value or labels[key] == value))

        items = [node for node in self.nodes.values() if selected(node)]
        return _list("NodeList", items)

    async def _get_node(self, request: web.Request) -> web.Response:
        node = self.nodes.get(request.match_info["name"])
        if node is None:
            return _status(404, "NotFound", f'nodes "{request.match_info["name"]}" not found')
        return web.json_response(node)

    async def _patch_node(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.nodes:
            return _status(404, "NotFound", f'nodes "{name}" not found')
        if request.content_type != "application/strategic-merge-patch+json":
            return _status(415, "UnsupportedMediaType", f"unsupported {request.content_type}")
        patch = await request.json()
        node = self.nodes[name]
        node["spec"].update(patch.get("spec", {}))
        if not node["spec"].get("unschedulable"):
            node["spec"].pop("unschedulable", None)
        notes = node["metadata"].setdefault("annotations", {})
        for key, value in patch.get("metadata", {}).get("annotations", {}).items():
            if value is None:
                notes.pop(key, None)
            else:
                notes[key] = value
        return web.json_response(node)

    async def _list_pods(self, request: web.Request) -> web.Response:
        namespace = request.match_info["namespace"]
        selector = request.query.get("fieldSelector", "")
        node = selector.removeprefix("spec.nodeName=") if selector else None
        items = [pod for (ns, _), pod in self.pods.items()
                 if ns == namespace and node in (None, pod["spec"]["nodeName"])]  # fmt: skip
        return _list("PodList", items)

    async def _evict(self, request: web.Request) -> web.Response:
        key = (request.match_info["namespace"], request.match_info["name"])
        body = await request.json()
        assert body.get("kind") == "Eviction" and body["metadata"]["name"] == key[1], body
        if key not in self.pods:
            return _status(404, "NotFound", f'pods "{key[1]}" not found')
        if self.refusals.get(key, 0) > 0:
            self.refusals[key] -= 1
            return _status(
                429,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            )
        del self.pods[key]
        return web.json_response({"kind": "Eviction", "apiVersion": "policy/v1",
                                  "metadata": body["metadata"]}, status=201)  # fmt: skip
