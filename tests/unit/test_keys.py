"""Operation keys (what makes a replayed step the same step) and how key functions of flow
control receive a call's arguments."""

from __future__ import annotations

from typing import Any

from durably.context import canonical, operation_key
from durably.flow import by_name
from durably.serde import Signature


def test_equal_inputs_give_equal_keys_whatever_the_key_order() -> None:
    one = operation_key("step", "charge", canonical({"a": 1, "b": [1, 2]}))
    two = operation_key("step", "charge", canonical({"b": [1, 2], "a": 1}))
    assert one == two and len(one) == 32


def test_kind_name_and_input_each_change_the_key() -> None:
    base = operation_key("step", "charge", canonical([1]))
    assert base != operation_key("child", "charge", canonical([1]))
    assert base != operation_key("step", "refund", canonical([1]))
    assert base != operation_key("step", "charge", canonical([2]))


def test_key_functions_get_arguments_by_name_however_the_task_was_called() -> None:
    def report(tenant: str, report_id: int, *, fmt: str = "pdf") -> None: ...

    sig = Signature(report)
    assert by_name(sig, ("acme", 7), {}) == ([], {"tenant": "acme", "report_id": 7, "fmt": "pdf"})
    named = by_name(sig, (), {"tenant": "acme", "report_id": 7})
    assert named == ([], {"tenant": "acme", "report_id": 7, "fmt": "pdf"})


def test_a_durable_tasks_context_is_not_an_argument() -> None:
    def flow(ctx: Any, order_id: int, /, *items: str, **extra: Any) -> None: ...

    sig = Signature(flow, skip_first=True)
    assert by_name(sig, (5, "a", "b"), {"rush": True}) == ([5, "a", "b"], {"rush": True})
