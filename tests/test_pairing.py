"""Pairing: SPAKE2 + key confirmation, expiry, attempt limit, trivial codes, tampering."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from nacl.signing import SigningKey

from edge_agent.mesh.household import HouseholdRoot, Membership
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.pairing import (
    MAX_ATTEMPTS,
    DevicePairing,
    Invitation,
    PairingError,
    PairProof,
    new_code,
    validate_code,
)


@pytest.fixture
def invitation() -> Invitation:
    return Invitation(HouseholdRoot(SigningKey.generate()), group_key=os.urandom(32), group_epoch=2)


def _device(inv: Invitation, code: str | None = None) -> DevicePairing:
    return DevicePairing(
        DeviceIdentity.generate(),
        code or inv.code,
        inv.invitation_id,
        name="fridge",
        profile="fridge-panel",
        requests=["generate"],
        serves=[],
    )


def test_pairing_issues_a_certificate_the_household_accepts(invitation: Invitation) -> None:
    device = _device(invitation)
    challenge, attempt = invitation.challenge(device.hello)
    welcome, cert = attempt.welcome(device.prove(challenge))
    result = device.finish(welcome)
    assert result.certificate == cert and result.group_epoch == 2
    assert result.certificate.requests == ["generate"] and result.certificate.profile == "fridge-panel"
    members = Membership(invitation.root.key.verify_key)
    members.add_certificate(result.certificate)
    assert members.member(device.identity.device_id).name == "fridge"
    with pytest.raises(PairingError, match="already used"):
        invitation.challenge(_device(invitation).hello)


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
    for _ in range(MAX_ATTEMPTS):
        invitation.challenge(
            _device(invitation, "4827-1930" if invitation.code != "4827-1930" else "5827-1930").hello
        )
    with pytest.raises(PairingError, match="closed after 20 wrong codes"):
        invitation.challenge(_device(invitation).hello)


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
