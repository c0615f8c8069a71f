"""Group-key rotation: after a revocation the hub seals the new household key to each remaining member.

Only admin certificates (the hub) may send a `GroupKey`; a member still broadcasting with an old epoch
is rekeyed (at most every few seconds each). Pairwise sealing means a revoked device cannot read it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from edge_agent.mesh.envelope import Opened
from edge_agent.mesh.features.port import FeaturePort
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Channel
from edge_agent.mesh.protocol import GroupKey

log = logging.getLogger(__name__)


class GroupKeyRotation:
    def __init__(
        self,
        endpoint: FeaturePort,
        on_adopted: Callable[[bytes, int], None] | None = None,
        *,
        min_rekey_interval_s: float = 5.0,
    ) -> None:
        self.endpoint = endpoint
        self.on_adopted = on_adopted
        """Called after adopting a new group key from the hub, to persist it."""
        self.min_rekey_interval_s = min_rekey_interval_s
        self._rekeyed: dict[str, float] = {}
        endpoint.register(GroupKey, self._adopt)
        self.unwatch = endpoint.watch_presence(self._watch_epoch)

    def _adopt(self, sender: DeviceCertificate, msg: GroupKey) -> None:
        node = self.endpoint.node
        if not sender.admin:
            node.dropped["Forbidden"] += 1
            log.warning("dropped a group key from %s: only the hub may rotate it", sender.name)
            return
        key = bytes.fromhex(msg.key)
        if node.use_group_key(key, msg.epoch):
            log.info("household group key rotated to epoch %d by %s", msg.epoch, sender.name)
            if self.on_adopted is not None:
                self.on_adopted(key, msg.epoch)

    def _watch_epoch(self, advert: Opened) -> None:
        if advert.header.epoch < self.endpoint.node.group_epoch:
            self._rekey(advert.sender)

    def _rekey(self, member: DeviceCertificate) -> None:
        """A member still seals broadcasts with an old group key: the hub sends it the current one."""
        node = self.endpoint.node
        own = node.membership.certs.get(node.device_id)
        if own is None or not own.admin or member.device_id == node.device_id:
            return
        now = time.monotonic()
        if now - self._rekeyed.get(member.device_id, -self.min_rekey_interval_s) < self.min_rekey_interval_s:
            return
        if len(self._rekeyed) > 4 * self.endpoint.limits.max_peers:
            self._rekeyed.clear()
        self._rekeyed[member.device_id] = now
        self._send_key(member)

    def _send_key(self, member: DeviceCertificate) -> None:
        session = self.endpoint.session_of(member.device_id)
        if session is None:
            return  # not heard yet: its first stale-epoch advert triggers the rekey
        node = self.endpoint.node
        key = GroupKey(epoch=node.group_epoch, key=node.group_key.hex())
        self.endpoint.send_soon(member.device_id, Channel.REQUESTS, key, session=session)

    def distribute(self) -> None:
        """After a revocation: seal the new group key to every live member still in the household."""
        members = self.endpoint.node.membership
        for device_id, cert in list(members.certs.items()):
            if device_id not in members.revoked and device_id != self.endpoint.device_id:
                self._send_key(cert)
