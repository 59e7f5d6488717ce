"""CLI: python -m alignkit.world --out data/world --eval-out eval/world_prompts.jsonl --seed 0."""

from __future__ import annotations

import argparse
import json
import sys

from alignkit.errors import AlignkitError
from alignkit.world.contractors import CAREFUL_SHARE
from alignkit.world.generator import generate_world


def main(argv: list[str] | None = None) -> int:
    """Generate the world files and print the manifest; user errors exit 2 with one line."""
    parser = argparse.ArgumentParser(prog="python -m alignkit.world", description=__doc__)
    parser.add_argument("--out", default="data/world", help="folder for corpus/sft/preferences/rl files")
    parser.add_argument("--eval-out", default="eval/world_prompts.jsonl", help="eval prompts file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.25, help="share of flipped preference pairs")
    parser.add_argument("--careful-share", type=float, default=CAREFUL_SHARE,
                        help="share of the SFT demos written by the careful contractors (changes sft.jsonl only)")
    args = parser.parse_args(argv)
    try:
        manifest = generate_world(args.out, args.eval_out, seed=args.seed, noise=args.noise,
                                  careful_share=args.careful_share)
    except AlignkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(manifest, sort_keys=True, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
