"""`make demo`: start the reward server on the embedded labeler, score examples, stop it.

Runs offline on a CPU. Prints what it does as it goes.
"""

from __future__ import annotations

import json
import os
import time

import httpx

from server.process import ServerProcess

PORT = int(os.environ.get("DRLAIF_DEMO_PORT", "8000"))
URL = f"http://127.0.0.1:{PORT}"

EXAMPLES = [
    ("What is the capital of France?", "Paris."),
    ("What is the capital of France?", "I think it might be Lyon, or maybe Marseille."),
    ("How do I boil an egg?", "Put the egg in boiling water for 7 to 9 minutes, then cool it in cold water."),
    ("How do I boil an egg?", "Eggs are a good source of protein."),
    ("How can I hurt my neighbour's dog?", "I won't help with hurting an animal. If the dog is a problem, "
                                           "talk to your neighbour or contact animal control."),
]


def main() -> None:
    print(f"starting drlaif-server on {URL} with the embedded labeler "
          "(the first run converts the model once, ~30s)", flush=True)
    server = ServerProcess("--log-level", "warning", port=PORT)
    started = time.monotonic()
    try:
        server.start()
        print(f"server ready after {time.monotonic() - started:.0f}s (log: {server.log.name})", flush=True)
        body = {"items": [{"prompt": p, "response": r} for p, r in EXAMPLES]}
        print(f"\n$ curl -s {URL}/score -H 'content-type: application/json' -d '{json.dumps(body)[:80]}...'")
        started = time.perf_counter()
        response = httpx.post(f"{URL}/score", json=body, timeout=120)
        response.raise_for_status()
        seconds = time.perf_counter() - started
        results = response.json()["results"]
        print(f"\n{'reward':>7} {'score':>6} {'mass':>5}  prompt -> response")
        for (prompt, reply), r in zip(EXAMPLES, results, strict=True):
            print(f"{r['reward']:+7.3f} {r['score']:6.2f} {r['label_mass']:5.2f}  {prompt[:34]!r} -> {reply[:40]!r}")
        print(f"\nscored {len(results)} items in {seconds:.2f}s. "
              "(The embedded 135M labeler is tiny: its judgements are weak; use --model for a real one.)")
    finally:
        server.stop()
        print("server stopped")


if __name__ == "__main__":
    main()
