"""Policy "ask": a newer pack waits until a household controller approves it (Home Assistant's update
entity, a hub-class or admin member) or `hearth models pull` asks for it here. Approvals are kept
across restarts: per model, the highest sequence approved here."""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.protocol import UpdateApproval
from edge_agent.sync.manifest import UpdateManifest

__all__ = ["Approvals", "load_approved", "save_approved"]

log = logging.getLogger(__name__)

FILE_NAME = "approved.json"
MAX_APPROVED = 256
"""Models remembered as approved; past it only those this device runs are kept."""


class Approvals:
    def __init__(self, directory: Path, wanted_names: Callable[[], set[str]], dropped: Counter[str]) -> None:
        """``directory``: where approvals persist; ``wanted_names``: the models this device runs or
        holds; ``dropped``: where a refused approval is counted (the mesh's refusals)."""
        self.directory = directory
        self.wanted_names = wanted_names
        self.dropped = dropped
        self.awaiting: dict[str, int] = {}
        """Per model, the newest sequence found that waits for approval."""
        self.approved: dict[str, int] = load_approved(directory)
        """Per model, the highest sequence approved here."""

    def holds_back(self, manifest: UpdateManifest) -> bool:
        """True, noting it as awaited, unless ``manifest``'s sequence is approved here."""
        if manifest.sequence <= self.approved.get(manifest.name, 0):
            return False
        if manifest.sequence > self.awaiting.get(manifest.name, 0):
            log.info("%s sequence %d awaits approval", manifest.pack_id, manifest.sequence)
            self.awaiting[manifest.name] = manifest.sequence
        return True

    def heard(self, sender: DeviceCertificate, msg: UpdateApproval) -> bool:
        """A member approves an awaited sequence: only controllers may, and only what is awaited here.
        True when it approved something (a round should run now)."""
        if not (sender.admin or sender.device_class == "hub"):
            self.dropped["Forbidden"] += 1
            log.warning("dropped an update approval from %s: only a hub-class or admin member may approve",
                        sender.name)  # fmt: skip
            return False
        if self.awaiting.get(msg.name) != msg.sequence:
            log.info("ignored %s's approval of %s sequence %d: not awaiting it here", sender.name, msg.name,
                     msg.sequence)  # fmt: skip
            return False
        log.info("%s approved %s sequence %d", sender.name, msg.name, msg.sequence)
        self.approve(msg.name, msg.sequence)
        return True

    def approve(self, name: str, sequence: int) -> None:
        if sequence <= self.approved.get(name, 0):
            return
        self.approved[name] = sequence
        if len(self.approved) > MAX_APPROVED:  # bounded: keep the models this device runs
            wanted = self.wanted_names()
            self.approved = {n: s for n, s in self.approved.items() if n in wanted or n == name}
        save_approved(self.directory, self.approved)


def load_approved(directory: Path) -> dict[str, int]:
    """What was approved here; a missing or unreadable file starts afresh (never raises)."""
    path = directory / FILE_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s (%s): approvals start afresh", path, exc)
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and type(v) is int and v > 0}


def save_approved(directory: Path, approved: dict[str, int]) -> None:
    """Atomically; an approval that cannot be saved still holds until the agent restarts."""
    path = directory / FILE_NAME
    with contextlib.suppress(OSError):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(approved, sort_keys=True))
        tmp.replace(path)
