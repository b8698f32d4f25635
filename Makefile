# The README's commands. Everything installs itself: uv (if missing), the Python
# workspace from uv.lock, and buf from package-lock.json.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
export UV_LINK_MODE ?= copy

.PHONY: up test bootstrap protos lint typecheck contracts bench clean

bootstrap:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --all-packages --frozen
	@# npm install, not npm ci: npm here leaves other platforms' optional buf binaries out of the
	@# lock, which npm ci refuses; --no-save keeps the lock as committed.
	@[ -x node_modules/.bin/buf ] || npm install --no-audit --no-fund --no-save --loglevel=error

## Start the platform on embedded defaults (NATS, S3, SQLite, every service). Ctrl-C stops all.
up: bootstrap
	$(UV) run --frozen python -m visionmesh.stack up

## Run the whole suite: generated-code freshness, buf lint/breaking, ruff, mypy, pytest with
## line and branch coverage per package (the floor is fail_under in pyproject.toml).
test: bootstrap
	$(UV) run --frozen python scripts/gen_protos.py --check
	$(UV) run --frozen python scripts/buf_check.py
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen ruff check .
	$(UV) run --frozen mypy
	status=0; $(UV) run --frozen pytest --cov --cov-report= -n 2 --dist loadfile || status=$$?; \
		$(UV) run --frozen python scripts/coverage_summary.py; exit $$status

## Regenerate Python code from protos/.
protos:
	$(UV) run --frozen python scripts/gen_protos.py

clean:
	rm -rf .visionmesh .pytest_cache .mypy_cache .ruff_cache .coverage
