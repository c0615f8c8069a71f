"""A real Mosquitto on a free loopback port, stopped by its PID (tests, benchmarks); a recording TCP relay."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent import processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mosquitto:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def db(self) -> Path:
        return self.workdir / "mosquitto.db"

    def stop(self) -> None:
        processes.stop(self.proc, timeout=10)  # SIGTERM first: Mosquitto writes its persistence file


def wait_for_ports(proc: subprocess.Popen[bytes], ports: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not start on port {port}") from None
                time.sleep(0.05)


def start_mosquitto(conf: Path, ports: list[int], workdir: Path) -> Mosquitto:
    """Mosquitto on ``conf``; returns once every port accepts connections. Stop it with ``.stop()``."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker = Mosquitto(ports[0], workdir, proc)
    try:
        wait_for_ports(proc, ports)
    except BaseException:
        broker.stop()
        raise
    return broker


# As root, mosquitto would drop to user "mosquitto", which cannot read or write the test's directory.
AS_ROOT = "user root\n" if os.geteuid() == 0 else ""


@contextlib.contextmanager
def run_mosquitto(workdir: Path, port: int | None = None) -> Iterator[Mosquitto]:
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"{AS_ROOT}listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
        f"persistence_location {workdir}/\npersistence_file mosquitto.db\n"
        "max_packet_size 2097152\nset_tcp_nodelay true\nlog_dest stderr\n"
    )
    broker = start_mosquitto(conf, [port], workdir)
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class RecordingRelay:
    """Forwards a local port to the broker and keeps every byte seen in both directions."""

    target_port: int
    port: int = 0
    seen: bytearray = field(default_factory=bytearray)
    _server: asyncio.AbstractServer | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def __aenter__(self) -> RecordingRelay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_w]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    self.seen.extend(data)
                    dst.write(data)
                    await dst.drain()
            dst.close()

        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(pump(reader, up_w), pump(up_r, writer))
