"""drlaif's ground floor: what the server, the trainer, the evaluations and the benchmarks share.

- ``protocol.py``: the wire contract (pydantic models of every request and response); it loads
  pydantic and nothing heavier.
- ``client.py``: the reward client, with ``replica_routing.py`` (which replica gets a request)
  and ``reward_failures.py`` (stop, or drop the samples without a reward); no torch,
  transformers or FastAPI.
- ``prompt_text.py``: the prompt forms (string, chat messages, HH transcript), the text a
  labeler sees, and the one definition of "the same prompt".
- ``stats.py``: bootstrap and Wilson intervals.
- ``batching.py``: the micro-batcher (the server's, and the veRL adapter's coalescing).
- ``embedded_model.py``: where the embedded model lives and its conversion.
- ``config_fields.py``: dataclass fields that document themselves.
- ``server_process.py``: a ``drlaif-server`` subprocess for the demo, benchmarks and tests.

Nothing here imports ``server``, ``trainer``, ``evals`` or ``bench`` (tests/test_layers.py).
"""
