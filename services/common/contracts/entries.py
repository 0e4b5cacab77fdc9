"""A stream entry on the wire: `type` (an EventType), `v` (its version) and `data` (the payload as JSON).

The Lua scripts write the same three fields with `redis.call('XADD', ..., 'type', ..., 'v', ..., 'data',
cjson.encode(...))`; every Python producer goes through `encode_event`, every consumer through `decode_event`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from services.common.contracts.catalog import StreamSpec
from services.common.contracts.events import EVENT_VERSIONS, EventType

_VERSION_FIELD = {event: str(version) for event, version in EVENT_VERSIONS.items()}


class ContractViolation(ValueError):
    """An entry that is not what its stream's contract says."""


def encode_event(event_type: EventType, payload: Mapping[str, Any], *, version: int | None = None) -> dict[str, str]:
    """The fields of a stream entry for `payload`, at the current version of its type (a relay passes on the
    version it received)."""
    v = _VERSION_FIELD[event_type] if version is None else str(version)
    return {"type": event_type, "v": v, "data": orjson.dumps(payload).decode()}


def decode_event(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a stream entry, with its `type` and `v` merged in (a field of the payload wins).

    No validation: the hot consumer paths read only what they need and check it themselves.
    """
    data: dict[str, Any] = orjson.loads(fields.get("data", "{}"))
    data.setdefault("type", fields.get("type", ""))
    data.setdefault("v", int(fields.get("v", 1)))
    return data


@functools.cache
def _adapter(model: Any) -> TypeAdapter[Any]:
    return TypeAdapter(model)


def validate_entry(spec: StreamSpec, fields: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a decoded entry, checked against `spec`: a type the stream carries, at its version,
    matching one of the payloads declared for it. Raises ContractViolation."""
    try:
        event_type = EventType(fields.get("type", ""))
    except ValueError:
        raise ContractViolation(f"{spec.name}: unknown event type {fields.get('type')!r}") from None
    models = spec.payloads.get(event_type)
    if models is None:
        raise ContractViolation(f"{spec.name} does not carry {event_type}")
    if fields.get("v") != _VERSION_FIELD[event_type]:
        raise ContractViolation(f"{event_type} at version {fields.get('v')!r}, not {_VERSION_FIELD[event_type]}")
    try:
        data = orjson.loads(fields.get("data", ""))
    except orjson.JSONDecodeError as exc:
        raise ContractViolation(f"{event_type}: data is not JSON ({exc})") from None
    errors: list[str] = []
    for model in models:
        try:
            checked: dict[str, Any] = _adapter(model).validate_python(data)
        except ValidationError as exc:
            errors.append(f"as {model.__name__}: {exc}")
            continue
        if checked.get("type", event_type) != event_type:
            raise ContractViolation(f"{event_type} entry whose data says type {checked['type']!r}")
        return checked
    raise ContractViolation(f"{event_type} on {spec.name} does not match its payload: " + "; ".join(errors))
