# Each target makes and uses its own virtual environment in .venv.
PY ?= python3
VENV := .venv
# CPU-only machines: `make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu` installs torch's CPU wheels
# first (about 200 MB) instead of PyPI's default build, which pulls the CUDA stack (several GB).
TORCH_INDEX ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(BIN)/pip install -q torch torchvision --index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)  ## prepare -> train -> submit on the built-in demo dataset (a few minutes on a laptop CPU)
	$(BIN)/harness prepare
	$(BIN)/harness train
	$(BIN)/harness submit --run-id last --out submissions/demo
	@echo "next: $(BIN)/harness tune --trials 50   then   $(BIN)/harness ui"

test: $(STAMP)  ## the whole suite, slow tests too (CI runs this); plain `pytest` is the fast subset. 2 workers: pyproject's addopts
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(STAMP)  ## speed ratios (see bench/)
	$(BIN)/python bench/prepare_speed.py
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/api_speed.py

clean:
	rm -rf $(VENV) .cache data
