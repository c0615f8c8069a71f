"""Requests, streams and pings over direct links (real TLS 1.3 on loopback between in-memory-mesh
endpoints): taken when a link is up or the peer's contact may be tried, with the broker as the fallback
that always works. A link that closes or goes silent mid-stream fails the stream with PathDownError
(the router resumes through the broker at once), and the next request goes through the broker until
the back-off ends. Every bound of the broker path holds on the link: padding, the member check, the
frame size, the message layer's checks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.errors import DirectLinkError, PathDownError, RecipientNotMemberError
from edge_agent.mesh.direct import Ask, DirectLinks
from edge_agent.mesh.direct.frames import MAX_MESSAGE_BYTES, Answer, Hostile, Message, read_frame_or_message
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import Chunk, Pong, padded_size
from edge_agent.mesh.sessions import kind_of
from edge_agent.mesh.settings import DirectLimits
from tests.support.meshsim import GATES, Device, SimHousehold, household, until


async def _nothing(requester: str, ask: Ask) -> bytes:
    raise DirectLinkError("not held")


@contextlib.asynccontextmanager
async def linked(dev: Device, limits: DirectLimits | None = None) -> AsyncIterator[DirectLinks]:
    """``dev``'s direct links on loopback, announced in its presence and carrying its messages."""
    async with DirectLinks(dev.node, _nothing, host="127.0.0.1", limits=limits) as links:
        stop = dev.endpoint.carry(links)
        dev.direct = links.contact
        try:
            yield links
        finally:
            stop()


async def _heard_contacts(home: SimHousehold) -> None:
    def heard() -> bool:
        return all(
            (peer := d.endpoint.peers.get(o.id)) is not None and peer.presence.direct == o.direct
            for d in home.devices.values()
            for o in home.devices.values()
            if o is not d
        )

    assert await until(heard)


def _stream(dev: Device, peer: Device, words: list[str], **body: object) -> AsyncIterator[Chunk]:
    found = dev.endpoint.peers.get(peer.id)
    assert found is not None
    return dev.endpoint.stream(found, "generate", {"words": words, **body}, deadline_s=5, stall_s=1)


def _broker_frames(home: SimHousehold, *devices: Device) -> list[bytes]:
    """Frames the broker carried to the inboxes of ``devices`` (presence aside)."""
    return [
        f
        for a, f in home.sim.wiretap.frames
        if "/presence/" not in a and any(a.endswith(d.id) for d in devices) and kind_of(f) != 3
    ]


async def test_requests_and_streams_take_the_link_and_the_broker_sees_none_of_them(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", serves=["generate"]), home.device("fridge")
        await home.start(hub, fridge)
        async with linked(hub), linked(fridge) as fridge_links:
            await _heard_contacts(home)
            home.sim.wiretap.frames.clear()
            chunks = [c async for c in _stream(fridge, hub, ["one", "two", "three"])]
            assert [c.text for c in chunks] == ["one", "two", "three", ""]
            assert _broker_frames(home, hub, fridge) == []
            assert hub.id in fridge_links.links  # the fridge made the link, the answers came back on it
            fridge_peer = fridge.endpoint.peers.get(hub.id)
            assert fridge_peer is not None
            assert await fridge.endpoint.ping(fridge_peer) is not None
            assert _broker_frames(home, hub, fridge) == []
            # What `hearth peers` shows for it: the direct path, on forward-secret sessions.
            assert (fridge.endpoint.path_to(hub.id), fridge.endpoint.envelope_to(hub.id)) == ("direct", 2)
        # Without links, the broker (still forward-secret).
        assert (fridge.endpoint.path_to(hub.id), fridge.endpoint.envelope_to(hub.id)) == ("broker", 2)


async def test_messages_on_a_link_are_padded_and_checked_as_on_the_broker(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", serves=["generate"]), home.device("fridge")
        await home.start(hub, fridge)
        sizes: list[int] = []
        async with linked(hub) as hub_links, linked(fridge):
            await _heard_contacts(home)
            carried = hub_links.client.events
            assert carried is not None

            class Counting:
                def message(self, device_id: str, channel: Channel, payload: bytes) -> None:
                    sizes.append(len(payload))
                    carried.message(device_id, channel, payload)

                def link_down(self, device_id: str) -> None:
                    carried.link_down(device_id)

            hub_links.carry(Counting())
            chunks = [c async for c in _stream(fridge, hub, ["a" * n for n in (1, 7, 300)])]
            assert [len(c.text) for c in chunks] == [1, 7, 300, 0]
            bucket = hub.endpoint.settings.pad_bucket_bytes
            assert sizes and all(s == padded_size(s, bucket) for s in sizes)
            # A message longer than this device's frame limit ends the link before a byte of it is read.
            link = fridge.endpoint.exchanges.paths[0]
            assert isinstance(link, DirectLinks)
            writer = link.links[hub.id].writer
            writer.write(Message(Channel.REQUESTS, hub.node.limits.max_frame_bytes + 1).prefix())
            assert await until(lambda: hub.node.dropped["DirectLinkRefused"] == 1)
            assert await until(lambda: hub.id not in link.links or link.links[hub.id].closed)
            # ... and the hub still serves, over a new link.
            chunks = [c async for c in _stream(fridge, hub, ["again"])]
            assert [c.text for c in chunks] == ["again", ""]


async def test_a_link_that_closes_mid_stream_fails_the_stream_for_a_resume(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", serves=["generate"]), home.device("fridge")
        await home.start(hub, fridge)
        async with linked(hub) as hub_links, linked(fridge):
            await _heard_contacts(home)
            GATES["held"] = asyncio.Queue()
            GATES["held"].put_nowait(None)
            stream = _stream(fridge, hub, ["a", "b"], gate="held")
            assert (await anext(stream)).text == "a"
            assert hub_links.server is not None
            hub_links.server.revoked(frozenset({fridge.id}))  # the hub's end of the link goes away
            with pytest.raises(PathDownError, match=r"the direct link to \w+ closed"):
                await anext(stream)
            await stream.aclose()
            # The hub stops the abandoned answer (its cancel came on a new link, or the broker).
            assert await until(lambda: hub.endpoint.queue_depth == 0)
            # The hub is fine: the next request makes a new link.
            home.sim.wiretap.frames.clear()
            chunks = [c async for c in _stream(fridge, hub, ["x"])]
            assert [c.text for c in chunks] == ["x", ""]


async def test_a_silent_link_is_given_up_on_and_the_next_request_goes_through_the_broker(
    tmp_path: Path,
) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", serves=["generate"]), home.device("fridge")
        await home.start(hub, fridge)
        async with linked(hub) as hub_links, linked(fridge) as fridge_links:
            await _heard_contacts(home)
            GATES["silent"] = asyncio.Queue()
            GATES["silent"].put_nowait(None)
            stream = _stream(fridge, hub, ["a", "b"], gate="silent")
            assert (await anext(stream)).text == "a"
            # From now on what the hub writes on the link goes nowhere (a pulled cable: no FIN, no RST,
            # not even its keepalives): the fridge's stall timer fires.
            assert hub_links.server is not None
            writer = hub_links.server.writer_to(fridge.id)
            assert writer is not None
            writer.write = lambda data: None  # type: ignore[method-assign]
            with pytest.raises(PathDownError, match=r"sent nothing on the direct link for 1 s"):
                await anext(stream)
            await stream.aclose()
            assert not fridge_links.carries(hub.id, hub.direct)  # backed off: the broker for a while
            home.sim.wiretap.frames.clear()
            chunks = [c async for c in _stream(fridge, hub, ["c"])]
            assert [c.text for c in chunks] == ["c", ""]
            assert _broker_frames(home, hub)


async def test_a_revoked_member_gets_nothing_on_a_link(tmp_path: Path) -> None:
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", serves=["generate"]), home.device("fridge")
        await home.start(hub, fridge)
        async with linked(hub) as hub_links, linked(fridge):
            await _heard_contacts(home)
            chunks = [c async for c in _stream(fridge, hub, ["a"])]
            assert chunks[-1].final
            assert hub_links.server is not None
            home.revoke(fridge)
            assert await until(lambda: all(d != fridge.id for d, _ in hub_links.server.served.values()))
            with pytest.raises(RecipientNotMemberError):
                await hub.endpoint.send(
                    fridge.id, Channel.RESPONSES, Pong(nonce=1), session=fridge.node.session
                )


async def test_answers_written_while_the_link_reads_the_next_message_all_arrive(tmp_path: Path) -> None:
    """Replies go out from their own tasks while the serving side is in the middle of reading another
    message (between its header and its bytes): each must still go out (the idle deadline is only
    moved while it runs)."""
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", serves=["generate"]), home.device("fridge")
        await home.start(hub, fridge)
        async with linked(hub), linked(fridge):
            await _heard_contacts(home)
            peer = fridge.endpoint.peers.get(hub.id)
            assert peer is not None
            home.sim.wiretap.frames.clear()
            for _ in range(5):
                rtts = await asyncio.gather(*(fridge.endpoint.ping(peer, timeout=5) for _ in range(60)))
                assert None not in rtts
            assert _broker_frames(home, hub, fridge) == []


async def test_an_idle_link_is_closed_and_one_that_answers_is_kept(tmp_path: Path) -> None:
    """The serving side closes a link nothing crossed for ``idle_s``; answers it sends count as
    activity (a long answer to a requester that sends nothing keeps its link)."""
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", serves=["generate"]), home.device("fridge")
        await home.start(hub, fridge)
        async with linked(hub, DirectLimits(idle_s=1.0)) as hub_links, linked(fridge) as fridge_links:
            await _heard_contacts(home)
            assert hub_links.server is not None
            GATES["slow"] = asyncio.Queue()
            stream = _stream(fridge, hub, ["a", "b", "c", "d"], gate="slow")
            words = []
            for _ in range(4):  # an answer that takes 4 x 0.3 s, more than idle_s: the link stays
                await asyncio.sleep(0.3)  # the slow answer under test, not a wait for something
                GATES["slow"].put_nowait(None)
                words.append((await anext(stream)).text)
            assert words == ["a", "b", "c", "d"]
            assert (await anext(stream)).final
            link = fridge_links.links[hub.id]
            assert not link.closed
            assert await until(lambda: link.closed)  # then nothing crosses it: closed
            assert hub_links.server.writer_to(fridge.id) is None


async def test_a_link_to_an_earlier_run_of_the_peer_is_not_used(tmp_path: Path) -> None:
    """A peer that restarted announces a new certificate: a link made to its old one (whose end may
    not have closed yet) is closed, not sent on."""
    async with household(tmp_path) as home:
        hub, fridge = home.device("hub", serves=["generate"]), home.device("fridge")
        await home.start(hub, fridge)
        async with linked(hub), linked(fridge) as fridge_links:
            await _heard_contacts(home)
            assert [c.text async for c in _stream(fridge, hub, ["a"])] == ["a", ""]
            old = fridge_links.links[hub.id]
            assert hub.direct is not None
            restarted = hub.direct.model_copy(update={"tls_sha256": "0" * 64})
            assert fridge_links.client.live(hub.id, hub.direct) is old  # the same run: used
            assert fridge_links.client.live(hub.id, restarted) is None
            assert old.closed


async def test_a_message_prefix_carries_channel_and_length_and_an_empty_one_ends_the_link() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(Message(Channel.RESPONSES, 5).prefix() + b"hello" + (1 << 31).to_bytes(4, "big"))
    assert await read_frame_or_message(reader, Answer, 4096) == Message(Channel.RESPONSES, 5)
    assert await reader.readexactly(5) == b"hello"
    with pytest.raises(Hostile, match="an empty message"):
        await read_frame_or_message(reader, Answer, 4096)
    for length in (0, MAX_MESSAGE_BYTES + 1):
        with pytest.raises(ValueError, match="a direct message is 1 to"):
            Message(Channel.REQUESTS, length).prefix()
