"""The service-manager edge: sd_notify through `sdnotify`, silent when not under systemd."""

from __future__ import annotations

import os


class Notifier:
    def __init__(self) -> None:
        self._notifier = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            # sdnotify encodes with latin-1; hand it the UTF-8 bytes as latin-1 code points
            # so a STATUS= carrying Chinese (a chat name, a Feishu error) arrives intact.
            self._notifier.notify(state.encode("utf-8").decode("latin-1"))

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1\nSTATUS=reloading the configuration")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=stopping: finishing in-flight mail")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None if not asked for.

    Same rule as sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be our pid.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not os.environ.get("NOTIFY_SOCKET"):
        return None
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1_000_000 if value > 0 else None
