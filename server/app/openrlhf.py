"""OpenRLHF's remote reward protocol, mapped onto (prompt, response) items.

OpenRLHF's PPO (``--remote_rm_url http://host:port/get_reward``) posts
``{"query": [...], "prompts": [...], "labels": [...]}`` where each query is its prompt
followed by the sampled response, both as text (the prompt usually with the policy's chat
template applied), and expects ``{"rewards": [...], "scores": [...], "extra_logs": {...}}``.
OpenRLHF decodes samples with their special tokens, so a query may end with the policy's
end-of-sequence marker (and padding); those trailing markers are not part of the response.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from server.errors import QueryMismatch

# End-of-sequence and padding strings of common model families, removed from the end of a
# response along with the labeler tokenizer's own special tokens.
END_MARKERS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>",
               "<end_of_turn>", "<eos>", "<pad>", "<|finetune_right_pad_id|>", "<|end▁of▁sentence|>")


def strip_end_markers(response: str, markers: Iterable[str]) -> str:
    """``response`` without trailing end/padding markers (and whitespace between them).

    A response that does not end with a marker is returned unchanged, whitespace included.
    """
    markers = sorted({m for m in markers if m}, key=len, reverse=True)
    while True:
        stripped = response.rstrip()
        for marker in markers:
            if stripped.endswith(marker):
                response = stripped[: -len(marker)]
                break
        else:
            return response


def split_queries(queries: Sequence[str], prompts: Sequence[str],
                  markers: Iterable[str] = END_MARKERS) -> list[tuple[str, str]]:
    """(prompt, response) per query; a query that does not start with its prompt is a 422."""
    if len(queries) != len(prompts):
        raise QueryMismatch(f"got {len(queries)} queries but {len(prompts)} prompts; "
                            "each query needs the prompt it starts with")
    markers = tuple(markers)
    items = []
    for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
        if not query.startswith(prompt):
            raise QueryMismatch(
                f"query[{i}] does not start with prompts[{i}] (query begins {query[:60]!r}, prompt begins "
                f"{prompt[:60]!r}); OpenRLHF's query is the prompt followed by the response")
        items.append((prompt, strip_end_markers(query[len(prompt):], markers)))
    return items
