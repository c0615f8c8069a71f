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
    ├── PeerError              a peer's message is refused: dropped and logged, never fatal
    │   ├── MalformedMessageError  not a Hearth envelope, wrong version, oversized, bad fields
    │   │   └── AdvertisementError     (mesh.advertisement) not a valid household LAN advert: ignored
    │   ├── NotAMemberError        unknown sender, bad/expired certificate, revoked device
    │   ├── ForgedMessageError     bad signature or failed decryption (tampered in transit)
    │   └── ReplayError            counter already seen, or timestamp outside the freshness window
    ├── IdentityError          local keys missing, unreadable or stored with unsafe permissions
    ├── NetworkError           the network failed us; no peer is to blame
    │   ├── TransportError         the link to the broker is down or never came up
    │   │   ├── LinkDownError          our own link dropped mid-request: wait for it, then resume
    │   │   │   └── PathDownError          the direct link it used broke: resume through the broker now
    │   │   └── PeerUnreachableError   (CoAP, no broker) that one peer did not answer: fail over
    │   ├── PeerOfflineError       the device asked for is not connected to the household now
    │   │   └── SessionError           no forward-secret session: the handshake got no answer in time
    │   ├── DirectLinkError        a direct device-to-device link failed (fall back to the broker)
    │   │   └── DirectRefusedError     the peer answered over the link, but does not hold it
    │   └── HomeAssistantUnreachableError  (ha_bridge; also a BridgeError) Home Assistant is down
    ├── OffloadError           a request handed to a peer did not complete there
    │   ├── PeerLostError          the serving peer died, left, stalled or was revoked: fail over
    │   │   └── StreamBrokenError      its stream cannot be put back together within the limits
    │   ├── PeerRefusedError       it answered with a failure (busy, not served, invalid, ...)
    │   └── NoRouteError           neither this device nor any reachable peer may serve it
    ├── RecipientNotMemberError  we refuse to send to a device that is no longer a household member
    ├── StateInUseError        the mesh state directory belongs to the running agent (use its socket)
    ├── LocalApiError          the running agent's local socket failed mid-answer
    ├── NotPairedError         (mesh.state) this device is not a household member yet
    ├── PairingError           (mesh.pairing) pairing cannot proceed: expired, exhausted, bad message
    │   └── WrongCodeError         a proof does not verify: a wrong code
    ├── PkiError               (mesh.broker_pki) the broker's PKI files are missing or inconsistent
    ├── NotReloadedError       (mesh.broker_crl) a new CRL was signed but no broker reread it
    ├── CorrectionError        (mesh.corrections) a correction or withdrawal that is not accepted
    ├── UntrustedTranscriptError  (voice.trust) a transcript from a device not trusted for commands
    ├── BridgeError            (ha_bridge) the Home Assistant bridge failed
    │   ├── BridgeNotInstalledError, TokenRejectedError, HomeAssistantRefusedError
    │   └── HomeAssistantUnreachableError  (see NetworkError)
    ├── UpdateError            a model update is refused (python-tuf's attack names); trusted state unchanged
    │   ├── MalformedUpdateError   not a signed update envelope or manifest, or out of bounds
    │   ├── UnsignedUpdateError    no signature at all
    │   ├── UpdateSignatureError   a signature does not verify: edited after signing
    │   ├── UnknownUpdateKeyError  signed by a key the household never listed
    │   ├── RevokedUpdateKeyError  signed by a key a newer key set removed
    │   ├── BelowThresholdError    fewer valid signatures than the key set's threshold
    │   ├── RollbackError          sequence (or key-set version) not above the trusted one
    │   ├── ExpiredUpdateError     past its expiry: a freeze attack or a stale copy
    │   ├── WrongDeviceClassError  not meant for this device's class
    │   ├── ChunkDigestError       a chunk or file is not what the manifest signed (mix-and-match)
    │   ├── EndlessDataError       more bytes than the manifest signed
    │   └── UnsafePackError        a file escapes the pack (ONNX external data, symlink, extra file)
    └── EngineError            inference problems
        ├── InvalidRequestError  empty prompt, too long, bad text, batch too large (caller's fault)
        │   └── InvalidAudioError    not audio, empty, too long, undecodable PCM (names the file or segment)
        ├── BudgetExceededError  loading would pass the profile's model RAM budget
        ├── NoLocalModelError    the plan says this task is offload-only here
        └── GenaiError           onnxruntime-genai reported an error (its own message)

Classes marked (module) live next to the code that raises them (their module is part of the mesh's or
the component's public surface); the rest are defined here. tests/test_errors_tree.py checks that every
HearthError subclass of the package is drawn above, under its real parent.
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


class PeerError(HearthError):
    """A message from the network is refused. The agent drops it, logs why, and keeps running."""


class MalformedMessageError(PeerError):
    """Bytes that are not a valid Hearth envelope (truncated, oversized, wrong version)."""


class NotAMemberError(PeerError):
    """The sender holds no valid household certificate, or it was revoked or has expired."""


class ForgedMessageError(PeerError):
    """Signature or authenticated decryption failed: the message was altered or forged."""


class ReplayError(PeerError):
    """The message was seen before, or is too old or too far in the future to be accepted."""


class IdentityError(HearthError):
    """This device's own keys are missing, unreadable, or stored with unsafe permissions."""


class NetworkError(HearthError):
    """The network failed (timeout, unreachable, link dropped); nobody lied, so nobody is banned."""


class TransportError(NetworkError):
    """The link to the broker is down (or never came up); the endpoint reconnects."""


class LinkDownError(TransportError):
    """Our own link to the broker dropped mid-request: wait for it to return, then resume (a network
    failure: no peer is to blame, none is banned)."""


class PathDownError(LinkDownError):
    """The direct link a request travelled on broke or went silent mid-answer; the broker path is still
    up, so the request resumes there at once, on the same peer."""


class PeerUnreachableError(TransportError):
    """A transport that reaches each peer itself (CoAP, no broker) got no answer from that one peer: our
    own link is fine, the peer is out of reach (fail over to another; its other transports may still
    carry this frame)."""


class PeerOfflineError(NetworkError):
    """The device a message is for has no live presence now (off, asleep, or out of reach)."""


class StateInUseError(HearthError):
    """Another process (the running agent) holds this device's mesh state; use its local socket."""


class SessionError(PeerOfflineError):
    """No forward-secret session with that peer could be made: it did not finish the handshake in time
    (off, restarting, or overloaded). Nothing was sent; try another device."""


class LocalApiError(HearthError):
    """The local agent socket answered badly or went away mid-answer."""


class DirectLinkError(NetworkError):
    """A direct device-to-device link could not be made or broke (the caller falls back to the broker)."""


class DirectRefusedError(DirectLinkError):
    """The peer answered over a working direct link, but said no (it does not hold what was asked)."""


class RecipientNotMemberError(HearthError):
    """This device refuses to send to a peer that is revoked, expired or unknown (checked on every
    outgoing path, so a revoked device receives nothing, whatever the broker still delivers)."""


class UpdateError(HearthError):
    """A model update (key set, manifest or chunk) is refused; nothing trusted changed."""


class MalformedUpdateError(UpdateError):
    """Not a signed update envelope or manifest, or outside its size bounds."""


class UnsignedUpdateError(UpdateError):
    """The update carries no signature at all."""


class UpdateSignatureError(UpdateError):
    """A signature by a listed key does not verify: the payload was edited after signing."""


class UnknownUpdateKeyError(UpdateError):
    """Signed only by keys the household's update key set does not list."""


class RevokedUpdateKeyError(UpdateError):
    """Signed by a key that a newer update key set removed."""


class BelowThresholdError(UpdateError):
    """Fewer distinct valid signatures than the key set's threshold."""


class RollbackError(UpdateError):
    """Sequence (or key-set version) not above the one already trusted: rollback or replay."""


class ExpiredUpdateError(UpdateError):
    """Past its expiry: a freeze attack, or a copy too old to trust."""


class WrongDeviceClassError(UpdateError):
    """The manifest is not meant for this device's class."""


class ChunkDigestError(UpdateError):
    """A chunk or file does not match the manifest's digest (mix-and-match, poisoned chunk)."""


class EndlessDataError(UpdateError):
    """More bytes than the manifest signed."""


class UnsafePackError(UpdateError):
    """A received pack points outside itself (ONNX external data, genai config) or holds a symlink or
    an unlisted file: refused before onnxruntime sees it."""


class EngineError(HearthError):
    """Inference failed."""


class InvalidRequestError(EngineError):
    """The request itself is invalid; retrying it unchanged will fail again."""

    exit_code = 2


class InvalidAudioError(InvalidRequestError):
    """Audio that cannot be transcribed as given: not audio at all, empty, too long, or malformed PCM."""


class BudgetExceededError(EngineError):
    """Loading the model would exceed the profile's RAM budget for models."""


class NoLocalModelError(EngineError):
    """No pack for this task fits this device: the task must be offloaded to a peer."""


class GenaiError(EngineError):
    """onnxruntime-genai reported an error; the message is its own, after what we were doing."""


class OffloadError(HearthError):
    """A request handed to a peer did not complete there."""


class PeerLostError(OffloadError):
    """The serving peer died, disconnected or stalled mid-request; the router fails over."""


class StreamBrokenError(PeerLostError):
    """The peer's stream cannot be put back together within the limits (a gap that will not fill, or
    more buffered data than allowed): the router fails over as if the peer had died."""


class PeerRefusedError(OffloadError):
    """The peer answered with a failure (busy, not served, invalid request, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class NoRouteError(OffloadError):
    """Neither this device nor any reachable peer may serve the request."""

    exit_code = 3
