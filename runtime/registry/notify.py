"""The "published" notification: Redis pub/sub from the publish stage to every runtime.

Pub/sub is fire-and-forget (a runtime that is down misses it), so a notice is only a hint
to look now: runtimes also resolve their pins on start and whenever they (re)subscribe,
and the registry, never the message, says what a version contains.
"""

from __future__ import annotations

import msgspec

from ..contracts.io import decode_json
from ..contracts.project import ProjectPins
from ..contracts.specialist import PublishedNotice

# Same "tinygpt:" prefix as every other key the project owns in Redis (queue/keys.py).
CHANNEL = "tinygpt:specialists:published"


def channel() -> str:
    """The pub/sub channel of PublishedNotice messages."""
    return CHANNEL


def notify(conn, notice: PublishedNotice) -> int:
    """Publish `notice` on `conn` (a redis.Redis); returns how many subscribers got it."""
    return int(conn.publish(channel(), msgspec.json.encode(notice)))


def decode_notice(data: bytes | str) -> PublishedNotice:
    """A notice from the wire; ContractError names what is wrong with it."""
    return decode_json(data, PublishedNotice, f"message on {CHANNEL}")


def pinned_by(pins: ProjectPins, notice: PublishedNotice) -> bool:
    """Whether the project pins the notice's specialist and the pin accepts its version."""
    pin = pins.pin(notice.name)
    if pin is None:
        return False
    return pin.version in ("*", notice.version) and (pin.sha256 is None or pin.sha256 == notice.digest)
