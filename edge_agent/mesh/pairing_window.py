"""The pairing listener, open only while an invitation is: a Mosquitto of its own behind a counting relay.

`hearth household invite` on a hub with a production broker (`hearth broker config`) opens a window for
its one invitation and closes it after: nobody can reach a pairing listener, or store anything through
one, while no invitation is open. Why a broker of its own rather than the household broker reloaded:

* Mosquitto 2.0.11 cannot add or remove a listener on SIGHUP ("not currently possible to add/remove
  listeners when reloading"), so an always-configured listener would stay open between invitations;
* ``retain_available``, ``max_packet_size`` and ``memory_limit`` are global in 2.0.11: the household
  broker needs retained presence and 1 MiB frames, a pairing broker needs neither, so anonymous clients
  there cannot store a single retained message (the old shared listener let anyone store any number);
* nothing an anonymous client does (memory, connections, a crash) touches the household broker;
* reloading the household broker needs the hub to signal a process it may not own.

The relay (`ConnectionRelay`) is the only thing listening on the network: it counts each connection
when it is accepted, before the TLS handshake (Mosquitto 2.0.11's own ``max_connections`` counts a
closed connection twice and stops holding after a few; fixed in 2.0.12), per source too, caps the bytes
a client may send and how long it may stay, and forwards to Mosquitto's Unix socket in a private
directory. The hub reaches the pairing broker on loopback with its broker client certificate.

`PairingListener` (``broker-pairing.json`` in the hub's state directory, written by `hearth broker
config`) says where the window opens and with which limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_agent import processes
from edge_agent.errors import HearthError
from edge_agent.mesh.broker import PairingLimits, pairing_config
from edge_agent.mesh.broker_pki import BrokerPki, write_public
from edge_agent.mesh.files import write_atomic
from edge_agent.mesh.transports.mqtt import MqttClient

log = logging.getLogger(__name__)

__all__ = ["ConnectionRelay", "PairingListener", "PairingWindow", "open_pairing_window"]

SETTINGS_FILE = "broker-pairing.json"
START_TIMEOUT_S = 10.0
LOGGED_PER_REASON = 5
"""Refusals logged per reason and window; the rest are counted (and summed up when it closes)."""
HUB_QUEUE = 256
"""Frames the hub's own link buffers (each at most the relay's upload budget)."""


class PairingListener(BaseModel):
    """Where `hearth household invite` opens the pairing listener, and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: int = Field(ge=1, le=65535)
    bind: str = "0.0.0.0"
    hostnames: list[str] = Field(min_length=1, max_length=32)
    """Names in the pairing broker's server certificate (a device that pinned the CA checks them)."""
    limits: PairingLimits = Field(default_factory=PairingLimits)

    @classmethod
    def load(cls, state_dir: Path) -> PairingListener | None:
        """The hub's pairing listener, or None if `hearth broker config` set none up."""
        path = state_dir / SETTINGS_FILE
        try:
            return cls.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            raise HearthError(f"{path}: unreadable ({exc}); run `hearth broker config` again") from None

    def save(self, state_dir: Path) -> None:
        write_atomic(state_dir / SETTINGS_FILE, self.model_dump_json(indent=1), 0o600)

    @staticmethod
    def remove(state_dir: Path) -> None:
        (state_dir / SETTINGS_FILE).unlink(missing_ok=True)


class ConnectionRelay:
    """Forwards TCP connections to a Unix socket, admitting each before reading a byte from it.

    ``active`` is exact at all times: it goes up when a connection is admitted and down when its
    handler ends, whatever ended it."""

    def __init__(self, upstream: Path, limits: PairingLimits) -> None:
        self.upstream = upstream
        self.limits = limits
        self.active = 0
        self.refused: Counter[str] = Counter()
        """Reason -> connections refused or cut ("full", "per-source", "upload", "lifetime")."""
        self._by_source: Counter[str] = Counter()
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the relay is not listening"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._accept, host, port, backlog=self.limits.max_connections, reuse_address=True
        )

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._handlers.values():
            writer.transport.abort()  # each handler then ends by itself (cancelling one logs an error)
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self.refused:
            summary = ", ".join(f"{n} {reason}" for reason, n in sorted(self.refused.items()))
            log.warning("pairing listener: refused or cut %d connections (%s)", self.refused.total(), summary)

    def _note(self, reason: str, message: str) -> None:
        self.refused[reason] += 1
        if self.refused[reason] <= LOGGED_PER_REASON:
            log.warning("pairing listener: %s", message)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if self.active >= self.limits.max_connections:
            self._note("full", f"refused a connection from {source}: {self.active} open, the limit")
            writer.transport.abort()
            return
        if self._by_source[source] >= self.limits.per_source:
            self._note("per-source", f"refused a connection from {source}: "
                       f"{self.limits.per_source} open from there, the limit")  # fmt: skip
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = writer
        self.active += 1
        self._by_source[source] += 1
        try:
            async with asyncio.timeout(self.limits.lifetime_s):
                await self._relay(reader, writer, source)
        except TimeoutError:
            self._note("lifetime", f"closed a connection from {source} after {self.limits.lifetime_s:g} s")
        except OSError as exc:
            log.debug("pairing listener: connection from %s: %s", source, exc)
        finally:
            self.active -= 1
            self._by_source[source] -= 1
            if self._by_source[source] <= 0:
                del self._by_source[source]
            self._handlers.pop(task, None)
            writer.transport.abort()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.upstream))
        try:
            uploads = asyncio.create_task(self._uploads(reader, up_writer, source))
            downloads = asyncio.create_task(_pump(up_reader, writer))
            try:
                await asyncio.wait({uploads, downloads}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in (uploads, downloads):
                    pump.cancel()
                await asyncio.gather(uploads, downloads, return_exceptions=True)
        finally:
            up_writer.transport.abort()

    async def _uploads(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, source: str) -> None:
        """Client to broker, up to the upload budget: past it the connection is cut."""
        sent = 0
        while data := await reader.read(65536):
            sent += len(data)
            if sent > self.limits.upload_bytes:
                self._note("upload", f"cut a connection from {source}: more than "
                           f"{self.limits.upload_bytes} bytes sent")  # fmt: skip
                return
            writer.write(data)
            await writer.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


class PairingWindow:
    """One invitation's pairing broker and relay, while open (see `open_pairing_window`)."""

    def __init__(self, pki: BrokerPki, hub_port: int, relay: ConnectionRelay, proc: subprocess.Popen[bytes]):
        self.pki = pki
        self.hub_port = hub_port
        self.relay = relay
        self.proc = proc

    def hub_link(self, client_id: str) -> MqttClient:
        """The hub's connection to the pairing broker (enter it with ``async with``)."""
        return MqttClient("127.0.0.1", self.hub_port, client_id=client_id, tls=self.pki.tls_context(),
                          max_queued=HUB_QUEUE)  # fmt: skip


@contextlib.asynccontextmanager
async def open_pairing_window(
    state_dir: Path, listener: PairingListener, invitation: str, hub_device: str
) -> AsyncIterator[PairingWindow]:
    """Open the pairing listener for ``invitation``; closed (relay, broker, files) on exit.

    Raises HearthError naming what is missing (the broker CA, Mosquitto) or why it cannot listen."""
    pki = BrokerPki(state_dir)
    if not pki.has_ca() or not pki.has_client_identity():
        raise HearthError(f"{state_dir} holds no broker CA or client certificate; run `hearth broker config`")
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(exe, os.X_OK):
        raise HearthError(
            "the pairing listener runs Mosquitto, which is not installed (apt install mosquitto)"
        )
    run_dir = Path(tempfile.mkdtemp(prefix="hearth-pairing-"))
    proc: subprocess.Popen[bytes] | None = None
    relay: ConnectionRelay | None = None
    try:
        broker, hub_port = await asyncio.to_thread(
            _start_broker, exe, pki, run_dir, listener, invitation, hub_device
        )
        proc = broker  # stopped on the way out, whatever happens next
        relay = ConnectionRelay(run_dir / "pairing.sock", listener.limits)
        try:
            await relay.start(listener.bind, listener.port)
        except OSError as exc:
            raise HearthError(
                f"cannot open the pairing listener on {listener.bind}:{listener.port}: {exc.strerror}. "
                "If the household Mosquitto still has a pairing listener there (a config written "
                "before pairing had its own), run `hearth broker config` again and restart Mosquitto"
            ) from None
        log.info("pairing listener open on %s:%d for invitation %s", listener.bind, listener.port, invitation)
        yield PairingWindow(pki, hub_port, relay, broker)
    finally:
        if relay is not None:
            await relay.aclose()
        if proc is not None:
            await asyncio.to_thread(processes.stop, proc, 5.0)
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("pairing listener closed (invitation %s)", invitation)


def _start_broker(
    exe: str, pki: BrokerPki, run_dir: Path, listener: PairingListener, invitation: str, hub_device: str
) -> tuple[subprocess.Popen[bytes], int]:
    """Write the pairing broker's files into ``run_dir`` and start it; returns once it listens."""
    cafile, certfile, keyfile = run_dir / "ca.crt", run_dir / "server.crt", run_dir / "server.key"
    write_public(cafile, pki.ca_pem())
    pki.issue_server([*listener.hostnames, "127.0.0.1", "localhost"], certfile, keyfile,
                     valid_for=timedelta(days=1))  # fmt: skip
    hub_port = _free_loopback_port()
    sock = run_dir / "pairing.sock"
    config = pairing_config(run_dir, invitation, hub_device, anonymous_socket=sock, hub_port=hub_port,
                            cafile=cafile, certfile=certfile, keyfile=keyfile, limits=listener.limits,
                            user=_broker_user())  # fmt: skip
    _hand_over(run_dir)
    errors = run_dir / "mosquitto.log"
    with errors.open("wb") as err:
        proc = subprocess.Popen([exe, "-c", str(config)], stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    try:
        _wait_listening(proc, hub_port, sock, errors)
    except BaseException:
        processes.stop(proc, 5.0)
        raise
    return proc, hub_port


def _broker_user() -> str | None:
    """As root, Mosquitto drops to the ``mosquitto`` user (files handed over to it, `_hand_over`);
    without that user it must be told to stay root. Otherwise it runs as we do."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("mosquitto")
    except KeyError:
        return "root"
    return "mosquitto"


def _hand_over(run_dir: Path) -> None:
    """As root: the private run directory and its files belong to ``mosquitto``, which reads them and
    creates its socket there after dropping privileges."""
    if _broker_user() != "mosquitto":
        return
    user = pwd.getpwnam("mosquitto")
    for path in [run_dir, *run_dir.iterdir()]:
        os.chown(path, user.pw_uid, user.pw_gid)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, sock: Path, errors: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            said = errors.read_text(errors="replace").strip().splitlines()
            raise HearthError(
                f"the pairing broker (Mosquitto) did not start: {said[-1] if said else proc.returncode}"
            )
        if sock.exists():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise HearthError(f"the pairing broker (Mosquitto) did not listen within {START_TIMEOUT_S:g} s")
        time.sleep(0.05)
