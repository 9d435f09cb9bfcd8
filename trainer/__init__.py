"""drlaif trainer: RL that takes its reward from a drlaif server (see the trainer issue)."""
