"""What an unprotected CoAP request may reach.

Protected requests never get here: the message lane (`lane`) takes every request that carries an OSCORE
option before aiocoap parses it. What is left reaches only the public routes (discovery and the session
handshake, which carry their own proofs) and never with a Block1 body (reassembly would buffer a
stranger's bytes); anything else is answered 4.01 *OSCORE required*.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiocoap import Code, error, interfaces

__all__ = ["PublicSite", "Route"]

Route = tuple[Code, tuple[str, ...]]


class PublicSite(interfaces.Resource):  # type: ignore[misc]
    """``site`` with only its ``public`` (method, path) pairs reachable without OSCORE."""

    def __init__(self, site: interfaces.Resource, public: Iterable[Route]) -> None:
        self.site = site
        self.public = frozenset(public)

    async def needs_blockwise_assembly(self, request: object) -> bool:
        return bool(await self.site.needs_blockwise_assembly(request))

    async def render(self, request: object) -> object:
        return await self.site.render(request)

    async def render_to_pipe(self, pipe: interfaces.Pipe) -> None:
        request = pipe.request
        if (request.code, tuple(request.opt.uri_path)) not in self.public:
            raise error.Unauthorized("OSCORE required")
        if request.opt.block1 is not None:
            raise error.Unauthorized("no block-wise body without OSCORE")
        await self.site.render_to_pipe(pipe)
