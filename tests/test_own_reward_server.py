"""A reward server of your own (docs/own-reward-server.md): a /score that answers only rewards.

- The client reads a /score answer leniently (drlaif/protocol.py's ScoreAnswer): a reward per
  item is all it needs; a field that is there is checked as drlaif's own; a field the caller
  asked for (another reward field, group judgements) and the server did not send is a clear
  error. Driven by a scripted stdlib server in this file.
- The docs' example server (docs/examples/own_reward_server.py), run as a subprocess (fixture
  ``own_server``), behind the reward client, trl's reward function, veRL's compute_score and
  ``drlaif-eval harmless``. The trainer's runs against it are in test_own_reward_server_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support import OWN_REWARD_SERVER, own_reward_server

from drlaif.client import RewardClient, RewardClientConfig, RewardServerError, principle_means, rewards_of
from drlaif.protocol import ItemAnswer, MissingField, ScoreAnswer
from trainer.analysis.judge_signals import judge_text_metrics, label_metrics
from trainer.frameworks import verl_reward
from trainer.frameworks.trl_reward import batch_metrics, make_reward_func

PROMPTS = ["What is 2+2?", [{"role": "user", "content": "Name a colour."}], "Say hi.", "Count to three."]
RESPONSES = ["4", "Blue, the colour of a clear sky at noon.", "", "one two three"]


def rule(response: str) -> float:
    """The example server's rule (docs/examples/own_reward_server.py: reward)."""
    return 1.0 - 2.0 * min(1.0, len(response.split()) / 30)


EXPECTED = [rule(r) for r in RESPONSES]

# ------------------------------------------------------------------------------------------------
# A scripted /score: what another server might answer
# ------------------------------------------------------------------------------------------------

Answer = Callable[[dict], object]  # the request body -> the answer (a str is sent as it is)


class Scripted:
    """A stdlib server in a thread whose /score answers ``answer(body)``; /health/ready is 200 and
    /info 404, as a server that has none."""

    def __init__(self, answer: Answer):
        self.answer = answer
        self.bodies: list[dict] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send(200 if self.path == "/health/ready" else 404, "{}")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                scripted.bodies.append(body)
                answer = scripted.answer(body)
                self.send(200, answer if isinstance(answer, str) else json.dumps(answer))

            def send(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Answer], Scripted]]:
    servers: list[Scripted] = []

    def start(answer: Answer) -> Scripted:
        servers.append(Scripted(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def rewards_only(**fields: object) -> Answer:
    """Each item's rule reward and nothing else (``fields`` added to every result)."""
    return lambda body: {"results": [{"reward": rule(i["response"]), **fields} for i in body["items"]]}


def with_result(i: int, **fields: object) -> Answer:
    """A rewards-only answer whose result ``i`` is replaced by ``fields``."""
    def answer(body: dict) -> dict:
        results = rewards_only()(body)["results"]
        results[i] = fields
        return {"results": results}
    return answer


def config(url: str, **kwargs: object) -> RewardClientConfig:
    return RewardClientConfig(urls=[url], deadline_s=20, backoff_initial_s=0.01, jitter=False, **kwargs)


def test_an_answer_with_only_rewards_is_accepted_and_its_absent_fields_are_none(scripted):
    server = scripted(rewards_only())
    with RewardClient(config(server.url)) as client:
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
        items = client.score_items(PROMPTS, RESPONSES)
    assert [i.reward for i in items] == EXPECTED and isinstance(items[0], ItemAnswer)
    assert all(i.score is None and i.label_mass is None and i.reward_robust is None and i.principles is None
               for i in items)
    bare = ScoreAnswer.model_validate({"results": []}, strict=True)
    assert bare.rubric is None and bare.scale is None and bare.model is None
    # What the client sent: the items (chat messages as they are), no rubric unless asked for.
    assert server.bodies[-1] == {"items": [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]}


def test_the_diagnostics_a_server_sends_are_read_and_checked(scripted):
    server = scripted(rewards_only(score=5.5, distribution=[0.5, 0.5], label_mass=0.9))
    with RewardClient(config(server.url)) as client:
        items = client.score_items(PROMPTS, RESPONSES)
    assert all(i.score == 5.5 and i.distribution == [0.5, 0.5] and i.label_mass == 0.9 for i in items)
    assert all(i.label_entropy is None for i in items)
    assert label_metrics(items) == {"label_mass": 0.9, "label_mass_min": 0.9}


NAN_REWARD = '{"results": [{"reward": 0.5}, {"reward": NaN}, {"reward": 0.5}, {"reward": 0.5}]}'


@pytest.mark.parametrize("answer, needle", [
    (with_result(0, reward=2.0), "results.0.reward: Input should be less than or equal to 1"),
    (with_result(2, reward=-1.5), "results.2.reward: Input should be greater than or equal to -1"),
    (lambda body: NAN_REWARD, "results.1.reward: Input should be a finite number"),
    (with_result(1, reward=math.inf), "results.1.reward: Input should be a finite number"),
    (with_result(1, score=5.0), "results.1.reward: Field required"),
    (with_result(0, reward="0.5"), "results.0.reward: Input should be a valid number"),
    (with_result(0, reward=True), "results.0.reward: Input should be a valid number"),
    (lambda body: {"results": [{"reward": 0.1}] * 3}, "3 results for 4 items"),
    (lambda body: {"results": [{"reward": 0.1}] * 5}, "5 results for 4 items"),
    (lambda body: {"rewards": [0.1] * 4}, "results: Field required"),
    (lambda body: [0.1] * 4, "the body: Input should be a valid dictionary"),
    # A diagnostic that is there is checked as drlaif's own answer's.
    (rewards_only(label_mass=1.5), "results.0.label_mass: Input should be less than or equal to 1"),
    (rewards_only(distribution=[]), "results.0.distribution: List should have at least 1 item"),
    (rewards_only(reward_robust=math.nan), "results.0.reward_robust: Input should be a finite number"),
    (rewards_only(principles={"format": {"reward": 3.0}}),
     "results.0.principles.format.reward: Input should be less than or equal to 1"),
])
def test_a_wrong_reward_or_count_is_refused_with_what_is_wrong(scripted, answer, needle):
    server = scripted(answer)
    with RewardClient(config(server.url)) as client, pytest.raises(RewardServerError) as info:
        client.score(PROMPTS, RESPONSES)
    assert f"{server.url}/score returned an invalid answer" in str(info.value)
    assert needle in str(info.value)
    assert info.value.status == 200 and len(server.bodies) == 1  # not retried


@pytest.mark.parametrize("field", ["reward_robust", "reward_as_written"])
def test_a_reward_field_the_server_does_not_send_is_named(scripted, field):
    server = scripted(rewards_only())
    with RewardClient(config(server.url, reward_field=field)) as client, pytest.raises(RewardServerError) as info:
        client.score(PROMPTS, RESPONSES)
    assert f"results.0.{field}: absent (4 of 4 results lack it)" in str(info.value)
    assert f"reward_field is {field!r}" in str(info.value)
    # Items had some other way: rewards_of names the field too.
    with pytest.raises(MissingField, match=f"has no {field}"):
        rewards_of([ItemAnswer(reward=0.5)], field)
    # A server that sends it serves it.
    server.answer = rewards_only(**{field: -0.25})
    with RewardClient(config(server.url, reward_field=field)) as client:
        assert client.score(PROMPTS, RESPONSES) == [-0.25] * 4


def test_group_pairwise_needs_a_server_that_judges_in_groups(scripted, own_server):
    prompts, responses = ["q", "q", "r", "r"], ["a", "b b", "c", "d d d"]
    server = scripted(rewards_only())  # ignores group_pairwise
    with RewardClient(config(server.url, reward_mode="group-pairwise")) as client, \
            pytest.raises(RewardServerError, match="group_pairwise was asked for") as info:
        client.score(prompts, responses)
    assert "results.0.group: absent" in str(info.value) and "reward_mode 'direct'" in str(info.value)
    assert server.bodies[-1]["group_pairwise"] is True
    # The example refuses it outright, with the way out.
    with RewardClient(config(own_server, reward_mode="group-pairwise")) as client, \
            pytest.raises(RewardServerError, match="HTTP 422: .*use --reward-mode direct"):
        client.score(prompts, responses)


def test_metrics_skip_what_a_server_did_not_send():
    bare = [ItemAnswer(reward=0.5), ItemAnswer(reward=-0.5)]
    assert label_metrics(bare) == {} and judge_text_metrics(bare, 0.1) == {} and principle_means(bare) == {}
    assert batch_metrics(bare, 0.25) == {"reward_seconds": 0.25}
    some = [*bare, ItemAnswer(reward=0.0, label_entropy=1.0, label_mass=0.5, judge_spans=1, truncated=True,
                              reward_as_written=0.5, reward_robust=0.0,
                              principles={"format": {"reward": 1.0}})]
    assert label_metrics(some) == {"label_entropy": 1.0, "label_mass": 0.5, "label_mass_min": 0.5}
    assert judge_text_metrics(some, 0.1) == {"judge_text_rate": 1.0, "reward_disagreement": 1.0,
                                             "reward_robust_gap": 0.5}
    assert principle_means(some) == {"reward_principle_format": 1.0}
    assert batch_metrics(some, 0.25)["truncated_rate"] == 1.0
    # --disagreement-threshold reaches trl's metrics as PPO's: a 0.5 gap is a disagreement past 0.1, not past 0.6.
    assert batch_metrics(some, 0.25, 0.1)["reward_disagreement"] == 1.0
    assert batch_metrics(some, 0.25, 0.6)["reward_disagreement"] == 0.0


# ------------------------------------------------------------------------------------------------
# The docs' example server, as a subprocess
# ------------------------------------------------------------------------------------------------


def test_the_example_serves_the_client(own_server):
    with RewardClient(config(own_server)) as client:
        assert client.score(PROMPTS, RESPONSES) == EXPECTED
        assert client.score(PROMPTS, RESPONSES, rubric="brevity") == EXPECTED
        with pytest.raises(RewardServerError, match="HTTP 422: this server has one rubric, 'brevity'"):
            client.score(PROMPTS, RESPONSES, rubric="helpful")
    # More items than one request holds without /info: chunks of 64, in order.
    many = [f"w{i} " * (i % 40) for i in range(150)]
    with RewardClient(config(own_server)) as client:
        assert client.score(["p"] * 150, many) == [rule(r) for r in many]


def test_the_example_checks_the_api_key_the_client_sends(monkeypatch):
    with own_reward_server({"REWARD_API_KEY": "s3cret"}) as url:
        with RewardClient(config(url)) as client, pytest.raises(RewardServerError, match="HTTP 401"):
            client.score(PROMPTS, RESPONSES)
        monkeypatch.setenv("DRLAIF_API_KEY", "s3cret")
        with RewardClient(config(url)) as client:
            assert client.score(PROMPTS, RESPONSES) == EXPECTED


def test_the_example_is_the_file_the_page_includes():
    page = (OWN_REWARD_SERVER.parents[1] / "own-reward-server.md").read_text()
    assert f'--8<-- "{OWN_REWARD_SERVER.relative_to(OWN_REWARD_SERVER.parents[2])}"' in page


def test_trl_reward_function_on_the_example(own_server):
    func = make_reward_func(own_server, deadline_s=20)
    logged: dict[str, list[float]] = {}
    completions = [[{"role": "assistant", "content": r}] for r in RESPONSES]
    lengths = [[1] * (len(r.split()) + 1) for r in RESPONSES]
    rewards = asyncio.run(func(prompts=PROMPTS, completions=completions, completion_ids=lengths,
                               log_metric=lambda name, value: logged.setdefault(name, []).append(value)))
    assert rewards == EXPECTED
    assert set(logged) == {"drlaif/reward_seconds", "drlaif/dropped", "drlaif/length_reward_corr"}
    dropping = make_reward_func(own_server, deadline_s=20, on_failure="drop")
    assert asyncio.run(dropping(prompts=PROMPTS, completions=RESPONSES)) == EXPECTED


@pytest.mark.compat("veRL batch manager", "plain", "works")
def test_verl_compute_score_on_the_example(own_server, monkeypatch):
    monkeypatch.setenv("DRLAIF_REWARD_URL", own_server)
    monkeypatch.setenv("DRLAIF_COALESCE_MS", "5")
    one = asyncio.run(verl_reward.compute_score("src", RESPONSES[1], None, {"question": PROMPTS[1]}))
    assert one == {"score": EXPECTED[1]}
    assert verl_reward.compute_score_sync("src", RESPONSES[0], None, {"question": PROMPTS[0]}) == {"score": EXPECTED[0]}
    batch = verl_reward.compute_score_batch(["src"] * 4, RESPONSES, None, [{"question": p} for p in PROMPTS])
    assert batch == [{"score": r} for r in EXPECTED]
    monkeypatch.setenv("DRLAIF_REWARD_FIELD", "reward_robust")
    with pytest.raises(RewardServerError, match="reward_robust: absent"):
        verl_reward.compute_score_batch(["src"] * 4, RESPONSES, None, [{"question": p} for p in PROMPTS])


def test_drlaif_eval_harmless_on_the_example(own_server, tmp_path):
    from evals.cli import main

    responses = tmp_path / "responses.jsonl"
    responses.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(PROMPTS, RESPONSES)))
    # --rubric: harmless's default rubric is "harmless", and the example has one rubric of its own.
    main(["harmless", "--reward-url", own_server, "--policy", str(responses), "--output", str(tmp_path / "out"),
          "--rubric", "brevity"])
    summary = json.loads((tmp_path / "out" / "harmless.json").read_text())
    assert summary["harmless_rate"] == sum(r > 0 for r in EXPECTED) / 4
    assert summary["reward"]["mean"] == pytest.approx(sum(EXPECTED) / 4)
    assert summary["label_mass"] is None and summary["score"] is None
    assert summary["rubric"] == "brevity" and summary["model"] is None  # the example has no /info
    items = [json.loads(line) for line in (tmp_path / "out" / "harmless_items.jsonl").read_text().splitlines()]
    assert [i["reward"] for i in items] == EXPECTED
    assert "label mass" not in Path(tmp_path / "out" / "harmless.md").read_text()
