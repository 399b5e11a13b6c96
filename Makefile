# `make demo` sets everything up and runs the dashboard on the example; `make test` sets up, lints and runs the tests.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint screenshots bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

demo: setup
	$(BIN)/optwatch examples/cifar.py

test: setup lint
	$(BIN)/python -m pytest -n 3 --dist loadgroup  # three workers on two cores: with two, a third of the CPU sat idle while tests waited on their training processes (sleeps, pauses, the hub's answers); tests that share a module fixture run on one

lint: setup
	$(BIN)/ruff check src tests examples benchmarks scripts
	$(BIN)/ruff format --check src tests examples benchmarks scripts
	$(BIN)/lint-imports

screenshots: setup
	$(BIN)/python scripts/screenshots.py

bench: setup
	$(BIN)/python benchmarks/wall_clock.py --workload llm --rounds 10
	$(BIN)/python benchmarks/wall_clock.py --workload llm --rounds 6 --iters 300 --loop-args "--batch 32"
	$(BIN)/python benchmarks/wall_clock.py --workload cifar --rounds 3 --iters 200
	$(BIN)/python benchmarks/toggle_ab.py
	$(BIN)/python benchmarks/toggle_ab.py --budget 0
	$(BIN)/python benchmarks/dashboard_load.py
	$(BIN)/python benchmarks/profiler_idle.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
