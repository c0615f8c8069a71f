"""Exception tree for the whole agent.

Every error a user can cause or meet carries a message that names what was wrong and where, so the CLI
prints it as one line instead of a traceback::

    HearthError
    ├── ConfigError            bad config file / environment override (file + field path + reason)
    ├── ProfileError           unknown or malformed firmware profile
    ├── PackError              model pack problems
    │   ├── PackNotFoundError
    │   ├── PackIntegrityError digest or size mismatch: the file is refused
    │   └── BuildError         a pack could not be built from its source weights
    └── EngineError            inference problems
        ├── InvalidRequestError  empty prompt, too long, bad text, batch too large (caller's fault)
        ├── BudgetExceededError  loading would pass the profile's model RAM budget
        └── NoLocalModelError    the plan says this task is offload-only here
"""

from __future__ import annotations


class HearthError(Exception):
    """Root of every error the agent raises on purpose."""

    exit_code: int = 1


class ConfigError(HearthError):
    """The agent configuration (file or HEARTH_* environment) is invalid."""

    exit_code = 2


class ProfileError(HearthError):
    """A firmware profile is unknown or does not validate."""

    exit_code = 2


class PackError(HearthError):
    """A model pack is missing, malformed or corrupt."""


class PackNotFoundError(PackError):
    """No pack with that name/variant is in the store."""


class PackIntegrityError(PackError):
    """A pack file does not match the digest or size its manifest records."""


class BuildError(PackError):
    """Building a pack from source weights failed."""


class EngineError(HearthError):
    """Inference failed."""


class InvalidRequestError(EngineError):
    """The request itself is invalid; retrying it unchanged will fail again."""

    exit_code = 2


class BudgetExceededError(EngineError):
    """Loading the model would exceed the profile's RAM budget for models."""


class NoLocalModelError(EngineError):
    """No pack for this task fits this device: the task must be offloaded to a peer."""
