"""What a CoAP request must pass before a Hearth resource acts on it.

aiocoap's OSCORE wrapper unprotects what is protected and hands everything else to the site unchanged;
it authorises nothing. Here an unprotected request reaches only the public paths (discovery and the
session handshake, which carry their own proofs) and never with a Block1 body (reassembly would buffer
a stranger's bytes); a protected one is only as good as its peer's membership *now*, which each
resource checks through `member_of` (revocation and expiry apply from the next request on).
"""

from __future__ import annotations

from collections.abc import Iterable

from aiocoap import Code, error, interfaces
from aiocoap.credentials import CredentialsMap
from aiocoap.oscore_sitewrapper import OscoreSiteWrapper
from aiocoap.transports.oscore import OSCOREAddress

from edge_agent.errors import NotAMemberError
from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.transports.coap.oscore import MemoryContext

__all__ = ["MemberSite", "member_of"]

Route = tuple[Code, tuple[str, ...]]


class MemberSite(OscoreSiteWrapper):  # type: ignore[misc]
    """A site behind OSCORE whose only unprotected ``public`` routes are (method, path) pairs."""

    def __init__(self, site: interfaces.Resource, contexts: CredentialsMap, public: Iterable[Route]) -> None:
        super().__init__(site, contexts)
        self.public = frozenset(public)

    async def render_to_pipe(self, pipe: interfaces.Pipe) -> None:
        request = pipe.request
        if request.opt.oscore is None:
            if (request.code, tuple(request.opt.uri_path)) not in self.public:
                raise error.Unauthorized("OSCORE required")
            if request.opt.block1 is not None:
                raise error.Unauthorized("no block-wise body without OSCORE")
        await super().render_to_pipe(pipe)


def member_of(request: object, membership: Membership) -> DeviceCertificate:
    """The member whose session keys protected ``request``, checked now; raises aiocoap's Unauthorized
    (not protected by a Hearth session) or Forbidden (no longer a member), which answer 4.01 / 4.03."""
    remote = getattr(request, "remote", None)
    context = remote.security_context if isinstance(remote, OSCOREAddress) else None
    if not isinstance(context, MemoryContext):
        raise error.Unauthorized("OSCORE with a Hearth session required")
    try:
        return membership.member(context.peer)
    except NotAMemberError as exc:
        raise error.Forbidden(str(exc)) from None
