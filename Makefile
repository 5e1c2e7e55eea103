# returnledger: every target works from a fresh clone with only Python 3.11.
# The venv (.venv) is created on first use from requirements.txt.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
SCENARIO ?= scenarios/small-month.json
OUT ?= out
PYTEST_ARGS ?=
export GX_ANALYTICS_ENABLED := false
export AIRFLOW__CORE__LOAD_EXAMPLES := false

.PHONY: help venv test demo db db-stop migrate reference sandbox sandbox-stop airflow lint bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-runtime.txt pyproject.toml dev/pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "returnledger needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e . -e dev  # the runtime package and the dev tooling (not in the image)
	$(VENV)/bin/pip check
	@touch $@

venv: $(VENV)/.installed ## create .venv and install the pinned stack

test: venv ## run the whole test suite (fresh PostgreSQL database per run; embedded server if none configured)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: venv ## run SCENARIO (default small-month) through Airflow into OUT: a line per day, the summary; log in OUT/demo.log
	@$(VENV)/bin/returnledger demo --scenario $(SCENARIO) --out $(OUT)

db: venv ## start the embedded PostgreSQL under .local/ and print its DSN
	$(VENV)/bin/returnledger db start

db-stop: venv ## stop the embedded PostgreSQL
	$(VENV)/bin/returnledger db stop

migrate: venv ## apply schema migrations (idempotent) and load reference data
	$(VENV)/bin/returnledger migrate
	$(VENV)/bin/returnledger reference load

sandbox: venv ## start both simulators (ReBound :8701, SP-API :8702) for SCENARIO in the background
	$(VENV)/bin/returnledger sandbox start --scenario $(SCENARIO) --out $(OUT)

sandbox-stop: venv ## stop the simulators
	$(VENV)/bin/returnledger sandbox stop

airflow: migrate ## local airflow standalone with this project's DAGs, plugin, connections and pools (Ctrl-C stops)
	@mkdir -p .local/airflow
	@eval "$$($(VENV)/bin/returnledger airflow-settings)"; \
	export AIRFLOW_HOME=$(CURDIR)/.local/airflow AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	       AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins AIRFLOW__CORE__PARALLELISM=4 \
	       AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=2 AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=1 AIRFLOW__CORE__TEST_CONNECTION=Enabled PATH=$(CURDIR)/$(VENV)/bin:$$PATH; \
	airflow db migrate >/dev/null && \
	$(VENV)/bin/returnledger airflow-settings --pools | while IFS=$$'\t' read -r name slots desc; do \
	  airflow pools set "$$name" "$$slots" "$$desc" >/dev/null; done && \
	($(MAKE) --no-print-directory sandbox || true) && \
	$(PY) -m returnledger_dev.local_airflow; $(VENV)/bin/returnledger sandbox stop >/dev/null 2>&1 || true

lint: venv ## ruff format --check, ruff (Airflow AIR, UP, SIM, RUF rules) and mypy on the runtime package
	$(VENV)/bin/ruff format --check dags include plugins tests bench dev
	$(VENV)/bin/ruff check dags include plugins tests bench dev
	$(VENV)/bin/mypy

BENCH_LOG ?= .local/bench.log
# bench_years: returns a month over its 12 months (hours at 100k; YEARS_RETURNS=5000 for a quick run)
YEARS_RETURNS ?= 100000
bench: venv ## benchmarks: ratios against baselines measured in the same run, then one TARGET line per target
	@mkdir -p $(dir $(BENCH_LOG)) && : > $(BENCH_LOG)
	set -o pipefail; $(PY) bench/bench_sync.py | tee -a $(BENCH_LOG)
	set -o pipefail; $(PY) bench/bench_reconcile.py | tee -a $(BENCH_LOG)
	set -o pipefail; $(PY) bench/bench_push.py | tee -a $(BENCH_LOG)
	set -o pipefail; $(PY) bench/bench_daily.py --returns 100000 --workers 2 --plans 10,20 | tee -a $(BENCH_LOG)
	set -o pipefail; $(PY) bench/bench_console.py | tee -a $(BENCH_LOG)
	set -o pipefail; $(PY) bench/bench_years.py --returns $(YEARS_RETURNS) --months 12 | tee -a $(BENCH_LOG)
	@echo; echo "== summary (docs/performance.md)"; grep '^TARGET ' $(BENCH_LOG)

clean: ## remove outputs and the local state (embedded database included)
	-$(VENV)/bin/returnledger db stop
	rm -rf .local out test-output

.PHONY: cluster cluster-stop cluster-status cluster-demo bench-cluster
CLUSTER_OUT ?= out-cluster

cluster: venv ## Airflow on CeleryExecutor here: api-server :8080, scheduler, dag-processor, triggerer, 2 Celery workers (REDIS_URL), each on folders of its own; shared store on a local S3 (moto)
	$(VENV)/bin/returnledger cluster start

cluster-stop: venv ## stop `make cluster` (every process of it, task processes and the S3 server included)
	$(VENV)/bin/returnledger cluster stop

cluster-status: venv ## components, Airflow health and the Celery workers that answer
	$(VENV)/bin/returnledger cluster status

cluster-demo: venv ## SCENARIO through the real scheduler on a fresh local cluster (REST-created runs, Celery workers) into OUT
	$(VENV)/bin/returnledger cluster-demo --scenario $(SCENARIO) --out $(if $(filter out,$(OUT)),$(CLUSTER_OUT),$(OUT))

bench-cluster: venv ## SCENARIO backfilled on the cluster with 1 and 2 workers: wall time per daily run, scheduling vs work
	$(PY) bench/bench_cluster.py --scenario $(SCENARIO)
