"""A reward server of your own for drlaif's trainer and adapters: the Python standard library only.

POST /score answers one reward in [-1, 1] per item, from a rule on the response (the shorter the
better: 1 for an empty answer, -1 for thirty words or more). Put your verifier in reward().
GET /health/ready says the server can take requests. Run it and point drlaif at it:

    python docs/examples/own_reward_server.py 8001
    drlaif-train ppo --reward-url http://127.0.0.1:8001

The contract it keeps is on the page "Write your own reward server" (docs/own-reward-server.md).
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RUBRIC = "brevity"                          # a request may name this rubric, or none
API_KEY = os.environ.get("REWARD_API_KEY")  # when set, requests must carry "Authorization: Bearer <key>"


def reward(prompt: str | list[dict[str, str]], response: str) -> float:
    """One response's reward, finite and in [-1, 1]; the prompt is a string or chat messages."""
    return 1.0 - 2.0 * min(1.0, len(response.split()) / 30)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses its connections

    def do_GET(self) -> None:
        if self.path == "/health/ready":
            self.answer(200, {"status": "ready"})
        else:  # /info is optional: without it the client sends at most 64 items per request
            self.refuse(404, "not_found", f"no GET {self.path}")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if API_KEY and self.headers.get("Authorization") != f"Bearer {API_KEY}":
            return self.refuse(401, "unauthorized", "missing or invalid API key")
        if self.path != "/score":
            return self.refuse(404, "not_found", f"no POST {self.path}")
        try:
            request = json.loads(body)
            items = [(item["prompt"], item["response"]) for item in request["items"]]
        except (ValueError, KeyError, TypeError) as exc:
            return self.refuse(422, "invalid_request", f'expected {{"items": [{{"prompt", "response"}}]}}: {exc!r}')
        if request.get("rubric") not in (None, RUBRIC):
            return self.refuse(422, "unknown_rubric", f"this server has one rubric, {RUBRIC!r}")
        if request.get("group_pairwise"):
            return self.refuse(422, "unsupported", "this server judges each response alone: use --reward-mode direct")
        self.answer(200, {"results": [{"reward": reward(p, r)} for p, r in items]})

    def answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, status: int, kind: str, message: str) -> None:
        """An error in drlaif's shape, whose message the client shows."""
        self.answer(status, {"error": {"type": kind, "message": message}})


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    with ThreadingHTTPServer(("127.0.0.1", port), Handler) as server:
        print(f"rewards on http://127.0.0.1:{port}/score", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
