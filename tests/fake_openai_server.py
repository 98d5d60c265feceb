"""A local OpenAI-compatible chat-completions server for tests and benchmarks.

It answers deterministically (a reply built from the last user message and the
seed) and can be told to misbehave: `fail_plan` is a list consumed one request
at a time, each item one of "ok", "429", "500", "slow", "malformed", "drop", "echo_auth_400";
after the plan runs out, `default` applies ("ok" unless changed). It records
every request body and Authorization header it saw.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog of 5 drops SYNs under 64 concurrent clients: 1 s stalls
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up (killed runs, timeouts) are part of the tests


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
        self.ok_count = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.reply = reply_text
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
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

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                behaviour = server._next_behaviour()
                with server._lock:
                    server.requests.append(body)
                    server.auth_headers.append(self.headers.get("Authorization"))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._answer(body, behaviour)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _answer(self, body: dict, behaviour: str) -> None:
                if server.latency_s:
                    time.sleep(server.latency_s)
                if behaviour in ("429", "500"):
                    self._send(int(behaviour), b'{"error": {"message": "try again"}}')
                elif behaviour == "echo_auth_400":  # a careless server quoting the key back
                    self._send(400, json.dumps({"error": f"bad key {self.headers.get('Authorization')}"}).encode())
                elif behaviour == "malformed":
                    self._send(200, b'{"choices": [{"message": ')
                elif behaviour == "drop":
                    self.close_connection = True
                    self.connection.close()
                else:
                    if behaviour == "slow":
                        time.sleep(server.slow_s)
                    text = server.reply(body.get("messages", []), body.get("seed"))
                    with server._lock:
                        server.ok_count += 1
                    payload = {
                        "id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split()), "total_tokens": 10 + len(text.split())},
                    }
                    self._send(200, json.dumps(payload).encode())

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


if __name__ == "__main__":  # a server for manual runs: python tests/fake_openai_server.py [latency_ms]
    import sys

    with FakeOpenAIServer(latency_s=float(sys.argv[1]) / 1000 if len(sys.argv) > 1 else 0.0) as fake:
        print(fake.base_url, flush=True)
        threading.Event().wait()
