"""Broken recipes and datasets: each is one line on stderr naming what and where, exit 2, no traceback.

Every case runs through the command line and must fail before any training, leaving existing outputs
as they were. Each calls `alignkit.cli.main(argv)` in this process (conftest's run_cli: a fresh process
pays ~12 s importing torch, peft and transformers before even a recipe is validated). PROCESS_CASES run
again as real `python -m alignkit.cli` / `alignkit` processes, one after another in a thread started with
the module so they overlap the in-process cases: the exit status and stderr of the process itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import CLI_ENV, CliResult

REPO = Path(__file__).resolve().parents[1]
SENTINEL = b"an earlier run's notes\n"
MSG = {"messages": [{"role": "user", "content": "Where is Bresbis?"}, {"role": "assistant", "content": "Eastvale."}]}


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def prompt_ranking(responses: list[str], ranking: list[int]) -> dict:
    return {"prompt": "Name a river.", "responses": responses, "ranking": ranking}


EVAL = """stage: eval
output_dir: {d}/out
eval:
  prompts: eval/world_prompts.jsonl
  models:
    - {{name: base, path: data/models/tiny-base}}
{more}
"""
SFT = """stage: sft
output_dir: {d}/out
model: {{name_or_path: data/models/tiny-base}}
data: {{datasets: [{{path: data/world/sft.jsonl}}]}}
"""


@dataclass
class Case:
    """One broken input: CLI arguments ({d} is the case's folder), files to write there, expected text."""

    id: str
    argv: list[str]
    expect: tuple[str, ...]
    files: dict[str, str | bytes] = field(default_factory=dict)
    heavy: bool = False  # fails inside a stage module (needs torch), not in recipe validation
    untouched: bool = False  # caught by the preflight: nothing at all is created, changed or removed under {d}


def sft(*overrides: str) -> list[str]:
    return ["train", "recipes/sft_lora.yaml", "output_dir={d}/out", *overrides]


def sft_data(name: str, *overrides: str) -> list[str]:
    # No held-out share: the preflight would rightly refuse holding out 5% of these one-row files first.
    return sft(f"data.datasets.0.path={{d}}/{name}", "data.eval_split_size=0", *overrides)


def recipe(name: str = "recipe.yaml", *overrides: str) -> list[str]:
    return ["train", f"{{d}}/{name}", *overrides]


def merge(adapter: str, out: str) -> list[str]:
    return ["merge", f"{{d}}/{adapter}", "--out", f"{{d}}/{out}"]


def adapter_config(base: str = "data/models/tiny-base") -> str:
    return json.dumps({"base_model_name_or_path": base, "peft_type": "LORA", "r": 4})


def safetensors_bytes(data_bytes: int) -> bytes:
    """A one-tensor safetensors file (4 float32 = 16 data bytes) holding only `data_bytes` of its data."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\0" * data_bytes


PIPELINE = """stage: pipeline
output_dir: {d}/out
pipeline:
  steps:
    - {{name: sft, recipe: recipes/sft_lora.yaml}}
    - name: dpo
      recipe: recipes/dpo.yaml
      overrides: [{override}]
"""
DUPLICATE_TRAIN = SFT + "train: {{max_steps: 2}}\ntrain: {{learning_rate: 1.0e-4}}\n"

LIGHT = [
    Case("unknown_key", sft("train.learnin_rate=1e-4"),
         ("recipes/sft_lora.yaml: train.learnin_rate: unknown key; did you mean learning_rate?",)),
    Case("unknown_section", sft("trian.max_steps=2"), ("trian: unknown key; did you mean train?",)),
    Case("split_of_a_local_file", sft("data.datasets.0.split=test"),
         ("data.datasets.0: split 'test' applies to Hub datasets; data/world/sft.jsonl is a local file",)),
    Case("eval_prompt_split_of_a_local_file",
         ["train", "recipes/eval_winrate.yaml", "output_dir={d}/out", "eval.prompt_split=test"],
         ("eval: prompt_split 'test' applies to Hub datasets; eval/world_prompts.jsonl is a local file",)),
    Case("dataset_weight_outside_pretrain", sft("data.datasets.0.weight=5"),
         ("data.datasets.0.weight: only stage pretrain mixes datasets by weight",)),
    Case("eval_pair_repeated", ["train", "recipes/eval_winrate.yaml", "output_dir={d}/out",
                                "eval.pairs=[[sft, base], [base, sft]]"],
         ("pair ['base', 'sft'] repeats an earlier pair",)),
    Case("force_on_a_stage_recipe", sft("--force", "sft"), ("--force: redoes steps of a pipeline",)),
    Case("dpo_label_smoothing_without_robust", ["train", "recipes/dpo.yaml", "output_dir={d}/out",
                                                "dpo.loss_type=ipo", "dpo.label_smoothing=0.3"],
         ("dpo: label_smoothing is used by loss_type robust only; ipo would ignore it",)),
    Case("best_of_n_greedy", ["train", "recipes/eval_winrate.yaml", "output_dir={d}/out",
                              "eval.generation.temperature=0", "eval.models.2.best_of_n=4",
                              "eval.reward_model=data/models/tiny-rm"],
         ("best_of_n needs generation.temperature > 0",)),
    Case("judge_labels_without_human_judge", ["train", "recipes/eval_winrate.yaml", "output_dir={d}/out",
                                              "eval.judge.labels=eval/world_prompts.jsonl"],
         ("judge.labels is read by judge type human only, not oracle",)),
    Case("block_size_past_the_positions", ["train", "recipes/pretrain_tiny.yaml", "output_dir={d}/out",
                                           "pretrain.block_size=1024",
                                           "pretrain.architecture.max_position_embeddings=128"],
         ("block_size 1024 is longer than architecture.max_position_embeddings (128)",)),
    Case("eval_steps_zero", sft("train.eval_steps=0"), ("train.eval_steps:",)),
    Case("save_total_limit_zero", sft("train.save_total_limit=0"), ("train.save_total_limit:",)),
    Case("chat_template_jinja_syntax_error", sft("model.chat_template={% if %}{{ messages }}"),
         ("model.chat_template: the template text is not valid Jinja: Expected an expression",)),
    Case("chat_template_file_jinja_syntax_error", sft("model.chat_template={d}/t.jinja"),
         ("model.chat_template: {d}/t.jinja is not valid Jinja: unexpected '}' (line 2)",),
         {"t.jinja": "{% for m in messages %}\n{{ m.content }\n{% endfor %}\n"}),
    Case("fewshot_template_without_placeholder",
         ["train", "recipes/eval_winrate.yaml", "output_dir={d}/out", "eval.fewshot_template={d}/fs.txt"],
         ("eval: fewshot_template {d}/fs.txt has no {prompt} placeholder",),
         {"fs.txt": "User: Where is Bresbis?\nAssistant: Bresbis is in Eastvale.\n"}),
    Case("max_steps_zero", sft("train.max_steps=0"),
         ("train.max_steps: must be -1 (train num_train_epochs) or a positive number of steps (got 0)",)),
    Case("max_steps_negative", sft("train.max_steps=-5"), ("train.max_steps: must be -1",)),
    Case("seed_negative", sft("seed=-1"), ("seed: Input should be greater than or equal to 0",)),
    Case("dataloader_workers_negative", sft("train.dataloader_num_workers=-1"), ("train.dataloader_num_workers:",)),
    Case("trainer_kwargs_output_dir", sft("train.trainer_kwargs.output_dir={d}/elsewhere"),
         ("train.trainer_kwargs: 'output_dir' is set by alignkit",)),
    Case("output_dir_empty", ["train", "recipes/sft_lora.yaml", "output_dir="], ("output_dir: is empty",)),
    Case("output_dir_variable", ["train", "recipes/sft_lora.yaml", "output_dir=${RUNS}/x"],
         ("output_dir: holds a $ variable, which recipes do not expand",)),
    Case("train_key_the_stage_ignores", ["train", "recipes/ppo.yaml", "output_dir={d}/out", "train.warmup_ratio=0.1"],
         ("recipes/ppo.yaml: train.warmup_ratio is not used by stage ppo; remove it",)),
    Case("wrong_type", sft("train.per_device_train_batch_size=lots"),
         ("train.per_device_train_batch_size:", "integer", "'lots'")),
    Case("missing_required_key", recipe(), ("recipe.yaml: output_dir: required key is missing",),
         {"recipe.yaml": "stage: sft\nmodel: {{name_or_path: data/models/tiny-base}}\n"
                         "data: {{datasets: [{{path: data/world/sft.jsonl}}]}}\n"}),
    Case("missing_model_name", recipe(), ("model.name_or_path: required key is missing",),
         {"recipe.yaml": SFT.replace("{{name_or_path: data/models/tiny-base}}", "{{revision: main}}")}),
    Case("missing_stage_section", recipe(), ("recipe.yaml: missing section 'data' required by stage sft",),
         {"recipe.yaml": "stage: sft\noutput_dir: {d}/out\nmodel: {{name_or_path: data/models/tiny-base}}\n"}),
    Case("ppo_without_ppo_section", ["train", "recipes/ppo.yaml", "output_dir={d}/out", "ppo=null"],
         ("recipes/ppo.yaml: missing section 'ppo' required by stage ppo",)),
    Case("unknown_stage", sft("stage=finetune"), ("stage:", "'finetune'")),
    Case("invalid_yaml", recipe(), ("recipe.yaml:3: not valid YAML (mapping values are not allowed here)",),
         {"recipe.yaml": "stage: sft\noutput_dir: {d}/out\nmodel: name_or_path: data/models/tiny-base\n"}),
    Case("yaml_python_tag", recipe(), ("recipe.yaml:1: not valid YAML", "python/object/apply:os.system"),
         {"recipe.yaml": "stage: !!python/object/apply:os.system ['touch {d}/pwned']\noutput_dir: {d}/out\n"}),
    Case("recipe_not_a_mapping", recipe(), ("recipe.yaml: a recipe is a YAML mapping of sections",),
         {"recipe.yaml": "- stage: sft\n"}),
    Case("recipe_file_missing", ["train", "{d}/nope.yaml"], ("nope.yaml: recipe file not found",)),
    Case("override_without_equals", sft("train.learning_rate"),
         ("train.learning_rate: overrides look like key.subkey=value",)),
    Case("override_empty_key_part", sft("train..learning_rate=1"), ("train..learning_rate=1: bad override key",)),
    Case("override_list_index_out_of_range", sft("data.datasets.3.path=x.jsonl"),
         ("data.datasets.3: no such list item",)),
    Case("override_list_index_not_a_number", sft("data.datasets.first.path=x.jsonl"),
         ("data.datasets.first: no such list item",)),
    Case("override_into_a_value", sft("train.learning_rate.max=1"),
         ("train.learning_rate: is a value, not a section",)),
    Case("missing_data_file", sft_data("nope.jsonl"), ("data.datasets.0.path: file not found:", "nope.jsonl")),
    Case("missing_model_path", sft("model.name_or_path={d}/no-such-model"),
         ("model.name_or_path: file not found:", "no-such-model")),
    Case("unknown_format", sft("data.datasets.0.format=chatml"), ("data.datasets.0.format:", "'chatml'")),
    Case("negative_learning_rate", sft("train.learning_rate=-1e-4"),
         ("train.learning_rate: Input should be greater than 0",)),
    Case("lora_dropout_one", sft("peft.lora_dropout=1.0"), ("peft.lora_dropout: Input should be less than 1",)),
    Case("lora_rank_zero", sft("peft.r=0"), ("peft.r: Input should be greater than 0",)),
    Case("max_length_zero", sft("model.max_length=0"), ("model.max_length: Input should be greater than 0",)),
    Case("no_datasets", sft("data.datasets=[]"), ("data.datasets: List should have at least 1 item",)),
    Case("4bit_and_8bit", sft("quantization.load_in_4bit=true", "quantization.load_in_8bit=true"),
         ("load_in_4bit and load_in_8bit are exclusive",)),
    Case("eval_one_model", recipe(), ("eval.models: List should have at least 2 items",),
         {"recipe.yaml": EVAL.replace("{more}", "")}),
    Case("eval_unknown_judge", recipe("recipe.yaml", "eval.judge.type=gpt4"), ("eval.judge.type:", "'gpt4'"),
         {"recipe.yaml": EVAL.replace("{more}", "    - {{name: sft, path: data/models/tiny-sft}}")}),
    Case("eval_duplicate_model_name", recipe(), ("eval: model name 'base' is used twice",),
         {"recipe.yaml": EVAL.replace("{more}", "    - {{name: base, path: data/models/tiny-sft}}")}),
    Case("eval_unknown_reference", recipe("recipe.yaml", "eval.reference=gpt"), ("eval: unknown model 'gpt'",),
         {"recipe.yaml": EVAL.replace("{more}", "    - {{name: sft, path: data/models/tiny-sft}}")}),
    Case("eval_http_judge_without_url", recipe("recipe.yaml", "eval.judge.type=http"),
         ("eval.judge: judge type http needs judge.base_url and judge.model",),
         {"recipe.yaml": EVAL.replace("{more}", "    - {{name: sft, path: data/models/tiny-sft}}")}),
    Case("duplicate_section", recipe(), ("recipe.yaml:6: not valid YAML (duplicate key 'train' (first given on line 5))",),
         {"recipe.yaml": DUPLICATE_TRAIN}),
    Case("duplicate_nested_key", recipe(), ("recipe.yaml:7: not valid YAML (duplicate key 'max_steps' (first given on line 6))",),
         {"recipe.yaml": SFT + "train:\n  max_steps: 2\n  max_steps: 20\n"}),
    Case("override_not_yaml", sft("train.learning_rate=[1,"),
         ("override train.learning_rate=[1,: the value is not valid YAML",)),
]

PREFLIGHT = [
    Case("reward_model_config_not_json", ["train", "recipes/ppo.yaml", "output_dir={d}/out", "ppo.reward_model={d}/rm"],
         ("ppo.reward_model: {d}/rm/config.json: not valid JSON",), {"rm/config.json": "{bad\n"}),
    Case("model_config_not_an_object", sft("model.name_or_path={d}/m"),
         ("model.name_or_path: {d}/m/config.json: not a JSON object",), {"m/config.json": "[1, 2]\n"}),
    Case("ppo_reward_model_is_a_language_model", ["train", "recipes/ppo.yaml", "output_dir={d}/out",
                                                  "ppo.reward_model=data/models/tiny-sft"],
         ("ppo.reward_model: data/models/tiny-sft is a LlamaForCausalLM, not a reward model",)),
    Case("grpo_reward_adapter_is_a_causal_lm_adapter", ["train", "recipes/grpo.yaml", "output_dir={d}/out",
                                                        "grpo.reward_model={d}/adapter"],
         ("grpo.reward_model: {d}/adapter is a CAUSAL_LM adapter, not a reward model's (SEQ_CLS)",),
         {"adapter/adapter_config.json": json.dumps({"base_model_name_or_path": "data/models/tiny-base",
                                                     "peft_type": "LORA", "task_type": "CAUSAL_LM"})}),
    Case("eval_reward_model_is_a_language_model", ["train", "recipes/eval_validation.yaml", "output_dir={d}/out",
                                                   "eval.reward_model=data/models/tiny-ppo"],
         ("eval.reward_model: data/models/tiny-ppo is a LlamaForCausalLM, not a reward model",)),
    Case("merge_out_is_the_run_holding_the_adapter", merge("out/model", "out"),
         ("merge output {d}/out: contains the adapter folder",), {"out/model/adapter_config.json": adapter_config()}),
    Case("merge_out_holds_other_runs", merge("adapter", "out"),
         ("merge output {d}/out: is not empty and is not an earlier merge output",),
         {"adapter/adapter_config.json": adapter_config(), "out/sft/run.json": "{}\n"}),
    Case("merge_out_is_the_adapter", merge("out", "out"), ("merge output {d}/out: is the adapter folder",),
         {"out/adapter_config.json": adapter_config()}),
    Case("merge_out_inside_the_base", merge("adapter", "out/merged"),
         ("merge output {d}/out/merged: is inside the adapter's base model",),
         {"adapter/adapter_config.json": adapter_config("{d}/out"), "out/config.json": "{}\n"}),
    Case("output_dir_is_the_model", sft("model.name_or_path={d}/out"),
         ("output_dir: {d}/out: is the input of model.name_or_path",)),
    Case("output_dir_holds_the_model", sft("output_dir={d}", "model.name_or_path={d}/out"),
         ("output_dir: {d}: contains the input of model.name_or_path",)),
    Case("output_dir_inside_the_model", sft("output_dir={d}/out/run", "model.name_or_path={d}/out"),
         ("output_dir: {d}/out/run: is inside the input of model.name_or_path",)),
    Case("output_dir_holds_the_data", sft("output_dir={d}", "data.datasets.0.path={d}/out/chat.jsonl"),
         ("output_dir: {d}: contains the input of data.datasets.0.path",), {"out/chat.jsonl": jsonl(MSG)}),
    Case("output_dir_holds_the_reward_model", ["train", "recipes/ppo.yaml", "output_dir={d}",
                                               "ppo.reward_model={d}/out"],
         ("output_dir: {d}: contains the input of ppo.reward_model",)),
    Case("eval_output_inside_a_contestant", recipe("recipe.yaml", "output_dir={d}/out/eval"),
         ("output_dir: {d}/out/eval: is inside the input of eval.models.1.path",),
         {"recipe.yaml": EVAL.replace("{more}", "    - {{name: mine, path: {d}/out}}")}),
    Case("unknown_lr_scheduler", sft("train.lr_scheduler_type=cosine_decay"),
         ("train.lr_scheduler_type: unknown value 'cosine_decay' (transformers knows: linear, cosine",)),
    Case("unknown_optimizer", sft("train.optim=adamw"), ("train.optim: unknown value 'adamw'",)),
    Case("unknown_report_to", sft("train.report_to=[tensorbord]"),
         ("train.report_to: unknown logging backend 'tensorbord'",)),
    Case("report_to_not_installed", sft("train.report_to=[tensorboard, wandb]"),
         ("train.report_to: logging backend 'wandb' is not installed",)),
    Case("unknown_attn_implementation", sft("model.attn_implementation=flash"),
         ("model.attn_implementation: unknown attention implementation 'flash' (one of eager, ",)),
    Case("flash_attention_unavailable", sft("model.attn_implementation=flash_attention_2"),
         ("model.attn_implementation: flash_attention_2 needs a CUDA GPU and its flash-attn package",)),
    Case("ppo_rollout_not_a_multiple_of_mini_batch", ["train", "recipes/ppo.yaml", "output_dir={d}/out",
                                                      "ppo.rollout_batch_size=10", "ppo.mini_batch_size=4"],
         ("ppo.rollout_batch_size: rollout_batch_size 10 is not a multiple of mini_batch_size 4",)),
    Case("pipeline_unknown_step", recipe(),
         ("pipeline.steps.1 (recipes/dpo.yaml).model.name_or_path: ${steps.sfft.output} names no earlier step "
          "(earlier: sft)",),
         {"recipe.yaml": PIPELINE.replace("{override}", "'model.name_or_path=${{steps.sfft.output}}'")}),
    Case("pipeline_later_step_preflighted_first", recipe(), ("train.optim: unknown value 'adam'",),
         {"recipe.yaml": PIPELINE.replace("{override}", "train.optim=adam")}),
    Case("data_not_utf8", sft_data("latin1.jsonl"),
         ("data.datasets.0.path: {d}/latin1.jsonl:2: not UTF-8 text (byte 0xe9 at offset",),
         {"latin1.jsonl": (jsonl(MSG) + json.dumps({"messages": [{"role": "user", "content": "Café?"},
                                                               {"role": "assistant", "content": "Oui."}]},
                                                 ensure_ascii=False) + "\n").encode("latin-1")}),
    Case("eval_split_leaves_no_training_rows", sft_data("one.jsonl", "data.eval_split_size=0.1"),
         ("data.eval_split_size: holding out 0.1 of 1 row(s) leaves no training rows",), {"one.jsonl": jsonl(MSG)}),
    Case("dpo_eval_split_of_one_ranking", ["train", "recipes/dpo.yaml", "output_dir={d}/out", "data.eval_datasets=[]",
                                           "data.datasets.0.path={d}/one.jsonl", "data.eval_split_size=0.5"],
         ("data.eval_split_size: holding out 0.5 of 1 row(s) leaves no training rows",),
         {"one.jsonl": jsonl(prompt_ranking(["Ilsa.", "Oder."], [0, 1]))}),
    Case("truncated_safetensors", sft("model.name_or_path={d}/model"),
         ("model.name_or_path: {d}/model/model.safetensors: truncated: the header needs",),
         {"model/config.json": "{}\n", "model/model.safetensors": safetensors_bytes(8)}),
    Case("push_on_finish_offline", sft("hub.repo_id=someone/tiny", "hub.push_on_finish=true"),
         ("hub.push_on_finish: cannot push in offline mode (HF_HUB_OFFLINE=1)",)),
]
if importlib.util.find_spec("flash_attn") is not None:  # a GPU machine with flash-attn: the case holds no error
    PREFLIGHT = [c for c in PREFLIGHT if c.id != "flash_attention_unavailable"]
for _case in PREFLIGHT:
    _case.untouched = True

HEAVY = [
    Case("sft_every_row_holds_a_special_token", sft_data("special.jsonl"),
         ("{d}/special.jsonl:1: every row holds a special token of the tokenizer as text (first: '<|endoftext|>')",),
         {"special.jsonl": jsonl({"messages": [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "Bye.<|endoftext|>"}]})}),
    Case("oracle_judge_on_prompts_without_meta",
         ["train", "recipes/eval_validation.yaml", "output_dir={d}/out", "eval.prompts={d}/prompts.jsonl"],
         ("{d}/prompts.jsonl:2: the oracle needs the embedded world's `meta` on every prompt row",),
         {"prompts.jsonl": jsonl({"prompt": "Hi", "meta": {"task": "fact"}}, {"prompt": "Name a river."})}),
    Case("breakdown_column_missing_from_a_prompt_row",
         ["train", "recipes/eval_validation.yaml", "output_dir={d}/out", "eval.prompts={d}/prompts.jsonl",
          "eval.judge.type=reward_model"],
         ("{d}/prompts.jsonl:2 (eval.breakdown_by): no column 'meta.task'",),
         {"prompts.jsonl": jsonl({"prompt": "Hi", "meta": {"task": "fact"}}, {"prompt": "Name a river."})}),
    Case("finished_run_in_output_dir", sft(), ("output_dir: {d}/out: already holds a finished run",)),
    Case("unfinished_run_in_output_dir", sft(),
         ("output_dir: {d}/out: holds checkpoints of an unfinished run (checkpoint-3)",),
         {"out/checkpoints/checkpoint-3/trainer_state.json": "{}\n"}),
    Case("resume_without_checkpoint", sft("train.resume_from_checkpoint=true"),
         ("train.resume_from_checkpoint: no checkpoint-<step> folder under",)),
    Case("resume_from_missing_folder", sft("train.resume_from_checkpoint={d}/ckpt"),
         ("train.resume_from_checkpoint: {d}/ckpt: checkpoint folder not found",)),
    Case("model_folder_not_a_model", sft("model.name_or_path={d}/empty_model"),
         ("model.name_or_path: '{d}/empty_model' is not a loadable model/tokenizer folder",),
         {"empty_model/notes.txt": "not a model\n"}),
    Case("hub_model_offline", sft("model.name_or_path=nosuch-org/nosuch-model"),
         ("model.name_or_path: 'nosuch-org/nosuch-model' is not a local folder and could not be fetched",)),
    Case("hub_dataset_offline", sft("data.datasets.0.path=nosuch-org/nosuch-data"),
         ("data.datasets.0: nosuch-org/nosuch-data:",)),
    Case("empty_dataset_file", sft_data("empty.jsonl"), ("data.datasets.0: {d}/empty.jsonl: dataset is empty",),
         {"empty.jsonl": ""}),
    Case("data_folder_without_data", sft("data.datasets.0.path={d}/nodata"),
         ("data.datasets.0: {d}/nodata: folder holds no json/jsonl/parquet/csv/txt files",),
         {"nodata/notes.md": "nothing\n"}),
    Case("malformed_json_line", sft_data("bad.jsonl"), ("{d}/bad.jsonl:2: not valid JSON",),
         {"bad.jsonl": jsonl(MSG) + '{"messages": [oops\n' + jsonl(MSG)}),
    Case("row_fits_no_format", sft_data("qa.jsonl", "data.datasets.0.format=auto"),
         ("{d}/qa.jsonl:1: row fits no SFT format (columns ['answer', 'question'])",),
         {"qa.jsonl": jsonl({"question": "Where is Bresbis?", "answer": "Eastvale."})}),
    Case("missing_column_for_format", sft_data("alpaca.jsonl"), ("{d}/alpaca.jsonl:1: format messages needs column 'messages'",),
         {"alpaca.jsonl": jsonl({"instruction": "Where is Bresbis?", "output": "Eastvale."})}),
    Case("row_not_an_object", sft_data("rows.jsonl"), ("{d}/rows.jsonl:2: a row must be a JSON object",),
         {"rows.jsonl": jsonl(MSG, [1, 2])}),
    Case("row_with_a_key_twice", sft_data("dup.jsonl"), ("{d}/dup.jsonl:2: a key appears twice in this row",),
         {"dup.jsonl": jsonl(MSG) + '{"messages": [{"role": "user", "content": "q", "content": "q2"}, '
                                    '{"role": "assistant", "content": "a"}]}\n'}),
    Case("empty_assistant_message", sft_data("empty_turn.jsonl"), ("{d}/empty_turn.jsonl:2: message 1 (assistant) is empty",),
         {"empty_turn.jsonl": jsonl(MSG, {"messages": [{"role": "user", "content": "Hi"},
                                                      {"role": "assistant", "content": "  "}]})}),
    # A run rejected inside the stage leaves the folder's recipe.yaml describing the run the folder holds.
    Case("rejected_resume_keeps_the_recipe", sft_data("empty_turn.jsonl", "train.resume_from_checkpoint=true"),
         ("data.datasets: differs from the run being resumed (None there",),
         {"empty_turn.jsonl": jsonl(MSG, {"messages": [{"role": "user", "content": "Hi"},
                                                      {"role": "assistant", "content": "  "}]}),
          "out/checkpoints/checkpoint-3/trainer_state.json": "{}\n", "out/recipe.yaml": "stage: sft\nseed: 7\n"}),
    Case("rejected_overwrite_keeps_the_finished_run", sft_data("empty_turn.jsonl", "train.overwrite_output_dir=true"),
         ("{d}/empty_turn.jsonl:2: message 1 (assistant) is empty",),
         {"empty_turn.jsonl": jsonl(MSG, {"messages": [{"role": "user", "content": "Hi"},
                                                      {"role": "assistant", "content": "  "}]}),
          "out/run.json": "{\"status\": \"complete\"}\n", "out/model/model.safetensors": b"weights",
          "out/recipe.yaml": "stage: sft\nseed: 7\n"}),
    Case("sft_text_null", sft_data("null_text.jsonl", "data.datasets.0.format=auto"),
         ("{d}/null_text.jsonl:1: 'text' must be text, got null",), {"null_text.jsonl": jsonl({"text": None})}),
    Case("sft_completion_a_number", sft_data("num.jsonl", "data.datasets.0.format=auto"),
         ("{d}/num.jsonl:2: 'completion' must be text, got a number",),
         {"num.jsonl": jsonl({"prompt": "Hi", "completion": "Hello."}, {"prompt": "Sum?", "completion": 7})}),
    Case("ppo_prompt_null", ["train", "recipes/ppo.yaml", "output_dir={d}/out", "data.datasets.0.path={d}/p.jsonl"],
         ("{d}/p.jsonl:2: 'prompt' must be text or a list of messages, got null",),
         {"p.jsonl": jsonl({"prompt": "Where is Bresbis?"}, {"prompt": None})}),
    Case("ppo_prompt_empty", ["train", "recipes/ppo.yaml", "output_dir={d}/out", "data.datasets.0.path={d}/p.jsonl"],
         ("{d}/p.jsonl:1: empty prompt",), {"p.jsonl": jsonl({"prompt": "  "})}),
    Case("chat_template_refuses_the_turn_order", sft_data("uu.jsonl", "model.chat_template=mistral"),
         ("{d}/uu.jsonl:2: the chat template cannot render this conversation (Conversation roles must alternate",),
         {"uu.jsonl": jsonl(MSG, {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hm"},
                                               {"role": "assistant", "content": "Hello."}]})}),
    Case("last_message_not_assistant", sft_data("user_last.jsonl"),
         ("{d}/user_last.jsonl:1: the last message must be the assistant's",),
         {"user_last.jsonl": jsonl({"messages": [*MSG["messages"], {"role": "user", "content": "Thanks"}]})}),
    Case("unknown_role", sft_data("roles.jsonl"), ("{d}/roles.jsonl:1: message 0 needs a role in",),
         {"roles.jsonl": jsonl({"messages": [{"role": "human", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello."}]})}),
    Case("column_mapping_to_missing_column", sft_data("convo.jsonl", "data.datasets.0.columns={messages: dialog}"),
         ("data.datasets.0.columns.messages: column 'dialog' not in dataset (has ['conversation'])",),
         {"convo.jsonl": jsonl({"conversation": MSG["messages"]})}),
    Case("preference_data_for_sft", sft("data.datasets.0.path=data/world/preferences_heldout.jsonl",
                                         "data.datasets.0.format=auto"),
         ("data/world/preferences_heldout.jsonl:1: row fits no SFT format",)),
    Case("chosen_equals_rejected", ["train", "recipes/reward.yaml", "output_dir={d}/out",
                                    "data.datasets.0.path={d}/same.jsonl", "data.datasets.0.format=preference"],
         ("{d}/same.jsonl:1: chosen and rejected are identical",),
         {"same.jsonl": jsonl({"prompt": "Name a river.", "chosen": "The Ilsa.", "rejected": "The Ilsa."})}),
    Case("chosen_and_rejected_differ_in_spaces", ["train", "recipes/reward.yaml", "output_dir={d}/out",
                                                  "data.datasets.0.path={d}/ws.jsonl", "data.datasets.0.format=preference"],
         ("{d}/ws.jsonl:1: chosen and rejected differ only in whitespace",),
         {"ws.jsonl": jsonl({"prompt": "Where is Bresbis?", "chosen": "Bresbis is in Eastvale.",
                             "rejected": "Bresbis is  in Eastvale.\n"})}),
    Case("ranking_of_booleans", ["train", "recipes/reward.yaml", "output_dir={d}/out",
                                 "data.datasets.0.path={d}/perm.jsonl"],
         ("{d}/perm.jsonl:1: ranking [True, False] is not a permutation of 0..1",),
         {"perm.jsonl": jsonl(prompt_ranking(["Ilsa.", "Oder."], [True, False]))}),
    Case("ranking_not_a_permutation", ["train", "recipes/reward.yaml", "output_dir={d}/out",
                                       "data.datasets.0.path={d}/perm.jsonl"],
         ("{d}/perm.jsonl:2: ranking [0, 0, 1] is not a permutation of 0..2",),
         {"perm.jsonl": jsonl(prompt_ranking(["Ilsa.", "Oder.", "Po."], [2, 0, 1]),
                              prompt_ranking(["Ilsa.", "Oder.", "Po."], [0, 0, 1]))}),
    Case("empty_response_in_ranking", ["train", "recipes/dpo.yaml", "output_dir={d}/out",
                                       "data.datasets.0.path={d}/blank.jsonl"],
         ("{d}/blank.jsonl:1: empty response",),
         {"blank.jsonl": jsonl(prompt_ranking(["Ilsa.", "", "Po."], [0, 1, 2]))}),
    Case("text_format_for_dpo", ["train", "recipes/dpo.yaml", "output_dir={d}/out", "data.datasets.0.format=text"],
         ("data.datasets.0.format: format 'text' is not a preference format",)),
    Case("dpo_every_pair_longer_than_max_length", ["train", "recipes/dpo.yaml", "output_dir={d}/out",
                                                   "data.datasets.0.path={d}/long.jsonl", "data.eval_datasets=[]",
                                                   "model.max_length=12"],
         ("model.max_length: no pair of data.datasets fits in 12 tokens (prompt + response + EOS)",),
         {"long.jsonl": jsonl(prompt_ranking(["The Ilsa.", "The Oder."], [0, 1]))}),
    Case("sft_every_row_longer_than_max_length", sft_data("long.jsonl", "model.max_length=7", "data.eval_split_size=0"),
         ("model.max_length: no row of data.datasets has a trained token within 7 tokens",),
         {"long.jsonl": jsonl(MSG, MSG)}),
    Case("ppo_prompt_too_long", ["train", "recipes/ppo.yaml", "output_dir={d}/out", "model.max_length=40",
                                 "ppo.max_new_tokens=32"],
         ("data/world/rl_prompts.jsonl:1: prompt is", "model.max_length - ppo.max_new_tokens is 8")),
    Case("ppo_prompts_without_prompt_column", ["train", "recipes/ppo.yaml", "output_dir={d}/out",
                                               "data.datasets.0.path=data/world/sft.jsonl"],
         ("data.datasets.0: data/world/sft.jsonl: needs a 'prompt' column (has ['messages'",)),
    Case("4bit_without_peft", sft("quantization.load_in_4bit=true", "peft=null"),
         ("quantization: a quantized base cannot be trained directly; add a peft section",)),
    Case("unknown_trainer_kwarg", sft("train.trainer_kwargs.learning_rat=1"),
         ("train.trainer_kwargs: unknown trainer argument 'learning_rat'",)),
    Case("streaming_without_max_steps", ["train", "recipes/pretrain_tiny.yaml", "output_dir={d}/out",
                                         "data.datasets.0.streaming=true"],
         ("train.max_steps: streaming datasets need train.max_steps",)),
    Case("streaming_for_sft", sft("data.datasets.0.streaming=true", "train.max_steps=2"),
         ("data.datasets.0.streaming: streaming is supported for pretraining only",)),
    Case("holdout_larger_than_corpus", ["train", "recipes/pretrain_tiny.yaml", "output_dir={d}/out",
                                        "data.datasets.0.max_samples=10"],
         ("pretrain.eval_holdout_documents: holds 10 documents, fewer than the held-out 300",)),
]
HEAVY += PREFLIGHT  # the preflight imports transformers (torch): one process for all of them
for _case in HEAVY:
    _case.heavy = True
CASES = {c.id: c for c in LIGHT + HEAVY}


def _fill(text: str, d: Path) -> str:
    return text.replace("{d}", str(d))


def _prepare(case: Case, root: Path) -> tuple[list[str], Path]:
    """Write the case's files and an output folder holding an earlier run's file; return argv and folder."""
    d = root / case.id
    out = d / "out"
    out.mkdir(parents=True)
    (out / "notes.txt").write_bytes(SENTINEL)
    for name, text in case.files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (d / name).write_bytes(text)
        else:
            (d / name).write_text(text.format(d=d) if name.endswith(".yaml") else _fill(text, d))
    if case.id == "finished_run_in_output_dir":
        (out / "run.json").write_text('{"status": "complete"}\n')
        (out / "model").mkdir()
        (out / "model" / "model.safetensors").write_bytes(b"\x00weights\x01" * 100)
        (out / "recipe.yaml").write_text("stage: sft\n")
    return [_fill(a, d) for a in case.argv], d


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and folder (None) under `folder`."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def _check(case: Case, rc: object, stderr: str, d: Path, before: dict[str, bytes]) -> None:
    assert "Traceback" not in stderr, stderr
    assert rc == 2, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("alignkit: error: "), last
    for text in case.expect:
        assert _fill(text, d) in last, last
    out = d / "out"
    after = _snapshot(out)
    assert {k: after.get(k) for k in before} == before, "an existing output file changed"
    assert "run.json" in before or "run.json" not in after
    assert not (d / "pwned").exists()


def _run(case: Case, root: Path, run_cli) -> None:
    """Run one case in this process and check its message, exit status and the files it must not touch."""
    argv, d = _prepare(case, root)
    before, tree = _snapshot(d / "out"), _tree(d)
    done: CliResult = run_cli(argv)
    _check(case, done.code, done.err, d, before)
    if not case.heavy:
        assert _snapshot(d / "out") == before, "recipe validation must not touch output_dir"
    if case.untouched:
        assert _tree(d) == tree, "the preflight must not create, change or remove anything"
    if case.id == "finished_run_in_output_dir":
        assert _snapshot(d / "out") == before, "a finished run must keep its bytes"


@pytest.mark.parametrize("case", LIGHT, ids=lambda c: c.id)
def test_recipe_error_is_one_line(case: Case, tmp_path: Path, run_cli) -> None:
    _run(case, tmp_path, run_cli)


@pytest.mark.parametrize("case", HEAVY, ids=lambda c: c.id)
def test_stage_input_error_is_one_line(case: Case, tmp_path: Path, run_cli) -> None:
    _run(case, tmp_path, run_cli)


# A few cases again as their own processes, through both ways of starting alignkit: recipe validation, a
# stage's data check (datasets logs on stderr too), and a Hub id with HF_HUB_OFFLINE read from the real
# environment (in this process run_cli sets huggingface_hub's copy). Each costs a fresh ~12 s import.
SCRIPT = str(Path(sys.executable).with_name("alignkit"))
PROCESS_CASES = {"unknown_key": [sys.executable, "-m", "alignkit.cli"], "malformed_json_line": [SCRIPT],
                 "hub_model_offline": [sys.executable, "-m", "alignkit.cli"]}


class Processes:
    """Selected PROCESS_CASES run one at a time in a thread (one core; the other runs the in-process cases)."""

    def __init__(self, root: Path, case_ids: list[str]):
        self.root = root
        self.prepared = {}
        for case_id in case_ids:
            argv, d = _prepare(CASES[case_id], root)
            self.prepared[case_id] = (argv, d, _snapshot(d / "out"), _tree(d))
        self.results: dict[str, tuple[int, str, str] | str] = {}
        self.stopped = False
        self.current: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run_all, daemon=True)
        self.thread.start()

    def _run_all(self) -> None:
        env = {**os.environ, **CLI_ENV, "HF_DATASETS_CACHE": str(self.root / "hf_datasets_cache")}
        for case_id, (argv, *_) in self.prepared.items():
            try:
                with self.lock:
                    if self.stopped:
                        return
                    self.current = subprocess.Popen([*PROCESS_CASES[case_id], *argv], cwd=REPO, env=env, text=True,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                out, err = self.current.communicate(timeout=180)
                self.results[case_id] = (self.current.returncode, out, err)
            except Exception as exc:  # reported by the case's test, not lost in the thread
                self.results[case_id] = repr(exc)
                if self.current is not None:
                    self.current.kill()
                    self.current.communicate()

    def result(self, case_id: str) -> tuple[int, str, str]:
        self.thread.join(timeout=180 * len(self.prepared))
        done = self.results.get(case_id)
        if not isinstance(done, tuple):
            raise AssertionError(f"{case_id}: the process did not finish: {done}")
        return done

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            if self.current is not None and self.current.poll() is None:
                self.current.kill()
        self.thread.join(timeout=30)


@pytest.fixture(scope="module", autouse=True)
def processes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Start the selected process cases with the module, so they overlap its in-process cases."""
    params = [getattr(getattr(item, "callspec", None), "params", {}) for item in request.session.items
              if getattr(item, "module", None) is request.module]
    selected = [p["case_id"] for p in params if "case_id" in p]
    runner = Processes(tmp_path_factory.mktemp("processes"), selected)
    yield runner
    runner.stop()


@pytest.mark.parametrize("case_id", PROCESS_CASES)
def test_process_exits_2_with_one_line(case_id: str, processes: Processes) -> None:
    returncode, stdout, stderr = processes.result(case_id)
    case = CASES[case_id]
    _, d, before, tree = processes.prepared[case_id]
    _check(case, returncode, stderr, d, before)
    assert stdout == ""
    if case.untouched:
        assert _tree(d) == tree, "the preflight must not create, change or remove anything"


def test_cases_are_many_and_named_uniquely() -> None:
    assert len(CASES) == len(LIGHT) + len(HEAVY) >= 30 + 27
    assert set(PROCESS_CASES) <= set(CASES)
