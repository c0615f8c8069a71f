"""Carrying a pairing over MQTT. The messages are SPAKE2-protected (see pairing.py); the broker learns
only that a pairing happened.

The hub publishes the open invitation's id as a retained message on ``hearth/pair/open``; the new
device picks a random session id and talks on ``hearth/pair/<invitation>/hub`` (to the hub) and
``hearth/pair/<invitation>/dev/<session>`` (to the device).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.mesh import topics
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.interfaces import Transport
from edge_agent.mesh.pairing import (
    DevicePairing,
    Invitation,
    PairChallenge,
    PairHello,
    PairingError,
    PairProof,
    PairWelcome,
    Welcome,
    _HubAttempt,
)

log = logging.getLogger(__name__)
MAX_SESSIONS = 64


class OpenInvitation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    invitation: str = Field(pattern=r"^[0-9a-f]{16}$")
    expires: datetime


class _Envelope(BaseModel):
    """One pairing message and the session it belongs to."""

    model_config = ConfigDict(extra="forbid")
    session: str = Field(pattern=r"^[0-9a-f]{16}$")
    message: dict[str, Any]
    refused: str | None = Field(default=None, max_length=500)


async def serve_invitation(
    transport: Transport,
    invitation: Invitation,
    on_paired: Callable[[DeviceCertificate], None],
) -> DeviceCertificate:
    """Hub side: answer pairing attempts until one succeeds or the invitation closes."""
    inbox = topics.pair_to_hub(invitation.invitation_id)
    await transport.subscribe(inbox)
    opened = OpenInvitation(invitation=invitation.invitation_id, expires=invitation.expires)
    await transport.publish(topics.PAIR_OPEN, opened.model_dump_json().encode(), retain=True)
    attempts: dict[str, _HubAttempt] = {}
    try:
        async with asyncio.timeout((invitation.expires - datetime.now(UTC)).total_seconds()):
            async for frame in transport.frames():
                if frame.topic != inbox:
                    continue
                try:
                    env = _Envelope.model_validate_json(frame.payload)
                except ValidationError:
                    log.warning("dropped a malformed pairing message (%d bytes)", len(frame.payload))
                    continue
                reply_to = topics.pair_to_device(invitation.invitation_id, env.session)
                try:
                    kind = env.message.get("type")
                    if kind == "pair-hello":
                        if len(attempts) >= MAX_SESSIONS:
                            attempts.pop(next(iter(attempts)))
                        challenge, attempts[env.session] = invitation.challenge(
                            PairHello.model_validate(env.message)
                        )
                        answer: BaseModel = challenge
                    elif kind == "pair-proof" and env.session in attempts:
                        welcome, cert = attempts.pop(env.session).welcome(
                            PairProof.model_validate(env.message)
                        )
                        on_paired(cert)
                        out = _Envelope(session=env.session, message=welcome.model_dump())
                        await transport.publish(reply_to, out.model_dump_json().encode())
                        return cert
                    else:
                        raise PairingError(f"unexpected pairing message {kind!r}")
                except (PairingError, ValidationError) as exc:
                    reason = str(exc) if isinstance(exc, PairingError) else "malformed pairing message"
                    log.warning("pairing attempt refused: %s", reason)
                    out = _Envelope(session=env.session, message={}, refused=reason)
                    await transport.publish(reply_to, out.model_dump_json().encode())
                    if invitation.attempts_left <= 0:
                        raise PairingError("the invitation is closed after too many wrong codes") from None
                    continue
                out = _Envelope(session=env.session, message=answer.model_dump())
                await transport.publish(reply_to, out.model_dump_json().encode())
    except TimeoutError:
        raise PairingError(
            f"nobody paired before the invitation expired at {invitation.expires:%H:%M:%S}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await transport.publish(topics.PAIR_OPEN, b"", retain=True)
    raise PairingError("the broker connection closed before pairing finished")


async def pair_with_hub(
    transport: Transport, make_pairing: Callable[[str], DevicePairing], timeout: float = 30.0
) -> Welcome:
    """Device side: find the open invitation, run SPAKE2 with the hub, return its welcome."""
    session = secrets.token_hex(8)
    await transport.subscribe(topics.PAIR_OPEN)
    frames = transport.frames()
    async with asyncio.timeout(timeout):
        invitation: OpenInvitation | None = None
        pairing: DevicePairing | None = None
        async for frame in frames:
            if frame.topic == topics.PAIR_OPEN:
                if not frame.payload or invitation is not None:
                    continue
                try:
                    invitation = OpenInvitation.model_validate_json(frame.payload)
                except ValidationError:
                    continue
                pairing = make_pairing(invitation.invitation)
                await transport.subscribe(topics.pair_to_device(invitation.invitation, session))
                hello = _Envelope(session=session, message=pairing.hello.model_dump())
                await transport.publish(
                    topics.pair_to_hub(invitation.invitation), hello.model_dump_json().encode()
                )
                continue
            if invitation is None or pairing is None:
                continue
            try:
                env = _Envelope.model_validate_json(frame.payload)
            except ValidationError:
                continue
            if env.refused:
                raise PairingError(f"the hub refused: {env.refused}")
            kind = env.message.get("type")
            if kind == "pair-challenge":
                proof = pairing.prove(PairChallenge.model_validate(env.message))
                out = _Envelope(session=session, message=proof.model_dump())
                await transport.publish(
                    topics.pair_to_hub(invitation.invitation), out.model_dump_json().encode()
                )
            elif kind == "pair-welcome":
                return pairing.finish(PairWelcome.model_validate(env.message))
    raise PairingError("the broker connection closed before pairing finished")
