# The README's two commands: `make demo` (the main job) and `make test`.
# Each sets up .venv when it is missing or older than pyproject.toml, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PRESET ?= default

.PHONY: setup demo test bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> setting up $(VENV) (one-off; later runs reuse it)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv==0.9.5
	$(BIN)/uv pip install --python $(BIN)/python -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/slmlab-prepare data=synthetic data.preset=$(PRESET) model=spiritlm_expressive
	$(BIN)/slmlab-train experiment=demo_text_lm data.preset=$(PRESET)
	$(BIN)/slmlab-train experiment=demo_spiritlm_base data.preset=$(PRESET)
	$(BIN)/slmlab-train experiment=demo_spiritlm_expressive data.preset=$(PRESET)
	$(BIN)/slmlab-train experiment=demo_csm data.preset=$(PRESET)
	$(BIN)/slmlab-train experiment=demo_speechlm data.preset=$(PRESET)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/slmlab-bench

clean-venv:
	rm -rf $(VENV)
