"""Agent configuration: a TOML file, overridden by ``HEARTH_<SECTION>__<FIELD>`` environment variables.

Errors name where the bad value came from (the file, or the environment variable) and the field path,
e.g. ``config/hub.toml: engines.idle_unload_s: Input should be greater than 0``.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tomllib
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyAddress,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from edge_agent.discovery.settings import AdvertSettings
from edge_agent.errors import ConfigError
from edge_agent.ha_discovery.settings import DiscoverySettings
from edge_agent.mesh.settings import MeshLimits, MeshSettings, broker_host_port
from edge_agent.router_settings import RouterSettings, RoutingPolicy
from edge_agent.validation import field_path
from edge_agent.voice.settings import LOOPBACK, VadSettings, VoiceSettings, WyomingLimits, WyomingSettings

ENV_PREFIX = "HEARTH_"
BROKER_URL = r"^mqtts?://[^/:]+(:\d+)?/?$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AgentSection(_Section):
    name: str = Field(default_factory=lambda: socket.gethostname(), min_length=1, max_length=64)
    """Name this agent shows to users and peers."""
    profile: str = "auto"
    """Firmware profile id, a path to a profile YAML, or 'auto' to detect the host."""
    home: Path | None = None
    """State directory (packs, keys); default $HEARTH_HOME or the user data dir."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class EnginesSection(_Section):
    threads: int | None = Field(default=None, ge=1, le=512)
    """Inference threads; default: the profile's."""
    idle_unload_s: float = Field(default=300.0, gt=0)
    """Unload a model after this many seconds without requests."""
    max_embed_batch: int = Field(default=256, ge=1, le=4096)
    translate_batch_tokens: int | None = Field(default=None, ge=16, le=65536)
    """Padded source tokens per translation batch (bounds peak RAM); default: 512 on devices with a
    model budget under 512 MB, else 2048."""
    verify_on_load: bool = True
    """Re-hash pack files before loading (refuses tampered or corrupt files)."""
    quality_gate: bool = True
    """Check each quantized pack once on this CPU against its recorded reference answers before
    planning with it (int8 kernels differ by instruction set); a pack that fails is not used here."""


class GenerateSection(_Section):
    max_tokens: int = Field(default=256, ge=1, le=8192)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    system_prompt: str | None = None


HOSTPORT = r"^(\[[0-9A-Fa-f:.]+\]|[0-9.]+):\d{1,5}$"


class CoapSection(_Section):
    """The CoAP transport (`[mesh] transports` includes "coap"): members reach each other over UDP with
    no broker, messages protected by OSCORE keyed by the household's own session handshakes."""

    bind: str = Field(default="::", pattern=r"^[0-9A-Fa-f.:]+$")
    """Address to serve on; ``::`` (every interface) is what multicast discovery needs."""
    port: int = Field(default=5683, ge=1, le=65535)
    """UDP port of the agent (one-shot commands use a free one)."""
    advertise: list[str] = Field(default_factory=list, max_length=4)
    """Hosts this device's presence names; default the bound address, or every interface's when bound
    to all."""
    peers: list[str] = Field(default_factory=list, max_length=64)
    """``host:port`` of members to ask for presence at start (a LAN where multicast does not pass)."""
    multicast: bool = True
    """Find members and greet them on All-CoAP-Nodes (224.0.1.187) on every interface that can."""
    zeroconf: bool = True
    """Also advertise and browse ``_hearth-coap._udp`` over mDNS."""
    request_timeout_s: float = Field(default=5.0, gt=0, le=120)

    @field_validator("peers")
    @classmethod
    def _hostports(cls, peers: list[str]) -> list[str]:
        for peer in peers:
            if not re.match(HOSTPORT, peer):
                raise ValueError(f"{peer!r} is not host:port with an IP literal ([v6]:port for IPv6)")
        return peers

    def seeds(self) -> list[tuple[str, int]]:
        found = []
        for peer in self.peers:
            host, _, port = peer.rpartition(":")
            found.append((host.strip("[]"), int(port)))
        return found


class MeshSection(_Section):
    """How this agent joins the household mesh (see `hearth household --help`)."""

    enabled: bool = False
    broker: str = Field(default="mqtt://127.0.0.1:1883", pattern=BROKER_URL)
    """Broker URL; mqtts:// uses TLS, verified against the household's pinned broker CA and with this
    device's client certificate (both arrive with pairing), unless tls_* below name other files."""
    pairing_broker: str | None = Field(default=None, pattern=BROKER_URL)
    """Where `hearth pair` reaches the hub before this device has a client certificate: the pairing
    listener `hearth broker config` writes (mqtts://HOST:8884). Default: the broker above."""
    embedded_broker: bool = False
    """Run an amqtt broker inside this agent on the broker URL's port (the no-install default)."""
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    """CA that signed the broker's certificate; default the pinned <state_dir>/broker-ca.crt."""
    tls_cert: Path | None = None
    """Client certificate; default <state_dir>/broker-client.crt (issued by the hub at pairing)."""
    tls_key: Path | None = None
    """Client key; default <state_dir>/broker-client.key (created on this device, never sent)."""
    state_dir: Path | None = None
    """Keys, certificate and counters; default <home>/mesh. Owner-only permissions."""
    presence_interval_s: float = Field(default=5.0, gt=0, le=600)
    self_benchmark: bool = True
    """Measure each served task briefly at start, so peers route by real speed."""
    coalesce_ms: float = Field(default=4.0, ge=0, le=100)
    """Stream tokens produced within this window travel as one frame (hides token lengths)."""
    pad_bucket_bytes: int = Field(default=256, ge=1, le=65536)
    """Mesh payloads are padded to size buckets of this many bytes; 1 turns padding off."""
    limits: MeshLimits = Field(default_factory=MeshLimits)
    """What a peer can make this device hold or do (`[mesh.limits]`; see edge_agent/mesh/settings.py)."""
    transports: list[Literal["mqtt", "coap"]] = Field(default=["mqtt"], min_length=1, max_length=2)
    """How this device reaches members: "mqtt" through the broker, "coap" directly over UDP with no
    broker (`[mesh.coap]`), or both (a hub that serves members of either kind)."""
    coap: CoapSection = Field(default_factory=CoapSection)
    advertise: Literal["auto", "on", "off"] = "auto"
    """Advertise the household on the LAN over zeroconf (mDNS `_hearth._tcp`) so Home Assistant offers
    to join it: "auto" on hub-class devices only, "on" on this device whatever its class, "off" never.
    Anyone on the LAN then sees the household id, this device's name and the broker's address."""

    @property
    def host_port(self) -> tuple[str, int]:
        return broker_host_port(self.broker)

    @field_validator("transports")
    @classmethod
    def _distinct(cls, transports: list[str]) -> list[str]:
        if len(set(transports)) != len(transports):
            raise ValueError("each transport once")
        return transports

    @model_validator(mode="after")
    def _embedded_broker_on_loopback(self) -> MeshSection:
        host = self.host_port[0]
        if self.embedded_broker and host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(
                f"the embedded broker has no authentication, so it only listens on loopback (broker is "
                f"{self.broker}); for other hosts run Mosquitto (`hearth broker config`)"
            )
        return self

    def advert_settings(self) -> AdvertSettings:
        """The household advert's view of this section (edge_agent.discovery)."""
        return AdvertSettings(mode=self.advertise, broker=self.broker, loopback_only=self.embedded_broker)

    def settings(self) -> MeshSettings:
        """The mesh library's view of this section."""
        return MeshSettings(presence_interval_s=self.presence_interval_s, coalesce_ms=self.coalesce_ms,
                            pad_bucket_bytes=self.pad_bucket_bytes, limits=self.limits)  # fmt: skip


class RoutingSection(RoutingPolicy):
    """Where this agent's own requests run: locally, or on the peer expected to finish first (the keys
    are `edge_agent.router_settings.RoutingPolicy`'s, documented there)."""

    def settings(self) -> RouterSettings:
        """The router's view of this section (its limits at their defaults)."""
        return RouterSettings.model_validate(self.model_dump())


class DemoSection(_Section):
    """What ``hearth run --demo`` (the ``make run`` job) asks the agent."""

    chat: str = "What is the capital of France? Answer in one sentence."
    embed: list[str] = Field(
        default=[
            "Turn off the kitchen lights.",
            "Switch the lights in the kitchen off.",
            "The fridge door is open.",
        ],
        min_length=2,
    )
    translate: list[str] = Field(
        default=["The dishwasher finished at 14:32.", "The fridge door has been open for three minutes."],
        min_length=1,
    )
    """Notifications the demo translates English → Portuguese (on the device, or a peer)."""


class TranslateSection(_Section):
    """Translation defaults and the household's shared translation memory."""

    beam_size: int = Field(default=1, ge=1, le=8)
    """1 is greedy, the models' own setting; larger beams are slower and rarely better for tiny11."""
    shared_memory: bool = True
    """Reuse and share finished translations with household peers (signed by the device that made
    them; they never leave the home). Off: no lookups are sent and peers' lookups get no answers."""
    memory_entries: int = Field(default=4096, ge=0, le=1_000_000)
    """Most sentences kept in the memory (least recently used go first); 0 disables the memory."""
    memory_max_age_days: float = Field(default=30.0, gt=0, le=3650)
    memory_lookup_ms: float = Field(default=150.0, ge=0, le=5000)
    """How long to wait for peers' memory answers before translating."""


class UpdatesSection(_Section):
    """Model updates from the household (signed by its update keys, fetched from peers, never a cloud)."""

    enabled: bool = True
    """Ask peers for newer packs, fetch the ones this device's plan runs, health-check and activate
    them; and serve the chunks of packs held here to peers."""
    interval_s: float = Field(default=300.0, ge=5, le=86400)
    """How often to ask peers what they hold."""
    quota_mb: int | None = Field(default=None, ge=1)
    """Largest pack this device stages (None: whatever fits with the store's copy and 64 MB to spare)."""
    direct: bool = True
    """Move chunks, requests and streams over direct TLS links between devices (addresses in presence),
    falling back to the broker path when a peer cannot be reached or a link fails; off: everything goes
    through the broker."""
    direct_address: IPvAnyAddress | None = None
    """Address to listen on and announce for direct links, and whose network peers' contacts must be on
    (default: the one this host reaches the broker from, so peers that reach the broker reach it too)."""
    direct_port: int = Field(default=0, ge=0, le=65535)
    """TCP port for direct links (0: any free port; it is announced in presence)."""
    approval: Literal["automatic", "ask"] = "automatic"
    """"ask": a newer pack waits (state "awaiting-approval" in presence) until a household controller
    approves it (Home Assistant's update entity, a hub-class or admin member) or `hearth models pull`
    asks for it here. Approval never skips verification."""


class HomeAssistantSection(_Section):
    """Home Assistant, seen from this agent. The bridge (`hearth ha say`, `Hearth.ask_home_assistant`;
    needs the `ha` extra) hands typed or spoken commands to Home Assistant's Assist."""

    url: str | None = None
    """Home Assistant's address, e.g. http://homeassistant.local:8123 (its REST API is <url>/api)."""
    token_file: Path | None = None
    """File holding a long-lived access token (Home Assistant: profile → Security); preferred over
    `token`, which sits in the config file. Either may come from HEARTH_HOME_ASSISTANT__TOKEN_FILE /
    HEARTH_HOME_ASSISTANT__TOKEN. The token is never logged or printed."""
    token: SecretStr | None = None
    language: str | None = Field(default=None, pattern=r"^[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})*$")
    """Language of the commands (e.g. en, pt-PT); default: Home Assistant's own."""
    agent_id: str | None = Field(default=None, min_length=1, max_length=255)
    """Conversation agent to use (e.g. conversation.home_assistant); default: Home Assistant's default."""
    verify_tls: bool = True
    """Verify an https:// url's certificate (turn off only for a self-signed certificate on the LAN)."""
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    """How long one command may take (an LLM conversation agent can be slow)."""

    # MQTT discovery (edge_agent/ha_discovery): this agent appears in Home Assistant as a device with
    # sensors, through HA's own MQTT integration. Off by default: discovery documents and states are
    # plaintext on the broker (the mesh itself is end-to-end encrypted), so only turn it on where
    # whoever can read the broker may see this device's name, model and load.
    mqtt_discovery: bool = False
    discovery_prefix: str = "homeassistant"
    """Home Assistant's discovery prefix (its MQTT integration's setting; rarely changed)."""
    mqtt_broker: str | None = Field(default=None, pattern=BROKER_URL)
    """Broker Home Assistant listens to; default the [mesh] broker, with [mesh]'s TLS and credentials."""
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls_ca: Path | None = None
    """CA of an mqtts:// mqtt_broker's certificate; default the system's trusted CAs."""
    state_interval_s: float | None = Field(default=None, gt=0, le=3600)
    """How often the state is checked (sent only when changed, or every heartbeat_s); default the
    [mesh] presence interval."""
    heartbeat_s: float = Field(default=300.0, ge=1, le=86400)
    usage_interval_s: float = Field(default=900.0, ge=1, le=86400)
    """Queue depth, request counters and free model RAM are published as sampled once per this many
    seconds of wall-clock time, so whoever reads the broker sees how busy a device was per window, not
    when each request came."""

    def discovery_settings(self, presence_interval_s: float) -> DiscoverySettings:
        """MQTT discovery's view of this section (``presence_interval_s``: [mesh]'s, the default state
        interval)."""
        interval = self.state_interval_s or presence_interval_s
        return DiscoverySettings(prefix=self.discovery_prefix, interval_s=interval,
                                 heartbeat_s=max(self.heartbeat_s, interval),
                                 usage_interval_s=self.usage_interval_s)  # fmt: skip

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value.strip())
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc}): {value!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                f"must be an http:// or https:// URL of Home Assistant, e.g. "
                f"http://homeassistant.local:8123 (got {value!r})"
            )
        return value.strip().rstrip("/")

    @model_validator(mode="after")
    def _one_token_source(self) -> HomeAssistantSection:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self

    @field_validator("discovery_prefix")
    @classmethod
    def _topic_prefix(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)*", value):
            raise ValueError(
                f"must be MQTT topic levels of letters, digits, _ and - separated by /, without "
                f"wildcards or a leading or trailing / (Home Assistant's default: homeassistant); "
                f"got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _discovery_credentials_need_a_broker(self) -> HomeAssistantSection:
        own = [n for n in ("mqtt_username", "mqtt_password", "mqtt_tls_ca") if getattr(self, n) is not None]
        if own and self.mqtt_broker is None:
            raise ValueError(
                f"{', '.join(own)} only apply with mqtt_broker; on the [mesh] broker, discovery uses "
                "[mesh]'s credentials and TLS"
            )
        return self


class VoiceSection(_Section):
    """Speech in: voice activity detection on this device, transcription wherever routing allows.

    Audio stays on the device unless [routing] lets ``transcribe`` go to a peer; only the speech the VAD
    found is sent, never the silence around it. ``never_offload = ["transcribe"]`` keeps all audio here.
    """

    language: str = Field(default="en", pattern=r"^[a-z]{2,3}$")
    max_seconds: float = Field(default=600.0, gt=0, le=4 * 3600)
    """Longest recording `hearth listen` or the Wyoming server accepts."""
    vad_threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    """Speech probability that starts a segment (Silero's default); it ends below threshold - 0.15."""
    min_speech_ms: int = Field(default=250, ge=0, le=10_000)
    min_silence_ms: int = Field(default=100, ge=0, le=10_000)
    """Silence that ends a segment; shorter pauses stay inside it."""
    speech_pad_ms: int = Field(default=30, ge=0, le=2_000)
    """Kept on both sides of each segment, so word edges are not clipped."""
    wyoming: bool = False
    """Serve the Wyoming protocol (Home Assistant Assist's speech-to-text) while `hearth run` runs."""
    wyoming_host: str = "127.0.0.1"
    """Loopback by default: a Home Assistant on another host needs this set to an address it reaches,
    and its address in ``wyoming_allow``."""
    wyoming_port: int = Field(default=10300, ge=0, le=65535)
    wyoming_advertise: Literal["auto", "on", "off"] = "auto"
    """Zeroconf ``_wyoming._tcp``: "auto" advertises when bound beyond loopback."""
    wyoming_allow: list[IPvAnyNetwork] = Field(default_factory=lambda: _loopback(), max_length=64)
    """Client addresses (or networks) the Wyoming server answers; others are refused at once. Wyoming has
    no authentication (Home Assistant's client sends no secret), so this list is the lock: off loopback,
    name Home Assistant's address, e.g. ["192.168.1.10"]."""
    wyoming_max_seconds: float = Field(default=30.0, gt=0, le=600)
    """Longest utterance one Wyoming connection may send: a voice command, not a file (Assist ends a
    command after 15 s; its speech-to-text API may send a little more). Bounds each connection's memory."""
    wyoming_max_connections: int = Field(default=4, ge=1, le=64)
    wyoming_max_per_source: int = Field(default=2, ge=1, le=64)
    """Connections one client address may hold at once (Home Assistant uses one per utterance)."""
    actions_transcribe: Literal["local", "trusted", "any"] = "trusted"
    """Who may transcribe speech that becomes a command (Home Assistant's Assist through Wyoming,
    `hearth listen --ha`): the transcript *is* the command, so the device that transcribes chooses what
    runs. "local": this device only; "trusted": this device, hub-class devices (the household root
    certified their class) and ``trusted_transcribers``; "any": every device [routing] allows."""
    trusted_transcribers: list[str] = Field(default_factory=list, max_length=64)
    """Device ids (32 hex, from `hearth peers`) or certified names trusted to transcribe commands."""

    @model_validator(mode="after")
    def _allow_list_off_loopback(self) -> VoiceSection:
        if not self.wyoming or _loopback_host(self.wyoming_host):
            return self
        if all(net.is_loopback for net in self.wyoming_allow):
            raise ValueError(
                f"wyoming_host = {self.wyoming_host!r} listens beyond loopback, but wyoming_allow lets only "
                "loopback clients in: list Home Assistant's address, e.g. wyoming_allow = "
                '["192.168.1.10"] (Wyoming has no authentication of its own)'
            )
        return self

    def settings(self) -> VoiceSettings:
        """The voice parts' view of this section (VAD, command trust, the Wyoming server's limits)."""
        vad = VadSettings(
            threshold=self.vad_threshold,
            min_speech_ms=self.min_speech_ms,
            min_silence_ms=self.min_silence_ms,
            speech_pad_ms=self.speech_pad_ms,
        )
        limits = WyomingLimits(
            max_seconds=self.wyoming_max_seconds,
            max_connections=self.wyoming_max_connections,
            max_per_source=self.wyoming_max_per_source,
        )
        wyoming = WyomingSettings(
            host=self.wyoming_host,
            port=self.wyoming_port,
            advertise=self.wyoming_advertise,
            allow=tuple(self.wyoming_allow),
            limits=limits,
        )
        return VoiceSettings(
            language=self.language,
            max_seconds=self.max_seconds,
            vad=vad,
            actions_transcribe=self.actions_transcribe,
            trusted_transcribers=frozenset(self.trusted_transcribers),
            wyoming=wyoming,
        )


def _loopback() -> list[IPv4Network | IPv6Network]:
    return list(LOOPBACK)


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


class AgentConfig(_Section):
    agent: AgentSection = Field(default_factory=AgentSection)
    engines: EnginesSection = Field(default_factory=EnginesSection)
    generate: GenerateSection = Field(default_factory=GenerateSection)
    mesh: MeshSection = Field(default_factory=MeshSection)
    routing: RoutingSection = Field(default_factory=RoutingSection)
    translate: TranslateSection = Field(default_factory=TranslateSection)
    updates: UpdatesSection = Field(default_factory=UpdatesSection)
    home_assistant: HomeAssistantSection = Field(default_factory=HomeAssistantSection)
    voice: VoiceSection = Field(default_factory=VoiceSection)
    demo: DemoSection = Field(default_factory=DemoSection)


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Nested dict from ``HEARTH_SECTION__FIELD=value``; values parse as JSON when they can."""
    data: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue  # HEARTH_HOME etc. are read elsewhere
        path = tuple(p.lower() for p in key[len(ENV_PREFIX) :].split("__"))
        try:
            value: Any = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key} (environment): conflicts with another HEARTH_ variable")
        node[path[-1]] = value
        origin[path] = key
    return data, origin


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: Path | None = None, environ: dict[str, str] | None = None) -> AgentConfig:
    """Load and validate; raise ConfigError naming file/variable, field path and reason."""
    environ = dict(os.environ) if environ is None else environ
    file_data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            file_data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: config file not found") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    env_data, env_origin = _env_overrides(environ)
    try:
        return AgentConfig.model_validate(_merge(file_data, env_data))
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            loc = tuple(str(p) for p in err["loc"])
            where = next(
                (f"{var} (environment)" for p, var in env_origin.items() if loc[: len(p)] == p), source
            )
            lines.append(f"{where}: {field_path(err['loc'])}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("\n".join(lines)) from exc
