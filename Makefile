# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PY := .venv/bin/python

.PHONY: setup demo test test-stores bench ui clean-cache

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m experiments.run adapter_stage1

test: setup
	$(PY) -m pytest -q

# PostgreSQL + an mlflow server as shared stores, two search workers on one study (opt-in: about 4 min on 2 cores).
test-stores: setup
	$(PY) -m pytest -q -m postgres tests/test_shared_stores.py

bench: setup
	$(PY) -m bench.trainer_step
	$(PY) -m bench.prepare_cache

ui: setup
	.venv/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

clean-cache:
	rm -rf .cache/s2s data/synth
