"""Values as durably stores them: JSON that comes back equal, rebuilt into declared types, and
refused in one line when it cannot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from durably import NotSerializable, PayloadTooLarge
from durably.serde import ReturnType, as_stored, dumps, encode_value


@dataclass
class Quote:
    amount: float
    currency: str


def test_a_dataclass_round_trips_through_its_declared_type() -> None:
    stored = as_stored(encode_value(Quote(9.5, "EUR"), "the result", 1000))
    assert stored == {"amount": 9.5, "currency": "EUR"}
    assert ReturnType(Quote).decode(stored) == Quote(9.5, "EUR")


def test_tuples_and_int_keys_come_back_as_declared() -> None:
    assert ReturnType(tuple[int, str]).decode(as_stored(dumps((1, "a")))) == (1, "a")
    assert ReturnType(dict[int, str]).decode(as_stored(dumps({1: "a"}))) == {1: "a"}


def test_numbers_come_back_as_jsonb_gives_them() -> None:
    assert as_stored("1e16") == 10**16 and isinstance(as_stored("1e16"), int)
    assert as_stored("0.5") == 0.5


def test_too_large_a_value_is_refused_before_anything_is_written() -> None:
    with pytest.raises(PayloadTooLarge) as e:
        encode_value("x" * 2000, "the result of step 'big'", 1000)
    assert "\n" not in str(e.value)


def test_a_value_json_cannot_hold_is_refused_in_one_line() -> None:
    with pytest.raises(NotSerializable) as e:
        encode_value(object(), "the result of step 's'", 1000)
    assert "\n" not in str(e.value)


def test_too_deep_a_value_is_refused_not_a_recursion_error() -> None:
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(NotSerializable, match="nested"):
        encode_value(deep, "the input", 10_000_000)
