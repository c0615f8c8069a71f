"""Joining a household with a setup code: the device side of pairing, from an open link to a saved
membership. One implementation for every kind of member (`hearth pair`, the Home Assistant component).
"""

from __future__ import annotations

import asyncio

from edge_agent.mesh.broker_pki import BrokerPki, public_key_pem
from edge_agent.mesh.pairing import DevicePairing, Welcome, validate_code
from edge_agent.mesh.pairing_link import PairingLink, pair_with_hub
from edge_agent.mesh.state import HouseholdFile, HouseholdState
from edge_agent.tasks import Task

__all__ = ["join_household"]


async def join_household(
    link: PairingLink,
    state: HouseholdState,
    code: str,
    *,
    session: str,
    name: str,
    profile: str,
    requests: list[Task],
    serves: list[Task],
    timeout: float = 30.0,
) -> Welcome:
    """Pair over ``link`` (a pairing connection whose MQTT client id is ``session``) with the hub
    showing ``code``; save the membership (and the broker client certificate, if the hub issues one)
    in ``state``. Raises TimeoutError if no invitation answers, PairingError if the hub refuses."""
    validate_code(code)
    pki = BrokerPki(state.dir)
    tls_key = public_key_pem(await asyncio.to_thread(pki.client_key))  # key generation, a file write

    def make(invitation_id: str, pairing_session: str) -> DevicePairing:
        return DevicePairing(
            state.identity, code, invitation_id, session=pairing_session, name=name, profile=profile,
            requests=requests, serves=serves, tls_key=tls_key,
        )  # fmt: skip

    welcome = await pair_with_hub(link, make, session=session, timeout=timeout)
    await asyncio.to_thread(_save, state, pki, welcome)
    return welcome


def _save(state: HouseholdState, pki: BrokerPki, welcome: Welcome) -> None:
    if welcome.broker_cert and welcome.broker_ca:
        pki.install(welcome.broker_cert, welcome.broker_ca)
    state.save(HouseholdFile.from_welcome(welcome))
