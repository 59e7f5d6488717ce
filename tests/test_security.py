"""Security: safe YAML, no remote code unless asked, weights-only torch.load, safetensors, no leaked tokens."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from alignkit.config.base import ModelSection
from alignkit.config.recipe import load_yaml
from alignkit.errors import AlignkitError

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "alignkit"
TOKEN = "hf_FAKEtoken1234567890abcdef"


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    """Every call in src/ whose function is spelled `...name` (attribute or plain name)."""
    found = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                spelled = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                if spelled == name:
                    found.append((path, node))
    return found


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_python_yaml_tag_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"stage: !!python/object/apply:os.system ['touch {marker}']\noutput_dir: out\n")
    with pytest.raises(AlignkitError, match="not valid YAML"):
        load_yaml(recipe)
    assert not marker.exists()


def test_src_loads_yaml_only_safely() -> None:
    assert not [p for p, c in _calls("load") if isinstance(c.func, ast.Attribute)
                and getattr(c.func.value, "id", None) == "yaml"]
    assert not _calls("unsafe_load") and not _calls("full_load")


def test_trust_remote_code_defaults_false_and_passes_through(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from alignkit import models

    seen: list[Any] = []

    def fake(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("trust_remote_code"))
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    for trust in (None, True):
        section = ModelSection(name_or_path="data/models/tiny-base",
                               **({} if trust is None else {"trust_remote_code": trust}))
        for load in (models.load_tokenizer, models.load_causal_lm):
            with pytest.raises(AlignkitError):
                load(section)
    assert seen == [False, False, True, True]


def test_no_from_pretrained_call_turns_on_remote_code() -> None:
    calls = _calls("from_pretrained")
    assert calls
    for path, call in calls:
        value = _kw(call, "trust_remote_code")
        assert not (isinstance(value, ast.Constant) and value.value is True), f"{path}:{call.lineno}"


def test_every_torch_load_is_weights_only() -> None:
    loads = [(p, c) for p, c in _calls("load") if isinstance(c.func, ast.Attribute)
             and getattr(c.func.value, "id", None) == "torch"]
    for path, call in loads:
        value = _kw(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{path}:{call.lineno}"


@pytest.mark.parametrize("override", [f"hub.repo_id=me/{TOKEN}", f"train.trainer_kwargs.run_name={TOKEN}",
                                      f"train.trainer_kwargs.hub_token={TOKEN}"])
def test_token_pasted_into_a_recipe_is_refused_without_echo(override: str, tmp_path: Path, run_cli: Any) -> None:
    done = run_cli(["train", "recipes/sft_lora.yaml", f"output_dir={tmp_path / 'run'}", override],
                   env={"HF_TOKEN": TOKEN})
    assert done.code == 2
    key = override.split("=")[0]
    assert done.err.splitlines()[-1] == (
        f"alignkit: error: recipes/sft_lora.yaml: {key}: looks like an access token; tokens are read from the "
        "environment (HF_TOKEN), never from a recipe")
    assert TOKEN not in done.out + done.err
    assert not (tmp_path / "run").exists()


def test_tiny_sft_run_writes_safetensors_and_no_token(tmp_path: Path, run_cli: Any) -> None:
    out = tmp_path / "run"
    done = run_cli(["train", "recipes/sft_lora.yaml", f"output_dir={out}", "train.max_steps=2",
                    "train.per_device_train_batch_size=2", "data.datasets.0.max_samples=8", "data.eval_split_size=0",
                    "train.logging_steps=1", "train.save_steps=2", "model.max_length=64",
                    "train.report_to=[tensorboard]", "hub.repo_id=me/tiny-sft"], env={"HF_TOKEN": TOKEN})
    assert done.code == 0, done.err[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "adapter_model.safetensors" in {p.name for p in (out / "model").iterdir()}
    assert not names & {"pytorch_model.bin", "adapter_model.bin"}
    assert any(p.suffix == ".safetensors" for p in (out / "checkpoints").rglob("*"))
    assert TOKEN not in done.out + done.err
    leaked = [str(p.relative_to(out)) for p in files if TOKEN.encode() in p.read_bytes()]
    assert not leaked, leaked
