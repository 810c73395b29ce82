"""Lossless encoding of task arguments for the journal and the history.

JSON with small type tags, so what a task gets back after a restart is what it was given:
datetime stays datetime, tuple stays tuple, dict keys keep their type. Values JSON cannot
express fall back to pickle (cloudpickle when installed), tagged and base64-encoded.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import pickle
import uuid
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import TaskRecord

_TAG = "__tf__"

# Compact JSON from one encoder made once: ``json.dumps(..., separators=...)`` builds a new
# JSONEncoder on every call, which the journal and history rows pay per task.
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def _pickler() -> Any:
    try:
        import cloudpickle

        return cloudpickle
    except ImportError:
        return pickle


def _tagged(kind: str, value: Any) -> dict[str, Any]:
    return {_TAG: kind, "v": value}


def _to_json(value: Any) -> Any:
    # Order matters: bool before int, datetime before date.
    if value is None or isinstance(value, bool | str):
        return value
    if type(value) is int:
        return value
    if type(value) is float:
        return (
            value
            if value == value and value not in (float("inf"), float("-inf"))
            else _tagged("float", repr(value))
        )
    if type(value) is list:
        return [_to_json(v) for v in value]
    if type(value) is tuple:
        return _tagged("tuple", [_to_json(v) for v in value])
    if type(value) is dict:
        if all(type(k) is str for k in value) and _TAG not in value:
            return {k: _to_json(v) for k, v in value.items()}
        return _tagged("dict", [[_to_json(k), _to_json(v)] for k, v in value.items()])
    if type(value) is datetime:
        return _tagged("datetime", value.isoformat())
    if type(value) is date:
        return _tagged("date", value.isoformat())
    if type(value) is time:
        return _tagged("time", value.isoformat())
    if type(value) is timedelta:
        return _tagged("timedelta", [value.days, value.seconds, value.microseconds])
    if type(value) is Decimal:
        return _tagged("decimal", str(value))
    if type(value) is uuid.UUID:
        return _tagged("uuid", str(value))
    if type(value) is bytes:
        return _tagged("bytes", base64.b64encode(value).decode("ascii"))
    if type(value) in (set, frozenset):
        return _tagged(type(value).__name__, [_to_json(v) for v in value])
    return _tagged("pickle", base64.b64encode(_pickler().dumps(value)).decode("ascii"))


_DECODERS: dict[str, Any] = {
    "float": float,
    "tuple": lambda v: tuple(_from_json(x) for x in v),
    "dict": lambda v: {_from_json(k): _from_json(x) for k, x in v},
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "timedelta": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "decimal": Decimal,
    "uuid": uuid.UUID,
    "bytes": lambda v: base64.b64decode(v),
    "set": lambda v: {_from_json(x) for x in v},
    "frozenset": lambda v: frozenset(_from_json(x) for x in v),
    "pickle": lambda v: pickle.loads(base64.b64decode(v)),
}


def _from_json(value: Any) -> Any:
    if type(value) is list:
        return [_from_json(v) for v in value]
    if type(value) is dict:
        kind = value.get(_TAG)
        if kind is not None:
            return _DECODERS[kind](value["v"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


def encode_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Encode a call's arguments as UTF-8 JSON bytes."""
    payload = {"a": [_to_json(a) for a in args], "k": {k: _to_json(v) for k, v in kwargs.items()}}
    return compact_json(payload).encode()


def record_call(record: TaskRecord) -> bytes:
    """``encode_call`` of a record's arguments, computed once per record."""
    if record.encoded_call is None:
        record.encoded_call = encode_call(record.args, record.kwargs)
    return record.encoded_call


def decode_call(data: bytes | str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Inverse of :func:`encode_call`; raises ``ValueError`` on a corrupt payload."""
    try:
        payload = json.loads(data)
        args = tuple(_from_json(a) for a in payload["a"])
        kwargs = {k: _from_json(v) for k, v in payload["k"].items()}
    except (KeyError, TypeError, json.JSONDecodeError, pickle.UnpicklingError) as exc:
        raise ValueError(f"corrupt task arguments: {exc}") from exc
    return args, kwargs


# ---- results ---------------------------------------------------------------------------------


# Types the codec carries as they are: no model or dataclass can hide inside them.
_LEAVES = frozenset(
    {str, int, float, bool, type(None), bytes, datetime, date, time, timedelta, Decimal, uuid.UUID}
)


def _plain(value: Any) -> Any:
    """Pydantic models and dataclasses as their JSON form, inside containers too."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind in (list, tuple, set, frozenset):
        return kind(_plain(v) for v in value)
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def encode_result(value: Any) -> bytes:
    """A task's return value as UTF-8 JSON bytes: lossless for the types arguments carry,
    pydantic models and dataclasses as their JSON form."""
    return compact_json(_to_json(_plain(value))).encode()


def decode_result(data: bytes | str) -> Any:
    """Inverse of :func:`encode_result`; raises ``ValueError`` on a corrupt payload."""
    try:
        return _from_json(json.loads(data))
    except (KeyError, TypeError, json.JSONDecodeError, pickle.UnpicklingError) as exc:
        raise ValueError(f"corrupt task result: {exc}") from exc


def result_view(value: Any) -> Any:
    """A JSON-safe view of a result for people: JSON values as they are, a short description
    (``{"type": "bytes", "size": 1234}``) for what JSON cannot carry."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"type": "float", "value": repr(value)}
    if isinstance(value, list | tuple | set | frozenset):
        return [result_view(v) for v in value]
    if isinstance(value, dict):
        return {str(k): result_view(v) for k, v in value.items()}
    if isinstance(value, bytes | bytearray):
        return {"type": "bytes", "size": len(value)}
    if isinstance(value, datetime | date | time):
        return {"type": type(value).__name__, "value": value.isoformat()}
    if isinstance(value, timedelta):
        return {"type": "timedelta", "seconds": value.total_seconds()}
    if isinstance(value, Decimal | uuid.UUID):
        return {"type": type(value).__name__.lower(), "value": str(value)}
    return {"type": type(value).__name__}
