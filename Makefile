# Two commands do everything on a fresh machine:
#   make demo   install into .venv and run the quickstart experiment (pneumo run experiments/quickstart.yaml)
#   make test   install with the dev extras, lint, then the whole test suite with coverage (what .ci/run calls)
# Installs take the versions pinned in requirements.lock; after changing dependencies in pyproject.toml,
#   make lock   resolves them again here (keeping the other pins) and rewrites requirements.lock
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
# percent of pneumo/ lines the whole suite must run, a few points under the figure in README's Tests
COVERAGE_FLOOR ?= 65

.PHONY: install demo lint test test-extended test-readme lock bench clean docs docs-build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/pneumo run experiments/quickstart.yaml

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports  # the one-way layers in pyproject.toml's [tool.importlinter]

test: lint
	$(BIN)/python -m pytest -m "not readme and not extended" --durations=20 --cov=pneumo --cov-report=term --cov-fail-under=$(COVERAGE_FLOOR)

# the long end-to-end scenarios (pytest -m extended: resumes after a kill, a tracking-server outage, two nodes,
# the team server's full search, the watched search, every way to stop the server): ~35 min on 2 cores
test-extended: install
	$(BIN)/python -m pytest -m extended --durations=20

# the README's commands run end to end in a scratch copy (tests/readme_runner.py): 36 min on the
# quiet 2-core machine, so outside `make test`; one step: pytest -m readme -k "README.md:LINE:"
test-readme: install
	$(BIN)/python -m pytest -m readme

# the documentation site (docs/, mkdocs.yml): `make docs` serves it with live reload, `make docs-build`
# builds it strictly into .cache/site (tests/docs/test_docs_site.py runs the same build in make test)
MKDOCS_QUIET := NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true
docs: install
	$(MKDOCS_QUIET) $(BIN)/mkdocs serve -a 127.0.0.1:8001

docs-build: install
	$(MKDOCS_QUIET) $(BIN)/mkdocs build --strict

lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet "pip-tools>=7.4"
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file $(LOCK) pyproject.toml

bench: install
	$(BIN)/python -m bench all

# pneumo's images from the Containerfile: $(IMAGE):cpu, $(IMAGE):cuda and the MLflow server's $(IMAGE):tracking
# (deploy/k8s). docker where its daemon answers, else buildah; more options through IMAGE_BUILD_ARGS, e.g.
# IMAGE=ghcr.io/you/pneumo IMAGE_BUILD_ARGS="--build-arg BASE_IMAGE=..." (tests/deploy/image_build.py builds here)
IMAGE ?= pneumo
IMAGE_BUILDER ?= $(if $(shell docker info >/dev/null 2>&1 && echo up),docker build,buildah bud --layers --format docker)
.PHONY: image
image:
	$(IMAGE_BUILDER) $(IMAGE_BUILD_ARGS) --build-arg FLAVOR=cpu -t $(IMAGE):cpu -f Containerfile .
	$(IMAGE_BUILDER) $(IMAGE_BUILD_ARGS) --build-arg FLAVOR=cuda -t $(IMAGE):cuda -f Containerfile .
	$(IMAGE_BUILDER) $(IMAGE_BUILD_ARGS) --target tracking -t $(IMAGE):tracking -f Containerfile .

# A team's MLflow server (docs/how-to/team-mlflow.md): runs and registry in PostgreSQL, artifacts proxied
# through it (clients need no storage credentials), logins on. Secrets come from the environment only:
# PGPASSWORD (the database), MLFLOW_FLASK_SERVER_SECRET_KEY, and MLFLOW_AUTH_ADMIN_PASSWORD (the first admin's).
MLFLOW_DB ?= postgresql+psycopg://mlflow@127.0.0.1:5432/mlflow
MLFLOW_AUTH_DB ?= postgresql+psycopg://mlflow@127.0.0.1:5432/mlflow_auth
MLFLOW_ARTIFACTS ?= $(CURDIR)/mlartifacts
MLFLOW_HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
MLFLOW_WORKERS ?= 4
MLFLOW_DEFAULT_PERMISSION ?= READ
.PHONY: mlflow-server
mlflow-server:
	@test -n "$$MLFLOW_FLASK_SERVER_SECRET_KEY" || { echo "set MLFLOW_FLASK_SERVER_SECRET_KEY (any long random string, the same on every server)"; exit 2; }
	@auth_ini=$$(mktemp --suffix=.ini) && \
	printf '[mlflow]\ndefault_permission = %s\ndatabase_uri = %s\nadmin_username = %s\n' \
		'$(MLFLOW_DEFAULT_PERMISSION)' '$(MLFLOW_AUTH_DB)' "$${MLFLOW_AUTH_ADMIN_USERNAME:-admin}" > $$auth_ini && \
	MLFLOW_AUTH_CONFIG_PATH=$$auth_ini exec $(BIN)/mlflow server --app-name basic-auth \
		--backend-store-uri '$(MLFLOW_DB)' --artifacts-destination '$(MLFLOW_ARTIFACTS)' \
		--host $(MLFLOW_HOST) --port $(MLFLOW_PORT) --workers $(MLFLOW_WORKERS)

clean:
	rm -rf results mlflow.db mlartifacts data/synthetic-chest-xray
