"""alignkit: pretraining, SFT, reward modeling, PPO RLHF and win-rate evaluation from YAML recipes."""

from alignkit import hub_kernels

__version__ = "0.1.0"

hub_kernels.install()  # before anything imports bitsandbytes (PEFT, transformers): no Hub kernel download
