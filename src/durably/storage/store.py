"""Store: the one object through which durably reaches its database."""

from __future__ import annotations

from .log import EventLog
from .migrations import Migrations
from .queue import Queue
from .retention import Retention
from .schedules import Schedules
from .sweep import Sweep
from .views import Views
from .workers import Workers


class Store(Schedules, Queue, Workers, Sweep, Retention, EventLog, Views, Migrations):
    """All database access of one App (or worker) on one event loop: each part of the storage
    layer is a class of its own module, over :class:`~durably.storage.base.Database`."""
