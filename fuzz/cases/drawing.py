"""Drawing ahead: a stream's packs are drawn in a thread while the workers run.

Hypothesis costs milliseconds a case and draws a configuration's packs in bursts, while
the main process mostly waits on its workers' pipes (which releases the GIL). Drawn in
the main process, a burst leaves every worker idle; drawn here, it overlaps their work
(docs/design.md).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter, deque

from prefix_referee.fuzz.cases.stream import CaseStream
from prefix_referee.verify.case import CaseSpec

# Packs drawn ahead of the worker: its own queue holds two, and a burst (a configuration's
# refill) takes about as long as a GPU worker needs for two more.
AHEAD = 4
# How often a drawing thread that is ahead checks whether it should stop.
STOP_POLL_SECONDS = 0.1
# How long close() waits for the thread: it is a daemon, so one stuck in a draw is left
# behind rather than holding up the end of an interrupted run.
JOIN_SECONDS = 5.0


class DrawnAhead:
    """``next_pack()`` and ``compiled()`` of a :class:`CaseStream`, drawn in a thread.

    The thread starts at the first ``next_pack()`` (a campaign that has not begun does
    not draw) and stops at ``close()``. ``drawn`` and ``declined`` are the stream's counts
    as of the last pack handed out.
    """

    def __init__(self, stream: CaseStream, ahead: int = AHEAD) -> None:
        self.stream = stream
        self.drawn = 0
        self.declined: Counter[str] = Counter()
        self._packs: queue.Queue[tuple[list[CaseSpec], int, Counter[str]] | Exception] = (
            queue.Queue(maxsize=ahead))
        self._feedback: deque[tuple[float, float]] = deque()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def next_pack(self) -> list[CaseSpec]:
        """The stream's next pack; raises what the stream raised (RuntimeError when
        nothing can be drawn)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._draw, name="fuzz-drawing",
                                            daemon=True)
            self._thread.start()
        item = self._packs.get()
        if isinstance(item, Exception):
            self._packs.put(item)  # every later call raises it too
            raise item
        pack, self.drawn, self.declined = item
        return pack

    def compiled(self, seconds: float, seconds_per_case: float) -> None:
        """Quota feedback (:meth:`CaseStream.compiled`), applied before the next draw."""
        self._feedback.append((seconds, seconds_per_case))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=JOIN_SECONDS)

    def _draw(self) -> None:
        while not self._stop.is_set():
            while self._feedback:
                self.stream.compiled(*self._feedback.popleft())
            item: tuple[list[CaseSpec], int, Counter[str]] | Exception
            try:
                item = (self.stream.next_pack(), self.stream.drawn, Counter(self.stream.declined))
            except Exception as exc:  # nothing drawable, or a strategy bug: raised to the campaign
                item = exc
            while not self._stop.is_set():
                try:
                    self._packs.put(item, timeout=STOP_POLL_SECONDS)
                    break
                except queue.Full:
                    continue
            if isinstance(item, Exception):
                return
