"""The ppo stage: PPO RLHF from a recipe, on the online-RL library (alignkit.rl)."""
