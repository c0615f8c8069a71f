"""Pairing a new device with the household: a one-time setup code, SPAKE2, and key confirmation.

Like Matter's PASE: the hub shows a short setup code (`hearth household invite`); the new device types it
(`hearth pair`). SPAKE2 turns the code into a strong shared key without revealing it, so a recording of
the exchange does not allow an offline guess; every online guess costs one of at most 20 attempts, and
the invitation expires after at most 15 minutes. Explicit key confirmation (HMAC over the transcript)
comes first from the hub, so a device never sends its keys to someone who does not know the code.
Everything after confirmation is encrypted.

So each challenge is one online guess: it carries the hub's confirmation, against which whoever sent the
hello checks the code it used without ever answering. Attempts are therefore counted when challenged
(an unanswered challenge cannot be told from a guess), and challenges are rate-limited per invitation (a
burst of `TRY_BURST`, then one per `TRY_EVERY`): anyone who reaches the pairing listener can still spend
the 20 attempts, but only over 11 minutes, longer than the default invitation lives, not in one burst;
the hub then says the tries were used up, perhaps by someone else, and how to make a new invitation.
These classes are IO-free: any transport (MQTT, a local socket, a test) carries their pydantic messages
(`pairing_messages.py`); the key schedule and sealing are in `pairing_crypto.py`.

Each exchange is bound to its invitation id and its session id (the device's random id, see
`new_session`): both are in the SPAKE2 identities, the confirmation transcript and the associated data
of everything sealed, so nothing from one session verifies in another. One SPAKE2 output, four keys
(BLAKE2b keyed by it, one label each): hub confirmation, device confirmation, sealing the request,
sealing the welcome, so no key serves both as a MAC key and as an AEAD key.

    device                                   hub
    PairHello(invitation, session,   ->
              device spake msg)
                                     <-      PairChallenge(hub spake msg, hub confirmation)
    PairProof(device confirmation,   ->      verifies, issues a certificate
              sealed keys + profile)
                                     <-      PairWelcome(sealed certificate, root key, CRL, group key)
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nacl.public import PublicKey
from nacl.signing import VerifyKey
from spake2 import SPAKE2_A, SPAKE2_B
from spake2.spake2 import SPAKEError

from edge_agent.errors import HearthError, PeerError
from edge_agent.mesh.household import DeviceCertificate, HouseholdRoot
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.pairing_crypto import Keys as _Keys
from edge_agent.mesh.pairing_crypto import confirm as _confirm
from edge_agent.mesh.pairing_crypto import context as _context
from edge_agent.mesh.pairing_crypto import label as _label
from edge_agent.mesh.pairing_crypto import seal as _seal
from edge_agent.mesh.pairing_crypto import spake_ids as _spake_ids
from edge_agent.mesh.pairing_crypto import unseal as _unseal
from edge_agent.mesh.pairing_messages import (
    CODE_DIGITS,
    SESSION_PATTERN,
    DeviceRequest,
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
from edge_agent.tasks import TASKS, DeviceClass, Task

MAX_ATTEMPTS = 20
MAX_LIFETIME = timedelta(minutes=15)
ATTEMPT_LIFETIME = timedelta(minutes=1)
"""How long a challenged attempt waits for its proof (a device answers in well under a second)."""
TRY_BURST = 3
"""Challenges an invitation gives at once (a user retyping a code a few times never waits)..."""
TRY_EVERY = timedelta(seconds=40)
"""...and then one per this long: spending all 20 attempts takes 3 + 17 x 40 s = 11 min 20 s."""
DEFAULT_REQUESTS: dict[DeviceClass, tuple[Task, ...]] = {
    "hub": TASKS,
    "server": TASKS,
    "laptop": TASKS,
    "phone": TASKS,
    "vehicle": ("generate", "translate", "transcribe", "vad"),
    "appliance": ("translate",),
}
"""What a new device may ask peers to run unless the operator says otherwise (`invite --requests`):
devices people talk to and type on, everything; a car, its voice assistant; an appliance, translating
its messages (a panel with voice or chat gets more by name)."""

__all__ = [
    "ATTEMPT_LIFETIME",
    "CODE_DIGITS",
    "DEFAULT_REQUESTS",
    "MAX_ATTEMPTS",
    "MAX_LIFETIME",
    "SESSION_PATTERN",
    "TRY_BURST",
    "TRY_EVERY",
    "DevicePairing",
    "DeviceRequest",
    "Invitation",
    "PairChallenge",
    "PairHello",
    "PairProof",
    "PairWelcome",
    "PairingError",
    "Welcome",
    "WrongCodeError",
    "new_code",
    "new_session",
    "validate_code",
]


@dataclass
class Invitation:
    """Hub side: one invitation, valid for a limited time and a limited number of wrong codes."""

    root: HouseholdRoot
    group_key: bytes
    group_epoch: int = 0
    roster: list[DeviceCertificate] = field(default_factory=list)
    lifetime: timedelta = MAX_LIFETIME
    code: str = field(default_factory=new_code)
    invitation_id: str = field(default_factory=lambda: secrets.token_hex(8))
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    attempts_left: int = MAX_ATTEMPTS
    used: bool = False
    issue_tls: Callable[[DeviceCertificate, str], tuple[str, str]] | None = None
    """(certificate, device TLS public key PEM) -> (client certificate PEM, CA PEM); see broker_pki."""
    serves: list[Task] = field(default_factory=list)
    """What the operator approved the new device to serve for peers (`invite --serves`). The device's
    own wish is only a proposal: the certificate gets the intersection, so a plug cannot enrol as a
    translation server to receive everyone's text."""
    device_class: DeviceClass = "appliance"
    """The class the operator approved (`invite --class`), certified: routing policy trusts it."""
    requests: list[Task] | None = None
    """What the operator approved the new device to ask peers for (`invite --requests`); None: the
    class's `DEFAULT_REQUESTS`. The certificate gets the intersection with the device's own wish."""
    may_correct: bool = False
    """Whether the new device may author the household's shared corrections (`invite --may-correct`)."""
    paused: int = 0
    """Hellos refused because challenges came faster than `TRY_EVERY` (someone may be guessing)."""
    _tokens: float = field(default=TRY_BURST, init=False, repr=False)
    _refilled: datetime | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.lifetime > MAX_LIFETIME:
            raise PairingError(f"an invitation may live at most {MAX_LIFETIME} (asked {self.lifetime})")
        validate_code(self.code)

    @property
    def expires(self) -> datetime:
        return self.created + self.lifetime

    @property
    def approved_requests(self) -> list[Task]:
        approved = self.requests if self.requests is not None else DEFAULT_REQUESTS[self.device_class]
        return [t for t in TASKS if t in approved]

    @property
    def used_up(self) -> str:
        """Why an invitation with no attempts left is closed, honestly: the tries may not be yours."""
        return (
            f"this invitation is closed: all {MAX_ATTEMPTS} setup-code tries were used (anyone who can "
            "reach the pairing listener can try a code, so perhaps not you); make a new one with "
            "`hearth household invite`"
        )

    def _open(self, now: datetime) -> None:
        if self.used:
            raise PairingError("this invitation was already used; create a new one")
        if now >= self.expires:
            raise PairingError(f"the invitation expired at {self.expires:%H:%M:%S}; create a new one")

    def _usable(self, now: datetime) -> None:
        self._open(now)
        if self.attempts_left <= 0:
            raise PairingError(self.used_up)

    def _take_try(self, now: datetime) -> None:
        """Spend one challenge from the invitation's bucket (TRY_BURST, one back per TRY_EVERY), or
        refuse without counting anything: no attempt is used and no SPAKE2 work is done."""
        if self._refilled is None or now > self._refilled:
            if self._refilled is not None:
                self._tokens = min(float(TRY_BURST), self._tokens + (now - self._refilled) / TRY_EVERY)
            self._refilled = now
        if self._tokens < 1:
            self.paused += 1
            wait = (1 - self._tokens) * TRY_EVERY.total_seconds()
            raise PairingError(
                f"too many setup-code tries on this invitation just now (someone may be guessing); "
                f"try again in {max(1, round(wait))} s"
            )
        self._tokens -= 1

    def challenge(self, hello: PairHello, now: datetime | None = None) -> tuple[PairChallenge, _HubAttempt]:
        now = now or datetime.now(UTC)
        self._usable(now)
        if hello.invitation != self.invitation_id:
            raise PairingError("unknown invitation")
        self._take_try(now)
        # Each challenge lets the peer test exactly one guess (its hello chose the code, the challenge
        # carries the hub's confirmation), whether or not it ever answers: it consumes an attempt.
        self.attempts_left -= 1
        context = _context(hello.invitation, hello.session)
        id_device, id_hub = _spake_ids(context)
        spake = SPAKE2_B(validate_code(self.code).encode(), idA=id_device, idB=id_hub)
        msg = spake.start()
        try:
            keys = _Keys.derive(spake.finish(bytes.fromhex(hello.spake)), context)
        except (SPAKEError, ValueError) as exc:
            raise PairingError(f"bad pairing message: {exc}") from exc
        transcript = context + b"|" + bytes.fromhex(hello.spake) + msg
        expires = min(now + ATTEMPT_LIFETIME, self.expires)
        attempt = _HubAttempt(self, hello.session, keys, context, transcript, expires)
        return PairChallenge(spake=msg.hex(), confirm=_confirm(keys.confirm_hub, b"hub", transcript)), attempt


@dataclass
class _HubAttempt:
    invitation: Invitation
    session: str
    keys: _Keys
    context: bytes
    transcript: bytes
    expires: datetime

    def welcome(self, proof: PairProof, now: datetime | None = None) -> tuple[PairWelcome, DeviceCertificate]:
        inv, now = self.invitation, now or datetime.now(UTC)
        inv._open(now)  # not _usable: this attempt was counted when challenged, even if it was the last
        if now >= self.expires:
            raise PairingError(f"this pairing attempt expired at {self.expires:%H:%M:%S}; pair again")
        if not hmac.compare_digest(
            proof.confirm, _confirm(self.keys.confirm_device, b"device", self.transcript)
        ):
            raise WrongCodeError(f"wrong setup code ({inv.attempts_left} attempts left)")
        try:
            opened = _unseal(self.keys.seal_request, _label(b"device-request", self.context), proof.sealed)
            req = DeviceRequest.model_validate_json(opened)
        except ValueError as exc:
            raise PairingError(f"bad device request: {exc}") from exc
        cert = inv.root.issue(
            (VerifyKey(bytes.fromhex(req.sign_key)), PublicKey(bytes.fromhex(req.box_key))),
            name=req.name,
            profile=req.profile,
            requests=[t for t in req.requests if t in inv.approved_requests],
            serves=[t for t in req.serves if t in inv.serves],
            device_class=inv.device_class,
            may_correct=inv.may_correct,
        )
        broker_cert = broker_ca = None
        if inv.issue_tls is not None and req.tls_key is not None:
            try:
                broker_cert, broker_ca = inv.issue_tls(cert, req.tls_key)
            except HearthError as exc:
                raise PairingError(f"cannot issue the broker certificate: {exc}") from exc
        inv.used = True
        welcome = Welcome(
            certificate=cert,
            root_key=bytes(inv.root.key.verify_key).hex(),
            crl=inv.root.crl,
            group_key=inv.group_key.hex(),
            group_epoch=inv.group_epoch,
            roster=inv.roster,
            broker_cert=broker_cert,
            broker_ca=broker_ca,
        )
        label = _label(b"welcome", self.context)
        return PairWelcome(
            sealed=_seal(self.keys.seal_welcome, label, welcome.model_dump_json().encode())
        ), cert


class DevicePairing:
    """Device side of one pairing attempt."""

    def __init__(
        self,
        identity: DeviceIdentity,
        code: str,
        invitation_id: str,
        *,
        session: str,
        name: str,
        profile: str,
        requests: list[Task],
        serves: list[Task],
        tls_key: str | None = None,
    ) -> None:
        self.identity = identity
        self.request = DeviceRequest(
            sign_key=bytes(identity.verify_key).hex(),
            box_key=bytes(identity.public_box_key).hex(),
            name=name,
            profile=profile,
            requests=requests,
            serves=serves,
            tls_key=tls_key,
        )
        self._context = _context(invitation_id, session)
        id_device, id_hub = _spake_ids(self._context)
        self._spake = SPAKE2_A(validate_code(code).encode(), idA=id_device, idB=id_hub)
        self._msg = self._spake.start()
        self.hello = PairHello(invitation=invitation_id, session=session, spake=self._msg.hex())
        self._keys: _Keys | None = None

    def prove(self, challenge: PairChallenge) -> PairProof:
        """Check the hub knows the code, then send our keys sealed under this session's request key."""
        try:
            keys = _Keys.derive(self._spake.finish(bytes.fromhex(challenge.spake)), self._context)
        except (SPAKEError, ValueError) as exc:
            raise PairingError(f"bad pairing message from the hub: {exc}") from exc
        transcript = self._context + b"|" + self._msg + bytes.fromhex(challenge.spake)
        if not hmac.compare_digest(challenge.confirm, _confirm(keys.confirm_hub, b"hub", transcript)):
            raise WrongCodeError(
                "the hub could not prove it knows the setup code: wrong code, or not your hub"
            )
        self._keys = keys
        request = self.request.model_dump_json().encode()
        sealed = _seal(keys.seal_request, _label(b"device-request", self._context), request)
        return PairProof(confirm=_confirm(keys.confirm_device, b"device", transcript), sealed=sealed)

    def finish(self, welcome: PairWelcome) -> Welcome:
        """Open the hub's welcome and check the certificate is ours and signed by the pinned root."""
        if self._keys is None:
            raise PairingError("prove() must come before finish()")
        opened = _unseal(self._keys.seal_welcome, _label(b"welcome", self._context), welcome.sealed)
        try:
            result = Welcome.model_validate(json.loads(opened))
        except ValueError as exc:
            raise PairingError(f"bad welcome from the hub: {exc}") from exc
        root = VerifyKey(bytes.fromhex(result.root_key))
        try:
            result.certificate.verify(root)
        except PeerError as exc:
            raise PairingError(f"the certificate from the hub does not verify: {exc}") from exc
        if result.certificate.device_id != self.identity.device_id:
            raise PairingError("the hub issued a certificate for another device")
        return result
