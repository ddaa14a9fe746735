# The two commands: `make run` and `make test`. Both install what they need (uv, the locked
# environment, validators) on a fresh machine; nothing has to be installed by hand.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# PYTHON=3.12 (or 3.13, or a path) runs everything on that interpreter, in a venv of its own;
# without it, .python-version's 3.11.
PYTHON ?=
VENV := .venv$(if $(PYTHON),-$(notdir $(PYTHON)),)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help install lint test test-fast run broker bench chaos soak soak-long scale scale-real audit \
	dashboard-picture

help:
	@echo "make run        run the worker against the local RabbitMQ (starts the DialNexa simulator if no API is configured)"
	@echo "make test       install everything, lint, type-check, validate deploy files, run every test"
	@echo "make test-fast  the unit tests only (no broker)"
	@echo "make bench      the benchmarks against the local RabbitMQ and the simulator; writes docs/benchmarks.md"
	@echo "make chaos      the long chaos drill (50,000 events, API faults, broker cuts, SIGKILLs, two workers)"
	@echo "make soak       2 minutes of steady load, RSS/fds/tasks per 100k messages (soak-long: 30 minutes)"
	@echo "make scale      a 20,000-workflow backlog at 150 calls per 0.6 s (production, 100 times faster): holds, calls per workflow, complaint latency"
	@echo "make scale-real the same at 150 calls per 60 s for 12 minutes (real time)"
	@echo "make audit      known vulnerabilities in the locked dependencies (asks the package index; not part of make test)"
	@echo "make dashboard-picture  docs/dashboard.png from a real run (worker, ingress, simulator, Prometheus; ~4 min)"

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --all-groups $(if $(PYTHON),--python $(PYTHON),)
	touch $@

install: $(VENV)/.synced

lint: install
	$(VENV)/bin/ruff check service tests testkit scripts deploy/tools bench drills
	$(VENV)/bin/ruff format --check service tests testkit scripts deploy/tools bench drills
	$(VENV)/bin/mypy --strict service
	bash scripts/check-noqa.sh

broker:
	bash scripts/ensure-rabbitmq.sh

test: install lint broker
	$(VENV)/bin/pytest

test-fast: install
	$(VENV)/bin/pytest tests/test_events.py tests/test_dialnexa.py tests/test_handler.py tests/test_settings.py \
		tests/test_log_redaction.py tests/test_retry.py tests/test_start_up.py

run: install broker
	bash scripts/run-local.sh

bench: install broker
	$(VENV)/bin/python -m bench

# Issue "Prove it": the long forms (the short forms run inside `make test`).
chaos: install broker
	$(VENV)/bin/python -m drills.chaos --long

soak: install broker
	$(VENV)/bin/python -m drills.soak

soak-long: install broker
	$(VENV)/bin/python -m drills.soak --long

# Issue "Real scale": the hold limit against a rate-limited backlog (docs/reliability.md).
scale: install broker
	$(VENV)/bin/python -m drills.real_scale --limit 150 --window-s 0.6 --max-hold-s 3 \
		--connect-timeout-s 0.2 --read-timeout-s 0.4 --publish-timeout-s 0.3 --complaint-every-s 0.5

scale-real: install broker
	$(VENV)/bin/python -m drills.real_scale --duration-s 720

# Depends on what the package index serves today, so it is not part of `make test`'s verdict.
audit: install
	bash scripts/audit.sh

# The README's dashboard picture: a real run scraped by a local Prometheus, every panel's queries
# stored in docs/dashboard-data.json, the picture drawn from them (tests/test_dashboard_picture.py).
dashboard-picture: install broker
	bash scripts/dashboard-picture.sh
