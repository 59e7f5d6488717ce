#!/usr/bin/env bash
# Retrain and reship the tiny chat models from their recipes, in order (data/models/README.md):
#   bash scripts/ship_models.sh            # SFT -> annotate -> RM -> PPO (keeps the shipped tiny-base)
#   bash scripts/ship_models.sh --base     # pretrain tiny-base first (about 15 min on 2 idle cores)
#   bash scripts/ship_models.sh --ppo      # PPO only, from the shipped tiny-sft and tiny-rm
# Runs go to runs/ship_models/<step>/ (this script's own folders: a rerun replaces only them); a step's model
# replaces its folder in data/models/ only after the step finished.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
AK=${AK:-.venv/bin/alignkit}
OUT=runs/ship_models
train() {  # train <step> <recipe>: the recipe's run in $OUT/<step>
    echo "== $1 ($(date +%T))"
    "$AK" train "$2" output_dir="$OUT/$1" train.overwrite_output_dir=true
}
ship() {  # ship <step> <model folder> <data/models name>: with <step>_run.json; the old folder goes last
    local new="data/models/.$3.new" old="data/models/.$3.old"
    rm -rf "$new" "$old"  # only what an interrupted earlier ship left
    cp -r "$2" "$new" && rm -f "$new/.alignkit-merge.json"  # merge's own bookkeeping, not part of the model
    cp "$OUT/$1/run.json" "$new/$1_run.json"
    if [[ -d "data/models/$3" ]]; then mv "data/models/$3" "$old"; fi
    mv "$new" "data/models/$3" && rm -rf "$old"
}
if [[ "${1:-}" == "--base" ]]; then
    train pretrain recipes/pretrain_tiny.yaml
    ship pretrain "$OUT/pretrain/model" tiny-base
fi
if [[ "${1:-}" != "--ppo" ]]; then
    train sft recipes/sft_lora.yaml
    "$AK" merge "$OUT/sft/model" --out "$OUT/sft/merged"  # replaces only an earlier merge output
    ship sft "$OUT/sft/merged" tiny-sft
    echo "== annotate ($(date +%T))"  # the SFT model's own samples, ranked by the noisy annotator (the RM's second dataset)
    "$PY" -m alignkit.research.annotate --model data/models/tiny-sft --out data/world/preferences_sft.jsonl
    train reward recipes/reward.yaml
    ship reward "$OUT/reward/model" tiny-rm
fi
train ppo recipes/ppo.yaml
cp "$OUT/ppo/ppo_curves.png" "$OUT/ppo/model/"
ship ppo "$OUT/ppo/model" tiny-ppo
echo "== done ($(date +%T))"
