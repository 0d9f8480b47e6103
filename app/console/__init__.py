"""The web console: ``python -m app ui``, or :func:`make_app` over your own executor.

Server-rendered pages (aiohttp, no build step) over a ``DefaultExecutor``, a
``KafkaExecutor`` or a bare store (read-only): a list with filters, search
and status counts, and a page per workflow with its header, what it waits
on, a timeline, the history, live updates and the actions. Needs the ``ui``
extra (aiohttp).
"""

from __future__ import annotations

from ._backend import Backend, Details, ExecutorBackend, StoreBackend
from ._server import make_app, serve

__all__ = ["Backend", "Details", "ExecutorBackend", "StoreBackend", "make_app", "serve"]
