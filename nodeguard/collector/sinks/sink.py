"""What every sink implements, and the errors sinks raise.

A sink renders one stored event into its own item type (a line, a frame, a message)
and sends a batch of items. :meth:`Sink.send` either delivers the whole batch or raises
:class:`SinkDeliveryError`; the runner then keeps the batch and sends it again later,
so a sink never has to remember what it failed to send. Sinks are used from one thread
(the runner's) only.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Generic, TypeVar

from nodeguard.collector.records import StoredEvent
from nodeguard.errors import NodeguardError
from nodeguard.events.model import Violation

Item = TypeVar("Item")


class SinkError(NodeguardError):
    """A sink cannot be set up (a file it needs is unreadable, a value it needs is bad)."""


class SinkDeliveryError(NodeguardError):
    """A batch was not (entirely) delivered; the runner retries it. The message says what
    failed and where, ``fix`` what the operator can do about a failure that will not go
    away by itself (a bad token, an untrusted certificate)."""


class Sink(abc.ABC, Generic[Item]):
    """One destination. ``render`` is pure (it may raise for an event it cannot render:
    the runner counts and skips that event); ``send`` does the I/O."""

    type: str = ""

    @abc.abstractmethod
    def render(self, event: StoredEvent) -> Item:
        """The item for one event."""

    @abc.abstractmethod
    def send(self, items: Sequence[Item]) -> None:
        """Deliver every item, in order, or raise :class:`SinkDeliveryError`. Reconnects
        by itself on the next call after a failure."""

    def close(self) -> None:
        """Release connections and files (the runner calls it when it stops)."""

    def describe(self) -> str:
        """Where the sink delivers to, for logs (no secrets)."""
        return self.type


def violation_of(event: StoredEvent) -> Violation:
    """The event's violation, with the node it was stored under when it names none."""
    v = event.violation
    if v.node is None and event.node:
        return dataclasses.replace(v, node=event.node)
    return v
