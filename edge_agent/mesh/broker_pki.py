"""X.509 for the production broker: a small CA on the hub, so Mosquitto can tell devices apart.

The envelopes already authenticate every message, but the broker is the mesh's choke point: without
client certificates any host on the LAN could subscribe to the household's topics (ciphertext, but
also who talks to whom, and when) or flood them. With them, Mosquitto's ``acl_file`` patterns confine
each device to its own topics (``use_identity_as_username``: the certificate's CN is the device id).

The hub's CA issues a client certificate to each device during pairing (the device sends its TLS
public key inside the SPAKE2-sealed request, so the code binds it) and lists revoked devices' serials
in a CRL that Mosquitto checks. P-256 ECDSA rather than Ed25519: every TLS stack on appliances
(mbedTLS, BearSSL, older OpenSSL) speaks it. A separate key from the household root on purpose: the
root signs Hearth certificates only, this CA signs X.509 only.

Files in the mesh state directory (owner-only):

  broker-ca.key, broker-issued.json   hub only: the CA key, serials issued per device, last CRL number
  broker-ca.crt                       every device: the pinned CA (verifies the broker, too)
  broker-client.key, broker-client.crt  this device's TLS client identity
  broker-crl.pem                      hub only: revoked client certificates, for Mosquitto's crlfile
  broker-pki.lock                     hub only: serialises changes to the two files above

The CRL is short-lived (`CRL_LIFETIME`, days): a revoked device must not stay trusted by a broker
that missed a reload, and Mosquitto rereads ``crlfile`` only on SIGHUP. The running hub agent signs
it again before it runs out (`crl_due`, `edge_agent.mesh.broker_crl`) and reloads every Mosquitto
started on a config `hearth broker config` wrote (`reload_brokers`); `hearth household revoke` does
the same at once. Mosquitto adds each CRL it loads to its store and OpenSSL uses the newest valid
one, so a reload after a renewal or a revocation takes effect for new connections.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import ssl
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent.errors import HearthError, IdentityError
from edge_agent.mesh.broker_reload import ReloadResult, reload_mosquitto, write_public
from edge_agent.mesh.broker_x509 import CA_USAGE as _CA_USAGE
from edge_agent.mesh.broker_x509 import LEEWAY as _LEEWAY
from edge_agent.mesh.broker_x509 import crl_number as _crl_number
from edge_agent.mesh.broker_x509 import key_pem as _key_pem
from edge_agent.mesh.broker_x509 import pem as _pem
from edge_agent.mesh.broker_x509 import public_key_pem, self_signed
from edge_agent.mesh.broker_x509 import subject_name as _name
from edge_agent.mesh.files import read_private, write_private
from edge_agent.mesh.household import DeviceCertificate

__all__ = [
    "CRL_LIFETIME",
    "CRL_RENEW_BEFORE",
    "BrokerPki",
    "PkiError",
    "ReloadResult",
    "broker_certificate_issuer",
    "public_key_pem",
    "reload_mosquitto",
    "write_public",
]

CRL_LIFETIME = timedelta(days=7)
"""How long a broker CRL is valid. Mosquitto (OpenSSL) refuses every client certificate once its CRL
has expired, so the hub agent renews it well before (`CRL_RENEW_BEFORE`) and reloads Mosquitto."""
CRL_RENEW_BEFORE = timedelta(days=4)
"""Renew once the CRL expires within this: renewals every ~3 days leave 4 to notice a failing one."""


class PkiError(HearthError):
    """The broker PKI files are missing, unreadable or inconsistent."""


class _Issued(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = 1
    serials: dict[str, list[int]] = Field(default_factory=dict)
    """Device id -> every client certificate serial issued to it (all are revoked together)."""
    crl_copies: list[Path] = Field(default_factory=list)
    """Where the broker reads the CRL (`hearth broker config --out`); refreshed on every revocation."""
    crl_number: int = Field(default=0, ge=0)
    """Number of the newest CRL signed: RFC 5280 wants each new CRL's number strictly larger."""
    broker_configs: list[Path] = Field(default_factory=list)
    """Mosquitto configs that read the CRL (`hearth broker config --out`): reloaded after a new CRL."""


class BrokerPki:
    """The broker certificates of one device's mesh state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.ca_key_path = state_dir / "broker-ca.key"
        self.ca_cert_path = state_dir / "broker-ca.crt"
        self.issued_path = state_dir / "broker-issued.json"
        self.crl_path = state_dir / "broker-crl.pem"
        self.client_key_path = state_dir / "broker-client.key"
        self.client_cert_path = state_dir / "broker-client.crt"

    # -- any device -----------------------------------------------------------------------------------

    def has_client_identity(self) -> bool:
        return self.client_cert_path.is_file() and self.client_key_path.is_file()

    def client_key(self) -> ec.EllipticCurvePrivateKey:
        """This device's TLS key, created on first use (it never leaves the device)."""
        if not self.client_key_path.exists():
            write_private(self.client_key_path, _key_pem(ec.generate_private_key(ec.SECP256R1())))
        try:
            key = serialization.load_pem_private_key(read_private(self.client_key_path), None)
        except (OSError, ValueError) as exc:
            raise IdentityError(f"{self.client_key_path}: unreadable TLS key ({exc})") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise IdentityError(f"{self.client_key_path}: not an EC private key")
        return key

    def install(self, client_cert_pem: str, ca_pem: str) -> None:
        """Keep the client certificate the hub issued and pin the hub's CA."""
        cert = x509.load_pem_x509_certificate(client_cert_pem.encode())
        ca = x509.load_pem_x509_certificate(ca_pem.encode())
        if cert.public_key() != self.client_key().public_key():
            raise PkiError("the hub issued a TLS certificate for another key")
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError) as exc:
            raise PkiError(f"the TLS certificate from the hub is not signed by its CA: {exc}") from exc
        write_private(self.ca_cert_path, ca_pem)
        write_private(self.client_cert_path, client_cert_pem)

    def tls_context(
        self, ca: Path | None = None, cert: Path | None = None, key: Path | None = None
    ) -> ssl.SSLContext:
        """A member's TLS 1.3 context for the broker: the pinned CA and this device's client identity
        (each overridable by an operator's own files)."""
        ca = ca or (self.ca_cert_path if self.ca_cert_path.is_file() else None)
        cert = cert or (self.client_cert_path if self.has_client_identity() else None)
        key = key or (self.client_key_path if cert == self.client_cert_path else None)
        for label, path in (("tls_ca", ca), ("tls_cert", cert), ("tls_key", key)):
            if path is not None and not path.is_file():
                raise PkiError(f"mesh.{label}: {path}: no such file")
        if key == self.client_key_path:
            read_private(key)  # our own key: refused (by name) if it is a symlink or others can read it
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        return ctx

    # -- hub: the CA ----------------------------------------------------------------------------------

    def has_ca(self) -> bool:
        return self.ca_key_path.is_file() and self.ca_cert_path.is_file()

    def create_ca(self, household_id: str, valid_for: timedelta = timedelta(days=3650)) -> None:
        if self.has_ca():
            return
        key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (_CA_USAGE, True),
            (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        )
        cert = self_signed(key, _name(f"Hearth broker CA {household_id}"), valid_for, ca)
        write_private(self.ca_key_path, _key_pem(key))
        write_private(self.ca_cert_path, _pem(cert))
        self.write_crl([])

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if not self.has_ca():
            raise PkiError(f"{self.dir} holds no broker CA; run `hearth broker config` on the hub")
        try:
            key = serialization.load_pem_private_key(read_private(self.ca_key_path), None)
            cert = x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"{self.dir}: unreadable broker CA ({exc})") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.ca_key_path}: not an EC private key")
        return key, cert

    def ca_pem(self) -> str:
        return self.ca_cert_path.read_text()

    def _issue(
        self,
        subject: str,
        public_key: ec.EllipticCurvePublicKey,
        usage: x509.ObjectIdentifier,
        not_after: datetime,
        names: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        ca_key, ca_cert = self._ca()
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _LEEWAY)
            .not_valid_after(min(not_after, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    def issue_client(self, device_id: str, public_pem: str, not_after: datetime) -> str:
        """A client certificate with CN = device id for ``public_pem`` (a P-256 public key)."""
        try:
            public = serialization.load_pem_public_key(public_pem.encode())
        except ValueError as exc:
            raise PkiError(f"the device's TLS public key is not valid PEM: {exc}") from exc
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name != "secp256r1":
            raise PkiError("the device's TLS public key must be a P-256 key")
        cert = self._issue(device_id, public, ExtendedKeyUsageOID.CLIENT_AUTH, not_after)
        with self._locked():
            issued = self._issued()
            issued.serials.setdefault(device_id, []).append(cert.serial_number)
            write_private(self.issued_path, issued.model_dump_json(indent=1))
        return _pem(cert)

    def issue_own_client(self, device_id: str, not_after: datetime) -> None:
        """The hub's own client certificate (it pairs nobody to itself)."""
        cert = self.issue_client(device_id, public_key_pem(self.client_key()), not_after)
        write_private(self.client_cert_path, cert)

    def issue_server(
        self,
        hostnames: list[str],
        cert_path: Path,
        key_path: Path,
        valid_for: timedelta = timedelta(days=825),
    ) -> None:
        """The broker's certificate; agents verify it against the pinned CA and these names."""
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(hostnames):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(hostnames[0], key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH,
                           datetime.now(UTC) + valid_for, names)  # fmt: skip
        write_public(key_path, _key_pem(key), mode=0o640)
        write_public(cert_path, _pem(cert))

    def _issued(self) -> _Issued:
        try:
            return _Issued.model_validate_json(self.issued_path.read_bytes())
        except FileNotFoundError:
            return _Issued()
        except (OSError, ValidationError) as exc:
            raise PkiError(f"{self.issued_path}: unreadable ({exc})") from exc

    def write_crl(
        self,
        revoked_devices: Iterable[str],
        *,
        now: datetime | None = None,
        lifetime: timedelta = CRL_LIFETIME,
    ) -> int:
        """Revoke every client certificate issued to these devices, and keep every serial the current
        CRL lists (revocation is never undone); returns how many serials are listed.

        The CRL is valid for ``lifetime`` (days, not years): the hub agent renews it before it runs
        out (`crl_due`, `edge_agent.mesh.broker_crl`), so a broker left with an old one does not go
        on trusting it. Signed under the PKI lock, so an invitation issuing a certificate and a
        renewal cannot lose each other's writes."""
        key, cert = self._ca()
        now = now or datetime.now(UTC)
        with self._locked():
            issued = self._issued()
            current = self._current_crl(cert)
            number = max(issued.crl_number, _crl_number(current)) + 1
            issued.crl_number = number
            write_private(self.issued_path, issued.model_dump_json(indent=1))  # before the CRL: never reused
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(cert.subject)
                .last_update(now - _LEEWAY)
                .next_update(now + lifetime)
                .add_extension(x509.CRLNumber(number), critical=False)
            )
            listed: dict[int, datetime] = {}
            if current is not None:
                listed = {r.serial_number: r.revocation_date_utc for r in current}
            for device in revoked_devices:
                for serial in issued.serials.get(device, []):
                    listed.setdefault(serial, now)
            for serial, when in sorted(listed.items()):
                entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
                builder = builder.add_revoked_certificate(entry)
            pem = builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
            write_private(self.crl_path, pem)
            for copy in issued.crl_copies:
                if copy.parent.is_dir():
                    write_public(copy, pem)
        return len(listed)

    def crl_due(self, now: datetime | None = None, renew_before: timedelta = CRL_RENEW_BEFORE) -> bool:
        """Whether the CRL must be signed again: missing, unreadable, or expiring within ``renew_before``."""
        now = now or datetime.now(UTC)
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except (OSError, ValueError):
            return True
        next_update = crl.next_update_utc
        return next_update is None or next_update - now <= renew_before

    def _current_crl(self, ca: x509.Certificate) -> x509.CertificateRevocationList | None:
        """The CRL on disk if this CA signed it (None if there is none)."""
        try:
            crl = x509.load_pem_x509_crl(self.crl_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise PkiError(f"{self.crl_path}: unreadable CRL ({exc}); remove it to start over") from exc
        public = ca.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(public):
            raise PkiError(f"{self.crl_path}: not signed by this broker CA; remove it to start over")
        return crl

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialises read-modify-write of broker-issued.json and the CRL across processes."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / "broker-pki.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def record_broker(self, config: Path) -> None:
        """Remember a Mosquitto config that reads this CRL, so `reload_brokers` finds its process."""
        with self._locked():
            issued = self._issued()
            if config.resolve() not in issued.broker_configs:
                issued.broker_configs.append(config.resolve())
                write_private(self.issued_path, issued.model_dump_json(indent=1))

    def reload_brokers(self) -> ReloadResult:
        """SIGHUP every running Mosquitto started on a recorded config (`mosquitto -c <config>`):
        it rereads its CRL (and certificates) on a reload. What could not be reloaded is said."""
        return reload_mosquitto(self._issued().broker_configs)

    def publish_crl(self, path: Path) -> None:
        """Copy the CRL to where the broker reads it, now and after every future revocation."""
        with self._locked():
            write_public(path, self.crl_path.read_text())
            issued = self._issued()
            if path.resolve() not in issued.crl_copies:
                issued.crl_copies.append(path.resolve())
                write_private(self.issued_path, issued.model_dump_json(indent=1))


def broker_certificate_issuer(state_dir: Path) -> Callable[[DeviceCertificate, str], tuple[str, str]] | None:
    """For an invitation: issue the new device's broker client certificate, if this hub runs the CA."""
    pki = BrokerPki(state_dir)
    if not pki.has_ca():
        return None

    def issue(cert: DeviceCertificate, tls_public_pem: str) -> tuple[str, str]:
        return pki.issue_client(cert.device_id, tls_public_pem, cert.expires_at), pki.ca_pem()

    return issue
