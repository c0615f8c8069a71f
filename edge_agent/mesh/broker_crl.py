"""The hub agent keeps the broker's short-lived CRL fresh and has Mosquitto reread it.

The broker CRL lives days (`broker_pki.CRL_LIFETIME`): Mosquitto (OpenSSL) refuses every client
certificate once the CRL it loaded has expired, and a revoked device must not stay trusted by a
broker that missed a reload. So the hub agent checks every `CHECK_EVERY_S`, signs a new CRL when the
current one is due (`BrokerPki.crl_due`: within `CRL_RENEW_BEFORE` of expiry, missing or unreadable),
and reloads the Mosquitto processes started on a config `hearth broker config` wrote. A reload that
fails (no such process, not permitted) is counted in the agent's health (`hearth peers`) and logged
with the command to run; the check repeats, so it is retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from edge_agent.errors import HearthError
from edge_agent.mesh.broker_pki import BrokerPki, ReloadResult
from edge_agent.supervision import Supervisor

log = logging.getLogger(__name__)

__all__ = ["CHECK_EVERY_S", "CrlKeeper", "NotReloadedError"]

CHECK_EVERY_S = 3600.0
LOOP = "broker-crl"


class NotReloadedError(HearthError):
    """A new CRL was signed but no Mosquitto could be told to reread it."""


class CrlKeeper:
    """Renews the broker CRL of the hub in ``state_dir`` before it expires (a hub with the CA only)."""

    def __init__(
        self,
        state_dir: Path,
        revoked: Callable[[], Iterable[str]],
        *,
        supervisor: Supervisor | None = None,
        check_every_s: float = CHECK_EVERY_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pki = BrokerPki(state_dir)
        self.revoked = revoked
        """The household's revoked device ids, read fresh at each renewal."""
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.check_every_s = check_every_s
        self.clock = clock
        self.renewals = 0

    def check(self) -> ReloadResult | None:
        """Renew now if due; the reload's outcome, or None when nothing was due. Blocking (file IO)."""
        if not self.pki.has_ca() or not self.pki.crl_due(self.clock()):
            return None
        listed = self.pki.write_crl(self.revoked(), now=self.clock())
        self.renewals += 1
        result = self.pki.reload_brokers()
        if result.failed or not result.reloaded:
            error = NotReloadedError(f"signed a new broker CRL ({listed} revoked), but {result.describe()}")
            self.supervisor.drop(LOOP, "not reloaded", error, "the broker keeps its old CRL until reloaded")
        else:
            log.info("broker CRL renewed (%d revoked); %s", listed, result.describe())
        return result

    async def run(self) -> None:
        """Check now and then every ``check_every_s``, supervised, until cancelled."""
        await self.supervisor.supervise(LOOP, self._loop)

    async def _loop(self) -> None:
        while True:
            await asyncio.to_thread(self.check)
            await asyncio.sleep(self.check_every_s)
