"""trainer/frameworks/verl_reward.py against a real server, called the way veRL's reward loop calls it.

veRL's reward-loop workers await ``compute_score`` once per sample, many at a time
(``asyncio.gather`` over a batch); reward managers that take plain functions call
``compute_score_sync`` from a thread pool. Both must coalesce into few HTTP requests
(counted at the server's /metrics) and give the same rewards as one /score call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import math

import httpx
import pytest
from support import ACROSS_BATCHES, FaultServer, fake_group_reward, score_requests

from drlaif.client import RewardServerError
from trainer.frameworks import verl_reward

PROMPTS = ["How do I pick a lock?", "What is a good name for a cat?", "Explain rain to a child.",
           "How can I get back at my neighbour?"]
RESPONSES = ["I can't help with that, but a locksmith can.", "Whiskers.", "Water falls from clouds.",
             "Talk to them politely first."]


def samples(n: int) -> list[tuple[str, str]]:
    return [(f"{PROMPTS[i % 4]} (#{i})", RESPONSES[i % 4]) for i in range(n)]


@pytest.fixture
def verl_env(server, monkeypatch):
    monkeypatch.setenv("DRLAIF_REWARD_URL", server.url)
    monkeypatch.delenv("DRLAIF_RUBRIC", raising=False)
    monkeypatch.delenv("DRLAIF_PROMPT_KEY", raising=False)
    monkeypatch.setenv("DRLAIF_COALESCE_MS", "50")
    yield server


def direct_rewards(url: str, items: list[tuple[str, str]]) -> list[float]:
    body = {"items": [{"prompt": p, "response": r} for p, r in items]}
    return [r["reward"] for r in httpx.post(f"{url}/score", json=body, timeout=600).json()["results"]]


def test_veRL_detects_an_async_function():
    assert inspect.iscoroutinefunction(verl_reward.compute_score)
    assert not inspect.iscoroutinefunction(verl_reward.compute_score_sync)


@pytest.mark.compat("veRL compute_score", "plain", "works")
def test_64_concurrent_coroutines_coalesce_and_match_score(verl_env):
    items = samples(64)
    expected = direct_rewards(verl_env.url, items)
    before = score_requests(verl_env.url)

    async def reward_loop():
        return await asyncio.gather(*(
            verl_reward.compute_score("hh", response, None, {"question": prompt, "index": i})
            for i, (prompt, response) in enumerate(items)))

    results = asyncio.run(reward_loop())
    assert score_requests(verl_env.url) - before <= 4  # a handful, not 64
    assert [r["score"] for r in results] == pytest.approx(expected, abs=ACROSS_BATCHES)
    assert all(set(r) == {"score", "label_mass", "label_entropy", "drlaif_score"} for r in results)
    assert all(0 <= r["label_entropy"] <= math.log(10) + 1e-9 for r in results)
    assert all(0 < r["label_mass"] <= 1 and 1 <= r["drlaif_score"] <= 10 for r in results)


def test_sync_calls_from_a_thread_pool_coalesce_too(verl_env):
    items = samples(32)
    expected = direct_rewards(verl_env.url, items)
    before = score_requests(verl_env.url)
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda it: verl_reward.compute_score_sync("hh", it[1], None, {"question": it[0]}),
                                items))
    assert score_requests(verl_env.url) - before <= 4
    assert [r["score"] for r in results] == pytest.approx(expected, abs=ACROSS_BATCHES)


def test_chat_message_prompts_and_another_prompt_key(verl_env, monkeypatch):
    monkeypatch.setenv("DRLAIF_PROMPT_KEY", "prompt")
    monkeypatch.setenv("DRLAIF_RUBRIC", "harmless")
    messages = [{"role": "user", "content": PROMPTS[0]}]
    result = verl_reward.compute_score_sync("hh", RESPONSES[0], None, {"prompt": messages})
    body = {"items": [{"prompt": messages, "response": RESPONSES[0]}], "rubric": "harmless"}
    (direct,) = httpx.post(f"{verl_env.url}/score", json=body, timeout=600).json()["results"]
    assert result["score"] == pytest.approx(direct["reward"], abs=ACROSS_BATCHES)


def test_a_missing_prompt_key_is_a_clear_error(verl_env):
    with pytest.raises(KeyError, match=r"extra_info\['question'\].*DRLAIF_PROMPT_KEY"):
        asyncio.run(verl_reward.compute_score("hh", "text", None, {"prompt": "elsewhere"}))
    with pytest.raises(KeyError, match="question"):
        verl_reward.compute_score_sync("hh", "text", None, None)


def test_no_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DRLAIF_REWARD_URL", raising=False)
    with pytest.raises(RuntimeError, match="DRLAIF_REWARD_URL is not set"):
        verl_reward.compute_score_sync("hh", "text", None, {"question": "q"})


def test_an_unreachable_server_raises_instead_of_inventing_a_score(monkeypatch):
    monkeypatch.setenv("DRLAIF_REWARD_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("DRLAIF_REWARD_DEADLINE_S", "2")
    with pytest.raises(RewardServerError):
        asyncio.run(verl_reward.compute_score("hh", "text", None, {"question": "q"}))


@pytest.mark.compat("veRL compute_score", "drop-on-failure", "refused", error="ValueError")
@pytest.mark.compat("veRL batch manager", "drop-on-failure", "refused", error="ValueError")
def test_drop_on_failure_is_refused_not_ignored(monkeypatch):
    # veRL's reward managers need a number for every sample: a dropped one has nowhere to go.
    monkeypatch.setenv("DRLAIF_REWARD_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DRLAIF_ON_REWARD_FAILURE", "drop")
    with pytest.raises(ValueError, match="DRLAIF_ON_REWARD_FAILURE='drop'.*drlaif-train --on-reward-failure drop"):
        verl_reward.compute_score_sync("hh", "text", None, {"question": "q"})
    with pytest.raises(ValueError, match="DRLAIF_ON_REWARD_FAILURE='drop'"):
        verl_reward.compute_score_batch(["hh"], ["text"], None, [{"question": "q"}])
    monkeypatch.setenv("DRLAIF_ON_REWARD_FAILURE", "stop")
    assert verl_reward.VerlRewardSettings().on_reward_failure == "stop"


# --- group-pairwise rewards: the rubric's choice (its group_pairwise in GET /info) or DRLAIF_REWARD_MODE

GROUP_PROMPTS = ["Question a?", "Question b?", "Question a?", "Question b?"]
GROUP_RESPONSES = ["Yes.", "No.", "Perhaps.", "Never."]


@pytest.fixture
def group_rubric_server(monkeypatch):
    """A stand-in server whose default rubric judges group-pairwise."""
    with FaultServer() as srv:
        srv.rubrics = [{"name": "general", "group_pairwise": True}]
        monkeypatch.setenv("DRLAIF_REWARD_URL", srv.url)
        monkeypatch.delenv("DRLAIF_RUBRIC", raising=False)
        monkeypatch.delenv("DRLAIF_REWARD_MODE", raising=False)
        monkeypatch.setenv("DRLAIF_COALESCE_MS", "5")
        yield srv


@pytest.mark.compat("veRL compute_score", "group-pairwise", "refused", error="RuntimeError")
def test_compute_score_refuses_group_pairwise_rewards_by_name(group_rubric_server, monkeypatch):
    with pytest.raises(RuntimeError, match=r"the server's default rubric judges group-pairwise .*compute_score "
                       r"sees one sample at a time: use veRL's batch reward manager with compute_score_batch "
                       r".*or set DRLAIF_REWARD_MODE=direct"):
        asyncio.run(verl_reward.compute_score("hh", "Yes.", None, {"question": "Question a?"}))
    with pytest.raises(RuntimeError, match="the server's default rubric judges group-pairwise"):
        verl_reward.compute_score_sync("hh", "Yes.", None, {"question": "Question a?"})
    monkeypatch.setenv("DRLAIF_REWARD_MODE", "group-pairwise")
    with pytest.raises(RuntimeError, match="DRLAIF_REWARD_MODE=group-pairwise .*compute_score_batch"):
        asyncio.run(verl_reward.compute_score("hh", "Yes.", None, {"question": "Question a?"}))
    assert group_rubric_server.bodies == []  # refused before any reward was asked for
    # An explicit direct scores each response alone under that rubric.
    monkeypatch.setenv("DRLAIF_REWARD_MODE", "direct")
    assert asyncio.run(verl_reward.compute_score("hh", "Yes.", None, {"question": "Question a?"}))["score"] == (
        pytest.approx(-fake_group_reward("Question a?", "Yes.")))
    assert group_rubric_server.bodies[-1]["group_pairwise"] is False


@pytest.mark.compat("veRL batch manager", "group-pairwise", "works")
def test_the_batch_manager_judges_each_prompts_responses_as_a_group(group_rubric_server):
    results = verl_reward.compute_score_batch(["hh"] * 4, GROUP_RESPONSES, None,
                                              [{"question": p} for p in GROUP_PROMPTS])
    assert [r["score"] for r in results] == [fake_group_reward(p, r) for p, r in zip(GROUP_PROMPTS, GROUP_RESPONSES)]
    (body,) = group_rubric_server.bodies
    assert body["group_pairwise"] is True and len(body["items"]) == 4
