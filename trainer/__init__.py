"""drlaif trainer: RL fine-tuning of a policy whose reward comes from a drlaif reward server.

`drlaif-train ppo` runs drlaif's own PPO (ppo/); `grpo` and `rloo` run trl's trainers
(frameworks/trl_training.py) with the server as their reward function (frameworks/trl_reward.py).
The prompt sets are in data/, and what a run records and reports in analysis/.
"""
