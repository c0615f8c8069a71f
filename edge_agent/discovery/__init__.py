"""How others on the LAN find this household: the zeroconf (mDNS/DNS-SD) advertisement of a hub.

The contract (service type, instance name, TXT) is pure data in `edge_agent.mesh.advertisement`, so
Home Assistant validates with the mesh library alone; this package is the agent's side (sockets,
python-zeroconf, the agent's config), in `edge_agent.discovery.advertiser`.
"""

from __future__ import annotations
