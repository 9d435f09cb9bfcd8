"""OpenRLHF's remote reward protocol, mapped onto (prompt, response) items.

OpenRLHF's PPO (``--remote_rm_url http://host:port/get_reward``) posts
``{"query": [...], "prompts": [...], "labels": [...]}`` and expects
``{"rewards": [...], "scores": [...], "extra_logs": {...}}``. ``prompts[i]`` is the prompt as
text (usually the policy's chat template applied). ``query[i]`` is
``tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)`` where
``prompt_ids`` is that prompt tokenised without special tokens and, when longer than
``max_prompt_length``, cut to its last tokens (openrlhf/utils/agent.py,
``SingleTurnAgentExecutor.execute``). So a query may begin with only the end of its prompt,
possibly in the middle of a word, and it may end with the policy's end-of-sequence marker
(and padding), which is not part of the response.

:func:`align` finds where the prompt ends in the query (the rule is in its docstring);
:func:`labeler_items` hands the labeler the whole prompt, parsed into chat messages when it
is chat-template text of a known family (:mod:`server.app.chat_markup`), and the response.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from server.app.chat_markup import Messages, parse_chat
from server.errors import QueryMismatch

# End-of-sequence and padding strings of common model families, removed from the end of a
# response along with the labeler tokenizer's own special tokens.
END_MARKERS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>",
               "<end_of_turn>", "<eos>", "<pad>", "<|finetune_right_pad_id|>", "<｜end▁of▁sentence｜>")
# Beginning-of-sequence strings of common model families, removed from the start of a query and
# of its prompt before they are aligned (a chat template may write one; a cut prompt loses it).
BOS_MARKERS = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<｜begin▁of▁sentence｜>")
# A query that lost the start of its prompt must still begin with this many of its last
# characters (or the whole prompt, when shorter).
MIN_PROMPT_TAIL = 16
# Before a query's first prompt character: BOS markers, whitespace a tokenizer may decode after
# them, and U+FFFD, which is what decoding gives for a character whose first bytes were cut off.
_QUERY_LEAD = " \t\n\r\ufffd"


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


def strip_bos(text: str, markers: Iterable[str] = BOS_MARKERS, lead: str = "") -> str:
    """``text`` without leading beginning-of-sequence markers, nor the ``lead`` characters around them."""
    markers = tuple(m for m in markers if m)
    while True:
        stripped = text.lstrip(lead) if lead else text
        marker = next((m for m in markers if stripped.startswith(m)), None)
        if marker is None:
            return stripped
        text = stripped[len(marker):]


def min_prompt_tail(prompt: str) -> int:
    """How many of the prompt's last characters a query must begin with (``prompt`` BOS-stripped)."""
    return min(MIN_PROMPT_TAIL, len(prompt.lstrip()))


def align(query: str, prompt: str, bos: Iterable[str] = BOS_MARKERS) -> int | None:
    """Where the prompt ends in ``query`` (the response is ``query[end:]``); None if it is not there.

    The rule: strip leading BOS markers from both, and from the query the whitespace and
    U+FFFD characters around them too. Then the query must begin with a suffix of the prompt
    of at least :func:`min_prompt_tail` characters (16, or the whole prompt when shorter
    after its leading whitespace); the longest such suffix is the part of the prompt the
    query kept. The whole prompt is that suffix when nothing was cut. Finding it costs one
    ``str.find`` of the query's first characters in the prompt per candidate start, each
    checked by one comparison.
    """
    bos = tuple(bos)
    q = strip_bos(query, bos, _QUERY_LEAD)
    p = strip_bos(prompt, bos)
    offset = len(query) - len(q)
    if q.startswith(p):
        return offset + len(p)
    need = min_prompt_tail(p)
    if need == 0:  # a blank prompt: nothing of it can begin the stripped query
        return offset
    key = q[:need]
    if len(key) < need:
        return None
    j = p.find(key, max(0, len(p) - len(q)))
    while j >= 0:  # candidates from the longest suffix down
        kept = len(p) - j
        if q[kept - 1] == p[-1] and q.startswith(p[j:]):
            return offset + kept
        j = p.find(key, j + 1)
    return None


def split_queries(queries: Sequence[str], prompts: Sequence[str],
                  markers: Iterable[str] = END_MARKERS,
                  bos: Iterable[str] = BOS_MARKERS) -> list[tuple[str, str]]:
    """(prompt, response) per query: the whole prompt without leading BOS markers, and the query
    after the prompt (:func:`align`) without trailing end markers. A query that cannot be aligned
    with its prompt is a 422 naming its index."""
    if len(queries) != len(prompts):
        raise QueryMismatch(f"got {len(queries)} queries but {len(prompts)} prompts; "
                            "each query needs the prompt it starts with")
    markers, bos = tuple(markers), tuple(bos)
    items = []
    for i, (query, prompt) in enumerate(zip(queries, prompts, strict=True)):
        end = align(query, prompt, bos)
        prompt = strip_bos(prompt, bos)
        if end is None:
            raise QueryMismatch(
                f"query[{i}] does not start with prompts[{i}], nor with its last {min_prompt_tail(prompt)} "
                f"characters or more (query begins {query[:60]!r}, prompt ends {prompt[-60:]!r}); "
                "OpenRLHF's query is the prompt, or the end of it, followed by the response")
        items.append((prompt, strip_end_markers(query[end:], markers)))
    return items


def labeler_items(queries: Sequence[str], prompts: Sequence[str],
                  markers: Iterable[str] = END_MARKERS) -> list[tuple[str | Messages, str]]:
    """:func:`split_queries`' items with each prompt of a known chat-template family as messages."""
    return [(parse_chat(prompt) or prompt, response)
            for prompt, response in split_queries(queries, prompts, markers)]
