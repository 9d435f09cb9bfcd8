"""drlaif trainer: RL fine-tuning of a policy whose reward comes from a drlaif reward server.

`drlaif-train ppo` runs drlaif's own PPO (ppo.py, ppo_math.py); `grpo` and `rloo` run trl's
trainers (trl_runner.py) with the server as their reward function (trl_reward.py).
"""
