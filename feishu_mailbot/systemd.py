"""sd_notify for the service manager; silent when not run by systemd."""

from __future__ import annotations

import os


class Notifier:
    def __init__(self) -> None:
        self._socket = os.environ.get("NOTIFY_SOCKET")
        self._notifier = None
        if self._socket:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()

    @property
    def enabled(self) -> bool:
        return self._notifier is not None

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def ready(self, status: str) -> None:
        self.notify(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1\nSTATUS=stopping")
