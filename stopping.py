"""
Stopping a run on a signal without losing it. A first SIGINT (Ctrl-C) or SIGTERM (kill, a
scheduler's time limit) is taken between two iterations, so that the checkpoint written
then resumes exactly; a second one stops at once. Copies of one signal are not a second:
a scheduler signals every process of a job, and a grid passes the signal on as well, so the
same signal can arrive more than once within a moment.
"""

import contextlib
import signal
import time

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """A run stopped by a signal; its message says where its checkpoint is."""


@contextlib.contextmanager
def handling(handler):
    """Within it, SIGINT and SIGTERM go to handler(signum, frame); the handlers that were
    there before come back after, however it is left."""
    before = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in before.items():
            signal.signal(s, old)


class StopOnSignal:
    """with StopOnSignal(resume_with, where) as stop: the loop asks `stop.asked` between
    iterations, then stop.after_loop(checkpoint, it) saves and, if a signal stopped the loop,
    raises Interrupted; after it any signal stops at once, nothing being left to save. A
    second signal (KeyboardInterrupt) leaves the block as Interrupted, the last checkpoint
    as it was. resume_with: the command that goes on; where: the checkpoint's path."""

    def __init__(self, resume_with, where):
        self.resume_with, self.where = resume_with, where
        self.asked, self.at, self.at_once = None, 0.0, False  # the signal's name, when

    def on_signal(self, signum, frame):
        if self.at_once:
            raise KeyboardInterrupt
        if self.asked and time.time() - self.at > 1.0:  # a second signal, not a copy of the first
            raise KeyboardInterrupt
        if not self.asked:
            self.asked, self.at = signal.Signals(signum).name, time.time()

    def __enter__(self):
        self.handlers = handling(self.on_signal)
        self.handlers.__enter__()
        return self

    def after_loop(self, checkpoint, it):
        checkpoint()  # at the end, or where a first signal stopped the loop
        if self.asked:
            raise Interrupted(f"interrupted ({self.asked}) at iter {it}; its checkpoint is in "
                              f"{self.where}. Resume with: {self.resume_with}")
        self.at_once = True

    def __exit__(self, kind, value, tb):
        self.handlers.__exit__(kind, value, tb)
        if kind is KeyboardInterrupt:
            at = "in the final evaluation" if self.at_once else "twice"
            raise Interrupted(f"interrupted {at}; the last checkpoint saved is in {self.where}. "
                              f"Resume with: {self.resume_with}") from None
