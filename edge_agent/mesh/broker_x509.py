"""The X.509 pieces of the broker PKI (`broker_pki.py`) and the direct links' certificates
(`direct/tls.py`): PEM encodings, names, the CA's key usage, self-signing, CRL numbers. Pure functions
over `cryptography` objects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "CA_USAGE",
    "LEEWAY",
    "crl_number",
    "key_pem",
    "pem",
    "public_key_pem",
    "self_signed",
    "subject_name",
]

LEEWAY = timedelta(minutes=5)  # clocks on appliances drift; certificates start a little in the past

CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def subject_name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hearth household"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # fmt: skip


def self_signed(
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    valid_for: timedelta,
    extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> x509.Certificate:
    """A certificate ``key`` signs for itself (``extensions``: each with whether it is critical), valid
    from a little in the past (``LEEWAY``) for ``valid_for``."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - LEEWAY)
        .not_valid_after(now + valid_for)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


def crl_number(crl: x509.CertificateRevocationList | None) -> int:
    """The number of a CRL (0 for none): CRLs signed before the counter existed carry random numbers,
    and the next one must still be larger."""
    if crl is None:
        return 0
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0
