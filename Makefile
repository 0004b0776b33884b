# The README's front door: `make run` starts the agent, `make demo` shows it working on a
# simulated line, `make test` passes the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# nginx for the `nginx -t` test of deploy/nginx, unpacked here when the system has none.
NGINX_DIR := $(VENV)/tools/nginx
# Extra options for the demo, e.g. make demo DEMO_ARGS="--mqtt-port 1883 --interval 1"
DEMO_ARGS ?=

.PHONY: venv mosquitto chromium nginx test lint bench soak reliability-report run demo clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch/torchvision are left for pip to pair (see README, "The two commands").
	# CPU-only torch and offline installs: deploy/README.md.
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The MQTT tests start their own broker from this binary.
mosquitto:
	@command -v mosquitto >/dev/null 2>&1 || { \
	  echo "installing mosquitto (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients; }

# The operators' console test drives this browser (Playwright, which downloads nothing).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# Only for the deploy test's `nginx -t`: the distribution's package is unpacked into
# .venv/tools (no root, no service started, nothing installed system-wide). Where that is
# impossible (no apt, no network) the test is skipped, never failed.
nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || test -x $(NGINX_DIR)/usr/sbin/nginx || { \
	  tmp=$$(mktemp -d) && \
	  (cd $$tmp && { apt-get download nginx >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get download nginx >/dev/null 2>&1; }; }) && \
	  mkdir -p $(NGINX_DIR) && dpkg -x $$tmp/nginx_*.deb $(NGINX_DIR) && echo "nginx unpacked into $(NGINX_DIR)" \
	  || echo "nginx unavailable: the nginx -t test will be skipped"; rm -rf $$tmp; }

test: venv mosquitto chromium nginx
	$(PY) -m pytest -q --durations=25

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: venv mosquitto chromium
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	$(PY) -m tests.bench.run_all

# The reliability suite (tests/reliability, also part of `make test`) and its table; the
# table goes to stdout, each run's outcomes and log to bench-out/reliability/.
reliability-report: venv mosquitto
	$(PY) -m tests.reliability.report

# The 30-minute load run of mixed traffic (BDI_SOAK_S=600 make soak for a shorter one).
soak: venv mosquitto
	$(PY) -m tests.reliability.report --soak

# The agent on this machine: checks the weights, starts a local mosquitto when no broker
# answers (and stops it again), then `python -m agent run`. Ctrl-C stops everything.
run: venv
	$(PY) -m agent.run_local

# The agent with random weights on a simulated line (camera, PLC), data in ./data-demo.
demo: venv
	$(PY) -m agent.demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
