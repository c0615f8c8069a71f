"""Forward-secret sessions between members (envelope v2): the broker path's end-to-end encryption.

Envelope v1 sealed every direct message with the static X25519 key of the pair and signed it with
Ed25519: one identity file, stolen later, opened every recorded message. v2 keys each pair of runs
with an EDHOC handshake (RFC 9528) over the mesh itself, with ephemeral keys both sides forget, then
seals frames with an AEAD under per-direction keys and counter nonces: no signature per frame, 40
bytes of overhead instead of ~200, and nothing recorded opens with the long-term keys afterwards.

Why EDHOC, through lakers (a maintained Rust implementation; aiocoap's EDHOC uses it): no Python Noise
library is maintained, the locked `cryptography` has HPKE's base mode only, and HPKE's auth mode is
single-shot, not forward secret against the receiver's static key. EDHOC is a three-message
authenticated key exchange with forward secrecy, identity protection and resistance to
key-compromise impersonation, ~500 bytes per handshake here, and the key exchange OSCORE (RFC 8613)
is keyed by: the CoAP transport (issue 24) reuses these handshakes.

One job per module: `wire` (frame layouts), `credentials` (the run's key and its signed statement),
`handshake` (the EDHOC steps), `pending` (handshakes under way), `aead` (the cipher, per CPU), `table`
(the sessions held, their ages and counter windows), `layer` (`Sessions`: starting and answering
handshakes, sealing, opening, rekeying, bounds).
The node (`mesh.node`) uses v2 with every peer whose presence says it speaks it, v1 with the others
(mixed versions during a rollout), and refuses v1 from a v2 speaker.
"""

from edge_agent.mesh.sessions.aead import AES_GCM, CHACHA20_POLY1305, has_aes_instructions
from edge_agent.mesh.sessions.layer import Sessions
from edge_agent.mesh.sessions.table import Session
from edge_agent.mesh.sessions.wire import KIND_DATA, KIND_HANDSHAKE, kind_of

__all__ = [
    "AES_GCM",
    "CHACHA20_POLY1305",
    "KIND_DATA",
    "KIND_HANDSHAKE",
    "Session",
    "Sessions",
    "has_aes_instructions",
    "kind_of",
]
