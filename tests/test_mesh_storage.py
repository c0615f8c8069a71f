"""Mesh state on disk: atomic writes a planted symlink cannot redirect, crash safety, secret files refused
when others can read them, broker files written the same way, CRL numbers that only grow."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from edge_agent.config import MeshSection
from edge_agent.connect import tls_context
from edge_agent.errors import IdentityError
from edge_agent.mesh.broker import mosquitto_config
from edge_agent.mesh.broker_pki import BrokerPki
from edge_agent.mesh.files import write_private
from edge_agent.mesh.identity import DeviceIdentity
from edge_agent.mesh.state import HouseholdState
from edge_agent.tasks import TASKS


def exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


# -- atomic writes ------------------------------------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file elsewhere that an attacker would like the agent to overwrite."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_text("precious")
    path.chmod(0o644)
    return path


@pytest.mark.parametrize("planted", ["household.json.tmp", ".household.json.tmp", "household.json"])
def test_a_planted_symlink_does_not_redirect_a_private_write(
    tmp_path: Path, victim: Path, planted: str
) -> None:
    state = tmp_path / "mesh"
    state.mkdir(mode=0o700)
    (state / planted).symlink_to(victim)
    write_private(state / "household.json", "secret")
    assert victim.read_text() == "precious" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    written = state / "household.json"
    assert not written.is_symlink() and written.read_text() == "secret"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


def test_a_crash_mid_write_leaves_the_old_file_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "root.json"
    write_private(path, "old")

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match=exactly("simulated crash before the rename")):
        write_private(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root.json"]


def test_the_file_then_the_directory_are_fsynced_around_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        fsync(fd)

    def record_replace(src: str, dst: str) -> None:
        events.append("rename")
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    write_private(tmp_path / "identity.json", "{}")
    assert events == ["fsync file", "rename", "fsync dir"]


# -- secret files are read only when nobody else can ---------------------------------------------------


@pytest.fixture
def hub(tmp_path: Path) -> HouseholdState:
    state = HouseholdState(tmp_path / "hub")
    state.init_household(name="hub", profile="hub", requests=list(TASKS), serves=[])
    pki = BrokerPki(state.dir)
    pki.create_ca("0" * 16)
    pki.client_key()
    return state


def _loaders(hub: HouseholdState) -> dict[str, Callable[[], object]]:
    pki = BrokerPki(hub.dir)
    return {
        "identity.json": lambda: DeviceIdentity.load(hub.dir / "identity.json"),
        "household.json": hub.load,
        "root.json": hub.load_root,
        "broker-client.key": pki.client_key,
        "broker-ca.key": lambda: pki.write_crl([]),
    }


SECRETS = ["identity.json", "household.json", "root.json", "broker-client.key", "broker-ca.key"]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.mark.parametrize("name", SECRETS)
def test_a_secret_file_others_can_read_is_refused_by_name(hub: HouseholdState, name: str) -> None:
    path = hub.dir / name
    path.chmod(0o644)
    before = _snapshot(hub.dir)
    message = f"{path}: secret file is accessible by other users (mode 0o644); run `chmod 600 {path}`"
    with pytest.raises(IdentityError, match=exactly(message)):
        _loaders(hub)[name]()
    assert _snapshot(hub.dir) == before  # nothing written: no CRL signed, no key replaced
    path.chmod(0o600)
    _loaders(hub)[name]()  # the fix the message names works


@pytest.mark.parametrize("name", SECRETS)
def test_a_symlinked_secret_file_is_refused_by_name(hub: HouseholdState, tmp_path: Path, name: str) -> None:
    path = hub.dir / name
    elsewhere = tmp_path / f"copy-of-{name}"
    path.rename(elsewhere)
    path.symlink_to(elsewhere)
    before = _snapshot(hub.dir)
    message = (
        f"{path}: secret file is a symbolic link; replace it with the file itself and run `chmod 600 {path}`"
    )
    with pytest.raises(IdentityError, match=exactly(message)):
        _loaders(hub)[name]()
    assert _snapshot(hub.dir) == before and elsewhere.is_file()


def test_the_agent_refuses_its_tls_key_when_others_can_read_it(hub: HouseholdState) -> None:
    pki = BrokerPki(hub.dir)
    pki.issue_own_client(hub.identity.device_id, datetime.now(UTC) + timedelta(days=1))
    mesh = MeshSection(enabled=True, broker="mqtts://localhost:8883")
    assert tls_context(mesh, hub.dir) is not None  # control: 0600 loads
    path = pki.client_key_path
    path.chmod(0o640)
    message = f"{path}: secret file is accessible by other users (mode 0o640); run `chmod 600 {path}`"
    with pytest.raises(IdentityError, match=exactly(message)):
        tls_context(mesh, hub.dir)


# -- broker files ---------------------------------------------------------------------------------------


def test_broker_config_is_written_atomically_through_no_symlink(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "mosquitto"
    out.mkdir()
    (out / "acl").symlink_to(victim)
    (out / "mosquitto.conf.tmp").symlink_to(victim)
    files = mosquitto_config(out, "f" * 16, "a" * 32, cafile=out / "ca.crt", certfile=out / "server.crt",
                             keyfile=out / "server.key", crlfile=out / "crl.pem")  # fmt: skip
    assert victim.read_text() == "precious"
    for path in (files.config, files.member_acl):
        assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert files.member_acl.read_text().splitlines()[1] == "pattern write hearth/ffffffffffffffff/presence/%u"


def _crl_number(path: Path) -> int:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def test_crl_numbers_grow_by_one_also_across_a_reload(tmp_path: Path) -> None:
    pki = BrokerPki(tmp_path / "hub")
    pki.create_ca("0" * 16)  # signs the first, empty CRL
    first = _crl_number(pki.crl_path)
    published = tmp_path / "broker" / "crl.pem"
    published.parent.mkdir()
    pki.publish_crl(published)
    pki.write_crl([])
    assert _crl_number(pki.crl_path) == first + 1 == _crl_number(published)
    BrokerPki(tmp_path / "hub").write_crl(["a" * 32])  # another process, later
    assert _crl_number(pki.crl_path) == first + 2 == _crl_number(published)


def test_the_crl_number_continues_above_one_signed_before_the_counter(tmp_path: Path) -> None:
    pki = BrokerPki(tmp_path / "hub")
    pki.create_ca("0" * 16)
    key, cert = pki._ca()
    now = datetime.now(UTC)
    old = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_extension(x509.CRLNumber(1 << 61), critical=False)  # a random number from the old scheme
        .sign(key, hashes.SHA256())
    )
    pki.crl_path.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    pki.issued_path.write_text('{"version": 1, "serials": {}, "crl_copies": []}')  # no counter yet
    pki.write_crl([])
    assert _crl_number(pki.crl_path) == (1 << 61) + 1
