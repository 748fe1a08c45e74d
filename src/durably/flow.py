"""Flow control across all workers: concurrency and rate limits per task, per key and per queue,
and fair turns across keys (docs/flow-control.md).

Limits are declared in code (``@app.task(concurrency=5, ...)``, :meth:`App.queue`) and enforced by
PostgreSQL inside the claim (``claim_pick_controlled`` in ``sql/flow.sql``). This module checks
the declarations, computes a run's keys at enqueue, and turns one slot pool's declarations into
the claim's rules (:class:`durably.records.FlowRules`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .records import FlowRules, QueueRules, TaskRules
from .serde import Signature, check_text

# A key is a function of the call's arguments, or True: the key is given per call (options()).
KeySource = Callable[..., str | None] | bool | None
# A task call as its key functions see it: the task function's signature and the arguments.
Call = tuple[Signature, tuple[Any, ...], dict[str, Any]]

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")
_UNITS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts in any window of ``seconds``."""

    count: int
    seconds: float

    @classmethod
    def parse(cls, text: str | None, option: str, owner: str) -> Rate | None:
        """``"100/minute"``, ``"5/second"``, ``"10/30s"``, ``"1000/hour"``, ``"3/day"``."""
        if text is None:
            return None
        match = _RATE.match(text) if isinstance(text, str) else None
        if not match or match[3] not in _UNITS or int(match[1]) < 1 or match[2] == "0":
            raise ValueError(
                f"{option}={text!r} is not valid for {owner}: write '<starts>/<period>', e.g. "
                "'100/minute', "
                "'5/second', '10/30s' (periods: second, minute, hour, day)"
            )
        return cls(int(match[1]), float(match[2] or 1) * _UNITS[match[3]])


def check_limit(value: Any, option: str, owner: str) -> int | None:
    """A concurrency limit: an int >= 1, or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(
            f"{option}={value!r} is not valid for {owner}: pass an int >= 1 (the most runs "
            "executing at once across all workers), or None"
        )
    return value


def check_key_source(value: Any, option: str, owner: str) -> KeySource:
    """A key declaration: a function of the task's arguments, True (given per call), or None."""
    if value is None or value is True or callable(value):
        return value  # type: ignore[no-any-return]
    raise ValueError(
        f"{option}={value!r} is not valid for {owner}: pass a function of the task's arguments "
        "returning the key (e.g. lambda customer_id, **_: customer_id), True to give keys per "
        "call, or None"
    )


@dataclass(frozen=True)
class TaskFlow:
    """A task's flow-control declarations (see :class:`durably.tasks.Task`)."""

    concurrency: int | None = None
    rate: Rate | None = None
    concurrency_key: KeySource = None
    key_concurrency: int | None = None
    key_rate: Rate | None = None
    key_ordered: bool = False
    fairness_key: KeySource = None

    @classmethod
    def declare(cls, task: str, **options: Any) -> TaskFlow:
        """Check the options of ``@app.task`` that control flow; one-line errors."""
        owner = f"task {task!r}"
        concurrency_key = check_key_source(options["concurrency_key"], "concurrency_key", owner)
        key_concurrency = check_limit(options["key_concurrency"], "key_concurrency", owner)
        key_rate = Rate.parse(options["key_rate_limit"], "key_rate_limit", owner)
        key_ordered = options["key_ordered"]
        if (key_concurrency or key_rate or key_ordered) and concurrency_key is None:
            raise ValueError(
                f"key_concurrency, key_rate_limit and key_ordered need a concurrency_key ({owner}):"
                " pass concurrency_key=<function of the arguments>, or True to give keys per call"
            )
        if concurrency_key is not None and key_concurrency is None and key_rate is None:
            key_concurrency = 1  # "one at a time per key" unless said otherwise
        return cls(
            concurrency=check_limit(options["concurrency"], "concurrency", owner),
            rate=Rate.parse(options["rate_limit"], "rate_limit", owner),
            concurrency_key=concurrency_key,
            key_concurrency=key_concurrency,
            key_rate=key_rate,
            key_ordered=bool(key_ordered),
            fairness_key=check_key_source(options["fairness_key"], "fairness_key", owner),
        )

    @property
    def keyed(self) -> bool:
        """Its runs carry keys (and are claimed key group by key group)."""
        return self.concurrency_key is not None or self.fairness_key is not None

    @property
    def controlled(self) -> bool:
        """Claims of its runs go through flow control."""
        return self.keyed or self.concurrency is not None or self.rate is not None

    def keys(self, task: str, call: Call, given: tuple[Any, Any]) -> tuple[str | None, str | None]:
        """A run's (concurrency key, fairness key): given per call, else computed from its
        arguments (``call``: the task function's signature and the call's arguments). A keyed
        task's run without a key stores '' (no per-key limit; one turn)."""
        return (
            _key(self.concurrency_key, given[0], "concurrency_key", task, call),
            _key(self.fairness_key, given[1], "fairness_key", task, call),
        )


def _key(source: KeySource, given: Any, what: str, task: str, call: Call) -> str | None:
    if source is None:
        if given is not None:
            raise ValueError(
                f"{task}: {what}={given!r} given, but the task declares no {what}: declare it "
                f"with @app.task({what}=True) (keys per call) or a function of the arguments"
            )
        return None
    key = given
    if key is None and callable(source):
        positional, named = by_name(*call)
        try:
            key = source(*positional, **named)
        except Exception as exc:
            first = next(iter(named), "arg")
            reason = (str(exc).splitlines() or [""])[0]
            raise ValueError(
                f"{task}: its {what} function raised {type(exc).__name__}: {reason}; it is "
                "called with the task's arguments by "
                f"name ({', '.join(named) or 'none'}): write e.g. "
                f"{what}=lambda {first}, **_: {first}"
            ) from None
    if key is None:
        return ""
    if not isinstance(key, str):
        raise TypeError(f"{task}: the {what} must be a str (or None), got {type(key).__name__}")
    return check_text(key, f"{task}: the {what}")


def by_name(
    signature: Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """A call's arguments as key functions receive them: by the names of the task function's
    parameters, defaults applied, however the task was called (so ``lambda tenant, **_: tenant``
    serves ``f("acme", 7)`` and ``f(tenant="acme", report_id=7)`` alike). Positional-only and
    ``*args`` parameters stay positional; ``**kwargs`` parameters are spread as keywords."""
    skip = 1 if signature.skip_first else 0  # a durable task's context is not an argument
    bound = signature.signature.bind(*((None,) * skip), *args, **kwargs)
    bound.apply_defaults()
    positional: list[Any] = []
    named: dict[str, Any] = {}
    for p in list(signature.signature.parameters.values())[skip:]:
        value = bound.arguments[p.name]
        if p.kind is p.POSITIONAL_ONLY:
            positional.append(value)
        elif p.kind is p.VAR_POSITIONAL:
            positional.extend(value)
        elif p.kind is p.VAR_KEYWORD:
            named.update(value)
        else:
            named[p.name] = value
    return positional, named


@dataclass(frozen=True)
class QueueLimits:
    """Limits on all runs of one queue, declared with :meth:`durably.App.queue`."""

    concurrency: int | None = None
    rate: Rate | None = None


def claim_rules(
    tasks: Mapping[str, TaskFlow], queues: Sequence[str], limits: Mapping[str, QueueLimits]
) -> FlowRules | None:
    """The flow control of one slot pool's claim (tasks by name), or None when none of its
    tasks and queues is controlled (the plain claim then serves it)."""
    limited = [q for q in queues if q in limits]
    # Every task can be enqueued to any queue, so a limited queue puts the whole pool under it.
    controlled = {n: f for n, f in tasks.items() if f.controlled or limited}
    if not controlled:
        return None
    windows: dict[str, float] = {}
    for name, f in controlled.items():
        if f.rate:
            windows[f"t:{name}"] = f.rate.seconds
        if f.key_rate:
            windows[f"k:{name}"] = f.key_rate.seconds
    for q in limited:
        rate = limits[q].rate
        if rate:
            windows[f"q:{q}"] = rate.seconds
    return FlowRules(
        tasks=tuple(_task_rules(n, f) for n, f in controlled.items()),
        queues=tuple(_queue_rules(q, limits[q]) for q in limited),
        free=tuple(n for n in tasks if n not in controlled),
        windows=windows,
    )


def _task_rules(name: str, f: TaskFlow) -> TaskRules:
    return TaskRules(
        task=name,
        concurrency=f.concurrency,
        rate_count=f.rate.count if f.rate else None,
        key_concurrency=f.key_concurrency,
        key_rate_count=f.key_rate.count if f.key_rate else None,
        ordered=f.key_ordered,
        fair=f.fairness_key is not None,
    )


def _queue_rules(queue: str, limits: QueueLimits) -> QueueRules:
    rate = limits.rate
    return QueueRules(queue, limits.concurrency, rate.count if rate else None)
