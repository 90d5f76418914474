# Digit Lab: `make help` lists the targets.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
SHARED_DATA := ../shared/data
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.DEFAULT_GOAL := help
.PHONY: help setup data chromium test test-fast lint format train evaluate default-model benchmark clean
.PHONY: lab reports sweep dashboard

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

data: ## link data/mnist to ../shared/data/mnist when it exists (else MNIST downloads on first use)
	@if [ ! -e data/mnist ] && [ -d $(SHARED_DATA)/mnist ]; then \
		ln -s ../$(SHARED_DATA)/mnist data/mnist && echo "data/mnist -> $(SHARED_DATA)/mnist"; fi

setup: $(VENV)/.installed data ## create .venv with every package, link the data

chromium: ## install Debian's Chromium for the browser tests (Playwright drives /usr/bin/chromium)
	@[ -x /usr/bin/chromium ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }

caddy: ## install Debian's caddy for the replica test (tests/test_replicas.py runs /usr/bin/caddy) and make proxy
	@[ -x /usr/bin/caddy ] || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq caddy; }

test: setup chromium caddy ## set up, then run every test
	$(PY) -m pytest -q --durations=10

test-fast: setup ## the tests that train nothing and start no server (one that does fails: mark it slow)
	$(PY) -m pytest -q -m "not slow" --refuse-slow-work

lint: setup ## ruff checks
	$(PY) -m ruff check digitlib tests benchmarks

format: setup ## ruff formatting
	$(PY) -m ruff format digitlib tests benchmarks

train: setup ## train a model: make train ARGS="--name myrun --epochs 3"
	$(PY) -m digitlib train $(ARGS)

evaluate: setup ## evaluate models/default (or MODEL=path) on the MNIST test set
	$(PY) -m digitlib evaluate $(if $(MODEL),--model $(MODEL))

default-model: setup ## retrain models/default (default recipe, three seeds averaged) by the train notebook; report in reports/
	$(RUN_NB) $(TRAIN_NB) reports/default-train.ipynb -p run_name default -p members 3
	$(RUN_NB) $(EVALUATE_NB) reports/default-evaluate.ipynb -p model models/default -p name default

benchmark: setup ## run every benchmark (minutes) and write reports/benchmarks.md
	$(PY) benchmarks/run_all.py

clean: ## remove caches (keeps .venv, data and models)
	rm -rf .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -prune -exec rm -rf {} +

# --- notebooks and experiments ---------------------------------------------------------------
PAPERMILL := $(VENV)/bin/papermill
# papermill with a check first: parameter names the notebook does not take are refused (with the
# closest one it does), progress as text lines, HTML beside the executed notebook.
RUN_NB := $(PY) -m digitlib run-notebook
# The notebooks' kernelspec: this .venv's Python (the Dockerfile installs the same).
KERNEL_INSTALL := $(PY) -m ipykernel install --sys-prefix --name digitlab --display-name "Python (digitlab)"
TRAIN_NB := notebooks/1.0-dl-train-cnn.ipynb
EVALUATE_NB := notebooks/2.0-dl-evaluate-model.ipynb
RUN ?= quick
TRAIN_PARAMS ?= -p epochs 3
SWEEP ?= experiments/lr-arch.yaml

LAB_IP ?= 127.0.0.1
LAB_PORT ?= 8888
LAB_ARGS ?=
# Jupyter refuses to run as root unless told; in a container root is the usual user. A config file
# in .venv (not --allow-root) keeps the command the same as docker-compose.yml's.
LAB_ROOT_CONFIG := $(VENV)/etc/jupyter/jupyter_lab_config.json

lab: setup ## JupyterLab on the project's kernel "Python (digitlab)"; prints its URL with the token; LAB_ARGS="..." adds options
	$(KERNEL_INSTALL)
	@if [ "$$(id -u)" = 0 ] && [ ! -f $(LAB_ROOT_CONFIG) ]; then mkdir -p $(dir $(LAB_ROOT_CONFIG)) && \
		echo '{"ServerApp": {"allow_root": true}}' > $(LAB_ROOT_CONFIG) && echo "running as root: allowed by $(LAB_ROOT_CONFIG)"; fi
	$(VENV)/bin/jupyter lab --notebook-dir=. --ip=$(LAB_IP) --port=$(LAB_PORT) --no-browser $(LAB_ARGS)

reports: setup ## train + evaluate notebooks into reports/ with HTML: make reports RUN=quick TRAIN_PARAMS="-p epochs 3"
	$(RUN_NB) $(TRAIN_NB) reports/$(RUN)-train.ipynb -p run_name $(RUN) $(TRAIN_PARAMS)
	$(RUN_NB) $(EVALUATE_NB) reports/$(RUN)-evaluate.ipynb -p model models/$(RUN)

sweep: setup ## run a sweep of notebook runs: make sweep SWEEP=experiments/lr-arch.yaml
	$(PY) -m digitlib sweep $(SWEEP)

# --- dashboard -------------------------------------------------------------------------------
DASHBOARD_PORT ?= 8866
DASHBOARD_IP ?= 127.0.0.1

dashboard: setup ## serve the drawing dashboard with Voila at http://localhost:8866 (preheated kernels, voila.json)
	$(PY) -m voila dashboards/digits.ipynb --port=$(DASHBOARD_PORT) --no-browser --preheat_kernel=True --Voila.ip=$(DASHBOARD_IP)

# --- deployment: docker-compose.yml runs these same commands (tests/test_deploy.py compares) ---
.PHONY: db migrate trainer proxy caddy check-env up
DB_PORT ?= 5433
GRANT_TO ?=
CADDYFILE ?= Caddyfile
RETRAIN_NB := notebooks/4.0-dl-retrain-with-feedback.ipynb

db: ## a development PostgreSQL in data/postgres on port 5433, with the dashboard role (compose: db)
	deploy/local-db.sh data/postgres $(DB_PORT)

migrate: setup ## feedback schema to the newest revision at DATABASE_URL; GRANT_TO=role grants the dashboard role
	$(PY) -m digitlib.migrations upgrade$(if $(GRANT_TO), --grant-to $(GRANT_TO))

trainer: setup ## retrain on the feedback: the retrain notebook by papermill into reports/retrain.ipynb
	$(KERNEL_INSTALL)
	$(PAPERMILL) $(RETRAIN_NB) reports/retrain.ipynb

proxy: ## Caddy with HTTPS in front of dashboard (DASHBOARD_UPSTREAMS="host:port ..." for replicas) and lab
	@command -v caddy >/dev/null || { echo "caddy is not installed: make caddy (Debian's package)"; exit 1; }
	caddy run --config $(CADDYFILE) --adapter caddyfile

ENV_FILE ?= .env

check-env: ## refuse ENV_FILE (.env) with a .env.example placeholder or a secret under 16 characters
	deploy/check-env --env-file $(ENV_FILE)

up: check-env ## the whole stack with docker compose: DASHBOARD_REPLICAS dashboards behind Caddy, PostgreSQL, lab
	docker compose --env-file $(ENV_FILE) up -d --build

# --- feedback loop: analyse, export, retrain, promote, roll back (README, "Feedback loop") ----
.PHONY: analyse export-feedback retrain promote rollback models
ANALYSE_NB := notebooks/3.0-dl-analyse-feedback.ipynb
FEEDBACK_EXPORT ?= data/feedback-export
RETRAIN_PARAMS ?=
ANALYSE_PARAMS ?=

analyse: setup ## analyse the feedback at DATABASE_URL: reports/feedback-analysis.ipynb + .html, figures in reports/figures/feedback/ (ANALYSE_PARAMS="-p freq h")
	$(RUN_NB) $(ANALYSE_NB) reports/feedback-analysis.ipynb $(ANALYSE_PARAMS)

export-feedback: setup ## write the feedback as a training set with its manifest into data/feedback-export/
	$(PY) -m digitlib export-feedback $(FEEDBACK_EXPORT)

retrain: setup ## fine-tune on MNIST + feedback, compare, promote by the rule: reports/retrain.ipynb + .html (RETRAIN_PARAMS="-p oversample 5")
	$(RUN_NB) $(RETRAIN_NB) reports/retrain.ipynb $(RETRAIN_PARAMS)

promote: setup ## make a registered version current: make promote VERSION=feedback-20250101T000000Z [FORCE=1]
	$(PY) -m digitlib promote $(VERSION)$(if $(FORCE), --force)

rollback: setup ## go back to the model version promoted before the current one
	$(PY) -m digitlib rollback

models: setup ## list the model versions in models/ (* marks the current one)
	$(PY) -m digitlib models
