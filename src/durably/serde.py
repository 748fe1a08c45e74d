"""JSON encoding of arguments and results.

Arguments and results are stored as JSON, never pickled: whoever can write the database must not be
able to run code on workers. Pydantic models and dataclasses are accepted and rebuilt on the other
side from the function's type hints.
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import inspect
import json
import math
import re
import traceback
import types
import typing
import weakref
from collections.abc import Callable
from typing import Any

import pydantic

from .errors import NotSerializable, PayloadTooLarge

_SURROGATE = re.compile("[\ud800-\udfff]")
# Types JSON gives back as they were. Not float: Postgres stores 1e+16 as 10000000000000000,
# which comes back an int.
_PLAIN = {str, int, bool, type(None), Any, dict, list, inspect.Parameter.empty}

MAX_DEPTH = 128
"""How deeply a stored JSON value may nest (arrays and objects). Python's own JSON encoder and
decoder recurse once per level: a fixed limit, far below where they would overflow, means what is
accepted here can always be read back by a worker."""
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SQUARE = str.maketrans("{}", "[]")


class TooDeep(ValueError):
    """A value nests more than :data:`MAX_DEPTH` levels deep."""

    def __init__(self) -> None:
        super().__init__(f"it is nested more than {MAX_DEPTH} levels deep")


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
    try:
        encoded = (_CANONICAL if sort_keys else _COMPACT).encode(value)
    except RecursionError:  # the encoder recurses once per level of nesting
        raise TooDeep() from None
    problem = storable_problem(encoded)
    if problem:
        raise ValueError(problem)
    if too_deep(encoded):
        raise TooDeep()
    return encoded


def too_deep(encoded: str) -> bool:
    """True when the JSON text ``encoded`` nests more than :data:`MAX_DEPTH` levels."""
    # A value cannot nest deeper than it has brackets: most values stop at this count.
    if encoded.count("[") + encoded.count("{") <= MAX_DEPTH:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", encoded)).translate(_SQUARE)
    # Each pass removes the innermost level, in C: at most MAX_DEPTH passes.
    for _ in range(MAX_DEPTH):
        if not brackets:
            return False
        brackets = brackets.replace("[]", "")
    return bool(brackets)


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


def _refusal(what: str, value: Any, exc: Exception) -> NotSerializable:
    """The one-line NotSerializable for ``value``, described as ``what``."""
    advice = (
        "flatten it, or store it elsewhere and pass a reference"
        if isinstance(exc, TooDeep)
        else "use JSON types, dataclasses or pydantic models"
    )
    return NotSerializable(f"{what} ({type(value).__name__}) is not JSON ({exc}): {advice}")


def encode_args(task: str, args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> str:
    """Encode a call's arguments (canonical JSON: a child run's arguments are also the input
    its parent's log entry is keyed by), naming the first argument that is not JSON."""
    try:
        encoded = dumps({"args": args, "kwargs": kwargs}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        named = [(f"argument {i + 1}", v) for i, v in enumerate(args)]
        named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in named:
            try:
                dumps(value)
            except (TypeError, ValueError) as problem:
                raise _refusal(f"{task}: {label}", value, problem) from None
        # Each argument alone is fine: their envelope took the nesting over the limit.
        raise _refusal(f"{task}: the arguments", args, exc) from None
    check_size(encoded, limit, f"the arguments of {task}")
    return encoded


def encode_result(task: str, value: Any, limit: int) -> str:
    """Encode a task's return value."""
    return encode_value(value, f"the result of {task}", limit)


def encode_value(value: Any, what: str, limit: int, sort_keys: bool = False) -> str:
    """Encode a value to be stored (a result, an input, an event payload), described as
    ``what`` in the one-line NotSerializable or PayloadTooLarge that refuses it."""
    try:
        encoded = dumps(value, sort_keys)
    except (TypeError, ValueError) as exc:
        raise _refusal(what, value, exc) from None
    check_size(encoded, limit, what)
    return encoded


def _jsonb_number(text: str) -> float | int:
    # Postgres keeps a number's decimals and drops its exponent: 1e+16 comes back as
    # 10000000000000000, which JSON reads as an int.
    number = float(text)
    if "e" in text.lower() and math.isfinite(number):
        exact = decimal.Decimal(text)
        exponent = exact.as_tuple().exponent
        if isinstance(exponent, int) and exponent >= 0:
            return int(exact)
    return number


def _jsonb_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Postgres keeps the last of duplicate keys and orders keys by length, then by bytes.
    merged = dict(pairs)
    return {k: merged[k] for k in sorted(merged, key=lambda k: (len(k.encode()), k.encode()))}


def as_stored(encoded: str) -> Any:
    """The value Postgres gives back for the JSON text ``encoded`` once stored as jsonb (same
    numbers, same key order), without a round trip to the database."""
    return json.loads(encoded, parse_float=_jsonb_number, object_pairs_hook=_jsonb_object)


class ReturnType:
    """A callable's declared return type, to rebuild its recorded JSON result with: a dataclass,
    a pydantic model, a tuple, a ``dict[int, X]``... Without a declaration (or one that JSON
    gives back as is) the result is the plain JSON value."""

    def __init__(self, hint: Any) -> None:
        self.hint = hint
        self.adapter: pydantic.TypeAdapter[Any] | None = None
        self.error: Exception | None = None
        if _needs_rebuild(hint):
            try:
                self.adapter = pydantic.TypeAdapter(hint)
            except Exception as exc:  # a type pydantic cannot build from JSON
                self.error = exc

    @property
    def problem(self) -> str | None:
        """Why no value can be rebuilt into the declared type, or None."""
        return None if self.error is None else first_problem(self.error)

    @property
    def name(self) -> str:
        """The declared type, as written."""
        return typing_name(self.hint)

    def decode(self, value: Any) -> Any:
        """``value`` (JSON) rebuilt into the declared type; raises pydantic's ValidationError."""
        if self.adapter is None or value is None:
            return value
        return self.adapter.validate_python(value)


_RETURN_TYPES: weakref.WeakKeyDictionary[Any, ReturnType] = weakref.WeakKeyDictionary()


def return_type(fn: Any) -> ReturnType:
    """The :class:`ReturnType` of ``fn``, built once per function."""
    target = getattr(fn, "__func__", fn)  # bound methods share their function's
    try:
        return _RETURN_TYPES[target]
    except KeyError:
        found = _RETURN_TYPES[target] = ReturnType(_return_hint(target))
        return found
    except TypeError:  # cannot be weakly referenced (a builtin): cheap to build again
        return ReturnType(_return_hint(target))


def _return_hint(fn: Any) -> Any:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, type):  # calling a class makes an instance of it
        return fn
    try:
        if not (inspect.isfunction(fn) or inspect.ismethod(fn)):
            fn = type(fn).__call__  # a callable object: its __call__'s
        return typing.get_type_hints(fn).get("return", Any)
    except Exception:  # unresolvable annotations, builtins: the plain JSON value
        return Any


def typing_name(hint: Any) -> str:
    """A type as written in code: ``Point``, ``tuple[int, str]``."""
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint)


def first_problem(exc: BaseException) -> str:
    """An exception as one line: for a pydantic ValidationError, its first error."""
    if isinstance(exc, pydantic.ValidationError) and exc.errors():
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        return f"{error['msg']}" + (f" at {where}" if where else "")
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
        self.returns = ReturnType(hints.get("return", Any))
        if self.returns.error is not None:  # refused when the task is declared
            raise self.returns.error

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
        return self.returns.decode(value)


def _needs_rebuild(hint: Any) -> bool:
    """True when JSON alone does not give back a value of type ``hint``."""
    if hint in _PLAIN:
        return False
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is dict and args and args[0] not in (str, Any):
        return True  # JSON object keys are strings: dict[int, X] needs its keys rebuilt
    if origin in (dict, list, typing.Union, types.UnionType):
        return any(_needs_rebuild(arg) for arg in args)
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
