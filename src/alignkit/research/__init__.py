"""Research tools on the embedded world, kept out of its data generator (alignkit.world imports no model code).

- `python -m alignkit.research.probe`: the headroom probe (what a policy, a reward model and the oracle's
  best-of-n would gain over the SFT model; `--knowledge`: how many held-out facts a base model knows).
- `python -m alignkit.research.annotate`: the simulated annotator ranks a model's own samples (InstructGPT's
  reward-model data), written as the world's ranking rows.
"""
