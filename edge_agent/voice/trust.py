"""Who may transcribe speech that becomes a command.

A voice command's transcript *is* the command: Home Assistant's Assist (through the Wyoming server) and
`hearth listen --ha` act on whatever text comes back. A member approved to serve ``transcribe`` (for
dictation, say) would otherwise choose what Home Assistant runs ("unlock the front door"), whatever was
said. So speech meant for actions is transcribed only where ``[voice] actions_transcribe`` allows:

- ``"local"``: on this device only;
- ``"trusted"`` (default): this device, hub-class devices (their class is certified by the household root,
  which the hub already holds, so trusting them adds no one) and the devices in ``trusted_transcribers``;
- ``"any"``: every device [routing] allows (the behaviour before this policy).

Routing enforces it where this process routes (the Wyoming server, `hearth listen --ha` without a running
agent): untrusted devices are never asked, so a trusted one is used even when an untrusted one is faster.
Where a running agent routes for us (`hearth listen` through its local socket), the transcript's origin
(``served_by``) is checked afterwards instead, and an untrusted one needs the user's own confirmation.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from edge_agent.errors import HearthError, NoRouteError
from edge_agent.voice.settings import ActionsMode

if TYPE_CHECKING:
    from edge_agent.client.schemas import TranscribeRequest, TranscribeResult
    from edge_agent.mesh.interfaces import PeerDirectory
    from edge_agent.mesh.peers import Peer
    from edge_agent.mesh.protocol import Chunk
    from edge_agent.router import Router
    from edge_agent.tasks import Task
    from edge_agent.voice.pipeline import TranscribeWindow
    from edge_agent.voice.settings import VoiceSettings
    from edge_agent.voice.transcript import TranscriptPiece

log = logging.getLogger(__name__)

__all__ = ["ActionTranscriber", "ActionTrust", "UntrustedTranscriptError"]

LOCAL_SUFFIX = " (local)"
"""How the router names this device in ``served_by`` ("<name> (local)")."""


class UntrustedTranscriptError(HearthError):
    """A command's transcript came from a device not trusted to transcribe commands."""

    exit_code = 2


class PeerLike(Protocol):
    """A peer as `hearth peers` reports it (a live `Peer` has the same three)."""

    @property
    def name(self) -> str: ...

    @property
    def device_id(self) -> str: ...

    @property
    def device_class(self) -> str: ...


@dataclass(frozen=True)
class ActionTrust:
    """``[voice] actions_transcribe`` and ``trusted_transcribers``, as a decision per device."""

    mode: ActionsMode = "trusted"
    trusted: frozenset[str] = frozenset()
    """Device ids (32 hex) and certified names."""

    @classmethod
    def for_voice(cls, voice: VoiceSettings) -> ActionTrust:
        """From the voice settings (``[voice] actions_transcribe`` and ``trusted_transcribers``)."""
        return cls(voice.actions_transcribe, voice.trusted_transcribers)

    def trusts(self, peer: PeerLike) -> bool:
        """Whether ``peer`` (another device) may transcribe a command for this one."""
        if self.mode == "any":
            return True
        if self.mode == "local":
            return False
        return peer.device_class == "hub" or peer.device_id in self.trusted or peer.name in self.trusted

    def describe(self) -> str:
        if self.mode == "local":
            return '[voice] actions_transcribe = "local": this device only'
        if self.mode == "trusted":
            return (
                '[voice] actions_transcribe = "trusted": this device, hub-class devices and '
                "[voice] trusted_transcribers"
            )
        return '[voice] actions_transcribe = "any"'

    def untrusted(
        self, pieces: Iterable[TranscriptPiece], local_name: str, peers: Sequence[PeerLike]
    ) -> list[str]:
        """The devices among the pieces' ``served_by`` not trusted for commands (a name several peers
        share is trusted only if each of them is; a name no live peer has is not trusted)."""
        out: list[str] = []
        for by in dict.fromkeys(p.served_by for p in pieces if p.served_by):
            if by == f"{local_name}{LOCAL_SUFFIX}" or self.mode == "any":
                continue
            named = [p for p in peers if p.name == by]
            if not named or not all(self.trusts(p) for p in named):
                out.append(by)
        return out

    def check(self, pieces: Sequence[TranscriptPiece], local_name: str, peers: Sequence[PeerLike]) -> None:
        """Raise UntrustedTranscriptError if a device not trusted for commands transcribed any piece."""
        bad = self.untrusted(pieces, local_name, peers)
        if bad:
            raise UntrustedTranscriptError(
                f"the command was transcribed by {', '.join(repr(b) for b in bad)}, not trusted to "
                f"transcribe commands ({self.describe()}): not sent to Home Assistant"
            )


class _TrustedPeers:
    """A `PeerDirectory` that shows the router only the peers trusted to transcribe commands."""

    def __init__(self, inner: PeerDirectory, trust: ActionTrust) -> None:
        self.inner, self.trust = inner, trust

    def known(self) -> list[Peer]:
        return [p for p in self.inner.known() if self.trust.trusts(p)]

    def is_member(self, device_id: str) -> bool:
        return self.inner.is_member(device_id)

    def own_requests(self) -> list[Task]:
        return self.inner.own_requests()

    def ban(self, device_id: str, seconds: float) -> None:
        self.inner.ban(device_id, seconds)

    def succeeded(self, device_id: str, units: int = 0, seconds: float = 0.0) -> None:
        self.inner.succeeded(device_id, units, seconds)

    async def wait_peers_changed(self, timeout: float) -> bool:
        return await self.inner.wait_peers_changed(timeout)

    async def wait_connected(self, timeout: float) -> None:
        await self.inner.wait_connected(timeout)

    async def wait_for_presence(self, device_id: str, timeout: float, since: float | None = None) -> bool:
        return await self.inner.wait_for_presence(device_id, timeout, since)

    def stream(
        self, peer: Peer, task: Task, body: dict[str, Any], *, deadline_s: float, stall_s: float
    ) -> AsyncGenerator[Chunk, None]:
        return self.inner.stream(peer, task, body, deadline_s=deadline_s, stall_s=stall_s)


class ActionTranscriber:
    """A `TranscribeWindow` for speech that becomes a command: the router's choice among the devices
    trusted for it (see the module docstring). ``base`` is the agent's router as it is now (it changes
    when the mesh opens); ``plain`` its ordinary transcription, used where nothing leaves the device."""

    def __init__(self, trust: ActionTrust, base: Callable[[], Router], plain: TranscribeWindow) -> None:
        self.trust, self._base, self._plain = trust, base, plain
        self._derived: tuple[Router, Router] | None = None

    def _router(self, base: Router) -> Router:
        if self._derived is None or self._derived[0] is not base:
            from edge_agent.router import Router

            assert base.endpoint is not None
            policy = base.policy
            if self.trust.mode == "local":
                policy = policy.model_copy(update={"mode": "local-only"})
            derived = Router(plan=base.plan, policy=policy, local=base.local,
                             endpoint=_TrustedPeers(base.endpoint, self.trust),
                             local_offers=base.local_offers, local_name=base.local_name)  # fmt: skip
            self._derived = (base, derived)
        return self._derived[1]

    async def __call__(self, request: TranscribeRequest) -> tuple[TranscribeResult, str]:
        base = self._base()
        if self.trust.mode == "any" or base.endpoint is None:  # nothing but this device, or no policy
            return await self._plain(request)
        from edge_agent.task_specs import TRANSCRIBE

        router = self._router(base)
        try:
            result, served_by = await router.call(TRANSCRIBE, request)
        except NoRouteError as exc:
            skipped = sorted(
                {p.name for p in base.endpoint.known() if p.offer("transcribe") and not self.trust.trusts(p)}
            )
            if not skipped:
                raise
            raise NoRouteError(
                f"{exc}; not trusted to transcribe commands ({self.trust.describe()}): {', '.join(skipped)}"
            ) from None
        if not served_by.endswith(LOCAL_SUFFIX):
            base.offloaded += 1  # announced in presence with the agent's other offloaded requests
        return result, served_by
