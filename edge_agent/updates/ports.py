"""What the root hands the updater, so it never reaches into the service: the mesh through its public
`FeaturePort`, and these values, who this device is and its [updates] settings, read once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from nacl.signing import SigningKey, VerifyKey

from edge_agent.mesh.household import DeviceCertificate, Membership
from edge_agent.mesh.state import HouseholdState

if TYPE_CHECKING:
    from edge_agent.config import UpdatesSection

__all__ = ["DeviceFacts", "UpdateSettings"]


@dataclass(frozen=True, kw_only=True)
class DeviceFacts:
    """Who this device is, for its updates: the root reads them from the household state."""

    certificate: DeviceCertificate
    """Its id and class (a manifest names the classes it is for)."""
    root_key: VerifyKey
    household_id: str
    """The household's root key and id, which the update trust is anchored to."""
    signing_key: SigningKey
    """Signs this device's install reports."""
    state_dir: Path
    """The household state directory: update trust, approvals and staging live below it."""

    @classmethod
    def of(cls, state: HouseholdState, membership: Membership, certificate: DeviceCertificate) -> DeviceFacts:
        return cls(
            certificate=certificate, root_key=membership.root_key, household_id=membership.household_id,
            signing_key=state.identity.signing_key, state_dir=state.dir,
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class UpdateSettings:
    """The [updates] section as the updater uses it (`of`), with where the broker is."""

    interval_s: float = 300.0
    """How often to ask peers what they hold (also: as soon as one announces a newer pack)."""
    quota_mb: int | None = None
    direct: bool = False
    """Fetch chunks over direct links to holders (else through the broker only)."""
    direct_address: str | None = None
    """Where direct links listen when this device serves (None: the address it reaches the broker from)."""
    direct_port: int = 0
    approval: Literal["automatic", "ask"] = "automatic"
    """"ask": newer packs wait for a controller's approval (`UpdateApproval`) or an explicit pull."""
    broker: tuple[str, int] | None = None
    """The broker's host and port: the address this device reaches it from is its own on the LAN."""

    @classmethod
    def of(cls, section: UpdatesSection, broker: tuple[str, int]) -> UpdateSettings:
        address = section.direct_address
        return cls(
            interval_s=section.interval_s, quota_mb=section.quota_mb, direct=section.direct,
            direct_address=str(address) if address is not None else None, direct_port=section.direct_port,
            approval=section.approval, broker=broker,
        )  # fmt: skip
