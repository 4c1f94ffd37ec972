# FLAIR Lab — set-up and everyday commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Parallel test workers (pytest-xdist), each running whole test files so module fixtures (services) start once.
# Most integration tests wait on servers and subprocesses: two workers fill two cores (docs/benchmarks.md, CI).
TEST_WORKERS ?= 2

.PHONY: help install chromium podman test test-unit lint bench demo sweep tune study dashboard services services-down backup restore

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(VENV)/.installed chromium podman  ## create .venv with the library and the whole platform stack, Chromium and podman

# The dashboard's browser test drives Debian's Chromium (apt, ~25 s the first time; root or sudo needed).
chromium:
	@command -v chromium > /dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium > /dev/null \
	  || echo "could not install chromium: the dashboard's browser test will be skipped"; }

# The container test builds the platform image and runs the compose stack with Debian's podman (runc, a base
# image from debootstrap: infra/containers.sh). Root or sudo needed; without them the test is skipped.
podman:
	@command -v podman > /dev/null && grep -qs cgroupfs /etc/containers/containers.conf || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO bash infra/containers.sh setup \
	  || echo "could not set up podman: the container tests will be skipped"; }

# torch/torchvision are pinned in pyproject.toml to the builds this machine kind keeps on disk.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[platform,dev]'
	touch $@

# pytest exits 5 when it collects nothing (e.g. a -k filter matching no test); that is not a failure.
test: install  ## run every test: unit and integration (the README's test command; CI runs it)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

test-unit: install  ## fast tests only: no services, no multi-process runs
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not integration" $(PYTEST_ARGS); rc=$$?; [ $$rc -eq 5 ] && rc=0; exit $$rc

lint: install  ## ruff over the code
	$(VENV)/bin/ruff check flair_core flair_cli flair_lab flows dashboard services tests benchmarks infra

bench: install  ## print the CPU preset's training-step time and parameter count
	$(PY) benchmarks/train_step.py --model tiny-64

demo: install  ## the main job: services, the pretrain-eval deployment, FLAIR and the 3 baselines, the table
	bash infra/main_job.sh

sweep: services  ## the default Optuna sweep (params/sweep.yaml) through the sweep flow; see docs/sweeps.md
	eval "$$($(PY) -m services env)" && $(PY) -m flows.sweep run

TUNE_METHODS ?= flair clip filip dreamlip
tune: install  ## equal tuning budget: one Optuna study per method (params/tuning/), one after another, resumable
	for m in $(TUNE_METHODS); do \
	  $(PY) -m flows.sweep worker --config params/tuning/$$m.yaml --worker-index 0 && \
	  $(PY) -m flows.sweep report --config params/tuning/$$m.yaml || exit 1; \
	done

study: services  ## the equal-budget study (params/study.yaml, ~2 h, resumable) and its report in docs/study/
	eval "$$($(PY) -m services env)" && $(PY) -m flows.equal_budget_study run

# DB=postgres: MLflow's store and the sweeps' Optuna storage in a PostgreSQL server started here (remembered
# by later starts); DB=sqlite goes back to the one-machine default. AUTH=on: team mode (MLflow and Prefect ask
# for the credentials generated into .services/auth.json; `services env` hands them to clients); BIND=ADDRESS
# then opens MLflow and Prefect beyond loopback. Both are remembered too.
services: install  ## start Prefect, MLflow and the S3 store on 127.0.0.1 (state and logs in .services/); DB=postgres adds PostgreSQL, AUTH=on team mode
	$(PY) -m services start $(if $(DB),--db $(DB)) $(if $(AUTH),--auth $(AUTH)) $(if $(BIND),--bind $(BIND))

dashboard: install  ## start the dashboard on http://127.0.0.1:8501 against the local services
	eval "$$($(PY) -m services env)" && $(PY) -m dashboard.serve start

services-down:  ## stop the local services and the dashboard
	$(PY) -m dashboard.serve stop
	$(PY) -m services stop

# A backup holds the platform's keys and passwords too (a 0700 folder): keep it private (docs/orchestration.md).
backup: install  ## copy the running services' databases, objects and keys into a new folder (OUT=…, default backups/services-<UTC time>)
	$(PY) -m services backup $(or $(OUT),backups/services-$$(date -u +%Y%m%dT%H%M%SZ))

restore: install  ## recreate a backup (IN=folder) in a new or empty .services and start the services
	$(PY) -m services restore $(IN)
