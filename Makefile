# One entry point for people and CI. `make test` goes from a bare machine to green:
# the virtualenv at .venv, the pinned dependencies, the test-bed binaries, then the suites.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
EXTRAS := operator,trainer,dev

.PHONY: install testbed lint typecheck unit integration e2e test demo bench clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The uv cache (~/.cache/uv) lives outside the clone, so a re-install on the same machine is fast.
$(VENV)/.installed: $(BIN)/uv pyproject.toml requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# Builds etcd, the control plane, kubectl and helm once per machine (cached in ~/.cache/lorasweep).
testbed: install
	$(BIN)/lorasweep dev build
	@# Prometheus (and promtool) from Debian's packages, for the dashboard tests; only when missing.
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || \
		{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }

lint: install
	$(BIN)/ruff check operator trainer tests
	$(BIN)/ruff format --check operator trainer tests

typecheck: install
	$(BIN)/mypy operator/lorasweep_operator trainer/lorasweep_trainer/config.py

unit: install
	$(BIN)/pytest tests/unit

test: install testbed lint typecheck
	$(BIN)/pytest tests

demo: install
	$(BIN)/lorasweep demo

bench: install
	$(BIN)/lorasweep-trainer bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
