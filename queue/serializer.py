"""The queue's RQ serializer: msgpack with typed msgspec payloads, never pickle.

RQ serializes a job as ``(func_name, instance, args, kwargs)`` and also pushes results
and ``meta`` through the serializer, so everything that crosses the queue goes through
`dumps` / `loads` here. Contracts (msgspec Structs) travel as a msgpack extension that
names their class; the receiving side imports that class (only from ``tinygpt.*``) and
decodes into it strictly, so a worker on another host gets the exact payload type or
refuses the job. Anything that is not plain data or a Contract is an error at enqueue
time instead of a pickle that runs code on the worker.

Pass the class (``serializer=MsgpackSerializer``) or its import path
(``tinygpt.queue.serializer.MsgpackSerializer``) to RQ queues, workers and jobs.
"""

from __future__ import annotations

import datetime
import importlib
from typing import Any

import msgspec

from tinygpt.runtime.contracts.base import Contract
from tinygpt.runtime.contracts.io import decode_msgpack

# msgpack extension code for a Contract: payload = msgpack([class path, struct bytes]).
CONTRACT_EXT = 1
# Payload classes may come only from here: decoding must never import arbitrary modules.
ALLOWED_PREFIX = "tinygpt."

_PLAIN = (type(None), bool, int, float, str, bytes, bytearray, datetime.datetime, datetime.date, datetime.timedelta)


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _to_wire(obj: Any) -> Any:
    """`obj` with every Contract replaced by a tagged extension; refuses non-data types."""
    if isinstance(obj, Contract):
        body = msgspec.msgpack.encode([_class_path(type(obj)), msgspec.msgpack.encode(obj)])
        return msgspec.msgpack.Ext(CONTRACT_EXT, body)
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, (list, tuple)):
        return [_to_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _to_wire(v) for k, v in obj.items()}
    raise TypeError(
        f"the tinygpt queue carries msgspec payloads, ids and paths only; cannot send {type(obj).__module__}.{type(obj).__qualname__} "
        "(wrap it in a Contract from tinygpt.runtime.contracts)"
    )


def _resolve(path: str) -> type[Contract]:
    module, _, name = path.partition(":")
    if not module.startswith(ALLOWED_PREFIX) or not name:
        raise ValueError(f"refusing payload class {path!r}: only tinygpt contracts travel on the queue")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Contract)):
        raise ValueError(f"refusing payload class {path!r}: not a tinygpt Contract")
    return obj


def _ext_hook(code: int, data: memoryview) -> Any:
    if code != CONTRACT_EXT:
        raise ValueError(f"unknown msgpack extension {code} in a queue payload")
    path, body = msgspec.msgpack.decode(data)
    cls = _resolve(path)
    # Strict decode: unknown fields, wrong types or a newer schema_version fail here,
    # naming the class and the field.
    return decode_msgpack(body, cls, path)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


class MsgpackSerializer:
    """RQ serializer protocol (`dumps` / `loads`) over msgpack + tagged Contracts."""

    @staticmethod
    def dumps(obj: Any) -> bytes:
        return _encoder.encode(_to_wire(obj))

    @staticmethod
    def loads(data: bytes) -> Any:
        return _decoder.decode(data)


SERIALIZER_PATH = f"{MsgpackSerializer.__module__}.{MsgpackSerializer.__qualname__}"
