"""structlog setup: JSON lines when stderr is not a TTY, readable console otherwise.

Event names are stable snake_case; data goes in keys. Kernel events are never logged one
by one at info level.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any

import structlog


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write (not at configure
    time): a stream swapped and closed later (test capture, daemon redirection) must not
    turn a log line into an exception in the caller."""

    def write(self, text: str) -> int:
        try:
            return sys.stderr.write(text)
        except (ValueError, OSError):  # closed or broken stream: drop the line
            return 0

    def flush(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            sys.stderr.flush()


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
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    """A logger; when nothing configured logging yet (library use, tests), logs go to
    stderr at warning level rather than structlog's default of stdout at debug."""
    if not structlog.is_configured():
        configure("warning")
    return structlog.get_logger(name)
