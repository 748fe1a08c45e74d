"""JSON encoding of arguments and results.

Arguments and results are stored as JSON, never pickled: whoever can write the database must not be
able to run code on workers. Pydantic models and dataclasses are accepted and rebuilt on the other
side from the function's type hints.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import traceback
import types
import typing
from collections.abc import Callable
from typing import Any

import pydantic

from .errors import NotSerializable, PayloadTooLarge

_SURROGATE = re.compile("[\ud800-\udfff]")
_PLAIN = {str, int, float, bool, type(None), Any, dict, list, inspect.Parameter.empty}


def _default(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    raise TypeError(type(value).__name__)


def _encoder(sort_keys: bool) -> json.JSONEncoder:
    return json.JSONEncoder(
        default=_default,
        allow_nan=False,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=sort_keys,
    )


# Built once: json.dumps with options builds an encoder on every call, which was most of the
# client's cost of enqueue_many (encoders keep no state between calls, so sharing is safe).
_COMPACT, _CANONICAL = _encoder(False), _encoder(True)


def dumps(value: Any, sort_keys: bool = False) -> str:
    """Encode ``value`` as compact JSON; raises TypeError or ValueError when it is not JSON
    that Postgres can store. ``sort_keys`` gives the canonical form."""
    encoded = (_CANONICAL if sort_keys else _COMPACT).encode(value)
    problem = storable_problem(encoded)
    if problem:
        raise ValueError(problem)
    return encoded


def storable_problem(text: str) -> str | None:
    """Why Postgres cannot store ``text`` (as text or JSON), or None when it can."""
    if "\x00" in text or "\\u0000" in text:
        return "it contains a NUL character (\\x00), which Postgres cannot store"
    if _SURROGATE.search(text):
        return "it contains a lone surrogate (\\ud800-\\udfff), which is not valid UTF-8"
    return None


def check_text(text: str, what: str, max_bytes: int = 1000) -> str:
    """Refuse names and keys that Postgres cannot store or index."""
    problem = storable_problem(text)
    if problem is None and len(text) * 4 > max_bytes and len(text.encode()) > max_bytes:
        problem = f"it is {len(text.encode())} bytes long, over the limit of {max_bytes}"
    if problem:
        raise ValueError(
            f"{what} is not valid: {problem}; pass plain text of at most {max_bytes} bytes"
        )
    return text


def check_size(encoded: str, limit: int, what: str) -> None:
    """Refuse payloads above ``limit`` bytes (UTF-8)."""
    # A str of n characters is at most 4n bytes: only count bytes when it could matter.
    if len(encoded) * 4 > limit and len(encoded.encode()) > limit:
        raise PayloadTooLarge(
            f"{what} is {len(encoded.encode())} bytes of JSON, over the limit of {limit} bytes: "
            "store large data elsewhere and pass a reference, or raise App(max_payload=...)"
        )


def _json_problem(value: Any) -> str | None:
    try:
        dumps(value)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def encode_args(task: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> str:
    """Encode a call's arguments, naming the first argument that is not JSON."""
    try:
        encoded = dumps({"args": args, "kwargs": kwargs})
    except (TypeError, ValueError):
        named = [(f"argument {i + 1}", v) for i, v in enumerate(args)]
        named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in named:
            problem = _json_problem(value)
            if problem is not None:
                raise NotSerializable(
                    f"{task}: {label} ({type(value).__name__}) is not JSON ({problem}): pass "
                    "JSON types, dataclasses or pydantic models"
                ) from None
        raise
    check_size(encoded, limit, f"the arguments of {task}")
    return encoded


def encode_result(task: str, value: Any, limit: int) -> str:
    """Encode a task's return value."""
    try:
        encoded = dumps(value)
    except (TypeError, ValueError) as exc:
        raise NotSerializable(
            f"{task} returned {type(value).__name__}, which is not JSON ({exc}): return JSON "
            "types, dataclasses or pydantic models"
        ) from None
    check_size(encoded, limit, f"the result of {task}")
    return encoded


class Signature:
    """What serde needs to know of a task function: which parameters and the return value must
    be rebuilt from JSON into richer types (dataclasses, models, ...)."""

    def __init__(self, fn: Callable[..., Any], skip_first: bool = False) -> None:
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        if skip_first:
            params = params[1:]
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable annotations: pass values through as JSON
            hints = {}
        self.skip_first = skip_first
        self.positional = [
            p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        # Positional calls with between `required` and len(positional) arguments are always
        # valid when there is nothing else to match: checked without binding (a hot path).
        simple = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
        self._arity = (sum(p.default is p.empty for p in params), len(params)) if simple else None
        self.adapters: dict[str, pydantic.TypeAdapter[Any]] = {
            p.name: pydantic.TypeAdapter(hints[p.name])
            for p in params
            if p.name in hints and _needs_rebuild(hints[p.name])
        }
        ret = hints.get("return", Any)
        self.result_adapter = pydantic.TypeAdapter(ret) if _needs_rebuild(ret) else None

    def check_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Raise TypeError when the function cannot be called with these arguments."""
        if self._arity is not None and not kwargs and self._arity[0] <= len(args) <= self._arity[1]:
            return
        # A durable task's first parameter is its context, given by the worker.
        self.signature.bind(*((None,) if self.skip_first else ()), *args, **kwargs)

    def decode_args(self, payload: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
        """Turn a stored ``{"args": [...], "kwargs": {...}}`` into call arguments."""
        args: list[Any] = payload.get("args", [])
        kwargs: dict[str, Any] = payload.get("kwargs", {})
        if not self.adapters:
            return args, kwargs
        args = [
            self._rebuild(self.positional[i], v) if i < len(self.positional) else v
            for i, v in enumerate(args)
        ]
        kwargs = {k: self._rebuild(k, v) for k, v in kwargs.items()}
        return args, kwargs

    def _rebuild(self, name: str, value: Any) -> Any:
        adapter = self.adapters.get(name)
        return value if adapter is None else adapter.validate_python(value)

    def decode_result(self, value: Any) -> Any:
        """Rebuild a stored result into the function's declared return type."""
        if self.result_adapter is None or value is None:
            return value
        return self.result_adapter.validate_python(value)


def _needs_rebuild(hint: Any) -> bool:
    """True when JSON alone does not give back a value of type ``hint``."""
    if hint in _PLAIN:
        return False
    if typing.get_origin(hint) in (dict, list, typing.Union, types.UnionType):
        return any(_needs_rebuild(arg) for arg in typing.get_args(hint))
    return True


def error_dict(exc: BaseException) -> dict[str, Any]:
    """The stored form of an error (type, message, traceback); never raises, whatever the
    exception holds, and escapes what Postgres cannot store."""
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    try:
        tb: str | None = "".join(traceback.format_exception(exc))
    except Exception:
        tb = None
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
        "message": _storable(message),
        "traceback": None if tb is None else _storable(tb),
    }


def error_json(exc: BaseException) -> str:
    """:func:`error_dict` as JSON."""
    return dumps(error_dict(exc))


def _storable(text: str) -> str:
    # Postgres text cannot hold NUL, and UTF-8 cannot hold lone surrogates: escape both.
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
