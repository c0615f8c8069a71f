"""Mesh settings: the limits that bound what a peer (even a member) can make this device hold or do.

One value object handed to the mesh by whoever assembles it (the agent reads it from its config; a
Home Assistant client can use the defaults). The mesh never reads configuration itself. Every limit
is here, named, documented and validated, like python-tuf's UpdaterConfig: the endpoint's in
`MeshLimits`, direct links' in `DirectLimits` (carried in `MeshLimits.direct`, so a node's limits
reach its links), sessions' in `SessionLimits` (`MeshLimits.sessions`).
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.sync.limits import MIN_FRAME_BYTES


class DirectLimits(BaseModel):
    """What bounds direct links (`mesh.direct`): every limit a member, or anyone on the LAN who can
    open a TCP connection, meets before and after the handshake. Defaults: a household's few links."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_header_bytes: int = Field(default=4096, ge=256, le=1 << 20)
    """Largest frame header (JSON) read from a link; a longer one ends it as hostile."""
    handshake_s: float = Field(default=3.0, gt=0, le=120)
    """TCP connect (client), TLS handshake, challenge and hello: all of it, on either side."""
    idle_s: float = Field(default=120.0, gt=0, le=3600)
    """A served link with no ask for this long is closed."""
    max_served_links: int = Field(default=16, ge=1, le=1024)
    """Authenticated links this device serves at once."""
    max_links_per_device: int = Field(default=2, ge=1, le=64)
    """... of them from one member."""
    max_pending: int = Field(default=32, ge=1, le=4096)
    """Connections not authenticated yet (TLS handshake, challenge, hello), from anyone together; past
    it a new connection is closed at once (one descriptor per slot, never more)."""
    max_pending_per_source: int = Field(default=4, ge=1, le=4096)
    """... and from one source address (IPv6: one /64), so one LAN host cannot take every slot."""
    min_port: int = Field(default=1024, ge=1, le=65535)
    """Contacts on lower ports (ssh, http, a router's admin page) are never tried."""
    unreachable_s: float = Field(default=60.0, gt=0, le=86400)
    """After a failed connection, the broker path is used for this long before trying directly again;
    doubled for each failure in a row, up to ``max_unreachable_s``."""
    max_unreachable_s: float = Field(default=3600.0, gt=0, le=86400)
    max_unreachable_peers: int = Field(default=1024, ge=1, le=65536)
    """Holders remembered as unreachable; past it the memory starts afresh."""
    accept_retry_s: float = Field(default=1.0, gt=0, le=60)
    """After accept() fails for lack of descriptors or buffers, wait this long (as asyncio's servers do)."""


class SessionLimits(BaseModel):
    """Forward-secret sessions (envelope v2, `mesh.sessions`): when keys change, and what bounds the
    handshakes a member can make this device do. Defaults as WireGuard's: rekey after two minutes,
    refuse a session's keys after three."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    """Speak v2 (announced in presence); off, this device behaves as a v1 device (mixed households)."""
    handshake_s: float = Field(default=3.0, gt=0, le=60)
    """A handshake not finished within this is abandoned (the send fails; the peer is not answering)."""
    rekey_after_s: float = Field(default=120.0, ge=1, le=86400)
    """A session this old is replaced by a fresh handshake at the next send."""
    reject_after_s: float = Field(default=180.0, ge=1, le=86400)
    """... and its keys are forgotten this long after it was made: nothing sealed with them opens
    afterwards, here or anywhere (the point of forward secrecy). At least ``rekey_after_s``."""
    rekey_after_messages: int = Field(default=1 << 24, ge=16, le=1 << 48)
    """Frames sent on one session before a new handshake (AEAD keys are never worn out)."""
    max_sessions_per_peer: int = Field(default=3, ge=2, le=16)
    """Sessions kept per run of a member: the current one, its predecessor during a rekey, one made by
    both sides at once; the oldest goes first."""
    max_runs_per_peer: int = Field(default=4, ge=1, le=64)
    """Runs of one member held at once (its agent, a one-shot `hearth` command, Home Assistant share
    its device id); past it, the run used least recently is forgotten."""
    max_pending: int = Field(default=64, ge=1, le=4096)
    """Handshakes half done (either side), from everyone together; past it the oldest is dropped."""
    max_pending_per_peer: int = Field(default=2, ge=1, le=64)
    """... and answered for one member, so a member cannot make this device hold many."""

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.reject_after_s < self.rekey_after_s:
            raise ValueError("reject_after_s must be at least rekey_after_s")
        return self


class CoapSettings(BaseModel):
    """The CoAP transport (`mesh.transports.coap`): where this device answers, how it finds members
    without a broker, and what bounds what strangers on the LAN can make it do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: str = Field(default="::", pattern=r"^[0-9A-Fa-f.:]+$", max_length=45)
    """Address to serve on (an IP literal; ``::`` is every interface, which multicast needs)."""
    port: int = Field(default=5683, ge=0, le=65535)
    """UDP port (5683 is CoAP's; 0 picks a free one, for a one-shot client)."""
    advertise: list[Annotated[str, Field(pattern=r"^[0-9A-Fa-f.:]+$", max_length=45)]] = Field(
        default_factory=list, max_length=4
    )
    """The hosts this device's presence names for CoAP (the port is the bound one)."""
    seeds: list[tuple[str, int]] = Field(default_factory=list, max_length=64)
    """Addresses to fetch presence from at start, besides what discovery finds (a LAN without multicast)."""
    multicast_interfaces: list[Annotated[str, Field(max_length=15)]] = Field(
        default_factory=list, max_length=8
    )
    """Interfaces to join All-CoAP-Nodes on (multicast discovery and hellos; empty: none)."""
    peer_port: int = Field(default=5683, ge=1, le=65535)
    """The port members' agents answer on: multicast probes and group hellos go there."""
    zeroconf: bool = False
    """Advertise this endpoint and browse for members' over mDNS (``_hearth-coap._udp``)."""
    probe_s: float = Field(default=1.0, gt=0, le=30)
    """How long a multicast probe collects answers."""
    rediscover_s: float = Field(default=60.0, gt=0, le=3600)
    """Between discovery rounds (members that joined while no hello reached this device)."""
    request_timeout_s: float = Field(default=5.0, gt=0, le=120)
    """A frame, message or fetch not answered within this has failed (the next path is tried)."""
    hello_timeout_s: float = Field(default=1.0, gt=0, le=60)
    """A hello's answer, or a member's presence the transport waits for, within this."""
    fetch_timeout_s: float = Field(default=2.0, gt=0, le=60)
    """Each block of a presence fetch within this (a lost one is resent meanwhile)."""
    max_inbox: int = Field(default=256, ge=8, le=65536)
    """Frames and adverts received and not read yet; past it a frame is answered 5.03."""
    max_fetches: int = Field(default=8, ge=1, le=256)
    """Presence fetches under way at once (one per source address)."""
    min_fetch_interval_s: float = Field(default=0.5, ge=0, le=60)
    """Hellos from one address within this of its last fetch are ignored."""
    max_devices: int = Field(default=1024, ge=1, le=65536)
    """Members whose CoAP address is remembered."""


class MeshLimits(BaseModel):
    """Attacker-bounding limits. Defaults suit a household of a few dozen devices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_frame_bytes: int = Field(default=1 << 20, ge=MIN_FRAME_BYTES, le=16 << 20)
    """Largest envelope accepted or sent; bigger frames are dropped before any parsing. At least what
    the largest model-update message needs (sync.limits), so every valid manifest travels."""
    max_concurrent_requests: int = Field(default=8, ge=1, le=256)
    """Requests this device serves at once, from everyone together."""
    max_requests_per_requester: int = Field(default=4, ge=1, le=256)
    """Requests one requester may have in service at once, so it cannot take every slot."""
    max_reorder_chunks: int = Field(default=256, ge=1, le=65536)
    """Out-of-order chunks buffered per stream before the stream is declared broken."""
    max_reorder_bytes: int = Field(default=2 << 20, ge=4096, le=256 << 20)
    """Bytes of out-of-order chunks buffered per stream before the stream is declared broken."""
    max_stream_queue: int = Field(default=1024, ge=16, le=65536)
    """Chunks waiting for a slow consumer per stream; past it the stream fails instead of growing."""
    max_chunk_text_chars: int = Field(default=16_384, ge=64, le=1 << 20)
    """Text one stream chunk may carry."""
    min_stall_ms: int = Field(default=500, ge=50, le=60_000)
    """Floor for a requester's stall timeout, so its keepalive demands cannot become a storm."""
    max_deadline_s: float = Field(default=600.0, gt=0, le=3600)
    """Longest a peer may ask this device to work on one request."""
    max_presence_interval_s: float = Field(default=60.0, gt=0, le=600)
    """A peer's advert counts as alive for at most 3 of these, whatever interval it declares."""
    max_peers: int = Field(default=256, ge=1, le=4096)
    """Peers tracked at once (the household is bounded by its certificates anyway)."""
    max_pending_pings: int = Field(default=64, ge=1, le=4096)
    """Outstanding pings and memory queries tracked at once."""
    direct: DirectLimits = Field(default_factory=DirectLimits)
    """Direct links' bounds (`[mesh.limits.direct]`): their server's slots, handshake time, frames."""
    sessions: SessionLimits = Field(default_factory=SessionLimits)
    """Forward-secret sessions (`[mesh.limits.sessions]`): rekeying, handshake bounds, on or off."""


class MeshSettings(BaseModel):
    """How the endpoint behaves, plus its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    presence_interval_s: float = Field(default=5.0, gt=0, le=600)
    """How often this device re-announces itself (and its queue depth, free RAM)."""
    reconnect_max_s: float = Field(default=5.0, gt=0, le=300)
    """Longest wait between reconnection attempts (exponential backoff from 0.1 s)."""
    coalesce_ms: float = Field(default=4.0, ge=0, le=100)
    """Stream tokens produced within this window travel in one chunk (fewer, padded frames)."""
    pad_bucket_bytes: int = Field(default=256, ge=1, le=65536)
    """Payloads are padded to a multiple of this (and to powers of two above it) so frame sizes say
    little about token lengths; 1 turns padding off."""
    departure_check_s: float = Field(default=1.5, gt=0, le=60)
    """An unsigned 'gone' hint from the transport is confirmed by pinging the peer for this long."""
    limits: MeshLimits = Field(default_factory=MeshLimits)


def broker_host_port(url: str) -> tuple[str, int]:
    """Host and port of an ``mqtt://`` or ``mqtts://`` broker URL (default ports 1883 and 8883)."""
    rest = url.split("://", 1)[1].rstrip("/")
    if rest.startswith("["):  # an IPv6 literal: mqtt://[fd00::1]:1883
        host, _, port = rest[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = rest.partition(":")
    return host, int(port) if port else (8883 if url.startswith("mqtts") else 1883)
