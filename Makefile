# Two commands: `make demo` (main job on the embedded synthetic data) and
# `make test`. Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
DEMO   := demo-out

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip wheel
	# torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache.
	$(BIN)/pip install -q -e '.[test]'
	# lava declares Requires-Python <3.11 and pins torch 2.3: install without
	# resolving its pins (its real deps are in pyproject.toml).
	$(BIN)/pip install -q --no-deps --ignore-requires-python lava-nc==0.10.0 lava-dl==0.6.0
	$(BIN)/python -c "import lava_allnet, netx, hw_targets, training; print('lava-allnet installed')"
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/lava-allnet demo --recipe recipes/demo.toml --out $(DEMO)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_torch.py
	$(BIN)/python benchmarks/bench_cuba.py
	$(BIN)/python benchmarks/bench_sim.py
	$(BIN)/python benchmarks/bench_ddp.py

clean:
	rm -rf $(DEMO) .pytest_cache
