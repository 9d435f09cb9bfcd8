"""Responses of a model policy (a dir, a hub id, or the embedded one); a policy argument that names a
file is a file of responses, read by evals.data.load_responses."""

from __future__ import annotations

from pathlib import Path

from trainer.data.prompt_datasets import Prompt


def is_response_file(policy: str | None) -> bool:
    """A policy argument that names an existing file is a file of responses; anything else is a model."""
    return policy is not None and Path(policy).is_file()


def generate(model: str | None, prompts: list[Prompt], *, num_per_prompt: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 128, batch_size: int = 8, seed: int = 0,
             progress: bool = True) -> list[list[str]]:
    """``num_per_prompt`` responses to each prompt from a causal LM (greedy when ``temperature`` is 0).

    ``model`` is a local dir or hub id; None is the embedded SmolLM2-135M-Instruct. Prompts go
    through the model's chat template, as in training.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    from trainer.ppo.models import encode_prompts, load_policy, load_tokenizer, resolve_policy
    from trainer.ppo.tensor_math import response_mask

    if num_per_prompt > 1 and temperature <= 0:
        raise ValueError("several responses per prompt need sampling: set a temperature above 0")
    path = resolve_policy(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(path)
    policy = load_policy(path).to(device).eval()
    eos = policy.generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [tokenizer.eos_token_id])
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 \
        else {"do_sample": False}
    generation = GenerationConfig(max_new_tokens=max_new_tokens, num_return_sequences=num_per_prompt,
                                  eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id, **sampling)
    torch.manual_seed(seed)
    out: list[list[str]] = []
    bar = tqdm(total=len(prompts), desc=f"generating ({Path(path).name})", unit="prompt",
               disable=not progress)
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            enc = encode_prompts(tokenizer, batch).to(device)
            ids = policy.generate(**enc, generation_config=generation)[:, enc["input_ids"].shape[1]:]
            # Keep each response up to its first EOS; what follows is padding.
            ids = ids.masked_fill(response_mask(ids, eos_ids) == 0, tokenizer.pad_token_id)
            texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
            out += [texts[k:k + num_per_prompt] for k in range(0, len(texts), num_per_prompt)]
            bar.update(len(batch))
    bar.close()
    return out


