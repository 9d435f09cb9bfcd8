"""The trl reward adapter (trainer/frameworks/trl_reward.py) on the real drlaif-server.

It is driven the way trl 1.16 drives async reward functions: trl's own daemon event loop
(`start_event_loop_in_daemon`), `asyncio.run_coroutine_threadsafe`, and the keyword arguments
GRPOTrainer passes (completion_ids, trainer_state, log_extra, log_metric, dataset columns).
"""

from __future__ import annotations

import asyncio
import pickle
from typing import Self

import httpx
import pytest
from support import FaultServer, fake_group_reward, fake_reward
from trl.trainer.utils import (
    get_callable_name,
    is_async_callable,
    shutdown_event_loop_in_daemon,
    start_event_loop_in_daemon,
)

from drlaif.client import RewardClient, RewardClientConfig, RewardServerError
from trainer.frameworks.trl_reward import (
    DrlaifRewardFunc,
    completion_text,
    make_reward_func,
    prompt_for_server,
)

PLAIN_PROMPTS = ["What is the capital of France?", "What is the capital of France?",
                 "How do I reverse a list in Python?"]
PLAIN_COMPLETIONS = ["Paris.", "The capital of France is Berlin.", "Use slicing: `my_list[::-1]`."]

CHAT_PROMPTS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Give me a tip for better sleep."}],
    [{"role": "user", "content": "What's 12 times 12?"}],
    [{"role": "user", "content": "What's 12 times 12?"}],
]
# trl's conversational completions: one assistant message each.
CHAT_COMPLETIONS = [[{"role": "assistant", "content": "Avoid screens for an hour before bed."}],
                    [{"role": "assistant", "content": "144"}],
                    [{"role": "assistant", "content": "It is 1000."}]]


class TrlLoop:
    """trl's reward loop: an event loop in a daemon thread that the trainer submits coroutines to."""

    def __enter__(self) -> Self:
        self.thread, self.loop, ready = start_event_loop_in_daemon(name="test-trl-loop")
        ready.wait()
        return self

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=300)

    def __exit__(self, *exc) -> None:
        shutdown_event_loop_in_daemon(self.thread, self.loop)


def call_like_grpo(func, prompts, completions, metrics: dict) -> list[float]:
    """The keyword arguments GRPOTrainer._calculate_rewards passes to an async reward function."""
    return func(prompts=prompts, completions=completions, completion_ids=[[1, 2, 3]] * len(prompts),
                trainer_state=None, log_extra=lambda column, values: None,
                log_metric=lambda name, value: metrics.setdefault(name, []).append(value),
                solution=["unused dataset column"] * len(prompts))


@pytest.fixture(scope="module")
def client_rewards(server) -> dict[str, list[float]]:
    """The reward client's answers for the same items, as the reference."""
    with RewardClient(RewardClientConfig(urls=[server.url])) as client:
        return {"plain": client.score(PLAIN_PROMPTS, PLAIN_COMPLETIONS),
                "chat": client.score(CHAT_PROMPTS, [c[0]["content"] for c in CHAT_COMPLETIONS])}


def test_trl_sees_an_async_reward_function_with_a_name():
    func = make_reward_func("http://127.0.0.1:1", rubric="helpful")
    assert is_async_callable(func)
    assert get_callable_name(func) == "drlaif_helpful"
    assert get_callable_name(make_reward_func(["http://a:1", "http://b:2"])) == "drlaif"
    assert get_callable_name(make_reward_func("http://a:1", name="judge")) == "judge"
    assert func.config.urls == ["http://127.0.0.1:1"] and func.config.rubric == "helpful"
    with pytest.raises(TypeError):
        make_reward_func("http://a:1", no_such_option=1)


def test_it_pickles_for_trls_rollout_worker_processes():
    func = make_reward_func("http://127.0.0.1:1", rubric="harmless", deadline_s=30.0)
    copy = pickle.loads(pickle.dumps(func))
    assert isinstance(copy, DrlaifRewardFunc)
    assert copy.__name__ == "drlaif_harmless" and copy.config == func.config


def test_message_shapes_are_converted():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    # Tool-calling turns: the final assistant message is the answer.
    assert completion_text([{"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]},
                            {"role": "tool", "content": "42"},
                            {"role": "assistant", "content": "It is 42."}]) == "It is 42."
    # Multimodal content blocks: the text parts.
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"},
                                                              {"type": "image"},
                                                              {"type": "text", "text": "b"}]}]) == "ab"
    with pytest.raises(ValueError, match="no assistant message"):
        completion_text([{"role": "user", "content": "x"}])
    with pytest.raises(TypeError):
        completion_text(42)
    assert prompt_for_server("p") == "p"
    # Extra keys would be refused by the server; content blocks become text.
    message = {"role": "user", "content": [{"type": "text", "text": "q"}], "name": "bob"}
    assert prompt_for_server([message]) == [{"role": "user", "content": "q"}]
    with pytest.raises(TypeError):
        prompt_for_server(None)


@pytest.mark.slow
@pytest.mark.compat("trl reward function", "plain", "works")
def test_plain_text_rewards_equal_the_clients(server, client_rewards):
    func = make_reward_func(server.url)
    metrics: dict[str, list[float]] = {}
    with TrlLoop() as trl_loop:
        rewards = trl_loop.run(call_like_grpo(func, PLAIN_PROMPTS, PLAIN_COMPLETIONS, metrics))
        # An older trl passes no logging hooks: the same rewards, nothing logged.
        bare = trl_loop.run(func(prompts=PLAIN_PROMPTS, completions=PLAIN_COMPLETIONS))
        trl_loop.run(func.aclose())
    assert rewards == pytest.approx(client_rewards["plain"], abs=1e-4)
    assert bare == pytest.approx(rewards, abs=1e-6)
    assert all(isinstance(r, float) and -1 <= r <= 1 for r in rewards)
    logged = metrics
    always = {f"drlaif/{m}" for m in ("label_mass", "label_mass_min", "label_entropy", "truncated_rate",
                                      "reward_seconds", "judge_text_rate", "reward_disagreement",
                                      "reward_robust_gap", "dropped")}
    # The length-reward correlation is logged when it is defined (two lengths, two rewards).
    assert always <= set(logged) <= always | {"drlaif/length_reward_corr"}
    assert logged["drlaif/dropped"] == [0.0] and 0.0 <= logged["drlaif/label_entropy"][0] <= 2.303
    assert all(len(values) == 1 for values in logged.values())  # one call, one value each
    (mass,), (least,) = logged["drlaif/label_mass"], logged["drlaif/label_mass_min"]
    assert 0.0 < least <= mass <= 1.0
    assert logged["drlaif/truncated_rate"] == [0.0] and logged["drlaif/reward_seconds"][0] > 0


@pytest.mark.slow
def test_conversational_rewards_equal_the_clients(server, client_rewards):
    func = make_reward_func([server.url], rubric="general", max_items_per_request=2)
    with TrlLoop() as trl_loop:
        rewards = trl_loop.run(call_like_grpo(func, CHAT_PROMPTS, CHAT_COMPLETIONS, {}))
        trl_loop.run(func.aclose())
    assert rewards == pytest.approx(client_rewards["chat"], abs=1e-4)
    assert rewards[1] != pytest.approx(rewards[2], abs=1e-4)  # "144" and "1000" are told apart


@pytest.mark.slow
def test_a_pickled_copy_scores_on_another_loop(server, client_rewards):
    # As in trl's spawned rollout worker: a copy made by pickling, called on a fresh loop.
    func = pickle.loads(pickle.dumps(make_reward_func(server.url)))

    async def once() -> list[float]:
        try:
            return await func(PLAIN_PROMPTS[:1], PLAIN_COMPLETIONS[:1])
        finally:
            await func.aclose()

    assert asyncio.run(once()) == pytest.approx(client_rewards["plain"][:1], abs=1e-4)


@pytest.mark.slow
def test_server_errors_reach_trl_instead_of_a_made_up_reward(server):
    func = make_reward_func(server.url, rubric="no-such-rubric")
    with TrlLoop() as trl_loop:
        with pytest.raises(RewardServerError, match="unknown rubric 'no-such-rubric'"):
            trl_loop.run(call_like_grpo(func, PLAIN_PROMPTS, PLAIN_COMPLETIONS, {}))
        trl_loop.run(func.aclose())


@pytest.mark.compat("trl reward function", "constitution", "works")
def test_a_constitution_logs_one_reward_mean_per_principle(server):
    func = make_reward_func(server.url, rubric="assistant")
    metrics: dict[str, list[float]] = {}
    with TrlLoop() as trl_loop:
        rewards = trl_loop.run(call_like_grpo(func, PLAIN_PROMPTS, PLAIN_COMPLETIONS, metrics))
        trl_loop.run(func.aclose())
    direct = httpx.post(f"{server.url}/score", timeout=300, json={
        "rubric": "assistant", "items": [{"prompt": p, "response": c}
                                         for p, c in zip(PLAIN_PROMPTS, PLAIN_COMPLETIONS, strict=True)]})
    results = direct.json()["results"]
    assert rewards == pytest.approx([r["reward"] for r in results], abs=1e-4)
    for name in ("helpful", "harmless", "honest"):
        (logged,) = metrics[f"{func.__name__}/reward_principle_{name}"]  # drlaif_assistant/...
        want = sum(r["principles"][name]["reward"] for r in results) / len(results)
        assert logged == pytest.approx(want, abs=1e-4)


# Two completions per prompt, as GRPO sends them: each prompt's group whole in the call.
GROUP_PROMPTS = ["What is 12 times 12?", "What is 12 times 12?", PLAIN_PROMPTS[2], PLAIN_PROMPTS[2]]
GROUP_COMPLETIONS = ["144.", "124.", PLAIN_COMPLETIONS[2], "Call reverse() on it."]


@pytest.mark.compat("trl reward function", "group-pairwise", "works")
def test_a_rubric_that_judges_in_groups_is_followed_and_direct_overrides_it():
    with FaultServer() as srv:
        srv.rubrics = [{"name": "general", "group_pairwise": True}]
        with TrlLoop() as trl_loop:
            for mode, sent, reward in ((None, True, fake_group_reward), ("direct", False, fake_reward)):
                func = make_reward_func(srv.url, deadline_s=10, reward_mode=mode)
                assert trl_loop.run(call_like_grpo(func, GROUP_PROMPTS, GROUP_COMPLETIONS, {})) == [
                    reward(p, c) for p, c in zip(GROUP_PROMPTS, GROUP_COMPLETIONS, strict=True)]
                assert srv.bodies[-1]["group_pairwise"] is sent
                trl_loop.run(func.aclose())


@pytest.mark.slow
@pytest.mark.compat("trl reward function", "group-pairwise", "works")
def test_group_pairwise_rewards_are_the_servers_group_rewards(server):
    func = make_reward_func(server.url, reward_mode="group-pairwise")
    with TrlLoop() as trl_loop:
        rewards = trl_loop.run(call_like_grpo(func, GROUP_PROMPTS, GROUP_COMPLETIONS, {}))
        trl_loop.run(func.aclose())
    direct = httpx.post(f"{server.url}/score", timeout=300, json={"group_pairwise": True, "items": [
        {"prompt": p, "response": c} for p, c in zip(GROUP_PROMPTS, GROUP_COMPLETIONS, strict=True)]})
    results = direct.json()["results"]
    assert all(r["group"]["opponents"] == 1 for r in results)
    assert rewards == pytest.approx([r["group"]["reward"] for r in results], abs=1e-4)
