"""alignkit's online-RL library, free of recipes: rollout, advantage estimators, losses, KL, rewards, the loop.

PPO, GRPO and RLOO are configurations of one loop (`trainer.RLTrainer`): the advantage estimator
("gae" with a critic, "grpo", "rloo") and where the KL goes (reward penalty or loss term).
"""
