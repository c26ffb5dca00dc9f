"""One lifecycle for the daemon's components.

A component has a `name`, `async start()` and `async stop()`. `Components` starts them in the order
they were added and stops the started ones in reverse, so a component is stopped before everything
it feeds on: the span intake before the ledger's final attribution, the final attribution before
forwarding drains, forwarding before the metrics server's last scrape, the GPU samplers last. A
component that fails to start stops those already started; one that fails to stop is logged and the
others still stop.

`Worker` makes a component of a blocking loop `run(stop: threading.Event)`, on its own thread;
`Step` one of a pair of coroutine functions, either optional.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Awaitable, Callable, Protocol

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0  # a worker's thread is given this long to end once asked to stop


class Component(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Worker:
    """A blocking loop `run(stop)` on a daemon thread; `stop()` sets the event, waits for the thread
    to end, then calls `after_stop` (blocking, off the event loop)."""

    def __init__(self, name: str, run: Callable[[threading.Event], None], *,
                 after_stop: Callable[[], None] | None = None):
        self.name = name
        self._run = run
        self._after_stop = after_stop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """Whether the loop runs; False once it has ended, asked to or not."""
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name=self.name, daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("%s did not end within %g s", self.name, JOIN_TIMEOUT_S)
        if self._after_stop is not None:
            await asyncio.to_thread(self._after_stop)


class Step:
    """A component made of `start` and `stop` coroutine functions; a missing one does nothing."""

    def __init__(self, name: str, start: Callable[[], Awaitable[None]] | None = None,
                 stop: Callable[[], Awaitable[None]] | None = None):
        self.name = name
        self._start = start
        self._stop = stop

    async def start(self) -> None:
        if self._start is not None:
            await self._start()

    async def stop(self) -> None:
        if self._stop is not None:
            await self._stop()


class Components:
    """The daemon's components, started in order and stopped in reverse."""

    def __init__(self) -> None:
        self._all: list[Component] = []
        self._started: list[Component] = []

    def add(self, component: Component) -> Component:
        self._all.append(component)
        return component

    def of_type(self, *types: type) -> list:
        """The components that are instances of `types`, in start order."""
        return [c for c in self._all if isinstance(c, types)]

    async def start(self) -> None:
        for component in self._all:
            try:
                await component.start()
            except BaseException:
                log.error("%s failed to start; stopping the components already started", component.name)
                await self.stop()
                raise
            self._started.append(component)

    async def stop(self) -> None:
        while self._started:
            component = self._started.pop()
            try:
                await component.stop()
            except Exception:  # the others must still stop
                log.exception("%s failed to stop", component.name)
