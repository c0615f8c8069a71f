"""The task vocabulary shared by profiles, packs, plans and (later) the mesh."""

from __future__ import annotations

from typing import Literal

Task = Literal["generate", "embed", "translate", "transcribe", "vad"]
"""A kind of inference request a device may run locally or serve for peers."""

Quantization = Literal["int4", "int8", "fp16", "fp32"]
"""Weight format of a pack variant."""

TASKS: tuple[Task, ...] = ("generate", "embed", "translate", "transcribe", "vad")

DeviceClass = Literal["appliance", "vehicle", "hub", "phone", "laptop", "server"]
"""What kind of device it is; certified by the household root (routing policy may filter on it)."""
