#!/usr/bin/env bash
# Retrain and reship the tiny chat models from their recipes, in order (data/models/README.md):
#   bash scripts/ship_models.sh            # SFT -> annotate -> RM -> PPO (keeps the shipped tiny-base)
#   bash scripts/ship_models.sh --base     # pretrain tiny-base first (about 15 min on 2 idle cores)
# Each step writes runs/<name>/ and copies the result into data/models/ only after it finished.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
AK=${AK:-.venv/bin/alignkit}
step() { echo "== $1 ($(date +%T))"; }
ship() {  # ship <source folder> <data/models name>: replace the shipped folder only once the new one is complete
    rm -rf "data/models/.$2.new" && cp -r "$1" "data/models/.$2.new"
    rm -f "data/models/.$2.new/.alignkit-merge.json"  # merge's own bookkeeping, not part of the model
    rm -rf "data/models/$2" && mv "data/models/.$2.new" "data/models/$2"
}
if [[ "${1:-}" == "--base" ]]; then
    step pretrain
    "$AK" train recipes/pretrain_tiny.yaml train.overwrite_output_dir=true
    cp runs/pretrain_tiny/run.json runs/pretrain_tiny/model/pretrain_run.json
    ship runs/pretrain_tiny/model tiny-base
fi
step sft
"$AK" train recipes/sft_lora.yaml train.overwrite_output_dir=true
rm -rf runs/sft_lora/merged && "$AK" merge runs/sft_lora/model --out runs/sft_lora/merged
cp runs/sft_lora/run.json runs/sft_lora/merged/sft_run.json
ship runs/sft_lora/merged tiny-sft
step annotate   # the SFT model's own samples, ranked by the noisy annotator (the RM's second dataset)
"$PY" -m alignkit.research.annotate --model data/models/tiny-sft --out data/world/preferences_sft.jsonl
step reward
"$AK" train recipes/reward.yaml train.overwrite_output_dir=true
cp runs/reward/run.json runs/reward/model/reward_run.json
ship runs/reward/model tiny-rm
step ppo
"$AK" train recipes/ppo.yaml train.overwrite_output_dir=true
cp runs/ppo/run.json runs/ppo/model/ppo_run.json && cp runs/ppo/ppo_curves.png runs/ppo/model/
ship runs/ppo/model tiny-ppo
step done
