"""AI preference labels (canonical RLAIF): pairs labelled by ``/compare``, written for trl's DPOTrainer.

Pairs come from a file, or from a policy that samples two responses per prompt. Each pair
is judged pairwise (both orders averaged by default); the preferred response becomes
``chosen``. Output: JSON lines ``{"prompt", "chosen", "rejected", "p_chosen"}``, in trl's
conversational form (prompt as chat messages, chosen/rejected as one assistant turn) or as
plain strings.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from drlaif.prompt_text import same_prompt_key
from evals.common import in_batches, make_client, references_for
from evals.config import LabelConfig
from evals.data import Pair, as_messages, load_eval_prompts, load_pairs
from evals.responses import generate

log = logging.getLogger(__name__)


def _pairs(config: LabelConfig) -> list[Pair]:
    if config.pairs:
        return load_pairs(config.pairs, config.limit)
    prompts, references = load_eval_prompts(config.prompts, config.dataset_split, config.prompt_field,
                                            default="train", reference_field=config.reference_field)
    if config.limit is not None:
        prompts = prompts[: config.limit]
    samples = generate(config.policy, prompts, num_per_prompt=2, temperature=config.temperature,
                       max_new_tokens=config.max_new_tokens, batch_size=config.generation_batch_size,
                       seed=config.seed)
    return [Pair(p, a, b, references.get(same_prompt_key(p))) for p, (a, b) in zip(prompts, samples)]


def preference_record(pair: Pair, p_a: float, fmt: str) -> dict:
    """The DPO line of a labelled pair (p_a != 1/2): the preferred response is ``chosen``."""
    chosen, rejected = (pair.a, pair.b) if p_a > 0.5 else (pair.b, pair.a)
    p_chosen = max(p_a, 1.0 - p_a)
    if fmt == "conversational":
        return {"prompt": as_messages(pair.prompt), "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], "p_chosen": p_chosen}
    if not isinstance(pair.prompt, str):
        raise ValueError("--format standard needs string prompts; these are chat messages")
    return {"prompt": pair.prompt, "chosen": chosen, "rejected": rejected, "p_chosen": p_chosen}


def label(config: LabelConfig) -> dict:
    """Label the pairs and write the preference file; returns counts."""
    pairs = _pairs(config)
    identical = [p for p in pairs if p.a.strip() == p.b.strip()]
    pairs = [p for p in pairs if p.a.strip() != p.b.strip()]
    with make_client(config) as client:
        refs = references_for(client, config.rubric, [p.reference for p in pairs], "pairs")
        compared = in_batches(
            lambda s: client.compare_items([p.prompt for p in pairs[s]], [p.a for p in pairs[s]],
                                           [p.b for p in pairs[s]], debias=config.debias,
                                           references=refs[s] if refs else None),
            len(pairs), config, "labelling (/compare)")
    counts = {"pairs": len(pairs) + len(identical), "identical": len(identical), "ties": 0,
              "below_margin": 0, "inconsistent": 0, "written": 0}
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as f:
        for pair, c in zip(pairs, compared):
            if c.p_a == 0.5:
                counts["ties"] += 1
            elif abs(c.p_a - 0.5) < config.min_margin:
                counts["below_margin"] += 1
            elif config.drop_inconsistent and c.consistent is False:
                counts["inconsistent"] += 1
            else:
                f.write(json.dumps(preference_record(pair, c.p_a, config.format)) + "\n")
                counts["written"] += 1
    print(f"labelled {counts['pairs']} pairs: wrote {counts['written']} to {output}; skipped "
          f"{counts['identical']} with identical responses, {counts['ties']} ties, {counts['below_margin']} "
          f"below --min-margin, {counts['inconsistent']} with inconsistent orders")
    return counts
