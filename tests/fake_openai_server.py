"""A local OpenAI-compatible chat-completions server for tests and benchmarks.

It answers deterministically (a reply built from the last user message and the
seed) and can be told to misbehave: `fail_plan` is a list consumed one request
at a time, each item one of "ok", "429", "500", "slow", "malformed", "drop", "echo_auth_400",
"retry_after:S" (429 with Retry-After: S), "503_retry_after:S", "trickle" (the body one byte every
`trickle_s`), "echo_key_401" (a 401 quoting the bearer key in a long body), "key_500" (a 500 with the
key in its body), "echo_url_500" (a 500 quoting the request's path and query), "huge" (a `huge_bytes` reply); after the plan runs out, `default` applies ("ok"
unless changed). `capacity` answers 429 to requests beyond that many in flight; `restart(down_s)`
closes the port and every open connection for `down_s` seconds, then listens again on the same port.
It records every request body, path (with its query) and Authorization header it saw and counts answers by status.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops SYNs under 64 concurrent clients: 1 s stalls
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up (killed runs, timeouts) are part of the tests


SPREAD_WORDS = (
    "the movie was great and actors were wonderful a dull film with boring plot weak acting soundtrack is lovely "
    "but story drags an instant classic that everyone should see worst of year avoid it funny warm surprisingly "
    "moving cats dogs play in garden all day stock prices fell sharply on monday morning recipe needs two eggs "
    "flour sugar rain expected over weekend north"
).split()


def spread_reply(body: dict) -> str:
    """A reply whose spread follows the sampling settings, like a real model's: 8 words drawn (seeded by the
    prompt and seed) from the first k words of a fixed vocabulary, k growing with temperature and top_p; at
    temperature 0 every reply to a prompt is the same few words. Tune tests need metrics that move with settings."""
    import random

    temperature, top_p = float(body.get("temperature", 1.0)), float(body.get("top_p", 1.0))
    k = max(2, min(len(SPREAD_WORDS), round(2 + temperature * top_p * (len(SPREAD_WORDS) - 2) / 1.6)))
    last = (body.get("messages") or [{}])[-1].get("content", "")
    rng = random.Random(f"{last}|{body.get('seed')}")
    return " ".join(rng.choice(SPREAD_WORDS[:k]) for _ in range(8))


def reply_text(messages: list[dict], seed: int | None) -> str:
    last = messages[-1]["content"] if messages else ""
    return f"Sure! Here is the text: \"synthetic reply to <{last[-200:]}> seed {seed}\""


class FakeOpenAIServer:
    def __init__(self, slow_s: float = 1.0, latency_s: float = 0.0):
        self.slow_s = slow_s
        self.latency_s = latency_s
        self.fail_plan: list[str] = []
        self.default = "ok"
        self.requests: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.paths: list[str] = []
        self.ok_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.reply = reply_text
        self.reply_body = None  # when set, reply_body(request body) -> text replaces reply (e.g. spread_reply)
        self.trickle_s = 0.25
        self.huge_bytes = 5_000_000
        self.capacity: int | None = None
        self.statuses: Counter = Counter()  # answers sent, by HTTP status
        self.restarts = 0
        self._connections: set = set()
        self._lock = threading.Lock()
        self._handler_class = self._handler()
        self._listen(("127.0.0.1", 0))

    def _listen(self, address) -> None:
        self._server = _Server(address, self._handler_class)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def restart(self, down_s: float) -> None:
        """Go away like a restarting server: refuse connections, reset open ones; back after `down_s`."""
        address = self._server.server_address[:2]
        self.stop()
        with self._lock:
            for connection in list(self._connections):
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        time.sleep(down_s)
        self._listen(address)
        self._thread.start()
        self.restarts += 1

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_behaviour(self) -> str:
        with self._lock:
            return self.fail_plan.pop(0) if self.fail_plan else self.default

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per keep-alive request

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server._connections.add(self.connection)

            def finish(self) -> None:
                with server._lock:
                    server._connections.discard(self.connection)
                try:
                    super().finish()
                except OSError:
                    pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                if len(raw) < length:  # the client died mid-request (a killed build): nothing was asked
                    self.close_connection = True
                    return
                body = json.loads(raw or b"{}")
                behaviour = server._next_behaviour()
                with server._lock:
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("Authorization"))
                    server.paths.append(self.path)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    if server.capacity is not None and server.in_flight > server.capacity:
                        behaviour = "429"
                try:
                    self._answer(body, behaviour)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body: dict, behaviour: str) -> None:
                if server.latency_s:
                    time.sleep(server.latency_s)
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                name, _, argument = behaviour.partition(":")
                if behaviour in ("429", "500"):
                    self._send(int(behaviour), b'{"error": {"message": "try again"}}')
                elif name in ("retry_after", "503_retry_after"):
                    status = 503 if name.startswith("503") else 429
                    self._send(status, b'{"error": {"message": "slow down"}}', {"Retry-After": argument})
                elif behaviour == "echo_auth_400":  # a careless server quoting the key back
                    self._send(400, json.dumps({"error": f"bad key {self.headers.get('Authorization')}"}).encode())
                elif behaviour == "echo_key_401":  # the key first, then a long explanation: cutting first leaks it
                    message = f"Incorrect API key provided: {key}. You can find your API key at https://example.invalid/keys."
                    self._send(401, json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode())
                elif behaviour == "key_500":
                    self._send(500, f"internal error while checking {key} against the quota table".encode())
                elif behaviour == "echo_url_500":  # a proxy quoting the URL it failed on, query and all
                    self._send(500, f"upstream error for POST {self.path}".encode())
                elif behaviour == "huge":
                    self._send_reply(body, "x" * server.huge_bytes)
                elif behaviour == "malformed":
                    self._send(200, b'{"choices": [{"message": ')
                elif behaviour == "drop":
                    self.close_connection = True
                    self.connection.close()
                else:
                    if behaviour == "slow":
                        time.sleep(server.slow_s)
                    text = (server.reply_body(body) if server.reply_body is not None
                            else server.reply(body.get("messages", []), body.get("seed")))
                    self._send_reply(body, text, trickle=behaviour == "trickle")

            def _send_reply(self, body: dict, text: str, trickle: bool = False) -> None:
                with server._lock:
                    server.ok_count += 1
                payload = {
                    "id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10 + len(text.split())},
                }
                self._send(200, json.dumps(payload).encode(), trickle=trickle)

            def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None, trickle: bool = False) -> None:
                with server._lock:
                    server.statuses[status] += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if not trickle:
                    self.wfile.write(data)
                    return
                for index in range(len(data)):  # a server that never quite answers
                    self.wfile.write(data[index:index + 1])
                    self.wfile.flush()
                    time.sleep(server.trickle_s)

        return Handler


if __name__ == "__main__":  # a server for manual runs: python tests/fake_openai_server.py [latency_ms]
    import sys

    with FakeOpenAIServer(latency_s=float(sys.argv[1]) / 1000 if len(sys.argv) > 1 else 0.0) as fake:
        print(fake.base_url, flush=True)
        threading.Event().wait()
