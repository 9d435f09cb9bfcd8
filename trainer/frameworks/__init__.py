"""Other RL frameworks on a drlaif server: trl's reward function (trl_reward.py), trl's GRPO and
RLOO trainers run by drlaif-train (trl_training.py), and veRL's compute_score (verl_reward.py)."""
