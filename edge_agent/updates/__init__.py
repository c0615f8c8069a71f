"""Model updates on this device, as one part the root assembles: the updater (rounds, approval,
seeding, status), activation (check, switch, health check, rollback, the signed install report) and
the health probe (through the task registry). The IO-free trust core it builds on is `edge_agent.sync`.

The root hands the updater the mesh's `FeaturePort`, `DeviceFacts` and `UpdateSettings`; nothing
wires itself into the service. Names resolve lazily (the CLI's `models publish` needs only `probe`).
"""

from __future__ import annotations

from edge_agent._exports import lazy_exports

_EXPORTS = {
    "Updater": "edge_agent.updates.updater",
    "UpdaterState": "edge_agent.updates.updater",
    "UpdateOutcome": "edge_agent.updates.status",
    "DeviceFacts": "edge_agent.updates.ports",
    "UpdateSettings": "edge_agent.updates.ports",
    "INSTALL_REPORT_TYPE": "edge_agent.updates.activation",
    "ActivationResult": "edge_agent.updates.activation",
    "InstallReport": "edge_agent.updates.activation",
    "activate": "edge_agent.updates.activation",
    "probe": "edge_agent.updates.health",
    "verdict": "edge_agent.updates.health",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
