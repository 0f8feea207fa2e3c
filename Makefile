PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements
STAMP := $(VENV)/.installed-from-lock
# One platform for every profile: the machines, CI and the Docker images are CPython 3.11 on
# x86_64 Linux. torch resolves to the CPU wheel these machines carry in /opt/wheels (see README).
UV_COMPILE := --quiet --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --find-links /opt/wheels \
	--custom-compile-command "make lock"

.PHONY: run test lint lock upgrade manage soak bench

# A changed lock rebuilds the environment from scratch, so nothing outside the lock survives.
$(STAMP): $(LOCK)/dev.txt pyproject.toml
	rm -rf $(VENV)
	$(PY) -m venv $(VENV)
	# Only what the lock names, at its versions and hashes; nothing is resolved here.
	$(BIN)/pip install -q --require-hashes --no-deps -r $(LOCK)/dev.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# The import contracts of pyproject.toml ([tool.importlinter]); read from source, nothing imported.
	$(BIN)/lint-imports --no-cache --no-logo
	SDSAAS_DEBUG=1 $(BIN)/mypy .
	SDSAAS_DEBUG=1 $(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

run: $(STAMP)
	SDSAAS_DEBUG=1 $(BIN)/python -m sdsaas.devstack

# The chaos soak (bench/soak/): a fresh local stack, 200 jobs through the API, a busy GPU worker
# SIGKILLed every few seconds. Exits non-zero on any loss or double metering; the last line is
# JSON. Flags go through ARGS, e.g. make soak ARGS='--jobs 40 --keep'.
soak: $(STAMP)
	SDSAAS_DEBUG=1 $(BIN)/python -m bench.soak $(ARGS)

# The CPU set of benchmarks (bench/README.md, bench/cpu.py): each starts what it needs and prints
# its table and JSON line; then the six figures of issue 14 against their goals, one JSON line
# last. A failing benchmark stops the rest. ARGS='--full' runs each in its default mode.
bench: $(STAMP)
	SDSAAS_DEBUG=1 $(BIN)/python -m bench.cpu $(ARGS)

# Administration against the local stack's database, with its settings (debug on):
#   make manage ARGS='tenant_create acme --plan pro'
# Quiet (@), so that the output is the command's alone, e.g. a key to capture.
manage: $(STAMP)
	@SDSAAS_DEBUG=1 $(BIN)/python manage.py $(ARGS)

# Re-resolve after editing pyproject.toml: pins that still satisfy it are kept. `make upgrade`
# moves every package to the newest release its range allows. Both then rebuild the
# environment from the new lock and run the suite.
# Profiles: web.txt = the base dependencies + the `web` extra (API, control workers), gpu.txt =
# the base + `gpu` (no DRF, no gunicorn), dev.txt = everything (what .venv gets).
lock upgrade: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra web --extra gpu --extra dev $(UV_COMPILE) \
		$(if $(filter upgrade,$@),--upgrade) -o $(LOCK)/dev.txt
	# The other profiles take their versions from dev.txt: one version of each package everywhere.
	$(BIN)/uv pip compile pyproject.toml --extra web -c $(LOCK)/dev.txt $(UV_COMPILE) \
		-o $(LOCK)/web.txt
	$(BIN)/uv pip compile pyproject.toml --extra gpu -c $(LOCK)/dev.txt $(UV_COMPILE) \
		-o $(LOCK)/gpu.txt
	$(MAKE) test
