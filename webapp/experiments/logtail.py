"""A trial's own log: the lines the engine logs while a worker evaluates it, the last few kept for its page."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Iterator

TAIL_LINES = 50
ENGINE_LOGGER = "nasjobs"


class LogTail(logging.Handler):
    """The last `lines` records logged on the thread that made it, one line each. Only the message: a record's
    traceback names server paths, which a trial's page shows to every member of its team, and the trial's error
    is stored beside it anyway."""

    def __init__(self, lines: int = TAIL_LINES) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=lines)
        self.thread = threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:  # another trial's, where a process runs trials in threads side by side
            return
        try:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
            self.lines.append(f"{when} {record.levelname} {record.name}: {record.getMessage()}")
        except Exception:  # a bad format string in some log call must not fail the trial
            self.handleError(record)

    def text(self) -> str:
        """The lines so far; safe to call from another thread (the lease's heartbeat) while the trial logs."""
        with self.lock:
            return "\n".join(self.lines)


class _Forward(logging.Handler):
    """Passes on what the logger's parents would have received before its level was lowered, and nothing more."""

    def __init__(self, parent: logging.Logger, level: int) -> None:
        super().__init__(level)
        self.parent = parent

    def emit(self, record: logging.LogRecord) -> None:
        self.parent.callHandlers(record)


class _Lowered:
    """While any trial of this process captures: the engine's logger at INFO, whatever LOG_LEVEL says, and not
    propagating, with a `_Forward` taking its place, so the console and the worker's log see exactly what they
    saw before. Counted, so threads capturing side by side restore it once, when the last one ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.saved: tuple[int, bool] | None = None
        self.forward: _Forward | None = None

    def enter(self, logger: logging.Logger) -> None:
        with self.lock:
            self.count += 1
            if self.count > 1 or logger.getEffectiveLevel() <= logging.INFO:
                return
            self.saved = (logger.level, logger.propagate)
            if logger.propagate and logger.parent is not None:
                self.forward = _Forward(logger.parent, logger.getEffectiveLevel())
                logger.addHandler(self.forward)
            logger.propagate = False
            logger.setLevel(logging.INFO)

    def exit(self, logger: logging.Logger) -> None:
        with self.lock:
            self.count -= 1
            if self.count or self.saved is None:
                return
            level, propagate = self.saved
            if self.forward is not None:
                logger.removeHandler(self.forward)
            logger.setLevel(level)
            logger.propagate = propagate
            self.saved, self.forward = None, None


_lowered = _Lowered()


@contextmanager
def captured(lines: int = TAIL_LINES, also: tuple[str, ...] = ()) -> Iterator[LogTail]:
    """Keep the last `lines` INFO-or-above lines the engine logs on this thread inside the block (one per epoch,
    one per trial), whatever the process's log level, and what the loggers named in `also` log at their own
    level (the runner's word on a failure, say); the handler is always detached at the end."""
    engine = logging.getLogger(ENGINE_LOGGER)
    loggers = [engine, *(logging.getLogger(name) for name in also)]
    tail = LogTail(lines)
    _lowered.enter(engine)
    try:
        for logger in loggers:
            logger.addHandler(tail)
        yield tail
    finally:
        for logger in loggers:
            logger.removeHandler(tail)
        _lowered.exit(engine)
