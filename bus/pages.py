"""Lists longer than one message may carry, asked for page by page and put back together.

A reply is one message, and a message body over 1 MiB is refused (:data:`bus.codec.
MAX_BODY_BYTES`): at about 330 bytes a PC, one reply could list 3,150 PCs, and at about
100 bytes a replica, one app of 10,000 replicas did not fit. Asked :data:`NODES_PAGE` PCs
or :data:`APPS_PAGE` rows (an app, or one of its replicas) at a time, lists have no such
bound.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

from bus.rpc import RpcClient
from schemas import AppsQuery, AppsReply, AppView, NodesQuery, NodesReply, NodeView

__all__ = ["APPS_PAGE", "NODES_PAGE", "every_app", "every_node"]

#: PCs asked for per page: about a third of the body limit.
NODES_PAGE = 1000
#: Apps and replicas asked for per page: about a fifth of the body limit.
APPS_PAGE = 2000


class _Page(Protocol):
    @property
    def next_after(self) -> str | None: ...


P = TypeVar("P", bound=_Page)


async def _pages(ask: Callable[[str | None], Awaitable[P]]) -> AsyncIterator[P]:
    """Every page, asking for each after the last one's ``next_after``."""
    after: str | None = None
    while True:
        page = await ask(after)
        yield page
        if page.next_after is None:
            return
        after = page.next_after


async def every_node(client: RpcClient, *, timeout_s: float = 15.0) -> NodesReply:
    """Every PC the platform knows, by name, as one reply made of its pages (``at``: the
    last page's).

    Raises:
        RpcTimeout: a page did not come within ``timeout_s``.
        Unroutable: no placement service answers.
    """
    views: list[NodeView] = []
    async for page in _pages(lambda after: client.call(
        NodesQuery(after=after, limit=NODES_PAGE), NodesReply, timeout_s=timeout_s
    )):  # fmt: skip
        views.extend(page.nodes)
    # Put together, not validated again: a page's bound is not the whole list's.
    return page.model_copy(update={"nodes": tuple(views)})


async def every_app(
    ask: Callable[[AppsQuery], Awaitable[AppsReply]], namespace: str, app: str | None = None
) -> AppsReply:
    """A namespace's apps (or one), with every replica, as one reply made of its pages (the
    namespace's figures: the last page's; an app's: the page that first listed it).

    Args:
        ask: sends a question and returns its answer (an RPC client's ``call``, or the
            gateway's on its caller's connection).
        namespace: whose apps.
        app: only this one.

    Raises:
        BusError: what ``ask`` raises (no answer in time, no placement service).
    """
    views: list[AppView] = []
    async for page in _pages(lambda after: ask(
        AppsQuery(namespace=namespace, app=app, after=after, limit=APPS_PAGE)
    )):  # fmt: skip
        for view in page.apps:
            if views and views[-1].app == view.app:  # its replicas go on from the last page
                replicas = (*views[-1].replicas, *view.replicas)
                views[-1] = views[-1].model_copy(update={"replicas": replicas})
            else:
                views.append(view)
    return page.model_copy(update={"apps": tuple(views)})
