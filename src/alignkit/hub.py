"""`alignkit push RUN_DIR`: upload a finished run's model and a generated model card to the Hugging Face Hub.

The token comes from the environment (HF_TOKEN) or the Hugging Face cache (`hf auth login`), read by
huggingface_hub itself: it is never in a recipe, never passed through alignkit, never written anywhere.
`hub.push` picks what goes up: `adapter` (the LoRA adapter, or the model of a full run), `merged`
(adapter merged into its base: the run's merged/ folder, or merged now) or `full` (a full model only).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from alignkit.config.base import HubSection
from alignkit.errors import AlignkitError
from alignkit.modelcard import read_recipe, render_card
from alignkit.runio import RunDir, atomic_write_json

log = logging.getLogger("alignkit.hub")
PUSH_RECORD = "hub.json"


def hub_section(run_dir: RunDir, repo_id: str | None) -> HubSection:
    """The run's `hub:` section, with --repo-id taking precedence (or standing in when there is none)."""
    raw = dict(read_recipe(run_dir).get("hub") or {})
    if repo_id:
        raw["repo_id"] = repo_id
    if not raw.get("repo_id"):
        raise AlignkitError("no repository to push to: pass --repo-id or set hub.repo_id in the recipe",
                            where=str(run_dir.path))
    return HubSection(**raw)


def model_folder(run_dir: RunDir, push: str, staging: Path) -> Path:
    """The folder to upload for `push` (adapter | merged | full); merges into `staging` when needed."""
    model, adapter, merged = run_dir.model_dir, run_dir.adapter_dir, run_dir.merged_dir
    if not model.is_dir():
        raise AlignkitError("has no model/ folder to push (eval and pipeline runs hold no model; "
                            "push a step's run folder)", where=str(run_dir.path))
    model_is_adapter = run_dir.model_kind() == "adapter"
    if push == "adapter":
        return adapter if adapter.is_dir() else model  # PPO/reward runs keep the adapter beside the merged model
    if push == "full":
        if model_is_adapter:
            raise AlignkitError("the run's model is a LoRA adapter, not a full model; use hub.push=merged",
                                where="hub.push")
        return model
    if merged.is_dir():
        return merged
    if not model_is_adapter:
        return model
    from alignkit.merge import merge_adapter

    log.info("merging %s into its base for upload", model)
    return merge_adapter(str(model), str(staging / "merged"))


def commit_operations(folder: Path, card: str) -> list[Any]:
    """One add operation per file of `folder` (checkpoint-style hidden files skipped) plus the README card."""
    from huggingface_hub import CommitOperationAdd

    ops = [CommitOperationAdd(path_in_repo=f.relative_to(folder).as_posix(), path_or_fileobj=str(f))
           for f in sorted(folder.rglob("*"))
           if f.is_file() and f.name != "README.md" and not any(p.startswith(".") for p in f.relative_to(folder).parts)]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode()))
    return ops


def push_run(run_dir: str | Path, repo_id: str | None = None) -> str:
    """Create the repo (if needed) and commit the run's model folder + model card; return the commit URL."""
    rd = RunDir(run_dir)
    rd.read_summary()  # only finished runs are pushed
    hub = hub_section(rd, repo_id)
    # torch and transformers only now: a refusal above is one line in well under a second
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    from huggingface_hub.utils import validate_repo_id

    from alignkit.models import adapter_base
    from alignkit.preflight import check_hub_access

    try:
        validate_repo_id(hub.repo_id)
    except HFValidationError:
        raise AlignkitError(f"{hub.repo_id!r} is not a Hub repo id: write 'name' or 'namespace/name' (letters, "
                            "digits, '-', '_', '.')", where="--repo-id" if repo_id else "hub.repo_id") from None
    check_hub_access("alignkit push")  # before a merge or any upload, not as a traceback halfway
    api = HfApi()  # token: HF_TOKEN or the login cache, resolved by huggingface_hub
    with tempfile.TemporaryDirectory() as staging:
        folder = model_folder(rd, hub.push, Path(staging))
        is_adapter = adapter_base(str(folder)) is not None
        card = render_card(rd.path, hub.repo_id, is_adapter=is_adapter, license_id=hub.license)
        try:
            api.create_repo(hub.repo_id, private=hub.private, repo_type="model", exist_ok=True)
            if hub.revision and hub.revision != "main":
                api.create_branch(hub.repo_id, branch=hub.revision, exist_ok=True)
            info = api.create_commit(hub.repo_id, operations=commit_operations(folder, card),
                                     commit_message=f"alignkit: {rd.read_summary().get('stage', 'model')} "
                                                    f"run {rd.path.name} ({hub.push})",
                                     revision=hub.revision, repo_type="model")
        except HfHubHTTPError as exc:
            status = getattr(exc.response, "status_code", "?")
            raise AlignkitError(f"the Hub refused the upload (HTTP {status}); check HF_TOKEN has write access "
                                f"to {hub.repo_id}", where="hub.repo_id") from None
        except Exception as exc:  # no network: httpx's connection errors are not OSErrors
            if not (isinstance(exc, OSError) or type(exc).__module__.startswith("httpx")):
                raise
            raise AlignkitError(f"cannot reach the Hub ({type(exc).__name__}); nothing was pushed, run "
                                f"`alignkit push {rd.path}` again when online", where="hub") from None
    atomic_write_json(rd.path / PUSH_RECORD, {"repo_id": hub.repo_id, "revision": hub.revision or "main",
                                              "push": hub.push, "commit_url": info.commit_url,
                                              "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    log.info("pushed %s to %s", folder, info.commit_url)
    return str(info.commit_url)
