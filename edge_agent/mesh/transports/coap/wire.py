"""CoAP messages as bytes (RFC 7252 §3) for the OSCORE message lane (`lane`).

aiocoap's ``Message`` is general (every option typed, a copy per OSCORE step, a remote object per
datagram); the lane needs a header, a token, a few opaque options and a payload, on every datagram of
every mesh message, so it reads and writes them itself. Anything that does not parse raises
`WireError` and is dropped by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ACK",
    "BLOCK1",
    "CON",
    "NON",
    "OSCORE",
    "REQUEST_TAG",
    "RST",
    "URI_PATH",
    "Code",
    "Datagram",
    "WireError",
    "block_of",
    "block_value",
    "decode",
    "decode_options",
    "encode",
    "encode_options",
    "first",
    "plaintext",
    "split_plaintext",
]

CON, NON, ACK, RST = 0, 1, 2, 3
"""Message types."""

OSCORE = 9
URI_PATH = 11
BLOCK1 = 27
REQUEST_TAG = 292
"""The option numbers the lane reads or writes (every other option is carried, never interpreted)."""


class Code:
    """CoAP codes as their byte (class << 5 | detail)."""

    EMPTY = 0x00
    POST = 0x02
    CHANGED = 0x44  # 2.04
    CONTINUE = 0x5F  # 2.31
    BAD_REQUEST = 0x80  # 4.00
    UNAUTHORIZED = 0x81  # 4.01
    BAD_OPTION = 0x82  # 4.02
    FORBIDDEN = 0x83  # 4.03
    NOT_FOUND = 0x84  # 4.04
    INCOMPLETE = 0x88  # 4.08
    TOO_LARGE = 0x8D  # 4.13
    INTERNAL = 0xA0  # 5.00
    UNAVAILABLE = 0xA3  # 5.03

    @staticmethod
    def text(code: int) -> str:
        """``code`` as CoAP writes it (``4.01``)."""
        return f"{code >> 5}.{code & 0x1F:02d}"


class WireError(ValueError):
    """Bytes that are not a CoAP message (or an option list)."""


@dataclass(slots=True)
class Datagram:
    """One CoAP message over UDP."""

    mtype: int
    code: int
    mid: int
    token: bytes = b""
    options: list[tuple[int, bytes]] = field(default_factory=list)
    payload: bytes = b""

    @property
    def is_request(self) -> bool:
        return 1 <= self.code <= 31

    @property
    def is_response(self) -> bool:
        return self.code >= 64


def first(options: list[tuple[int, bytes]], number: int) -> bytes | None:
    """The value of the first option ``number`` in ``options`` (None: absent)."""
    for n, value in options:
        if n == number:
            return value
    return None


def _nibble(value: int) -> tuple[int, bytes]:
    if value < 13:
        return value, b""
    if value < 269:
        return 13, bytes([value - 13])
    if value < 65805:
        return 14, (value - 269).to_bytes(2, "big")
    raise WireError(f"an option delta or length of {value} does not fit")


def encode_options(options: list[tuple[int, bytes]]) -> bytes:
    """``options`` in CoAP's delta encoding (sorted by number; repeats keep their order)."""
    out = bytearray()
    last = 0
    for number, value in sorted(options, key=lambda o: o[0]):
        delta, delta_ext = _nibble(number - last)
        length, length_ext = _nibble(len(value))
        out.append(delta << 4 | length)
        out += delta_ext
        out += length_ext
        out += value
        last = number
    return bytes(out)


def _extended(nibble: int, data: bytes, at: int) -> tuple[int, int]:
    if nibble < 13:
        return nibble, at
    if nibble == 13:
        if at >= len(data):
            raise WireError("truncated option")
        return data[at] + 13, at + 1
    if nibble == 14:
        if at + 2 > len(data):
            raise WireError("truncated option")
        return int.from_bytes(data[at : at + 2], "big") + 269, at + 2
    raise WireError("reserved option nibble 15")


def decode_options(data: bytes, at: int = 0) -> tuple[list[tuple[int, bytes]], bytes]:
    """The options from ``data[at:]`` and the payload after them."""
    options: list[tuple[int, bytes]] = []
    number = 0
    while at < len(data):
        head = data[at]
        at += 1
        if head == 0xFF:
            if at == len(data):
                raise WireError("a payload marker with no payload")
            return options, data[at:]
        delta, at = _extended(head >> 4, data, at)
        length, at = _extended(head & 0x0F, data, at)
        if at + length > len(data):
            raise WireError("an option runs past the message")
        number += delta
        options.append((number, data[at : at + length]))
        at += length
    return options, b""


def encode(message: Datagram) -> bytes:
    token = message.token
    head = bytes([0x40 | message.mtype << 4 | len(token), message.code, message.mid >> 8, message.mid & 0xFF])
    body = encode_options(message.options)
    if message.payload:
        return head + token + body + b"\xff" + message.payload
    return head + token + body


def decode(data: bytes) -> Datagram:
    if len(data) < 4:
        raise WireError("shorter than a CoAP header")
    if data[0] >> 6 != 1:
        raise WireError("not CoAP version 1")
    tkl = data[0] & 0x0F
    if tkl > 8 or 4 + tkl > len(data):
        raise WireError("bad token length")
    options, payload = decode_options(data, 4 + tkl)
    return Datagram(
        mtype=data[0] >> 4 & 0x03,
        code=data[1],
        mid=int.from_bytes(data[2:4], "big"),
        token=data[4 : 4 + tkl],
        options=options,
        payload=payload,
    )


def block_value(num: int, more: bool, szx: int) -> bytes:
    """A Block1/Block2 option value (RFC 7959 §2.2; SZX 7 is BERT, RFC 8323 §6)."""
    value = num << 4 | int(more) << 3 | szx
    return value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""


def block_of(value: bytes) -> tuple[int, bool, int]:
    """(NUM, M, SZX) of a block option value; raises WireError past 3 bytes."""
    if len(value) > 3:
        raise WireError("a block option is at most 3 bytes")
    number = int.from_bytes(value, "big")
    return number >> 4, bool(number & 0x08), number & 0x07


def plaintext(code: int, options: list[tuple[int, bytes]], payload: bytes) -> bytes:
    """The inner message OSCORE protects (RFC 8613 §5.3): code, options, payload."""
    body = bytes([code]) + encode_options(options)
    return body + b"\xff" + payload if payload else body


def split_plaintext(data: bytes) -> tuple[int, list[tuple[int, bytes]], bytes]:
    """(code, options, payload) of an inner message; raises WireError."""
    if not data:
        raise WireError("empty plaintext")
    options, payload = decode_options(data, 1)
    return data[0], options, payload
