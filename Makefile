# The README's two commands: `make demo` and `make test`. Both set everything up on a fresh
# machine (a virtualenv in .venv, the package in editable mode, ffmpeg when missing) and skip the
# set-up when nothing changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-out

.PHONY: setup lint test test-fast demo bench clean ffmpeg

setup: $(STAMP) ffmpeg

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,bench]'
	@touch $(STAMP)

# Debian packages the project needs: ffmpeg (always), ImageMagick and gifsicle (the tests' GIF
# encoders), Chromium (the preview's browser test). Installed only when a tool is missing.
SYSTEM_TOOLS := ffmpeg:ffmpeg ffprobe:ffmpeg convert:imagemagick gifsicle:gifsicle chromium:chromium

ffmpeg:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair##*:}; \
	  if [ "$$tool" = convert ]; then convert -version 2>/dev/null | grep -q ImageMagick || missing="$$missing $$pkg"; \
	  else command -v $$tool >/dev/null || missing="$$missing $$pkg"; fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$(echo $$missing | tr ' ' '\n' | sort -u) >/dev/null; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest -q -ra

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh $(DEMO_DIR)

bench: setup
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(DEMO_DIR) .pytest_cache build *.egg-info
