"""Packing vs padding on variable-length data: alignkit's sft stage both ways, real (non-pad) tokens/s.

The data are the world's SFT conversations plus multi-turn rows made by chaining 2-4 of them, so row
lengths spread from ~20 to the 256-token limit; a per-device batch of 32 makes padding to the longest
row costly. Packing is TRL's bfd strategy; the packed batch is collated as alignkit's default layout
for the attention kernel (on CPU sdpa: "rows", [batch, max_length] with per-row position_ids) and, for
comparison, as TRL's padding-free single flattened row ("flat").
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

import common

MODEL, DATA = "data/models/tiny-base", "data/world/sft.jsonl"
BATCH, MAX_LENGTH = 32, 256


def varied_dataset(path: Path, seed: int = 0) -> dict[str, float]:
    """The SFT rows plus as many chained multi-turn rows (2-4 conversations each); token length stats."""
    from transformers import AutoTokenizer

    rows = [json.loads(line)["messages"] for line in Path(DATA).read_text().splitlines()]
    rng = random.Random(seed)
    chained = [sum(rng.sample(rows, rng.randint(2, 4)), []) for _ in range(len(rows))]
    data = rows + chained
    rng.shuffle(data)
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in data))
    tok = AutoTokenizer.from_pretrained(MODEL)
    texts = [tok.apply_chat_template(m, tokenize=False) for m in data[:1000]]
    lengths = [min(MAX_LENGTH, len(tok(t, add_special_tokens=False)["input_ids"])) for t in texts]
    return {"rows": len(data), "tokens_min": min(lengths), "tokens_median": statistics.median(lengths),
            "tokens_mean": statistics.mean(lengths), "tokens_max": max(lengths)}


def tokens_per_s(work: Path, data: Path, packing: bool, steps: int, layout: str = "auto") -> float:
    """Real tokens/s of one sft_lora run (TRL's num_tokens counts non-pad tokens both ways)."""
    from alignkit.cli import train

    out = work / f"{'packed' if packing else 'padded'}-{len(list(work.iterdir()))}"
    train("recipes/sft_lora.yaml", [f"sft.packed_layout={layout}",
        f"output_dir={out}", f"data.datasets=[{{path: {data}, format: messages}}]", f"data.packing={str(packing).lower()}",
        f"train.max_steps={steps}", f"train.logging_steps={steps}", f"train.per_device_train_batch_size={BATCH}",
        f"model.max_length={MAX_LENGTH}", "data.eval_split_size=0", "train.eval_steps=null",
        "train.save_steps=1000000", "train.report_to=[]",
    ])
    rows = common.read_jsonl(out / "metrics.jsonl")
    return common.last_log(rows, "num_tokens") / common.last_log(rows, "train_runtime")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    common.setup()
    work = Path(tempfile.mkdtemp(prefix="bench-packing-"))
    data = work / "varied.jsonl"
    stats = varied_dataset(data)
    # Packed rows hold several samples each, so the same number of steps sees more tokens either way.
    values = common.interleave({"packed": lambda _: tokens_per_s(work, data, True, args.steps),
                                "padded": lambda _: tokens_per_s(work, data, False, args.steps),
                                "packed_flat": lambda _: tokens_per_s(work, data, True, args.steps, "flat")},
                               args.reps)
    packed, padded = common.median(values["packed"]), common.median(values["padded"])
    common.write_comparison(
        "packing", "tokens/s (non-pad)", packed, padded, "alignkit, padding (data.packing=false)", goal=1.5,
        runs=values,
        settings={"model": MODEL, "data": stats, "batch": BATCH, "max_length": MAX_LENGTH, "steps": args.steps,
                  "reps": args.reps, "packing_strategy": "bfd", "packed_layout": "auto (rows on CPU sdpa)",
                  "packed_flat_ratio": common.median(values["packed_flat"]) / padded},
    )


if __name__ == "__main__":
    main()
