"""Firmware profiles: what a device class can run, and how much of it the agent may use."""

from edge_agent.profiles.detect import HostFacts, detect_host, nearest_profile, profile_for_host
from edge_agent.profiles.model import Accelerator, Cpu, FirmwareProfile, Storage
from edge_agent.profiles.registry import list_profiles, load_profile, load_profile_file

__all__ = [
    "Accelerator",
    "Cpu",
    "FirmwareProfile",
    "HostFacts",
    "Storage",
    "detect_host",
    "list_profiles",
    "load_profile",
    "load_profile_file",
    "nearest_profile",
    "profile_for_host",
]
