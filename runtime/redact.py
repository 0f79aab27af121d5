"""Masking passwords in Redis URLs before anything shows them (logs, status, errors).

A leaf: the queue's connection, the registry's notice watcher and the commands all
import it from here, so none of them imports another for a regex.
"""

from __future__ import annotations

import re

# `scheme://user:password@` (the password runs to the last "@" of the URL, as urlsplit
# reads it) and redis-py's `?password=` query parameter.
_USERINFO_SECRET = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*):[^\s/]*@", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"(?P<head>[?&]password=)[^&#\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with every password in it masked: a Redis URL, or a message or command line
    that contains URLs. The one place TinyGPT hides a Redis password before showing it."""
    text = _USERINFO_SECRET.sub(lambda m: f"{m['head']}:***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}***", text)
