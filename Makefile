# Each target makes and uses its own virtual environment in .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## prepare -> train -> submit on the built-in demo dataset (a few minutes on a laptop CPU)
	$(BIN)/harness prepare
	$(BIN)/harness train
	$(BIN)/harness submit --run-id last --out submissions/demo
	@echo "next: $(BIN)/harness tune --trials 50   then   $(BIN)/harness ui"

test: $(STAMP)  ## the test suite, on 2 workers (pytest-xdist; a test file stays on one worker, so its fixtures are shared)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)  ## speed ratios (see bench/)
	$(BIN)/python bench/prepare_speed.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/api_speed.py

clean:
	rm -rf $(VENV) .cache data
