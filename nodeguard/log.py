"""structlog setup: JSON lines when stderr is not a TTY, readable console otherwise.

Event names are stable snake_case; data goes in keys. Kernel events are never logged one
by one at info level.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(level: str = "info", json: bool | None = None) -> None:
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    """A logger; when nothing configured logging yet (library use, tests), logs go to
    stderr at warning level rather than structlog's default of stdout at debug."""
    if not structlog.is_configured():
        configure("warning")
    return structlog.get_logger(name)
