"""A tiny OpenAI-compatible Chat Completions server for the demo: it echoes the question back.

It stands in for the OpenAI API where there is no internet (and no key): the demo bot's `openAI.baseUrl`
points here. Plain JSON and Server-Sent Events (`stream: true`), like the real endpoint. Standard library
only.

    python3 localcluster/echo_openai.py --host 10.77.0.1 --port 8000
"""

from __future__ import annotations

import argparse
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def answer(messages: list[dict[str, Any]]) -> str:
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    turns = sum(1 for m in messages if m.get("role") == "user")
    return f"(echo, turn {turns}) You asked: {question!r}. My instructions begin: {system[:60]!r}"


def completion(model: str, text: str) -> dict[str, Any]:
    words = len(text.split())
    return {
        "id": f"chatcmpl-echo-{time.time_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 0, "completion_tokens": words, "total_tokens": words},
    }


def chunks(model: str, text: str) -> list[dict[str, Any]]:
    base = {"id": f"chatcmpl-echo-{time.time_ns()}", "object": "chat.completion.chunk", "model": model}
    deltas = [{"role": "assistant", "content": ""}, *({"content": w + " "} for w in text.split(" "))]
    events = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return events


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            model, messages = str(body["model"]), list(body["messages"])
        except (ValueError, KeyError, TypeError) as err:
            self._json(400, {"error": {"message": f"bad request: {err}", "type": "invalid_request_error"}})
            return
        text = answer(messages)
        if not body.get("stream"):
            self._json(200, completion(model, text))
            return
        payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks(model, text)) + "data: [DONE]\n\n"
        self._send(200, "text/event-stream", payload.encode())

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, "application/json", json.dumps(obj).encode())

    def _send(self, status: int, content_type: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        print(f"echo-openai: {self.address_string()} {format % args}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"echo-openai: serving http://{args.host}:{args.port}/v1", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
