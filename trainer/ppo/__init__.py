"""drlaif's own PPO: the trainer (trainer.py), its tensor math (tensor_math.py), the policy and
value models (models.py), and the process world a launcher started (distributed.py)."""
