"""One tray app per user: a second launch asks the first to show its window, then exits.

The first instance listens on a ``QLocalServer`` whose name is derived from the user's
name (a named pipe on Windows, a socket file only the user may open elsewhere). A second
instance connects, sends ``show`` and quits. A stale socket left by a crash is removed
when nobody answers on it.
"""

from __future__ import annotations

import getpass
import hashlib

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtNetwork import QLocalServer, QLocalSocket


def instance_name(extra: str = "") -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    digest = hashlib.sha256(f"{user}\0{extra}".encode()).hexdigest()[:16]
    return f"couchfarm-tray-{digest}"


class SingleInstance(QObject):
    activated = Signal()  # another launch asked us to come to the front

    def __init__(self, name: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name or instance_name()
        self.server: QLocalServer | None = None

    def notify_running(self, timeout_ms: int = 1000) -> bool:
        """True when another instance answered (and was told to show itself)."""
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not socket.waitForConnected(timeout_ms):
            return False
        socket.write(b"show\n")
        socket.flush()
        socket.waitForBytesWritten(timeout_ms)
        socket.disconnectFromServer()
        if socket.state() != QLocalSocket.LocalSocketState.UnconnectedState:
            socket.waitForDisconnected(timeout_ms)
        return True

    def listen(self) -> bool:
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            QLocalServer.removeServer(self.name)  # a socket file left by a crash
            if not server.listen(self.name):
                return False
        server.newConnection.connect(self._on_connection)
        self.server = server
        return True

    def claim(self) -> bool:
        """Become the one instance: False if another one is running (it has been told)."""
        if self.notify_running():
            return False
        return self.listen()

    @Slot()
    def _on_connection(self) -> None:
        assert self.server is not None
        while self.server.hasPendingConnections():
            socket = self.server.nextPendingConnection()
            socket.readyRead.connect(lambda s=socket: self._read(s))
            socket.disconnected.connect(socket.deleteLater)
            if socket.bytesAvailable():
                self._read(socket)

    def _read(self, socket: QLocalSocket) -> None:
        data = bytes(socket.readAll().data())
        if b"show" in data:
            self.activated.emit()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
