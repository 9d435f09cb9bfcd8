"""What every evaluation shares: the reward client, batched calls with progress, the outputs."""

from __future__ import annotations

import concurrent.futures
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from drlaif.client import RewardClient, RewardClientConfig, RewardServerError
from evals.config import LabelerConnection

T = TypeVar("T")


def make_client(config: LabelerConnection) -> RewardClient:
    # Direct reads even under a rubric that judges in groups: an evaluation compares each
    # response's own score (the rubric's absolute read), whatever groups its items happen to form.
    return RewardClient(RewardClientConfig(
        urls=list(config.reward_url), rubric=config.rubric, read_timeout_s=config.reward_timeout_s,
        deadline_s=config.reward_deadline_s, max_concurrency=config.concurrency, reward_mode="direct"))


def server_info(client: RewardClient) -> dict[str, Any]:
    """The server's GET /info, or {} from a server that has none (a /score server of your own)."""
    try:
        return client.info()
    except RewardServerError as exc:
        if exc.status != 404:
            raise
        return {}


def references_for(client: RewardClient, rubric: str | None, references: Sequence[str | None],
                   what: str) -> list[str | None] | None:
    """The items' reference answers where ``rubric`` judges against them (its ``takes_reference``
    in GET /info), then required of every item (ValueError naming how many lack one); None for
    other rubrics, which never see them."""
    if not client.takes_reference(rubric):
        return None
    missing = sum(r is None for r in references)
    if missing:
        raise ValueError(f"rubric {rubric or '(the server default)'!r} judges against a reference answer, and "
                         f"{missing} of {len(references)} {what} have none: add a \"reference\" field to each line")
    return list(references)


def in_batches(call: Callable[[slice], Sequence[T]], n: int, config: LabelerConnection, desc: str) -> list[T]:
    """``call`` on consecutive slices of ``n`` items, ``config.concurrency`` at a time, with a progress bar.

    Results come back in item order. The first failure cancels what has not started and is raised.
    """
    from tqdm.auto import tqdm

    slices = [slice(i, min(i + config.batch_size, n)) for i in range(0, n, config.batch_size)]
    results: list[Sequence[T] | None] = [None] * len(slices)
    with concurrent.futures.ThreadPoolExecutor(config.concurrency) as pool, \
            tqdm(total=n, desc=desc, unit="item") as bar:
        futures = {pool.submit(call, s): k for k, s in enumerate(slices)}
        try:
            for future in concurrent.futures.as_completed(futures):
                k = futures[future]
                results[k] = future.result()
                bar.update(slices[k].stop - slices[k].start)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [item for chunk in results for item in chunk]


def command_line() -> str:
    """The command as typed (``python -m evals.cli`` when run as a module)."""
    program = Path(sys.argv[0]).name
    return ("python -m evals.cli" if program.endswith(".py") else program) + " " + shlex.join(sys.argv[1:])


def write_outputs(output: str | Path, name: str, title: str, summary: dict[str, Any],
                  table: Sequence[tuple[str, str]], items: Sequence[dict[str, Any]],
                  notes: Sequence[str] = (), plot: Callable[[Path], None] | None = None) -> dict[str, Path]:
    """Print the table; write NAME.json (summary), NAME_items.jsonl, NAME.md and NAME.png (if ``plot``)."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{name}.json", "items": out / f"{name}_items.jsonl",
             "markdown": out / f"{name}.md"}
    width = max(len(k) for k, _ in table)
    print(f"\n{title}")
    for key, value in table:
        print(f"  {key:<{width}}  {value}")
    paths["json"].write_text(json.dumps(summary, indent=2) + "\n")
    with paths["items"].open("w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        paths["png"] = out / f"{name}.png"
        plot(paths["png"])
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in table]
    lines += ["", *[f"- {note}" for note in notes], "", f"Command: `{command_line()}`", ""]
    if "png" in paths:
        lines += [f"![{name}]({paths['png'].name})", ""]
    paths["markdown"].write_text("\n".join(lines))
    for kind, path in paths.items():
        print(f"  {kind}: {path}")
    return paths
