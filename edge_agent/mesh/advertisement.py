"""The household's zeroconf advertisement (DNS-SD ``_hearth._tcp.local.``): its name and TXT contract.

A hub tells the LAN "a Hearth household is here, its broker is there" so Home Assistant's zeroconf
integration can offer to join it. Pure data: no zeroconf, no sockets, no agent config, so the Home
Assistant component (which installs the mesh library alone) validates what it receives with the same
model the agent advertises with. Nothing secret is in it: the household id and a device name are
visible to everyone on the LAN; keys, certificates and setup codes never are.

Contract, version 1 (TXT keys are ASCII, case-insensitive per RFC 6763 §6.4):

    v=1  hh=<household id, 16 hex>  broker=<mqtt[s]://host:port>  name=<device name>  class=<device class>

Instance name: ``<device name> (<first 8 hex of hh>)._hearth._tcp.local.``, at most 63 bytes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import unicodedata
from collections.abc import Mapping
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.errors import MalformedMessageError
from edge_agent.tasks import DeviceClass
from edge_agent.validation import format_validation_error

__all__ = [
    "MAX_INSTANCE_BYTES",
    "SERVICE_TYPE",
    "AdvertisementError",
    "HouseholdAdvert",
    "ascii_name",
    "host_label",
    "instance_label",
]

SERVICE_TYPE = "_hearth._tcp.local."
MAX_INSTANCE_BYTES = 63
"""DNS label limit for the instance part (RFC 6763 §4.1.1)."""
MAX_TXT_BYTES = 512
"""The whole TXT record, as DNS carries it (length bytes included); ours is about 120."""
MAX_TXT_KEYS = 16
MAX_NAME_CHARS = 64
MAX_BROKER_CHARS = 200
_TXT_KEYS = frozenset({"v", "hh", "broker", "name", "class"})

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*\.?$")
_BROKER = re.compile(r"^(?P<scheme>mqtts?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[^/:@\[\]\s]+):(?P<port>\d{1,5})/?$")


class AdvertisementError(MalformedMessageError):
    """A zeroconf advertisement that is not a valid Hearth household advert: it is ignored."""


def _clean(text: str) -> str:
    """NFC, control characters gone, runs of whitespace as one space, trimmed."""
    text = _CONTROL.sub(" ", unicodedata.normalize("NFC", text))
    return " ".join(text.split())


def ascii_name(name: str) -> str:
    """The device name as printable ASCII for TXT (accents folded: "Küche" -> "Kuche"), at most
    MAX_NAME_CHARS; "hearth" when nothing printable is left."""
    folded = unicodedata.normalize("NFKD", _clean(name)).encode("ascii", "ignore").decode()
    return " ".join(folded.split())[:MAX_NAME_CHARS].strip() or "hearth"


def instance_label(name: str, household_id: str) -> str:
    """``<name> (<hh[:8]>)``: UTF-8 at most 63 bytes, no control characters, no dots or backslashes
    (which other DNS-SD stacks would read as label separators or escapes); the name is cut on a
    character boundary to make room for the household suffix."""
    suffix = f" ({household_id[:8]})"
    clean = _clean(name.replace(".", "-").replace("\\", "-")) or "hearth"
    room = MAX_INSTANCE_BYTES - len(suffix.encode())
    cut = clean.encode()[:room].decode("utf-8", "ignore").rstrip()
    return f"{cut or 'hearth'}{suffix}"


def host_label(household_id: str, instance: str) -> str:
    """An mDNS host name of our own (SRV target), so we never claim the machine's hostname (Avahi's):
    unique per advertised instance, derived from what the advert already shows."""
    tag = hashlib.blake2b(instance.encode(), digest_size=4).hexdigest()
    return f"hearth-{household_id[:8]}-{tag}.local."


class HouseholdAdvert(BaseModel):
    """The TXT properties of a household advertisement (version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    v: Literal["1"] = "1"
    hh: str = Field(pattern=r"^[0-9a-f]{16}$")
    """The household id (BLAKE2b-64 of its root key): which household, not a way into it."""
    broker: str = Field(max_length=MAX_BROKER_CHARS)
    """``mqtt://host:port`` or ``mqtts://host:port``, as a device on the LAN should connect."""
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    device_class: DeviceClass = Field(alias="class")

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        match = _BROKER.fullmatch(value)
        if match is None:
            raise ValueError(f"must be mqtt://host:port or mqtts://host:port, got {value[:80]!r}")
        host, port = match["host"], int(match["port"])
        if not 1 <= port <= 65535:
            raise ValueError(f"port {port} is out of range 1-65535")
        if host.startswith("["):
            try:
                ipaddress.IPv6Address(host[1:-1])
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv6 address") from None
        elif not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{host[:80]!r} is not a host name or IPv4 address")
        return value.rstrip("/")

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not _PRINTABLE_ASCII.fullmatch(value):
            raise ValueError("must be printable ASCII")
        return value

    @property
    def broker_host_port(self) -> tuple[str, int]:
        """Host (IPv6 without brackets) and port of the advertised broker."""
        match = _BROKER.fullmatch(self.broker)
        assert match is not None  # validated
        return match["host"].strip("[]"), int(match["port"])

    @property
    def tls(self) -> bool:
        return self.broker.startswith("mqtts://")

    def properties(self) -> dict[str, str]:
        """The TXT properties, in contract order."""
        return {
            "v": self.v,
            "hh": self.hh,
            "broker": self.broker,
            "name": self.name,
            "class": self.device_class,
        }

    def names_instance(self, name: str) -> bool:
        """Whether a DNS-SD instance name (``<device name> (<hh[:8]>)._hearth._tcp.local.``) is this
        household's: an advert whose TXT and instance name disagree is not to be trusted."""
        return name.lower().endswith(f" ({self.hh[:8]}).{SERVICE_TYPE}")

    @classmethod
    def parse(cls, properties: Mapping[str, str | bytes | None] | Mapping[bytes, bytes | None]) -> Self:
        """Validate TXT properties as received (python-zeroconf's bytes, or Home Assistant's decoded
        strings). Unknown keys are ignored (RFC 6763 §6.7: later versions may add keys); anything
        oversized, non-ASCII, duplicated, missing or malformed raises AdvertisementError naming it."""
        if len(properties) > MAX_TXT_KEYS:
            raise AdvertisementError(f"zeroconf TXT: {len(properties)} keys, more than {MAX_TXT_KEYS}")
        fields: dict[str, str] = {}
        size = 0
        for raw_key, raw_value in properties.items():
            key, value = _ascii(raw_key, "key"), None if raw_value is None else _ascii(raw_value, "value")
            entry = len(key) + (0 if value is None else 1 + len(value))
            if entry > 255:
                raise AdvertisementError(f"zeroconf TXT: {key[:20]!r} is {entry} bytes, over DNS's 255")
            size += 1 + entry
            if size > MAX_TXT_BYTES:
                raise AdvertisementError(f"zeroconf TXT: more than {MAX_TXT_BYTES} bytes")
            key = key.lower()
            if key in fields:
                raise AdvertisementError(f"zeroconf TXT: key {key!r} appears twice")
            if key in _TXT_KEYS:
                if value is None:
                    raise AdvertisementError(f"zeroconf TXT: {key!r} has no value")
                fields[key] = value
        if fields.get("v", "1") != "1":
            raise AdvertisementError(f"zeroconf TXT: advert version {fields['v'][:8]!r} is not supported (1)")
        try:
            return cls.model_validate(fields)
        except ValidationError as exc:
            raise AdvertisementError(format_validation_error("zeroconf TXT", exc)) from None


def _ascii(raw: str | bytes, what: str) -> str:
    try:
        text = raw.decode("ascii") if isinstance(raw, bytes) else raw.encode("ascii").decode()
    except UnicodeError:
        raise AdvertisementError(f"zeroconf TXT: a {what} is not ASCII") from None
    if _CONTROL.search(text):
        raise AdvertisementError(f"zeroconf TXT: a {what} holds control characters")
    return text
