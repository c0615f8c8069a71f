"""MQTT topic layout. Topics are visible to the broker, so they carry ids only, never content.

hearth/<household>/presence/<device>   retained, group-sealed presence; emptied by the last will
hearth/<household>/req/<device>        requests (and cancels, pings) addressed to <device>
hearth/<household>/resp/<device>       responses and stream chunks addressed to <device>
hearth/pair/open                       retained: the one open invitation (ids only; see pairing_link)
hearth/pair/<invitation>/hub/<session> pairing messages to the hub (SPAKE2-protected)
hearth/pair/<invitation>/dev/<session> pairing messages to the new device

<session> is the pairing device's random session id, which is also its MQTT client id, so the pairing
listener's ``%c`` ACL patterns let only that connection write and read its session's topics.
"""

from __future__ import annotations

ROOT = "hearth"


def presence(household: str, device: str) -> str:
    return f"{ROOT}/{household}/presence/{device}"


def requests(household: str, device: str) -> str:
    return f"{ROOT}/{household}/req/{device}"


def responses(household: str, device: str) -> str:
    return f"{ROOT}/{household}/resp/{device}"


def all_presence(household: str) -> str:
    return f"{ROOT}/{household}/presence/+"


def presence_device(topic: str) -> str | None:
    """The device id of a presence topic, or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == ROOT and parts[2] == "presence":
        return parts[3]
    return None


def presence_household(topic: str) -> str | None:
    """The household id of a presence topic (16 hex), or None for any other topic."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == ROOT and parts[2] == "presence" and _is_household(parts[1]):
        return parts[1]
    return None


def _is_household(text: str) -> bool:
    return len(text) == 16 and all(c in "0123456789abcdef" for c in text)


PAIR_OPEN = f"{ROOT}/pair/open"


def pair_to_hub(invitation: str, session: str) -> str:
    return f"{ROOT}/pair/{invitation}/hub/{session}"


def pair_hub_inbox(invitation: str) -> str:
    """What the hub subscribes to: every session's messages for its invitation."""
    return f"{ROOT}/pair/{invitation}/hub/+"


def pair_session(invitation: str, topic: str) -> str | None:
    """The session a message to the hub was published under, or None for any other topic."""
    prefix = f"{ROOT}/pair/{invitation}/hub/"
    session = topic.removeprefix(prefix)
    return session if session != topic and session and "/" not in session else None


def pair_to_device(invitation: str, session: str) -> str:
    return f"{ROOT}/pair/{invitation}/dev/{session}"
