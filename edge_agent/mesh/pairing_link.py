"""Carrying a pairing over MQTT. The messages are SPAKE2-protected (see pairing.py); the broker learns
only that a pairing happened.

The hub announces the open invitation's id on ``hearth/pair/open``: on a hub's own pairing broker
(pairing_window: retain is off there) it repeats it every `ANNOUNCE_EVERY_S`; on a shared broker it
leaves it retained until the invitation closes. The new device picks a random session id
(`new_session`), connects with it as its MQTT client id, and talks on
``hearth/pair/<invitation>/hub/<session>`` (to the hub) and ``hearth/pair/<invitation>/dev/<session>``
(to the device). On the pairing broker the ``%c`` ACL patterns let only that connection write the one
and read the other, so another anonymous client can neither learn a session nor speak for it (see
broker.py).

The hub does not rely on the broker alone. It reads only its own inbox, drops retained frames and
frames over 16 KiB, a message whose envelope names another session than its topic, and a second hello
for a session in progress (the first attempt stands, no attempt is consumed). It never evicts an
attempt to make room (new hellos are refused instead) and keeps each attempt until a proof verifies
for it or it expires, so a proof without the session key changes nothing. It answers only the session
that asked, and only about that session's own attempt; everything else is dropped and counted, the
first few of each kind logged (`DropLog`). Everything it holds is bounded: `MAX_SESSIONS` attempts,
frames of `MAX_HUB_FRAME`, logs of `DropLog.LOGGED_PER_KIND` lines per kind. The device reads frames
of at most `MAX_DEVICE_FRAME` (and `MAX_OPEN_FRAME` for an announcement).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.mesh import topics
from edge_agent.mesh.household import DeviceCertificate
from edge_agent.mesh.pairing import (
    SESSION_PATTERN,
    DevicePairing,
    Invitation,
    PairChallenge,
    PairHello,
    PairingError,
    PairProof,
    PairWelcome,
    Welcome,
    WrongCodeError,
)

log = logging.getLogger(__name__)
_CLOSED = "the invitation is closed after too many wrong codes"
MAX_SESSIONS = 64
"""Attempts in progress at once; past it new hellos are refused (never an older attempt evicted)."""
MAX_HUB_FRAME = 16 * 1024
"""Largest frame the hub reads on its pairing inbox (a proof is under 9 KB). Mosquitto 2.0.11 cannot
limit packet size per listener, so the hub does."""
MAX_DEVICE_FRAME = 256 * 1024
"""Largest frame a pairing device reads (the sealed welcome carries the roster)."""
MAX_OPEN_FRAME = 1024
"""Largest invitation announcement a pairing device reads (an id and a time)."""
ANNOUNCE_EVERY_S = 1.0
"""How often the hub repeats the open invitation where it cannot be retained (its pairing broker)."""


class _Attempt(Protocol):
    """What the hub keeps per session (pairing.Invitation.challenge makes it)."""

    @property
    def expires(self) -> datetime: ...
    def welcome(
        self, proof: PairProof, now: datetime | None = None
    ) -> tuple[PairWelcome, DeviceCertificate]: ...


class DropLog:
    """Frames the hub dropped, counted by kind; the first `LOGGED_PER_KIND` of each kind are logged, so
    a flood of junk cannot fill the log while one invitation is open."""

    LOGGED_PER_KIND = 20

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def drop(self, why: _Dropped) -> None:
        kind = why.kind
        if kind not in self.counts and len(self.counts) >= 32:
            kind = "other"
        self.counts[kind] += 1
        if self.counts[kind] <= self.LOGGED_PER_KIND:
            log.warning("dropped %s", why)

    def summary(self) -> None:
        unlogged = {k: n - self.LOGGED_PER_KIND for k, n in self.counts.items() if n > self.LOGGED_PER_KIND}
        if unlogged:
            log.warning("pairing: dropped %d more frames without logging them (%s)", sum(unlogged.values()),
                        ", ".join(f"{n} {k}" for k, n in sorted(unlogged.items())))  # fmt: skip


class PairFrame(Protocol):
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def retained(self) -> bool: ...


class PairingLink(Protocol):
    """What pairing needs from an MQTT connection (the MQTT client provides it)."""

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...
    async def subscribe(self, pattern: str) -> None: ...
    def frames(self) -> AsyncIterator[PairFrame]: ...


class OpenInvitation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    invitation: str = Field(pattern=r"^[0-9a-f]{16}$")
    expires: datetime


class _Envelope(BaseModel):
    """One pairing message and the session it belongs to."""

    model_config = ConfigDict(extra="forbid")
    session: str = Field(pattern=SESSION_PATTERN)
    message: dict[str, Any]
    refused: str | None = Field(default=None, max_length=500)


class _Dropped(Exception):
    """A frame the hub ignores: logged, never answered, no state changed."""

    @property
    def kind(self) -> str:
        """The message without its details (what DropLog counts by)."""
        return str(self).split(":", 1)[0].split(" (", 1)[0][:80]


class _HubSessions:
    """The hub's attempts in progress for one invitation, and what each inbound message does to them."""

    def __init__(self, invitation: Invitation) -> None:
        self.invitation = invitation
        self.attempts: dict[str, _Attempt] = {}
        self.drops = DropLog()

    def receive(self, session: str, frame: PairFrame) -> _Envelope:
        """The envelope of a frame on the hub's inbox for ``session``; _Dropped if it is not one."""
        if frame.retained:
            raise _Dropped("a retained frame on the pairing inbox (stored by the broker, not sent now)")
        if len(frame.payload) > MAX_HUB_FRAME:
            raise _Dropped(f"an oversized pairing frame ({len(frame.payload)} bytes > {MAX_HUB_FRAME})")
        try:
            env = _Envelope.model_validate_json(frame.payload)
        except ValidationError:
            raise _Dropped(f"a malformed pairing message ({len(frame.payload)} bytes)") from None
        if env.session != session:
            raise _Dropped("a pairing message for another session than its topic's")
        return env

    def hello(self, session: str, message: dict[str, Any], now: datetime) -> PairChallenge:
        """Challenge a new session. _Dropped for a session in progress; PairingError to refuse it."""
        self.expire(now)
        if session in self.attempts:
            raise _Dropped("a second hello for a session in progress (the first attempt stands)")
        try:
            hello = PairHello.model_validate(message)
        except ValidationError:
            raise PairingError("malformed pairing hello") from None
        if hello.session != session:
            raise PairingError("the hello names another session")
        if len(self.attempts) >= MAX_SESSIONS:
            raise PairingError(
                f"too many pairing attempts in progress ({MAX_SESSIONS}); try again in a minute"
            )
        challenge, self.attempts[session] = self.invitation.challenge(hello, now)
        return challenge

    def proof(
        self, session: str, message: dict[str, Any], now: datetime
    ) -> tuple[PairWelcome, DeviceCertificate]:
        """Welcome a session whose proof verifies. _Dropped when it does not: only the holder of the
        session key may end the attempt. PairingError for a verified proof the hub cannot accept."""
        attempt = self.attempts.get(session)
        if attempt is None:
            raise _Dropped("a pairing proof for no attempt in progress")
        try:
            proof = PairProof.model_validate(message)
        except ValidationError:
            raise _Dropped("a malformed pairing proof") from None
        try:
            return attempt.welcome(proof, now)
        except WrongCodeError as exc:
            raise _Dropped(f"a pairing proof that does not verify: {exc}") from None
        except PairingError:
            del self.attempts[session]  # verified (or expired): this attempt is over
            raise

    def expire(self, now: datetime) -> None:
        for session in [s for s, a in self.attempts.items() if now >= a.expires]:
            del self.attempts[session]

    def last_chance(self, now: datetime) -> float | None:
        """Once every attempt is spent: seconds until the last pending attempt expires (0: none left).
        None while new attempts may still come."""
        if self.invitation.attempts_left > 0:
            return None
        self.expire(now)
        latest = max((a.expires for a in self.attempts.values()), default=now)
        return max(0.0, (latest - now).total_seconds())


async def serve_invitation(
    link: PairingLink,
    invitation: Invitation,
    on_paired: Callable[[DeviceCertificate], None],
    *,
    retain: bool = True,
) -> DeviceCertificate:
    """Hub side: answer pairing attempts until one succeeds or the invitation closes.

    ``retain``: announce the invitation once, retained (a shared broker); False: repeat it every
    `ANNOUNCE_EVERY_S` instead (the hub's own pairing broker, where nothing may be retained)."""
    await link.subscribe(topics.pair_hub_inbox(invitation.invitation_id))
    opened = OpenInvitation(invitation=invitation.invitation_id, expires=invitation.expires)
    announcement = opened.model_dump_json().encode()
    sessions = _HubSessions(invitation)
    loop = asyncio.get_running_loop()
    announcing: asyncio.Task[None] | None = None
    if retain:
        await link.publish(topics.PAIR_OPEN, announcement, retain=True)
    else:
        await link.publish(topics.PAIR_OPEN, announcement)
        announcing = asyncio.create_task(_announce(link, announcement), name="pairing-announce")
    try:
        async with asyncio.timeout((invitation.expires - datetime.now(UTC)).total_seconds()) as deadline:
            async for frame in link.frames():
                cert = await _serve_frame(link, sessions, frame, on_paired)
                if cert is not None:
                    return cert
                wait = sessions.last_chance(datetime.now(UTC))
                if wait == 0:
                    raise PairingError(_CLOSED)
                if wait is not None:  # only the attempts already challenged may still finish
                    deadline.reschedule(min(deadline.when() or float("inf"), loop.time() + wait))
    except TimeoutError:
        if invitation.attempts_left <= 0:
            raise PairingError(_CLOSED) from None
        raise PairingError(
            f"nobody paired before the invitation expired at {invitation.expires:%H:%M:%S}"
        ) from None
    finally:
        sessions.drops.summary()
        if announcing is not None:
            announcing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await announcing
        if retain:
            with contextlib.suppress(Exception):
                await link.publish(topics.PAIR_OPEN, b"", retain=True)
    raise PairingError("the broker connection closed before pairing finished")


async def _announce(link: PairingLink, announcement: bytes) -> None:
    """Repeat the open invitation, so a device that subscribes at any time hears it within a second."""
    while True:
        await asyncio.sleep(ANNOUNCE_EVERY_S)
        await link.publish(topics.PAIR_OPEN, announcement)


async def _serve_frame(
    link: PairingLink,
    sessions: _HubSessions,
    frame: PairFrame,
    on_paired: Callable[[DeviceCertificate], None],
) -> DeviceCertificate | None:
    """Handle one frame on the hub's inbox; the certificate once a device has paired."""
    session = topics.pair_session(sessions.invitation.invitation_id, frame.topic)
    if session is None:
        return None  # another subscription of this connection: not ours to judge
    now = datetime.now(UTC)
    try:
        env = sessions.receive(session, frame)
        kind = env.message.get("type")
        if kind == "pair-hello":
            answer: BaseModel = sessions.hello(session, env.message, now)
            cert = None
        elif kind == "pair-proof":
            answer, cert = sessions.proof(session, env.message, now)
        else:
            raise _Dropped(f"an unexpected pairing message {str(kind)[:40]!r}")
    except _Dropped as why:
        sessions.drops.drop(why)
        return None
    except PairingError as exc:
        log.warning("pairing attempt refused: %s", exc)
        refused = _Envelope(session=session, message={}, refused=str(exc)[:500])
        await _reply(link, sessions.invitation, session, refused)
        return None
    if cert is not None:
        on_paired(cert)
    await _reply(link, sessions.invitation, session, _Envelope(session=session, message=answer.model_dump()))
    return cert


async def _reply(link: PairingLink, invitation: Invitation, session: str, env: _Envelope) -> None:
    await link.publish(
        topics.pair_to_device(invitation.invitation_id, session), env.model_dump_json().encode()
    )


async def pair_with_hub(
    link: PairingLink,
    make_pairing: Callable[[str, str], DevicePairing],
    *,
    session: str,
    timeout: float = 30.0,
) -> Welcome:
    """Device side: find the open invitation, run SPAKE2 with the hub, return its welcome.

    ``session`` (from `new_session`) must be the link's MQTT client id on a broker with the pairing
    ACLs; ``make_pairing(invitation id, session)`` builds the device's side of the exchange."""
    await link.subscribe(topics.PAIR_OPEN)
    frames = link.frames()
    async with asyncio.timeout(timeout):
        invitation: OpenInvitation | None = None
        pairing: DevicePairing | None = None
        async for frame in frames:
            if frame.topic == topics.PAIR_OPEN:
                if not frame.payload or invitation is not None or len(frame.payload) > MAX_OPEN_FRAME:
                    continue
                try:
                    invitation = OpenInvitation.model_validate_json(frame.payload)
                except ValidationError:
                    continue
                # SPAKE2 is pure Python big-integer work: off the event loop (it is Home Assistant's, too)
                pairing = await asyncio.to_thread(make_pairing, invitation.invitation, session)
                await link.subscribe(topics.pair_to_device(invitation.invitation, session))
                await _send(link, invitation, session, pairing.hello)
                continue
            if invitation is None or pairing is None:
                continue
            env = _from_hub(frame, invitation, session)
            if env is None:
                continue
            if env.refused:
                wrong = env.refused.startswith("wrong setup code")  # the hub's own words, see pairing.py
                raise (WrongCodeError if wrong else PairingError)(f"the hub refused: {env.refused}")
            kind = env.message.get("type")
            try:
                if kind == "pair-challenge":
                    challenge = PairChallenge.model_validate(env.message)
                    proof = await asyncio.to_thread(pairing.prove, challenge)
                    await _send(link, invitation, session, proof)
                elif kind == "pair-welcome":
                    return await asyncio.to_thread(pairing.finish, PairWelcome.model_validate(env.message))
            except ValidationError:
                raise PairingError(f"malformed {str(kind)[:40]!r} message from the hub") from None
    raise PairingError("the broker connection closed before pairing finished")


def _from_hub(frame: PairFrame, invitation: OpenInvitation, session: str) -> _Envelope | None:
    """The hub's message to this session, or None for anything else (stale, retained, oversized)."""
    if frame.topic != topics.pair_to_device(invitation.invitation, session) or frame.retained:
        return None
    if len(frame.payload) > MAX_DEVICE_FRAME:
        return None
    try:
        env = _Envelope.model_validate_json(frame.payload)
    except ValidationError:
        return None
    return env if env.session == session else None


async def _send(link: PairingLink, invitation: OpenInvitation, session: str, message: BaseModel) -> None:
    env = _Envelope(session=session, message=message.model_dump())
    await link.publish(topics.pair_to_hub(invitation.invitation, session), env.model_dump_json().encode())
