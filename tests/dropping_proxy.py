"""A TCP proxy on 127.0.0.1 that drops its connections once a budget of upstream bytes is spent:
a network that fails in the middle of an upload, for real, between a client and a real server."""

from __future__ import annotations

import socket
import threading


class DroppingProxy:
    def __init__(self, upstream_port: int, budget: int):
        self.upstream_port = upstream_port
        self.budget = budget
        self.sent = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, counted: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if counted:
                    with self._lock:
                        allowed = max(0, self.budget - self.sent)
                        self.sent += len(chunk)
                    if allowed < len(chunk):
                        target.sendall(chunk[:allowed])
                        break  # the budget ran out in the middle of this chunk: cut the line
                target.sendall(chunk)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._listener.close()
        for sock in self._open:
            sock.close()

    def __enter__(self) -> "DroppingProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
