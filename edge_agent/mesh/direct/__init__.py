"""Direct links between two household devices: the data plane, one hop instead of two through the
broker's host. For bulk data (model update chunks) they are a `BulkPath` (`mesh.interfaces`) beside
the broker's, chosen by `mesh.bulk.BulkPaths`; for requests and streams a `MessagePath`, chosen per
message by the endpoint's exchanges, with the broker as the fallback that always works.

TLS 1.3, bound to household identity without an X.509 CA (that exists only beside a production
Mosquitto), the way WebRTC binds DTLS to its signed signalling. Each agent makes a fresh certificate at
start and announces its SHA-256 with its addresses and port in its *signed* presence; clients pin it,
then prove their device key inside the channel (`handshake`). Every ask re-checks that both ends are
still members; a revocation closes that device's links. Every attacker-facing bound is a field of
`mesh.settings.DirectLimits`, passed in. The server listens while direct links are on (the agent's
life): a device that holds nothing answers "not held", and the bounds make listening cost at most
``max_pending + max_served_links`` sockets.

One job per module: `frames` (the wire), `tls` (certificates, contexts, the accepted socket's TLS),
`handshake` (the challenge, both sides), `addresses` (where to listen, which contacts to try),
`server` (accept, bound, answer), `client` (links to holders, back-off), `carrier` (mesh messages on
links, both ways), `links` (`DirectLinks`: the lifetime, the bulk path and the message path).
"""

from edge_agent.mesh.direct.addresses import Network, local_address_towards, local_network, usable_hosts
from edge_agent.mesh.direct.frames import MAX_ANSWER_BYTES, Ask
from edge_agent.mesh.direct.links import DirectLinks, DirectState
from edge_agent.mesh.direct.server import Serve

__all__ = [
    "MAX_ANSWER_BYTES",
    "Ask",
    "DirectLinks",
    "DirectState",
    "Network",
    "Serve",
    "local_address_towards",
    "local_network",
    "usable_hosts",
]
