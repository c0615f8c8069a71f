"""How big a model update may be, and every wire limit that follows from it.

One place for the chunk sizes a manifest may use and for the bounds derived from them: a chunk's
base64 in a `chunk-data` message, a manifest and its chunk bitfield in a holdings answer, and the
smallest mesh frame every member accepts. A manifest that validates always travels: no publisher can
make one whose chunks or holdings a seeder could not send (issue 21, N14: 1 MiB chunks made every
seeder's reply fail validation). Pure constants, no imports: the mesh's wire models use them too.

The budget, bottom up (the mesh pads a payload to a multiple of its bucket, at most 64 KiB, and above
16 buckets to the next power of two):

- one update message is at most ``UPDATE_PAYLOAD_BYTES`` (448 KiB) of JSON, which any bucket pads to
  at most 512 KiB; the envelope adds at most 674 bytes (header 58, topic 512, nonce 24, tag 16,
  signature 64), so every frame fits ``MIN_FRAME_BYTES``;
- a chunk of ``MAX_CHUNK`` (256 KiB) is 349,528 base64 characters: one chunk-data message;
- a manifest is at most ``MAX_MANIFEST_BYTES`` of canonical JSON, its signed envelope at most
  ``MAX_MANIFEST_ENVELOPE_BYTES``, and that envelope's base64 with its bitfield fits one holdings
  answer (a device holding several packs answers in parts, the key set in a part of its own);
- ``MAX_CHUNKS`` digests fill such a manifest, so the largest pack is ``MAX_CHUNKS * MAX_CHUNK``
  (about 960 MB: every pack built here is below 520 MB).
"""

from __future__ import annotations

__all__ = [
    "CHUNK_DATA_CHARS",
    "HELD_HAVE_CHARS",
    "HELD_MANIFEST_CHARS",
    "KEY_SET_CHARS",
    "MAX_CHUNK",
    "MAX_CHUNKS",
    "MAX_KEY_SET_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_MANIFEST_ENVELOPE_BYTES",
    "MAX_PACK_BYTES",
    "MAX_SEQUENCE",
    "MIN_CHUNK",
    "MIN_FRAME_BYTES",
    "UPDATE_PAYLOAD_BYTES",
    "b64_chars",
]


def b64_chars(n: int) -> int:
    """Length of the (padded) base64 text of ``n`` bytes."""
    return 4 * ((n + 2) // 3)


MIN_CHUNK = 16 << 10
MAX_CHUNK = 256 << 10
"""The largest chunk whose chunk-data message fits an update payload (and so every member's frame)."""
MAX_SEQUENCE = 2**53
"""Highest sequence a manifest may carry: what presence reports must stay exact (protocol.MAX_COUNT)."""

UPDATE_PAYLOAD_BYTES = 448 << 10
"""Largest update message (chunk data, one part of a holdings answer) before the mesh pads it."""
_PADDED_PAYLOAD_BYTES = 512 << 10
_ENVELOPE_OVERHEAD_BYTES = 1 << 10
MIN_FRAME_BYTES = _PADDED_PAYLOAD_BYTES + _ENVELOPE_OVERHEAD_BYTES
"""The smallest frame limit a member may configure (`MeshLimits.max_frame_bytes`): updates fit it."""

MAX_KEY_SET_BYTES = 64 << 10
MAX_MANIFEST_BYTES = 240 << 10
"""A manifest's canonical JSON (its signed payload)."""
_SIGNED_ENVELOPE_OVERHEAD = 4 << 10
"""Payload type, 16 signatures of 182 bytes each, JSON punctuation (2.9 KB at most; rounded up)."""
MAX_MANIFEST_ENVELOPE_BYTES = b64_chars(MAX_MANIFEST_BYTES) + _SIGNED_ENVELOPE_OVERHEAD
_DIGEST_CHARS = 67
"""One chunk digest in canonical JSON: 64 hex characters, two quotes and a comma."""
MAX_CHUNKS = MAX_MANIFEST_BYTES // _DIGEST_CHARS
MAX_PACK_BYTES = MAX_CHUNKS * MAX_CHUNK

CHUNK_DATA_CHARS = b64_chars(MAX_CHUNK)
HELD_MANIFEST_CHARS = b64_chars(MAX_MANIFEST_ENVELOPE_BYTES)
HELD_HAVE_CHARS = b64_chars((MAX_CHUNKS + 7) // 8)
KEY_SET_CHARS = b64_chars(MAX_KEY_SET_BYTES)
