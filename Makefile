# The README's front door: `make run` starts the agent, `make test` passes the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv mosquitto test lint bench run clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision are left for pip to pair (see README, "Installing").
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The MQTT tests start their own broker from this binary.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || { \
	  echo "installing mosquitto (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; }

test: venv mosquitto
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: venv
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m tests.bench.run_all

run: venv
	$(PY) -m agent run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
