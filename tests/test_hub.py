"""`alignkit push` against a local HTTP server speaking the Hub API that huggingface_hub uses
(create repo, preupload, NDJSON commit): the real client in its own `python -m alignkit.cli` process, no
patches. The token must reach the Authorization header and nowhere else (run folder, card, logs). The
refusals before any request run in-process, with huggingface_hub's import-time settings pointed the same way."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from alignkit.modelcard import render_card
from tests.conftest import JSONHandler

TOKEN = "hf_FakeTokenForTests0123456789abcdef"


class FakeHub(JSONHandler):
    """Records every request; answers the calls create_repo + create_commit make (README metadata included)."""

    requests: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append({"method": "POST", "path": self.path, "auth": self.headers.get("Authorization"),
                              "content_type": self.headers.get("Content-Type"), "body": body})
        base = f"http://{self.headers['Host']}"
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["api", "repos", "create"]:
            req = json.loads(body)
            return self.send_json(200, {"url": f"{base}/{req['organization']}/{req['name']}"})
        if parts[:2] == ["api", "validate-yaml"]:
            return self.send_json(200, {"errors": [], "warnings": []})  # the client checks the card's metadata first
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
            files = json.loads(body)["files"]
            return self.send_json(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                               for f in files]})
        if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
            return self.send_json(200, {"commitUrl": f"{base}/{parts[2]}/{parts[3]}/commit/{'a' * 40}",
                                     "commitOid": "a" * 40})
        return self.send_json(404, {"error": f"not implemented: {self.path}"})

    def do_GET(self) -> None:  # noqa: N802
        self.requests.append({"method": "GET", "path": self.path, "auth": self.headers.get("Authorization")})
        self.send_json(404, {"error": "not implemented"})


@pytest.fixture
def hub_server() -> Any:
    """A fake Hub on 127.0.0.1 (random port) for the duration of one test."""
    FakeHub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


REPORT = "| model A | model B | win rate |\n|---|---|---|\n| ppo | sft | 0.71 |\n"


@pytest.fixture
def finished_run(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A finished DPO step inside a pipeline folder whose eval step wrote report.md."""
    pipe = tmp_path / "pipe"
    run = pipe / "dpo"
    shutil.copytree(tiny_model_dir, run / "model")
    recipe = {"stage": "dpo", "output_dir": str(run),
              "model": {"name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"},
              "data": {"datasets": [{"path": "trl-lib/ultrafeedback_binarized"},
                                    {"path": "data/world/preferences.jsonl"}]},
              "dpo": {"beta": 0.1},
              # a token pasted into a recipe by mistake: must never reach the card
              "train": {"trainer_kwargs": {"note": f"see {TOKEN}"}},
              "hub": {"repo_id": "someone/tiny-dpo", "private": True, "push": "full"}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run / "run.json").write_text(json.dumps({"status": "complete", "stage": "dpo", "finished_at": "2026-01-01",
                                              "metrics": {"rewards/accuracies": 0.75, "train_loss": 0.41}}))
    (pipe / "eval").mkdir(parents=True)
    (pipe / "eval" / "report.md").write_text(REPORT)
    (pipe / "manifest.json").write_text(json.dumps({"steps": {
        "dpo": {"stage": "dpo", "run_dir": str(run)}, "eval": {"stage": "eval", "run_dir": str(pipe / "eval")}}}))
    return run


def test_model_card(finished_run: Path) -> None:
    card = render_card(finished_run, "someone/tiny-dpo")
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert meta["datasets"] == ["trl-lib/ultrafeedback_binarized"]  # local files are not Hub datasets
    assert {"alignkit", "dpo"} <= set(meta["tags"]) and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "text-generation" and meta["license"] == "apache-2.0"
    assert "| rewards/accuracies | 0.75 |" in card
    assert "| ppo | sft | 0.71 |" in card  # the pipeline's win-rate table
    assert "beta: 0.1" in card and TOKEN not in card


def test_reward_model_card_says_how_the_score_is_read(finished_run: Path) -> None:
    """A reward model's card names its normalisation and, when it has one, the LM term plain transformers omits."""
    run_json = finished_run / "run.json"
    for weight, says_lm in ((0.0, False), (0.15, True)):
        run_json.write_text(json.dumps({"status": "complete", "stage": "reward", "finished_at": "2026-01-01",
                                        "metrics": {"heldout_accuracy": 0.83, "lm_surprise_weight": weight}}))
        card = render_card(finished_run, "someone/tiny-rm")
        assert "## Scoring" in card and "alignkit_reward_bias" in card
        assert ("0.15 x the surprise of the language model in `lm/`" in card) is says_lm
        assert ("RewardScorer.from_pretrained" in card) is says_lm


def _all_text(folder: Path, skip: Path) -> str:
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file() and p != skip)


def test_push_to_local_hub(finished_run: Path, hub_server: Any, tmp_path: Path) -> None:
    host, port = hub_server.server_address
    env = {**os.environ, "HF_ENDPOINT": f"http://{host}:{port}", "HF_TOKEN": TOKEN,
           "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
           "HF_DEBUG": "", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-m", "alignkit.cli", "push", str(finished_run)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"/someone/tiny-dpo/commit/{'a' * 40}")

    paths = [r["path"].split("?")[0] for r in FakeHub.requests]
    assert paths == ["/api/repos/create", "/api/validate-yaml", "/api/models/someone/tiny-dpo/preupload/main",
                     "/api/models/someone/tiny-dpo/commit/main"]
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in FakeHub.requests)
    create = json.loads(FakeHub.requests[0]["body"])
    assert create["name"] == "tiny-dpo" and create["organization"] == "someone"
    assert create.get("visibility") == "private" or create.get("private") is True

    validated = json.loads(FakeHub.requests[1]["body"])["content"]
    assert yaml.safe_load(validated.split("---\n")[1])["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    commit = FakeHub.requests[3]
    assert commit["content_type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in commit["body"].splitlines()]
    files = {ln["value"]["path"]: base64.b64decode(ln["value"]["content"]) for ln in lines if ln["key"] == "file"}
    expected = sorted(p.name for p in (finished_run / "model").iterdir()) + ["README.md"]
    assert sorted(files) == sorted(expected)
    assert files["model.safetensors"] == (finished_run / "model" / "model.safetensors").read_bytes()
    card = files["README.md"].decode()
    assert "alignkit" in card and "| ppo | sft | 0.71 |" in card

    # the token went in the Authorization header only
    assert TOKEN not in card
    assert TOKEN not in done.stdout + done.stderr
    # (recipe.yaml is skipped: the fixture pasted the token there by hand, unredacted, on purpose)
    assert TOKEN not in _all_text(finished_run.parent, skip=finished_run / "recipe.yaml")
    record = json.loads((finished_run / "hub.json").read_text())
    assert record["repo_id"] == "someone/tiny-dpo"


def test_push_needs_a_repo_id(finished_run: Path) -> None:
    from alignkit.errors import AlignkitError
    from alignkit.hub import push_run

    raw = yaml.safe_load((finished_run / "recipe.yaml").read_text())
    del raw["hub"]
    (finished_run / "recipe.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(AlignkitError, match="--repo-id"):
        push_run(finished_run)
    with pytest.raises(AlignkitError, match="'not a/valid id' is not a Hub repo id") as err:
        push_run(finished_run, repo_id="not a/valid id")  # refused before any request (was a Hub-client traceback)
    assert err.value.where == "--repo-id"


@pytest.mark.parametrize(("env_change", "message"), [
    ({"HF_TOKEN": None}, "alignkit push: no Hugging Face token: set HF_TOKEN or run `hf auth login`"),
    ({"HF_HUB_OFFLINE": "1"}, "alignkit push: cannot push in offline mode (HF_HUB_OFFLINE=1); unset it to upload"),
], ids=["no_token", "offline"])
def test_push_without_hub_access_is_one_line(finished_run: Path, hub_server: Any, tmp_path: Path, run_cli: Any,
                                             monkeypatch: pytest.MonkeyPatch, env_change: dict[str, str | None],
                                             message: str) -> None:
    """Regression: both used to end in a huggingface_hub traceback; now one line before any request.

    In this process (a fresh one costs ~12 s of imports): huggingface_hub read HF_ENDPOINT and HF_HOME at
    import, so its copies point at the fake Hub and an empty home (no login token) here too.
    """
    import huggingface_hub.constants

    host, port = hub_server.server_address
    home = tmp_path / "hf_home"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://{host}:{port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    env = {"HF_ENDPOINT": f"http://{host}:{port}", "HF_TOKEN": TOKEN, "HF_HOME": str(home),
           "HF_HUB_DISABLE_TELEMETRY": "1", "NO_PROXY": "127.0.0.1", "HF_HUB_OFFLINE": None,
           "HF_DATASETS_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, **env_change}
    done = run_cli(["push", str(finished_run)], env=env)
    assert done.code == 2, done.err
    assert "Traceback" not in done.err
    assert done.err.strip().splitlines()[-1] == f"alignkit: error: {message}"
    assert FakeHub.requests == []
    assert not (finished_run / "hub.json").exists()
