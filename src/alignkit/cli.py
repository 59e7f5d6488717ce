"""The command line: `alignkit train|validate|merge|report|push`. The only place that prints errors and exits."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alignkit.errors import AlignkitError

ACCELERATE_KEYS = {"compute_environment", "distributed_type", "num_processes", "mixed_precision"}


def train(recipe_path: str, overrides: list[str], force: list[str] | None = None) -> dict[str, Any]:
    """`alignkit train`: validate the recipe, then run it through the stage lifecycle.

    The recipe is validated before the lifecycle is imported (that loads torch, ~10 s), so a typo in
    a key or value is its one-line error in about a second.
    """
    from alignkit.config.recipe import load_recipe

    recipe = load_recipe(recipe_path, overrides)
    if force and recipe.stage != "pipeline":
        raise AlignkitError(f"redoes steps of a pipeline; {recipe_path} is stage {recipe.stage}, which always runs "
                            "(train.overwrite_output_dir=true replaces a finished run)", where="--force")
    from alignkit.stages.lifecycle import run_recipe

    return run_recipe(recipe, recipe_path, force=force)


def validate(paths: list[str]) -> int:
    """Validate recipe files (folders are searched for *.yaml); print one line per file."""
    from alignkit.config.recipe import load_yaml, validate_recipe
    from alignkit.preflight import preflight

    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(p.rglob("*.yaml")) if p.is_dir() else [p])
    if not files:
        raise AlignkitError("no recipe files found", where=" ".join(paths))
    failures = 0
    for f in files:
        try:
            raw = load_yaml(f)
            if ACCELERATE_KEYS & set(raw):
                _validate_accelerate_config(f)
                kind = "accelerate config"
            else:
                recipe = validate_recipe(raw, source=str(f))
                preflight(recipe)
                kind = f"stage {recipe.stage}"
            print(f"ok    {f} ({kind})")
        except AlignkitError as exc:
            failures += 1
            print(f"FAIL  {exc}" if str(exc).startswith(str(f)) else f"FAIL  {f}: {exc}")
    print(f"{len(files) - failures} valid, {failures} invalid")
    return 0 if failures == 0 else 2


def _validate_accelerate_config(path: Path) -> None:
    from accelerate.commands.config.config_args import ClusterConfig

    try:
        ClusterConfig.from_yaml_file(str(path))
    except Exception as exc:  # accelerate raises assorted types for bad configs
        raise AlignkitError(f"not a valid accelerate config ({exc})", where=str(path)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="run a recipe: alignkit train RECIPE [key.sub=value ...]")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--force", action="append", default=[], help="pipeline: redo this stage")
    p = sub.add_parser("validate", help="validate recipe files or folders")
    p.add_argument("paths", nargs="+")
    p = sub.add_parser("merge", help="merge a LoRA/QLoRA adapter into its base (dequantized)")
    p.add_argument("adapter")
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p = sub.add_parser("report", help="reprint a run's summary")
    p.add_argument("run_dir")
    p = sub.add_parser("push", help="push a run's model and model card to the Hub")
    p.add_argument("run_dir")
    p.add_argument("--repo-id")
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        train(args.recipe, args.overrides, force=args.force)
        return 0
    if args.command == "validate":
        return validate(args.paths)
    if args.command == "merge":
        from alignkit.config.base import expand_home
        from alignkit.merge import merge_adapter

        merge_adapter(expand_home(args.adapter), expand_home(args.out), dtype=args.dtype)
        print(f"merged model written to {args.out}")
        return 0
    if args.command == "report":
        from alignkit.summary import print_summary

        print_summary(args.run_dir)
        return 0
    if args.command == "push":
        from alignkit.hub import push_run

        print(push_run(args.run_dir, repo_id=args.repo_id))
        return 0
    raise AlignkitError(f"unknown command {args.command}")


# Where the process count of a launch is found: torchrun, then the MPI launchers accelerate knows.
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_flag(env: Mapping[str, str], key: str) -> bool:
    return env.get(key, "false").strip().lower() in {"1", "true", "yes"}


def unsupported_launch(env: Mapping[str, str], cuda_available: Callable[[], bool]) -> str | None:
    """Why `accelerate launch` would silently run this launch as something else here; None if it runs as asked."""
    if _env_flag(env, "ACCELERATE_USE_DEEPSPEED"):
        if importlib.util.find_spec("deepspeed") is None:
            return ("DeepSpeed is not installed (pip install deepspeed; it needs CUDA GPUs); "
                    "without it use recipes/accelerate/ddp.yaml or fsdp.yaml")
        if not cuda_available():
            return ("DeepSpeed needs CUDA GPUs and none is visible; on CPU launch recipes/accelerate/ddp.yaml "
                    "without --cpu (DDP over gloo)")
    if _env_flag(env, "ACCELERATE_USE_FSDP") and not cuda_available():
        # accelerate turns a CPU (gloo) process group into plain DDP and ignores the FSDP plugin.
        return ("FSDP needs CUDA GPUs and none is visible (accelerate would run plain DDP instead); on CPU "
                "launch recipes/accelerate/ddp.yaml without --cpu (DDP over gloo)")
    if _env_flag(env, "ACCELERATE_USE_CPU") and env.get("MASTER_ADDR") and not any(k in env for k in WORLD_SIZE_VARS):
        # accelerate's --cpu launcher starts one plain process (several only through mpirun) but still sets
        # MASTER_ADDR when num_processes > 1: the asked-for processes would silently be one.
        return ("--cpu starts a single process whatever num_processes says; drop --cpu: without CUDA alignkit "
                "runs `accelerate launch --config_file recipes/accelerate/ddp.yaml` as DDP over gloo")
    return None


def use_cpu_for_multiprocess() -> None:
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without CUDA: DDP over gloo on CPU.

    Without this, each launched process would see no GPU, fall back to single-process mode and
    train alone as process 0. The launcher's WORLD_SIZE says a multi-process run was asked for;
    accelerate's process state is a singleton, so creating it here with cpu=True makes every later
    PartialState/Accelerator/Trainer join the gloo process group. Launches that accelerate would turn
    into something else on this machine (FSDP or DeepSpeed without CUDA, --cpu with several processes)
    stop here, before any process group or model exists.
    """
    refusal = unsupported_launch(os.environ, _cuda_available)
    if refusal is not None:
        raise AlignkitError(refusal, where="accelerate launch")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _cuda_available():
        from accelerate import PartialState

        os.environ["ACCELERATE_USE_CPU"] = "1"
        PartialState(cpu=True)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `alignkit` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".yaml", ".yml")):
        argv = ["train", *argv]  # `alignkit recipe.yaml ...` and `alignkit/run.py recipe.yaml ...`
    # Under `accelerate launch` every rank runs this; only rank 0 reports progress, the others warn.
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = build_parser().parse_args(argv)
    try:
        use_cpu_for_multiprocess()
        return dispatch(args)
    except AlignkitError as exc:
        print(f"alignkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("alignkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
