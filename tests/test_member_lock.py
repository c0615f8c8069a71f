"""A `MeshMember` (Home Assistant's, or any engine-less member) holds its state directory like the agent
does (issue 21, still open from the last review): a second member, Home Assistant or `hearth` process on
the same directory is refused before it touches the message counters, and the first keeps serving."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.rigs.brokers import Mosquitto, run_mosquitto
from benchmarks.rigs.meshkit import provision
from edge_agent.errors import HearthError, StateInUseError
from edge_agent.mesh.files import StateLock
from edge_agent.mesh.member import MeshMember
from edge_agent.mesh.settings import MeshSettings
from edge_agent.mesh.state import HouseholdState

FAST = MeshSettings(presence_interval_s=0.2)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with run_mosquitto(tmp_path / "broker") as b:
        yield b


def households(tmp_path: Path) -> tuple[Path, Path]:
    hub, ha = tmp_path / "hub", tmp_path / "ha"
    provision(hub, hub, "hub", "hub")
    provision(hub, ha, "home-assistant", "hub")
    return hub, ha


def counters(home: Path) -> bytes:
    return (HouseholdState(home).counters_dir / "send-counter.json").read_bytes()


async def test_a_second_member_on_one_state_is_refused_and_the_first_keeps_serving(
    tmp_path: Path, broker: Mosquitto
) -> None:
    hub_home, ha_home = households(tmp_path)
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with MeshMember(hub_home, url, settings=FAST) as hub, MeshMember(ha_home, url, settings=FAST) as ha:
        ha_id = ha.certificate.device_id
        assert await hub.endpoint.wait_until(lambda: any(p.device_id == ha_id for p in hub.peers()), 10)
        before = counters(ha_home)
        message = (
            f"{ha_home} is in use by another Hearth process (another Home Assistant, or a `hearth` agent or "
            "command on this state): one process per membership, or both would reuse its message counters "
            "and peers would refuse them as replays"
        )
        with pytest.raises(StateInUseError, match=f"^{re.escape(message)}$"):
            MeshMember(ha_home, url, settings=FAST)
        assert counters(ha_home) == before  # refused before it reserved a single counter
        assert StateLock(ha_home).held_elsewhere()  # an agent or CLI on it is refused the same way
        # The first member keeps serving: its next presence is heard (a fresh one, after the refusal).
        seen = hub.endpoint.peers.get(ha_id)
        assert seen is not None
        last = seen.seen
        assert await hub.endpoint.wait_until(lambda: hub.endpoint.peers.get(ha_id).seen > last, 10)  # type: ignore[union-attr]
    async with MeshMember(ha_home, url, settings=FAST):  # closed: the state is free again
        pass


async def test_a_member_that_fails_to_open_gives_the_state_back(tmp_path: Path, broker: Mosquitto) -> None:
    _, ha_home = households(tmp_path)
    down = MeshMember(ha_home, "mqtt://127.0.0.1:9", connect_timeout_s=0.5)
    with pytest.raises(HearthError):
        await down.__aenter__()
    assert not StateLock(ha_home).held_elsewhere()
    await MeshMember(ha_home, f"mqtt://127.0.0.1:{broker.port}").close()  # never opened: close frees it too
    assert not StateLock(ha_home).held_elsewhere()


async def test_a_members_presence_carries_its_health(tmp_path: Path, broker: Mosquitto) -> None:
    """What Home Assistant's diagnostic sensors show for any device: restarts and drops of its loops."""
    hub_home, ha_home = households(tmp_path)
    url = f"mqtt://127.0.0.1:{broker.port}"
    async with MeshMember(hub_home, url, settings=FAST) as hub, MeshMember(ha_home, url, settings=FAST) as ha:
        ha.supervisor.drop("mesh-dispatch", "ValueError")
        ha_id = ha.certificate.device_id

        def dropped() -> int | None:
            peer = hub.endpoint.peers.get(ha_id)
            return None if peer is None or peer.presence.health is None else peer.presence.health.dropped

        assert await hub.endpoint.wait_until(lambda: dropped() == 1, 10)
        assert ha.presence().health is not None and ha.presence().health.restarts == 0  # type: ignore[union-attr]
