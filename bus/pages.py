"""Lists longer than one message may carry, asked for page by page and put back together.

A reply is one message, and a message body over 1 MiB is refused (:data:`bus.codec.
MAX_BODY_BYTES`): at about 330 bytes a PC, one reply could list 3,150 PCs. Asked
:data:`NODES_PAGE` at a time, the list has no such bound.
"""

from __future__ import annotations

from bus.rpc import RpcClient
from schemas import NodesQuery, NodesReply, NodeView

__all__ = ["NODES_PAGE", "every_node"]

#: PCs asked for per page: about a third of the body limit.
NODES_PAGE = 1000


async def every_node(client: RpcClient, *, timeout_s: float = 15.0) -> NodesReply:
    """Every PC the platform knows, by name, as one reply made of its pages (``at``: the
    last page's).

    Raises:
        RpcTimeout: a page did not come within ``timeout_s``.
        Unroutable: no placement service answers.
    """
    views: list[NodeView] = []
    after: str | None = None
    while True:
        page = await client.call(
            NodesQuery(after=after, limit=NODES_PAGE), NodesReply, timeout_s=timeout_s
        )
        views.extend(page.nodes)
        if page.next_after is None:
            # Put together, not validated again: a page's bound is not the whole list's.
            return page.model_copy(update={"nodes": tuple(views)})
        after = page.next_after
