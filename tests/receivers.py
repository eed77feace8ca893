"""Real local receivers for the alert channels: an HTTP server that records each POST
(and answers with a status the test sets), and a minimal SMTP server (enough of RFC 5321
for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT) that records each message.
No mocks: the hub's code talks to them over real sockets."""

from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.status = 204
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                receiver.requests.append(Received(self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mail:
    sender: str
    recipients: list[str]
    data: str


@dataclass
class SmtpSink:
    messages: list[Mail] = field(default_factory=list)

    def __post_init__(self) -> None:
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                def say(line: str) -> None:
                    self.wfile.write((line + "\r\n").encode())

                say("220 sink ESMTP")
                sender, recipients = "", []
                while True:
                    raw = self.rfile.readline()
                    if not raw:
                        return
                    line = raw.decode(errors="replace").rstrip("\r\n")
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        say("250-sink")
                        say("250 8BITMIME")
                    elif verb == "HELO":
                        say("250 sink")
                    elif verb == "MAIL":
                        sender, recipients = line.split(":", 1)[1].strip(" <>"), []
                        say("250 ok")
                    elif verb == "RCPT":
                        recipients.append(line.split(":", 1)[1].strip(" <>"))
                        say("250 ok")
                    elif verb == "DATA":
                        say("354 end with .")
                        lines = []
                        while True:
                            data = self.rfile.readline().decode(errors="replace")
                            if data in (".\r\n", ".\n", ""):
                                break
                            lines.append(data[1:] if data.startswith("..") else data)
                        sink.messages.append(Mail(sender, recipients, "".join(lines)))
                        say("250 queued")
                    elif verb == "QUIT":
                        say("221 bye")
                        return
                    else:  # RSET, NOOP and anything else
                        say("250 ok")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
