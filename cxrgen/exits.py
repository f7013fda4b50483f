"""Exit codes of the command-line tools, defined once (the README's list is this one), and the signal handling
that ends in 75 or 130."""

from __future__ import annotations

import logging
import signal
from typing import Any

log = logging.getLogger("cxrgen")

EXIT_OK = 0  # every study of the shard (or run) has an ok row; fine-tuning: training ended
EXIT_USAGE = 2  # bad configuration or input, or another process holds the lock: nothing was done
EXIT_ROW_ERRORS = 3  # finished, but some studies have status=error (1 is Python's own crash code)
EXIT_INCOMPLETE = 4  # the shard could not commit every row (e.g. rows that did not read back); the message says why
EXIT_INTERRUPTED = 75  # stopped by SIGTERM/SIGUSR1 after committing its work; run again to resume
EXIT_SIGINT = 130  # stopped by Ctrl-C after committing its work; run again to resume


class StopFlag:
    """Set by SIGTERM/SIGUSR1/SIGINT (what Slurm sends before preemption or the time limit, and Ctrl-C): the command
    finishes what it has in hand (``finishing`` says what, in the log line), saves it and exits with
    :attr:`exit_code`. A second SIGINT raises KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self, finishing: str = "finishing the studies in flight"):
        self.signal: int | None = None
        self.finishing = finishing
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal is None:
            hint = "; Ctrl-C again to stop at once" if signum == signal.SIGINT else ""
            log.warning("received %s: %s, then stopping (run again to resume)%s", signal.Signals(signum).name,
                        self.finishing, hint)
        self.signal = signum

    @property
    def exit_code(self) -> int:
        return EXIT_SIGINT if self.signal == signal.SIGINT else EXIT_INTERRUPTED

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
