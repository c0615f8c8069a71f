"""Pairing: SPAKE2 + key confirmation, expiry, attempt limit, trivial codes, tampering; sessions bound into
the transcript, one key per job; the hub's inbox under attack (duplicate hellos, forged proofs, a full
hub, retained, oversized and misaddressed frames), each leaving the attempt in progress intact."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from nacl.signing import SigningKey
from pydantic import BaseModel
from spake2 import SPAKE2_A

from edge_agent.mesh import pairing, pairing_link, topics
from edge_agent.mesh.household import DeviceCertificate, HouseholdRoot, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.pairing import (
    ATTEMPT_LIFETIME,
    DEFAULT_REQUESTS,
    MAX_ATTEMPTS,
    TRY_EVERY,
    DevicePairing,
    DeviceRequest,
    Invitation,
    PairChallenge,
    PairHello,
    PairingError,
    PairProof,
    PairWelcome,
    Welcome,
    WrongCodeError,
    new_code,
    new_session,
    validate_code,
)
from edge_agent.mesh.pairing_link import MAX_HUB_FRAME, serve_invitation
from edge_agent.tasks import TASKS


@pytest.fixture
def invitation() -> Invitation:
    return Invitation(HouseholdRoot(SigningKey.generate()), group_key=os.urandom(32), group_epoch=2)


def _device(inv: Invitation, code: str | None = None, session: str | None = None) -> DevicePairing:
    return DevicePairing(
        DeviceIdentity.generate(),
        code or inv.code,
        inv.invitation_id,
        session=session or new_session(),
        name="fridge",
        profile="fridge-panel",
        requests=["generate", "translate"],
        serves=[],
    )


def test_pairing_issues_a_certificate_the_household_accepts(invitation: Invitation) -> None:
    device = _device(invitation)
    challenge, attempt = invitation.challenge(device.hello)
    welcome, cert = attempt.welcome(device.prove(challenge))
    result = device.finish(welcome)
    assert result.certificate == cert and result.group_epoch == 2
    # An appliance may translate unless the operator approved more (`invite --requests`).
    assert result.certificate.requests == ["translate"] and result.certificate.profile == "fridge-panel"
    assert not result.certificate.may_correct and not result.certificate.corrects
    members = Membership(invitation.root.key.verify_key)
    members.add_certificate(result.certificate)
    assert members.member(device.identity.device_id).name == "fridge"
    with pytest.raises(PairingError, match="already used"):
        invitation.challenge(_device(invitation).hello)


def test_a_device_gets_only_what_the_operator_approved(invitation: Invitation) -> None:
    """Finding 5 and N2: a plug asking to serve and request everything, as a hub, gets the operator's
    approval, no more: what it serves, what it requests, its class, whether it may correct."""
    invitation.serves = ["embed"]  # `hearth household invite --serves embed --class vehicle`
    invitation.device_class = "vehicle"
    device = DevicePairing(DeviceIdentity.generate(), invitation.code, invitation.invitation_id,
                           session=new_session(), name="plug", profile="hub", requests=list(TASKS),
                           serves=["generate", "translate", "embed"])  # fmt: skip
    challenge, attempt = invitation.challenge(device.hello)
    _, cert = attempt.welcome(device.prove(challenge))
    assert (cert.serves, cert.device_class) == (["embed"], "vehicle")
    assert cert.requests == list(DEFAULT_REQUESTS["vehicle"]) and not cert.may_correct
    # The default approval is nothing to serve, the weakest class, translating only, no corrections.
    other = Invitation(invitation.root, group_key=os.urandom(32))
    device = DevicePairing(DeviceIdentity.generate(), other.code, other.invitation_id, session=new_session(),
                           name="plug", profile="hub", requests=list(TASKS), serves=["generate"])  # fmt: skip
    challenge, attempt = other.challenge(device.hello)
    _, cert = attempt.welcome(device.prove(challenge))
    assert (cert.serves, cert.device_class, cert.requests) == ([], "appliance", ["translate"])
    assert not cert.may_correct
    # What the operator approves by name (`--requests generate --may-correct`), and no more.
    third = Invitation(invitation.root, group_key=os.urandom(32), requests=["generate"], may_correct=True)
    device = DevicePairing(DeviceIdentity.generate(), third.code, third.invitation_id,
                           session=new_session(), name="panel", profile="hub", requests=["generate", "embed"],
                           serves=[])  # fmt: skip
    challenge, attempt = third.challenge(device.hello)
    _, cert = attempt.welcome(device.prove(challenge))
    assert (cert.requests, cert.may_correct) == (["generate"], True)


def test_wrong_code_is_caught_before_the_device_reveals_anything(invitation: Invitation) -> None:
    wrong = "4827-1930" if invitation.code != "4827-1930" else "5827-1930"
    device = _device(invitation, wrong)
    challenge, _ = invitation.challenge(device.hello)
    with pytest.raises(PairingError, match="could not prove it knows the setup code"):
        device.prove(challenge)
    assert invitation.attempts_left == MAX_ATTEMPTS - 1


def test_attacker_without_the_code_cannot_forge_the_proof(invitation: Invitation) -> None:
    device = _device(invitation)
    _, attempt = invitation.challenge(device.hello)
    with pytest.raises(PairingError, match="wrong setup code"):
        attempt.welcome(PairProof(confirm="0" * 64, sealed="00" * 60))


def test_twenty_first_attempt_is_refused(invitation: Invitation) -> None:
    now = invitation.created
    for _ in range(MAX_ATTEMPTS):
        invitation.challenge(
            _device(invitation, "4827-1930" if invitation.code != "4827-1930" else "5827-1930").hello, now
        )
        now += TRY_EVERY  # as fast as the invitation lets anyone try
    with pytest.raises(PairingError, match=exactly(invitation.used_up)):
        invitation.challenge(_device(invitation).hello, now)
    assert "all 20 setup-code tries were used" in invitation.used_up


def test_invitation_expires_within_15_minutes(invitation: Invitation) -> None:
    device = _device(invitation)
    late = invitation.created + timedelta(minutes=15)
    with pytest.raises(PairingError, match="expired"):
        invitation.challenge(device.hello, now=late)
    challenge, attempt = invitation.challenge(device.hello, now=invitation.created + timedelta(minutes=14))
    with pytest.raises(PairingError, match="expired"):  # the proof arrives too late
        attempt.welcome(device.prove(challenge), now=late + timedelta(seconds=1))
    with pytest.raises(PairingError, match="at most 0:15:00"):
        Invitation(invitation.root, group_key=os.urandom(32), lifetime=timedelta(minutes=16))


@pytest.mark.parametrize("code", ["0000-0000", "1111 1111", "12345678", "8765-4321", "1234", "abcd-efgh"])
def test_trivial_or_malformed_codes_are_refused(code: str) -> None:
    with pytest.raises(PairingError):
        validate_code(code)


def test_generated_codes_are_valid_and_varied() -> None:
    codes = {new_code() for _ in range(200)}
    assert len(codes) > 190
    for c in codes:
        assert validate_code(c) == c.replace("-", "")


def test_tampered_welcome_and_foreign_certificate_are_refused(invitation: Invitation) -> None:
    device = _device(invitation)
    challenge, attempt = invitation.challenge(device.hello)
    welcome, _ = attempt.welcome(device.prove(challenge))
    flipped = welcome.model_copy(
        update={"sealed": welcome.sealed[:-2] + ("00" if welcome.sealed[-2:] != "00" else "01")}
    )
    with pytest.raises(PairingError, match="does not decrypt"):
        device.finish(flipped)
    assert device.finish(welcome).certificate.device_id == device.identity.device_id
    assert datetime.now(UTC) < device.finish(welcome).certificate.expires_at


# -- sessions and keys: every exchange is bound to its invitation and session, one key per job ----------

HUB_UNPROVEN = "the hub could not prove it knows the setup code: wrong code, or not your hub"


def exactly(message: str) -> str:
    """A ``match=`` pattern for this whole message and nothing else."""
    return f"^{re.escape(message)}$"


def _wrong(inv: Invitation) -> str:
    return "4827-1930" if inv.code != "4827-1930" else "5827-1930"


def test_a_hello_relayed_into_another_session_yields_a_challenge_the_device_refuses(
    invitation: Invitation,
) -> None:
    device = _device(invitation)
    relayed = device.hello.model_copy(update={"session": new_session()})
    relayed_challenge, _ = invitation.challenge(relayed)
    with pytest.raises(PairingError, match=exactly(HUB_UNPROVEN)):
        device.prove(relayed_challenge)
    assert invitation.attempts_left == MAX_ATTEMPTS - 1 and not invitation.used


def test_a_proof_does_not_verify_in_another_session(invitation: Invitation) -> None:
    device = _device(invitation)
    challenge, attempt = invitation.challenge(device.hello)
    _, relayed = invitation.challenge(device.hello.model_copy(update={"session": new_session()}))
    proof = device.prove(challenge)
    with pytest.raises(WrongCodeError, match=exactly(f"wrong setup code ({MAX_ATTEMPTS - 2} attempts left)")):
        relayed.welcome(proof)
    welcome, cert = attempt.welcome(proof)  # the genuine attempt is untouched
    assert device.finish(welcome).certificate == cert


def test_each_job_has_its_own_key_and_a_single_key_proof_is_refused(invitation: Invitation) -> None:
    session = new_session()
    context = pairing._context(invitation.invitation_id, session)
    spake = SPAKE2_A(validate_code(invitation.code).encode(), idA=pairing._spake_ids(context)[0],
                     idB=pairing._spake_ids(context)[1])  # fmt: skip
    x = spake.start()
    challenge, attempt = invitation.challenge(
        PairHello(invitation=invitation.invitation_id, session=session, spake=x.hex())
    )
    y = bytes.fromhex(challenge.spake)
    raw = spake.finish(y)
    keys = pairing._Keys.derive(raw, context)
    assert len({raw, keys.confirm_hub, keys.confirm_device, keys.seal_request, keys.seal_welcome}) == 5
    transcript = context + b"|" + x + y
    assert challenge.confirm == pairing._confirm(keys.confirm_hub, b"hub", transcript)
    ident = DeviceIdentity.generate()
    keys_hex = {"sign_key": bytes(ident.verify_key).hex(), "box_key": bytes(ident.public_box_key).hex()}
    request = DeviceRequest(**keys_hex, name="fridge", profile="fridge-panel", requests=[], serves=[])
    body = request.model_dump_json().encode()

    # The v1 scheme: one key from the SPAKE2 output for the confirmation and the sealing alike.
    single = hashlib.blake2b(raw, digest_size=32, person=b"hearth-pair-key").digest()
    v1_confirm = hmac.new(single, b"hearth-pair-confirm-v1|device|" + x + y, hashlib.sha256).hexdigest()
    v1_proof = PairProof(confirm=v1_confirm, sealed=pairing._seal(single, b"device-request", body))
    with pytest.raises(WrongCodeError, match=exactly(f"wrong setup code ({MAX_ATTEMPTS - 1} attempts left)")):
        attempt.welcome(v1_proof)
    # A valid confirmation does not make a request sealed under any other key, or label, acceptable.
    confirm = pairing._confirm(keys.confirm_device, b"device", transcript)
    label = pairing._label(b"device-request", context)
    for key, lab in [(keys.confirm_device, label), (single, label), (raw, label),
                     (keys.seal_request, b"device-request"),
                     (keys.seal_request, pairing._label(b"device-request", pairing._context(
                         invitation.invitation_id, new_session())))]:  # fmt: skip
        with pytest.raises(PairingError, match=exactly("sealed pairing data does not decrypt")):
            attempt.welcome(PairProof(confirm=confirm, sealed=pairing._seal(key, lab, body)))
    assert invitation.attempts_left == MAX_ATTEMPTS - 1 and not invitation.used

    welcome, cert = attempt.welcome(
        PairProof(confirm=confirm, sealed=pairing._seal(keys.seal_request, label, body))
    )
    opened = pairing._unseal(keys.seal_welcome, pairing._label(b"welcome", context), welcome.sealed)
    assert Welcome.model_validate_json(opened).certificate == cert


def test_the_last_counted_attempt_can_still_finish(invitation: Invitation) -> None:
    invitation.attempts_left = 1
    device = _device(invitation)
    challenge, attempt = invitation.challenge(device.hello)
    with pytest.raises(PairingError, match=exactly(invitation.used_up)):
        invitation.challenge(_device(invitation).hello)
    welcome, cert = attempt.welcome(device.prove(challenge))
    assert device.finish(welcome).certificate == cert


def test_an_attempt_waits_at_most_a_minute_for_its_proof(invitation: Invitation) -> None:
    device = _device(invitation)
    challenge, attempt = invitation.challenge(device.hello, now=invitation.created)
    proof = device.prove(challenge)
    late = invitation.created + ATTEMPT_LIFETIME
    expired = f"this pairing attempt expired at {late:%H:%M:%S}; pair again"
    with pytest.raises(PairingError, match=exactly(expired)):
        attempt.welcome(proof, now=late)
    welcome, cert = attempt.welcome(proof, now=late - timedelta(seconds=1))
    assert device.finish(welcome).certificate == cert


# -- the hub's pairing inbox under attack (a broker that enforces nothing, like the embedded one) ---------


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class _Frame:
    topic: str
    payload: bytes
    retained: bool = False


class FakeBroker:
    """The hub's connection: the test delivers any frame to the hub, in order, as an attacker on a broker
    without ACLs could, and reads what the hub publishes, in order. Since the hub handles its frames one
    by one, the reply to a later frame proves every earlier one was handled, deterministically."""

    def __init__(self, inv: Invitation) -> None:
        self.inv = inv
        self.to_hub: asyncio.Queue[_Frame] = asyncio.Queue()
        self.from_hub: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if topic != topics.PAIR_OPEN:
            self.from_hub.put_nowait((topic, payload))

    async def subscribe(self, pattern: str) -> None:
        assert pattern == topics.pair_hub_inbox(self.inv.invitation_id)

    async def frames(self) -> AsyncIterator[_Frame]:
        while True:
            yield await self.to_hub.get()

    def send(self, session: str, message: BaseModel | dict[str, object], *, retained: bool = False,
             pad: int = 0, envelope_session: str | None = None, topic: str | None = None) -> int:  # fmt: skip
        """Deliver one pairing message to the hub; returns the frame's size."""
        body = message.model_dump() if isinstance(message, BaseModel) else message
        payload = json.dumps({"session": envelope_session or session, "message": body}).encode() + b" " * pad
        topic = topic or topics.pair_to_hub(self.inv.invitation_id, session)
        self.to_hub.put_nowait(_Frame(topic, payload, retained))
        return len(payload)

    async def reply(self, session: str) -> dict[str, object]:
        topic, payload = await asyncio.wait_for(self.from_hub.get(), 10)
        assert topic == topics.pair_to_device(self.inv.invitation_id, session)
        env: dict[str, object] = json.loads(payload)
        assert env["session"] == session
        return env

    async def answer(self, session: str, model: type[M]) -> M:
        env = await self.reply(session)
        assert env.get("refused") is None, env
        return model.model_validate(env["message"])

    async def refusal(self, session: str) -> object:
        return (await self.reply(session))["refused"]


@pytest.fixture
async def hub(invitation: Invitation) -> AsyncIterator[tuple[FakeBroker, asyncio.Task[DeviceCertificate]]]:
    broker = FakeBroker(invitation)
    serving = asyncio.create_task(serve_invitation(broker, invitation, lambda cert: None))
    yield broker, serving
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError, PairingError):
        await serving


def _dropped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "edge_agent.mesh.pairing_link"]


async def test_a_second_hello_or_a_forged_proof_cannot_replace_or_cancel_an_attempt(
    invitation: Invitation, hub: tuple[FakeBroker, asyncio.Task[DeviceCertificate]],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    broker, serving = hub
    victim = _device(invitation)
    s = victim.hello.session
    broker.send(s, victim.hello)
    challenge = await broker.answer(s, PairChallenge)
    # An attacker who knows the session id (no ACLs here) sends its own hello and proofs for it.
    broker.send(s, _device(invitation, session=s).hello)
    broker.send(s, PairProof(confirm="0" * 64, sealed="00" * 60))
    broker.send(s, {"type": "pair-proof", "confirm": "not hex"})
    broker.send(s, {"type": "pair-welcome", "sealed": "00"})
    broker.send(s, victim.prove(challenge))
    welcome = await broker.answer(s, PairWelcome)  # nothing was answered to the attacker's frames
    cert = await serving
    assert victim.finish(welcome).certificate == cert
    assert invitation.attempts_left == MAX_ATTEMPTS - 1  # the duplicate hello consumed nothing
    assert _dropped(caplog) == [
        "dropped a second hello for a session in progress (the first attempt stands)",
        f"dropped a pairing proof that does not verify: wrong setup code ({MAX_ATTEMPTS - 1} attempts left)",
        "dropped a malformed pairing proof",
        "dropped an unexpected pairing message 'pair-welcome'",
    ]


async def test_a_full_hub_refuses_new_sessions_instead_of_evicting_one(
    invitation: Invitation, hub: tuple[FakeBroker, asyncio.Task[DeviceCertificate]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(pairing_link, "MAX_SESSIONS", 1)
    broker, serving = hub
    victim, newcomer = _device(invitation), _device(invitation)
    broker.send(victim.hello.session, victim.hello)
    challenge = await broker.answer(victim.hello.session, PairChallenge)
    broker.send(newcomer.hello.session, newcomer.hello)
    assert await broker.refusal(newcomer.hello.session) == (
        "too many pairing attempts in progress (1); try again in a minute"
    )
    assert invitation.attempts_left == MAX_ATTEMPTS - 1  # the refused hello consumed nothing
    broker.send(victim.hello.session, victim.prove(challenge))
    assert victim.finish(await broker.answer(victim.hello.session, PairWelcome)).certificate == await serving


async def test_retained_oversized_and_misaddressed_frames_are_dropped_unanswered(
    invitation: Invitation, hub: tuple[FakeBroker, asyncio.Task[DeviceCertificate]],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    broker, serving = hub
    device, other = _device(invitation), new_session()
    s = device.hello.session
    broker.send(s, device.hello, retained=True)  # a retained copy the broker replays to the hub
    oversized = broker.send(s, device.hello, pad=MAX_HUB_FRAME)  # valid JSON (trailing blanks), > 16 KiB
    broker.send(other, device.hello, envelope_session=s)  # published under another session's topic
    broker.send(s, device.hello, topic=f"hearth/pair/{invitation.invitation_id}/hub")  # not the inbox
    broker.send(other, device.hello)  # its own topic and envelope, but the hello names another session
    assert await broker.refusal(other) == "the hello names another session"
    assert invitation.attempts_left == MAX_ATTEMPTS
    broker.send(s, device.hello)
    await broker.answer(s, PairChallenge)
    assert invitation.attempts_left == MAX_ATTEMPTS - 1 and not serving.done()
    assert _dropped(caplog) == [
        "dropped a retained frame on the pairing inbox (stored by the broker, not sent now)",
        f"dropped an oversized pairing frame ({oversized} bytes > 16384)",
        "dropped a pairing message for another session than its topic's",
        "pairing attempt refused: the hello names another session",
    ]


async def test_the_hub_serves_the_last_counted_attempt_to_the_end(
    invitation: Invitation, hub: tuple[FakeBroker, asyncio.Task[DeviceCertificate]]
) -> None:
    broker, serving = hub
    invitation.attempts_left = 2
    wrong, device, late = _device(invitation, _wrong(invitation)), _device(invitation), _device(invitation)
    broker.send(wrong.hello.session, wrong.hello)
    with pytest.raises(PairingError, match=exactly(HUB_UNPROVEN)):
        wrong.prove(await broker.answer(wrong.hello.session, PairChallenge))  # it never answers
    broker.send(device.hello.session, device.hello)
    challenge = await broker.answer(device.hello.session, PairChallenge)
    broker.send(late.hello.session, late.hello)
    assert await broker.refusal(late.hello.session) == invitation.used_up
    broker.send(device.hello.session, device.prove(challenge))
    assert device.finish(await broker.answer(device.hello.session, PairWelcome)).certificate == await serving


async def test_the_hub_closes_once_every_attempt_is_spent_and_none_can_finish(
    invitation: Invitation, hub: tuple[FakeBroker, asyncio.Task[DeviceCertificate]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(pairing, "ATTEMPT_LIFETIME", timedelta(0))  # a challenged attempt expires at once
    broker, serving = hub
    invitation.attempts_left = 1
    wrong = _device(invitation, _wrong(invitation))
    broker.send(wrong.hello.session, wrong.hello)
    await broker.answer(wrong.hello.session, PairChallenge)
    with pytest.raises(PairingError, match=exactly("the invitation is closed after too many wrong codes")):
        await serving
