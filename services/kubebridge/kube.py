"""The API server, through kubernetes-asyncio: the few calls the bridge makes.

Credentials come from the pod's service account when the bridge runs in the cluster
(``KUBERNETES_SERVICE_HOST`` is set and no kubeconfig was named), else from a kubeconfig
(the named one, ``$KUBECONFIG`` or ``~/.kube/config``). A PC maps to the node of the same
name, or to the node whose label ``node_label`` names it. Every failure to reach the
server, and every refusal other than the ones the bridge expects (a PodDisruptionBudget's
429, a pod already gone), becomes :class:`KubeUnavailable` with what the server said, so
the bridge backs off and tries again.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from schemas.base import DNS_LABEL_PATTERN
from services.kubebridge.plan import CORDON_ANNOTATION, KubeNode, KubePod

__all__ = ["KubeUnavailable", "Kubernetes", "connect"]

T = TypeVar("T")
_NODE_NAME = re.compile(DNS_LABEL_PATTERN)
_TIMEOUT_S = 10.0


class KubeUnavailable(Exception):
    """The API server could not be reached, or refused in a way retrying may mend."""


async def connect(kubeconfig: Path | None = None) -> client.ApiClient:
    """An API client: in-cluster credentials, or a kubeconfig's.

    Raises:
        KubeUnavailable: no usable configuration was found.
    """
    configuration = client.Configuration()
    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None,
                client_configuration=configuration, persist_config=False,
            )  # fmt: skip
    except (config.ConfigException, OSError) as error:
        raise KubeUnavailable(f"no Kubernetes configuration: {error}") from None
    return client.ApiClient(configuration)


async def _call(what: str, call: Awaitable[T], passing: frozenset[int] = frozenset()) -> T:
    """Await an API call; refusals other than the ``passing`` statuses become
    :class:`KubeUnavailable`, as does failing to reach the server."""
    try:
        return await call
    except ApiException as error:
        if error.status in passing:
            raise
        raise KubeUnavailable(
            f"{what}: the API server answered {error.status} {error.reason}"
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        raise KubeUnavailable(f"{what}: the API server cannot be reached ({error!r})") from None


def _pod(item: Any) -> KubePod:
    owners = item.metadata.owner_references or []
    return KubePod(
        namespace=item.metadata.namespace, name=item.metadata.name, node=item.spec.node_name,
        terminating=item.metadata.deletion_timestamp is not None,
        finished=(item.status.phase if item.status else None) in ("Succeeded", "Failed"),
        daemon_set=any(owner.kind == "DaemonSet" for owner in owners),
    )  # fmt: skip


class Kubernetes:
    """The bridge's calls on one API server (see the module's header)."""

    def __init__(self, api: client.ApiClient, node_label: str | None = None) -> None:
        self._api = api
        self._core = client.CoreV1Api(api)
        self.node_label = node_label

    async def nodes(self) -> list[KubeNode]:
        """Every node that maps to a PC."""
        core, timeout_s = self._core, _TIMEOUT_S
        listing = (core.list_node(label_selector=self.node_label, _request_timeout=timeout_s)
                   if self.node_label else core.list_node(_request_timeout=timeout_s))  # fmt: skip
        listed = await _call("listing nodes", listing)
        found = []
        for item in listed.items:
            labels, notes = item.metadata.labels or {}, item.metadata.annotations or {}
            bus_node = labels.get(self.node_label, "") if self.node_label else item.metadata.name
            if _NODE_NAME.fullmatch(bus_node):
                found.append(KubeNode(item.metadata.name, bus_node, bool(item.spec.unschedulable),
                                      CORDON_ANNOTATION in notes))  # fmt: skip
        return found

    async def pods(self, node: str, namespaces: frozenset[str]) -> list[KubePod]:
        """The pods of ``namespaces`` on ``node``."""
        lists = await asyncio.gather(*(
            _call(f"listing pods of {namespace}", self._core.list_namespaced_pod(
                namespace, field_selector=f"spec.nodeName={node}", _request_timeout=_TIMEOUT_S))
            for namespace in sorted(namespaces)
        ))  # fmt: skip
        return [_pod(item) for listed in lists for item in listed.items]

    async def _patch(self, node: str, unschedulable: bool, note: str | None) -> None:
        body = {"spec": {"unschedulable": unschedulable},
                "metadata": {"annotations": {CORDON_ANNOTATION: note}}}  # fmt: skip
        await _call(f"patching node {node}",
                    self._core.patch_node(node, body, _request_timeout=_TIMEOUT_S))  # fmt: skip

    async def cordon(self, node: str, why: str) -> None:
        """Mark ``node`` unschedulable, noting that idlecloud did and why."""
        await self._patch(node, True, why)

    async def uncordon(self, node: str) -> None:
        """Mark ``node`` schedulable again and drop idlecloud's note."""
        await self._patch(node, False, None)

    async def evict(self, pod: KubePod) -> bool:
        """Evict through the Eviction API; False if a PodDisruptionBudget refused (429)."""
        body = client.V1Eviction(
            api_version="policy/v1", kind="Eviction",
            metadata=client.V1ObjectMeta(name=pod.name, namespace=pod.namespace),
        )  # fmt: skip
        try:
            await _call(f"evicting {pod.namespace}/{pod.name}",
                        self._core.create_namespaced_pod_eviction(
                            pod.name, pod.namespace, body, _request_timeout=_TIMEOUT_S),
                        passing=frozenset({404, 429}))  # fmt: skip
        except ApiException as error:
            return error.status == 404  # 404: gone already; 429: a budget refused, for now
        return True

    async def close(self) -> None:
        """Release the connection."""
        await self._api.close()
