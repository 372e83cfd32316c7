# MarketLake: `make run` runs the offline demo, `make test` runs every test and quality gate.
# Every target creates the virtual environment it needs from requirements.lock.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CHART_JS := src/marketlake/web/static/vendor/lightweight-charts.standalone.production.js
CHROMIUM := /usr/bin/chromium
WRK := /usr/bin/wrk
# apt-get needs root: as root (here, CI) run it directly, elsewhere through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test lint format bench lock docs clean browser

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/python -m compileall -q src
	touch $(STAMP)

# The dashboard's chart library, from the npm registry at the version pinned in web/package-lock.json.
$(CHART_JS): web/package.json web/package-lock.json
	command -v npm >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq npm)
	npm ci --prefix web --no-audit --no-fund --silent
	mkdir -p $(dir $(CHART_JS))
	cp web/node_modules/lightweight-charts/dist/lightweight-charts.standalone.production.js $@

# Debian's Chromium for the dashboard's browser tests.
$(CHROMIUM):
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

browser: $(CHROMIUM)

# wrk, the load generator of bench/bench_api.py (without it the bench uses a slower asyncio client).
$(WRK):
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk \
		|| echo "wrk not installed: bench_api falls back to its asyncio client"

install: $(STAMP) $(CHART_JS)

run: install
	$(BIN)/marketlake demo

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

test: lint browser
	$(BIN)/pytest --cov=marketlake --cov-branch --cov-report=term-missing:skip-covered --cov-fail-under=85

format: install
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

bench: install $(WRK)
	$(BIN)/python -m bench

docs: install
	$(BIN)/python -m marketlake.tools.refdocs

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage*
