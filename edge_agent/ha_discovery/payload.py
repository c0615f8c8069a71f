"""Home Assistant MQTT device discovery: what one agent publishes, as pure functions of its state.

One retained JSON document per device at ``<prefix>/device/<object_id>/config`` (device-based
discovery, Home Assistant >= 2024.11), abbreviated as in HA's ``mqtt/abbreviations.py``; one JSON state
document and an ``online``/``offline`` availability topic shared by every component. Ids in topics and
component keys are limited to ``[a-zA-Z0-9_-]`` (HA's ``TOPIC_MATCHER``), and the models refuse
anything else, so a device name never reaches a topic unchecked.

A paired device's object id is a keyed hash of its device id (`discovery_id`), keyed by the household's
root public key, which only members hold (it travels in the SPAKE2-sealed welcome and nowhere in
plaintext): stable across renames and restarts, computable by any member that must clear a revoked
device's config or name the hub a device hangs off, and unlinkable to the mesh's device ids (which the
household broker's topics show) for anyone who can read Home Assistant's broker but is not a member.
The device id is not published either (no serial number). A device outside a household uses a slug
of its name.

What a state document reveals is coarsened too (`DeviceState.USAGE`): queue depth, request counters
and free model RAM (a model loads on first use) are sampled once per usage window of wall-clock time
(`DiscoverySettings.usage_interval_s`, default 15 minutes), so the broker sees at most how busy a device
was per window, not when each request came.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

SAFE_ID = r"^[a-zA-Z0-9_-]+$"
SafeId = Annotated[str, StringConstraints(pattern=SAFE_ID, max_length=128)]
"""An id Home Assistant accepts in a discovery topic or as a component key."""

TOPIC_PREFIX = r"^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)*$"
STATE_ROOT = "hearth/ha"
"""Where states and availability live (outside the discovery prefix, which HA parses as configs)."""
ONLINE, OFFLINE = b"online", b"offline"
BIRTH_ONLINE = b"online"
MANUFACTURER = "Hearth"
ORIGIN_URL = "https://github.com/hearth-edge/hearth"

SPEEDS: dict[str, tuple[str, str]] = {
    "generate": ("Chat speed", "tok/s"),
    "embed": ("Embedding speed", "texts/s"),
    "translate": ("Translation speed", "sentences/s"),
}
"""Per task: the sensor's name and the unit of the rate its self-benchmark measures."""


def slug(name: str, max_len: int = 40) -> str:
    """Lowercase ASCII letters, digits and single underscores: 'Küche Kühlschrank' -> 'kuche_kuhlschrank'."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")[:max_len].strip("_")


def discovery_id(device_id: str, household_key: bytes) -> str:
    """A paired device's discovery object id: BLAKE2b keyed with the household's root public key over
    the device id (32 hex). Stable, the same on every member, unlinkable without the key."""
    if not re.fullmatch(SAFE_ID, device_id):
        raise ValueError(f"device id {device_id!r} is not a safe MQTT discovery id")
    if len(household_key) != 32:
        raise ValueError("the household key for discovery ids is the 32-byte root public key")
    digest = hashlib.blake2b(device_id.encode(), key=household_key, person=b"hearth-ha-disc", digest_size=16)
    return digest.hexdigest()


def object_id_for(device_id: str | None, name: str, household_key: bytes | None = None) -> str:
    """The discovery object id: `discovery_id` when paired (``household_key`` required), else the
    name's slug. A lossy slug gets a short hash of the exact name, so 'Küche' and 'Kuche', or two names
    in a non-Latin script, differ."""
    if device_id is not None:
        if household_key is None:
            raise ValueError("a paired device's discovery id needs the household key")
        return discovery_id(device_id, household_key)
    base = slug(name)
    if base == name:
        return f"hearth_{base}"
    digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
    return f"hearth_{base}_{digest}" if base else f"hearth_{digest}"


def identifier(object_id: str) -> str:
    """The device's identifier in HA's device registry (and what a member's ``via_device`` names)."""
    return f"hearth_{object_id}"


class Topics(BaseModel):
    """Where one device's discovery documents live."""

    model_config = ConfigDict(frozen=True)

    prefix: Annotated[str, StringConstraints(pattern=TOPIC_PREFIX)] = "homeassistant"
    object_id: SafeId

    @property
    def config(self) -> str:
        return f"{self.prefix}/device/{self.object_id}/config"

    @property
    def state(self) -> str:
        return f"{STATE_ROOT}/{self.object_id}/state"

    @property
    def availability(self) -> str:
        return f"{STATE_ROOT}/{self.object_id}/availability"

    @property
    def birth(self) -> str:
        """Where Home Assistant announces itself (``online`` after every start)."""
        return f"{self.prefix}/status"

    def all_retained(self) -> tuple[str, ...]:
        return (self.config, self.state, self.availability)


# -- what the agent reports ---------------------------------------------------------------------------


class DeviceDescription(BaseModel):
    """Who the device is (changes rarely: the hub may become known later)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    object_id: SafeId
    name: str = Field(min_length=1, max_length=64)
    model: str = Field(min_length=1)
    """The firmware profile id."""
    device_class: str | None = None
    sw_version: str
    serial: str | None = None
    via: SafeId | None = None
    """The hub's object id, when this device is not the hub and the hub is known."""
    on_mesh: bool = False
    """Whether the device is a household member (adds the mesh connectivity sensor)."""


class DeviceState(BaseModel):
    """The state document: one JSON object every component reads its value from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    queue_depth: int = Field(ge=0)
    requests_served: int = Field(ge=0)
    requests_offloaded: int = Field(ge=0)
    free_model_ram: int = Field(ge=0)
    """MB the model budget has left."""
    speed: dict[str, float] = Field(default_factory=dict)
    """Measured speed per task this device serves, in the task's unit (see SPEEDS)."""
    mesh: Literal["ON", "OFF"] | None = None
    """Connected to the household mesh (None: not a member)."""

    USAGE: ClassVar[tuple[str, ...]] = (
        "queue_depth",
        "requests_served",
        "requests_offloaded",
        "free_model_ram",
    )
    """What says when the device is used: published only as sampled once per usage window."""

    def with_usage_of(self, sample: DeviceState) -> DeviceState:
        """This state with the usage fields of ``sample`` (the current window's)."""
        return self.model_copy(update={key: getattr(sample, key) for key in self.USAGE})

    def encode(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


# -- the discovery document (HA's abbreviations) --------------------------------------------------------


class _Abbreviated(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class Device(_Abbreviated):
    identifiers: list[SafeId] = Field(serialization_alias="ids", min_length=1)
    name: str
    manufacturer: str = Field(serialization_alias="mf")
    model: str = Field(serialization_alias="mdl")
    model_id: str | None = Field(default=None, serialization_alias="mdl_id")
    sw_version: str = Field(serialization_alias="sw")
    serial_number: str | None = Field(default=None, serialization_alias="sn")
    via_device: SafeId | None = None


class Origin(_Abbreviated):
    name: str
    sw_version: str = Field(serialization_alias="sw")
    support_url: str | None = Field(default=None, serialization_alias="url")


class Component(_Abbreviated):
    platform: Literal["sensor", "binary_sensor"] = Field(serialization_alias="p")
    name: str | None = None
    unique_id: SafeId | None = Field(default=None, serialization_alias="uniq_id")
    value_template: str | None = Field(default=None, serialization_alias="val_tpl")
    device_class: str | None = Field(default=None, serialization_alias="dev_cla")
    state_class: Literal["measurement", "total", "total_increasing"] | None = Field(
        default=None, serialization_alias="stat_cla"
    )
    unit_of_measurement: str | None = Field(default=None, serialization_alias="unit_of_meas")
    entity_category: Literal["diagnostic", "config"] | None = Field(
        default=None, serialization_alias="ent_cat"
    )
    icon: str | None = Field(default=None, serialization_alias="ic")
    suggested_display_precision: int | None = Field(default=None, serialization_alias="sug_dsp_prc")


class DiscoveryPayload(_Abbreviated):
    device: Device = Field(serialization_alias="dev")
    origin: Origin = Field(serialization_alias="o")
    availability_topic: str = Field(serialization_alias="avty_t")
    state_topic: str = Field(serialization_alias="stat_t")
    qos: int = Field(default=1, ge=0, le=2)
    components: dict[SafeId, Component] = Field(serialization_alias="cmps")

    def encode(self) -> bytes:
        return json.dumps(self.dump(), separators=(",", ":"), sort_keys=True).encode()


def _value(key: str) -> str:
    return "{{ value_json." + key + " }}"


_LOAD: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("queue_depth", "Queue depth", {"state_class": "measurement", "icon": "mdi:tray-full"}),
    ("free_model_ram", "Free model RAM", {"device_class": "data_size", "unit_of_measurement": "MB",
                                          "state_class": "measurement", "entity_category": "diagnostic"}),
)  # fmt: skip
_MESH: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("requests_served", "Requests served", {"state_class": "total_increasing", "icon": "mdi:counter"}),
    ("requests_offloaded", "Requests offloaded",
     {"state_class": "total_increasing", "icon": "mdi:share-outline"}),
)  # fmt: skip
"""Served for peers and offloaded to peers: only a household member has either."""


def components(desc: DeviceDescription, state: DeviceState) -> dict[str, Component]:
    """The sensors one device has: its load and free model RAM, the measured speed of each task it
    runs; and, as a household member, its served and offloaded requests and mesh connectivity."""
    ident = identifier(desc.object_id)

    def sensor(key: str, name: str, value: str, options: dict[str, Any]) -> Component:
        return Component(platform="sensor", name=name, unique_id=f"{ident}_{key}", value_template=value,
                         **options)  # fmt: skip

    rows = _LOAD + (_MESH if desc.on_mesh else ())
    out = {key: sensor(key, name, _value(key), options) for key, name, options in rows}
    for task in sorted(state.speed):
        if task not in SPEEDS:
            continue  # a task this version has no sensor for
        name, unit = SPEEDS[task]
        options = {"unit_of_measurement": unit, "state_class": "measurement", "icon": "mdi:speedometer",
                   "entity_category": "diagnostic", "suggested_display_precision": 1}  # fmt: skip
        out[f"{task}_speed"] = sensor(f"{task}_speed", name, _value(f"speed.{task}"), options)
    if desc.on_mesh:
        out["mesh"] = Component(
            platform="binary_sensor",
            name="Household mesh",
            unique_id=f"{ident}_mesh",
            value_template=_value("mesh"),
            device_class="connectivity",
            entity_category="diagnostic",
        )
    return out


def discovery_payload(
    desc: DeviceDescription,
    state: DeviceState,
    topics: Topics,
    removed: dict[str, str] | None = None,
) -> DiscoveryPayload:
    """The device's discovery document. ``removed``: component id -> platform of components published
    before and gone now; each is listed with its platform only, which makes HA remove it (no ghosts)."""
    if topics.object_id != desc.object_id:
        raise ValueError(f"topics are for {topics.object_id}, the device is {desc.object_id}")
    cmps = components(desc, state)
    for key, platform in (removed or {}).items():
        if key not in cmps and platform in ("sensor", "binary_sensor"):
            cmps[key] = Component(platform=platform)  # type: ignore[arg-type]  # checked above
    return DiscoveryPayload(
        device=Device(
            identifiers=[identifier(desc.object_id)],
            name=desc.name,
            manufacturer=MANUFACTURER,
            model=desc.model,
            model_id=desc.device_class,
            sw_version=desc.sw_version,
            serial_number=desc.serial,
            via_device=identifier(desc.via) if desc.via and desc.via != desc.object_id else None,
        ),
        origin=Origin(name=MANUFACTURER, sw_version=desc.sw_version, support_url=ORIGIN_URL),
        availability_topic=topics.availability,
        state_topic=topics.state,
        components=cmps,
    )


def published_components(payload: bytes) -> dict[str, str]:
    """Component id -> platform of a discovery document read back from the broker ({} if unreadable)."""
    try:
        doc = json.loads(payload)
        cmps = doc.get("cmps", doc.get("components", {}))
        return {
            k: str(v.get("p", v.get("platform")))
            for k, v in cmps.items()
            if isinstance(k, str) and re.fullmatch(SAFE_ID, k) and isinstance(v, dict)
        }
    except (ValueError, AttributeError):
        return {}
