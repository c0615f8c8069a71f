"""The household advert's settings: what the zeroconf advertiser takes from the agent's ``[mesh]``.

Built at the root from the section (`MeshSection.advert_settings`), as the mesh takes `MeshSettings`: the
advertiser never reads configuration. Pydantic only, so the config module (below this part) builds it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AdvertSettings", "AdvertiseMode"]

AdvertiseMode = Literal["auto", "on", "off"]


class AdvertSettings(BaseModel):
    """Whether and what to advertise ([mesh] advertise, broker, embedded_broker)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: AdvertiseMode = "auto"
    """"auto": hub-class devices only; "on": this device whatever its class; "off": never."""
    broker: str = Field(min_length=1)
    """The broker URL as this agent uses it ([mesh] broker), possibly loopback."""
    loopback_only: bool = False
    """The broker accepts loopback connections only (the embedded broker): nothing to announce."""
