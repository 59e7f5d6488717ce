# The commands people run. Each one installs what it needs into .venv first.
PY := .venv/bin/python
VENV_STAMP := .venv/.alignkit-installed
# tests/eval/test_report.py renders report.html in a headless browser; any of these will do.
BROWSERS := chromium chromium-browser google-chrome

.PHONY: install browser demo test test-all bench lint world base

$(VENV_STAMP): pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q --upgrade pip
	# torch first, pinned: the CPU build on this machine; a bare `torch` may pull a multi-GB CUDA build.
	.venv/bin/pip install -q torch==2.13.0
	.venv/bin/pip install -q -e '.[dev]'
	touch $(VENV_STAMP)

install: $(VENV_STAMP)

demo: install   ## the whole pipeline on the embedded world: SFT -> RM -> PPO -> DPO -> win-rate report
	$(PY) -m alignkit.cli train recipes/pipeline_tiny.yaml

test: install browser  ## the test suite (< 10 minutes on 2 CPU cores; slow-marked end-to-end runs deselected)
	$(PY) -m pytest

test-all: install browser  ## the test suite plus the slow end-to-end runs (DDP parity, kill-resume, RL gains, full matrix)
	$(PY) -m pytest -m ""

# Headless Chromium from Debian's apt, installed once (as root or with passwordless sudo); where that is
# not possible, one line says what to do. ALIGNKIT_SKIP_BROWSER=1 skips the browser check instead.
browser:
	@for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if [ "$$ALIGNKIT_SKIP_BROWSER" = 1 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true >/dev/null 2>&1; then sudo="sudo -n"; \
	else sudo=none; fi; \
	if [ "$$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make: headless chromium is needed by the tests and cannot be installed here (needs apt-get and root):" \
	    "install chromium, or run with ALIGNKIT_SKIP_BROWSER=1 to skip the report.html check" >&2; exit 1; fi; \
	log="$${TMPDIR:-/tmp}/alignkit-apt-chromium.log"; \
	echo "make: installing headless chromium with apt-get (once; log: $$log)"; \
	{ $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	    chromium; } >"$$log" 2>&1 && command -v chromium >/dev/null 2>&1 || \
	{ echo "make: apt-get could not install chromium (see $$log): install it, or run with" \
	    "ALIGNKIT_SKIP_BROWSER=1 to skip the report.html check" >&2; exit 1; }

bench: install  ## benchmarks against baselines measured in the same run -> bench/results, docs/benchmarks.md
	$(PY) bench/run_all.py

lint: install
	.venv/bin/ruff check src tests bench

world: install  ## regenerate the embedded world (deterministic)
	$(PY) -m alignkit.world --out data/world --eval-out eval/world_prompts.jsonl --seed 0 --noise 0.25

base: install   ## retrain the shipped tiny base model and tokenizer
	$(PY) -m alignkit.cli train recipes/pretrain_tiny.yaml
