"""Prompt sets for training and evaluation: the set that ships with drlaif (shipped_prompts.py and
its JSON-lines files here), and prompt datasets from files, the hub and HH-RLHF (prompt_datasets.py)."""
