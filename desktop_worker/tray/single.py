"""One tray app per user: a second launch asks the first to show its window, then exits.

The first instance listens on a local socket whose name is derived from the user's name.
A second instance connects, sends ``show`` and quits. A stale socket left by a crash is
removed when nobody answers on it.

- **POSIX**: a Unix socket in the temporary directory (``$TMPDIR`` or ``/tmp``, the path
  ``QLocalServer`` uses for the same name, so an older tray still finds a newer one),
  mode 0600, watched with a ``QSocketNotifier``. Plain Python sockets instead of
  ``QLocalServer``: loading QtNetwork for this one socket cost the idle tray 3.2 MB
  (docs/TRAY.md, "Numbers").
- **Windows**: Python has no ``AF_UNIX`` there, so ``QLocalServer`` (a named pipe only
  the user may open), QtNetwork loaded only on that platform.
"""

from __future__ import annotations

import contextlib
import errno
import getpass
import hashlib
import os
import socket
from typing import Any

from PySide6.QtCore import QObject, QSocketNotifier, Signal, Slot

# A second launch says "show\n"; more than this from one connection is not a launch.
MAX_MESSAGE = 64


def instance_name(extra: str = "") -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    digest = hashlib.sha256(f"{user}\0{extra}".encode()).hexdigest()[:16]
    return f"couchfarm-tray-{digest}"


def socket_path(name: str) -> str:
    """Where ``QLocalServer`` puts a server called ``name`` on Unix (QDir::tempPath)."""
    if name.startswith("/"):
        return name
    temp = os.environ.get("TMPDIR", "").rstrip("/") or "/tmp"
    return os.path.join(temp, name)


def unix_sockets() -> bool:
    return hasattr(socket, "AF_UNIX")


class SingleInstance(QObject):
    activated = Signal()  # another launch asked us to come to the front

    def __init__(self, name: str | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name or instance_name()
        self.server: Any = None  # the listening socket, or the QLocalServer on Windows
        self._notifier: QSocketNotifier | None = None
        self._clients: dict[int, tuple[socket.socket, QSocketNotifier, bytearray]] = {}
        self._inode: int | None = None  # of the socket file we made (never remove another's)

    # ------------------------------------------------------------ the second launch

    def notify_running(self, timeout_ms: int = 1000) -> bool:
        """True when another instance answered (and was told to show itself)."""
        if not unix_sockets():
            return self._notify_qt(timeout_ms)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(timeout_ms / 1000)
                client.connect(socket_path(self.name))
                client.sendall(b"show\n")
        except OSError:
            return False
        return True

    # ------------------------------------------------------------ the first launch

    def listen(self) -> bool:
        if not unix_sockets():
            return self._listen_qt()
        path = socket_path(self.name)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                server.bind(path)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                os.unlink(path)  # a socket file left by a crash: nobody answered on it
                server.bind(path)
            # Before listen(): until then a connect is refused, so nobody gets in while
            # the file still has the umask's permissions.
            os.chmod(path, 0o600)
            self._inode = os.stat(path).st_ino
            server.listen(8)
            server.setblocking(False)
        except OSError:
            server.close()
            return False
        notifier = QSocketNotifier(server.fileno(), QSocketNotifier.Type.Read, self)
        notifier.activated.connect(self._on_connection)
        self.server = server
        self._notifier = notifier
        return True

    def claim(self) -> bool:
        """Become the one instance: False if another one is running (it has been told)."""
        if self.notify_running():
            return False
        return self.listen()

    @Slot()
    def _on_connection(self) -> None:
        while self.server is not None:
            try:
                conn, _ = self.server.accept()
            except OSError:  # BlockingIOError: nobody else is waiting
                return
            conn.setblocking(False)
            fd = conn.fileno()
            notifier = QSocketNotifier(fd, QSocketNotifier.Type.Read, self)
            self._clients[fd] = (conn, notifier, bytearray())
            # A bound method, not a lambda over self: a closure would tie this object into
            # a reference cycle, and the cyclic collector may then delete it (and its
            # notifiers) on whichever thread it runs in, an engine thread included.
            notifier.activated.connect(self._on_client_ready)
            self._on_readable(fd)  # it may have written before we looked

    @Slot()
    def _on_client_ready(self) -> None:
        notifier = self.sender()
        if isinstance(notifier, QSocketNotifier):
            self._on_readable(int(notifier.socket()))

    def _on_readable(self, fd: int) -> None:
        entry = self._clients.get(fd)
        if entry is None:
            return
        conn, _notifier, data = entry
        while b"show" not in data and len(data) <= MAX_MESSAGE:
            try:
                chunk = conn.recv(MAX_MESSAGE)
            except (BlockingIOError, InterruptedError):
                return  # the rest comes later
            except OSError:
                chunk = b""
            if not chunk:
                break  # the other side is done
            data += chunk
        self._drop_client(fd)
        if b"show" in data:
            self.activated.emit()

    def _drop_client(self, fd: int) -> None:
        entry = self._clients.pop(fd, None)
        if entry is None:
            return
        conn, notifier, _data = entry
        notifier.setEnabled(False)
        notifier.deleteLater()
        conn.close()

    def close(self) -> None:
        for fd in list(self._clients):
            self._drop_client(fd)
        if self._notifier is not None:
            self._notifier.setEnabled(False)
            self._notifier.deleteLater()
            self._notifier = None
        if self.server is None:
            return
        server, self.server = self.server, None
        server.close()
        if self._inode is not None:
            path = socket_path(self.name)
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == self._inode:  # still ours, not a newer instance's
                    os.unlink(path)
            self._inode = None

    # ------------------------------------------------------------ Windows: QLocalServer

    def _notify_qt(self, timeout_ms: int) -> bool:
        from PySide6.QtNetwork import QLocalSocket

        client = QLocalSocket()
        client.connectToServer(self.name)
        if not client.waitForConnected(timeout_ms):
            return False
        client.write(b"show\n")
        client.flush()
        client.waitForBytesWritten(timeout_ms)
        client.disconnectFromServer()
        if client.state() != QLocalSocket.LocalSocketState.UnconnectedState:
            client.waitForDisconnected(timeout_ms)
        return True

    def _listen_qt(self) -> bool:
        from PySide6.QtNetwork import QLocalServer

        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            QLocalServer.removeServer(self.name)  # a socket file left by a crash
            if not server.listen(self.name):
                return False
        server.newConnection.connect(self._on_qt_connection)
        self.server = server
        return True

    @Slot()
    def _on_qt_connection(self) -> None:
        while self.server is not None and self.server.hasPendingConnections():
            client = self.server.nextPendingConnection()
            client.readyRead.connect(self._on_qt_ready)
            client.disconnected.connect(client.deleteLater)
            if client.bytesAvailable():
                self._read_qt(client)

    @Slot()
    def _on_qt_ready(self) -> None:
        client = self.sender()
        if client is not None:
            self._read_qt(client)

    def _read_qt(self, client: Any) -> None:
        data = bytes(client.readAll().data())
        if b"show" in data:
            self.activated.emit()
