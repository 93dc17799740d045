"""Helpers shared by the Python tests of larder."""
import time


def wait_for(cond, what, timeout=60.0):
    """Polls cond() until it is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Gate:
    """A load that waits until the test opens it, counting how often it ran."""

    def __init__(self, value=None, size=0):
        import threading
        self.opened = threading.Event()
        self.started = threading.Event()
        self.calls = 0
        self.value = value
        self.size = size

    def __call__(self):
        self.calls += 1
        self.started.set()
        if not self.opened.wait(60):
            raise RuntimeError("gate never opened")
        return self.value if self.value is not None else {"weights": b"\x01" * self.size}
