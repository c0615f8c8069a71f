"""Household state on disk, in the mesh state directory (default ``<home>/mesh/``; 0700, secrets 0600).

identity.json    this device's keys (see identity.py)
household.json   membership: pinned root key, own certificate, newest CRL, group key, known peers
root.json        hub only: the household root signing key, certificate serial, CRL, group key
counters/        send counter reservation and the replay window (see replay.py)
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from nacl.signing import SigningKey, VerifyKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import HearthError, IdentityError
from edge_agent.mesh.broker_pki import BrokerPki
from edge_agent.mesh.files import read_private, write_private
from edge_agent.mesh.household import DeviceCertificate, HouseholdRoot, Membership, RevocationList
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.node import GroupKeys
from edge_agent.mesh.pairing import Welcome
from edge_agent.tasks import DeviceClass, Task


class NotPairedError(HearthError):
    """This device is not a household member yet."""

    exit_code = 2


def private_dir(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    return d


def state_dir_for(config_state_dir: Path | None, home: Path) -> Path:
    return config_state_dir.expanduser() if config_state_dir is not None else home / "mesh"


class _Stored(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HouseholdFile(_Stored):
    version: int = 1
    root_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    certificate: DeviceCertificate
    crl: RevocationList
    group_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    group_epoch: int = Field(ge=0)
    past_group_keys: dict[int, str] = Field(default_factory=dict)
    retired_at: dict[int, float] = Field(default_factory=dict)
    """When each past key was retired (Unix seconds); past keys are forgotten after a grace period."""
    """Earlier epochs' keys (hex): peers that missed a rotation still use them until rekeyed."""
    peers: list[DeviceCertificate] = Field(default_factory=list)

    def group_keys(self) -> dict[int, bytes]:
        return {e: bytes.fromhex(k) for e, k in self.past_group_keys.items()}

    def group_key_ring(self) -> GroupKeys:
        """The node's key ring; a past key with no recorded retirement counts as retired now."""
        now = time.time()
        past = {e: (bytes.fromhex(k), self.retired_at.get(e, now)) for e, k in self.past_group_keys.items()}
        ring = GroupKeys(bytes.fromhex(self.group_key), self.group_epoch, past)
        ring.prune(now)
        return ring

    def with_past_keys(self, ring: GroupKeys) -> HouseholdFile:
        """This state keeping only the past keys ``ring`` still holds (pruned ones are gone for good)."""
        keep = {e: k for e, k in self.past_group_keys.items() if e in ring.past}
        return self.model_copy(
            update={"past_group_keys": keep, "retired_at": {e: ring.past[e][1] for e in keep}}
        )

    def with_group_key(self, key: bytes, epoch: int) -> HouseholdFile:
        """This state after adopting a newer group key (the current one moves to the past keys)."""
        if epoch <= self.group_epoch:
            return self
        past = {**self.past_group_keys, self.group_epoch: self.group_key}
        retired = {**self.retired_at, self.group_epoch: time.time()}
        return self.model_copy(
            update={
                "group_key": key.hex(),
                "group_epoch": epoch,
                "past_group_keys": past,
                "retired_at": retired,
            }
        )

    @classmethod
    def from_welcome(cls, welcome: Welcome) -> HouseholdFile:
        return cls(
            root_key=welcome.root_key,
            certificate=welcome.certificate,
            crl=welcome.crl,
            group_key=welcome.group_key,
            group_epoch=welcome.group_epoch,
            peers=welcome.roster,
        )


class RootFile(_Stored):
    version: int = 1
    seed: str = Field(pattern=r"^[0-9a-f]{64}$")
    serial: int = Field(ge=0)
    crl: RevocationList
    group_key: str = Field(pattern=r"^[0-9a-f]{64}$")
    group_epoch: int = Field(ge=0)
    issued: list[DeviceCertificate] = Field(default_factory=list)


M = TypeVar("M", bound=_Stored)


def _read(model: type[M], path: Path) -> M:
    """A secret state file (household.json holds the group key, root.json the root key)."""
    try:
        return model.model_validate_json(read_private(path))
    except FileNotFoundError:
        raise
    except (OSError, ValidationError) as exc:
        raise IdentityError(f"{path}: unreadable household state ({exc})") from exc


class HouseholdState:
    """One device's view of its household, loaded from and saved to its mesh state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = private_dir(state_dir)
        self.identity = DeviceIdentity.load_or_create(self.dir / "identity.json")

    @property
    def household_path(self) -> Path:
        return self.dir / "household.json"

    @property
    def root_path(self) -> Path:
        return self.dir / "root.json"

    @property
    def counters_dir(self) -> Path:
        d = self.dir / "counters"
        d.mkdir(exist_ok=True, mode=0o700)
        return d

    @staticmethod
    def exists(state_dir: Path) -> bool:
        """Whether ``state_dir`` holds a household membership (without creating anything there)."""
        return (state_dir / "household.json").is_file()

    def is_member(self) -> bool:
        return self.household_path.exists()

    def is_root(self) -> bool:
        return self.root_path.exists()

    def load(self) -> HouseholdFile:
        try:
            return _read(HouseholdFile, self.household_path)
        except FileNotFoundError:
            raise NotPairedError(
                f"this device ({self.dir}) is not in a household yet: run `hearth household init` "
                "on the hub, or `hearth pair CODE` with a code from `hearth household invite`"
            ) from None

    def save(self, data: HouseholdFile) -> None:
        write_private(self.household_path, data.model_dump_json(indent=1))

    def membership(self) -> tuple[Membership, HouseholdFile]:
        data = self.load()
        membership = Membership(VerifyKey(bytes.fromhex(data.root_key)))
        membership.apply_revocations(data.crl)
        for cert in [data.certificate, *data.peers]:
            membership.add_certificate(cert)
        return membership, data

    def remember(self, membership: Membership) -> None:
        """Persist certificates and the newest CRL learned from peers' presence."""
        data = self.load()
        own = data.certificate.device_id
        peers = sorted((c for d, c in membership.certs.items() if d != own), key=lambda c: c.device_id)
        crl = data.crl
        if membership.crl_version > data.crl.version and membership.crl is not None:
            crl = membership.crl
        if peers != data.peers or crl != data.crl:
            self.save(data.model_copy(update={"peers": peers, "crl": crl}))

    # -- hub side -------------------------------------------------------------------------------------

    def load_root(self) -> tuple[HouseholdRoot, RootFile]:
        try:
            data = _read(RootFile, self.root_path)
        except FileNotFoundError:
            raise NotPairedError(
                f"{self.dir} holds no household root; run `hearth household init` on the hub"
            ) from None
        root = HouseholdRoot(SigningKey(bytes.fromhex(data.seed)))
        root._serial = data.serial
        root.crl = data.crl
        return root, data

    def save_root(self, root: HouseholdRoot, data: RootFile) -> None:
        data = data.model_copy(update={"serial": root._serial, "crl": root.crl})
        write_private(self.root_path, data.model_dump_json(indent=1))

    def init_household(
        self,
        *,
        name: str,
        profile: str,
        requests: list[Task],
        serves: list[Task],
        device_class: DeviceClass = "hub",
    ) -> HouseholdFile:
        """Create the household root on this device (the hub) and make the hub its first member."""
        if self.is_root() or self.is_member():
            raise HearthError(
                f"{self.dir} already belongs to a household; remove that directory to start over"
            )
        root = HouseholdRoot(SigningKey.generate())
        group_key = secrets.token_bytes(32)
        cert = root.issue(
            self.identity,
            name=name,
            profile=profile,
            requests=requests,
            serves=serves,
            device_class=device_class,
            admin=True,
        )
        root_file = RootFile(
            seed=bytes(root.key).hex(),
            serial=0,
            crl=root.crl,
            group_key=group_key.hex(),
            group_epoch=0,
            issued=[cert],
        )
        self.save_root(root, root_file)
        household = HouseholdFile(
            root_key=bytes(root.key.verify_key).hex(),
            certificate=cert,
            crl=root.crl,
            group_key=group_key.hex(),
            group_epoch=0,
        )
        self.save(household)
        return household

    def record_issued(self, root: HouseholdRoot, cert: DeviceCertificate) -> None:
        _, data = self.load_root()
        self.save_root(root, data.model_copy(update={"issued": [*data.issued, cert]}))
        household = self.load()
        peers = [p for p in household.peers if p.device_id != cert.device_id] + [cert]
        self.save(household.model_copy(update={"peers": peers}))

    def revoke(self, device_ids: list[str]) -> RevocationList:
        """Sign a new CRL and rotate the household group key, so the revoked devices cannot read
        broadcasts from now on (the running hub agent hands the new key to the remaining members)."""
        root, data = self.load_root()
        crl = root.revoke(*device_ids, now=datetime.now(UTC))
        key, epoch = secrets.token_bytes(32), data.group_epoch + 1
        self.save_root(root, data.model_copy(update={"group_key": key.hex(), "group_epoch": epoch}))
        household = self.load().with_group_key(key, epoch)
        self.save(household.model_copy(update={"crl": crl}))
        pki = BrokerPki(self.dir)
        if pki.has_ca():
            pki.write_crl(crl.revoked)  # the broker refuses their TLS client certificates too
        return crl
