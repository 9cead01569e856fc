# Two commands for users: `make demo` and `make test`. Each creates .venv and installs memscan into it.
# The newest Python >= 3.11 on the PATH (python3.13, python3.12, python3.11, then python3 if it is new
# enough); override with `make PYTHON=/path/to/python3.x ...`.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
	&& { echo $$p; break; }; done)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test install lint bench clean browser

$(BIN)/python:
	@if [ -z "$(PYTHON)" ]; then \
		echo "memscan needs Python >= 3.11, but none of python3.13, python3.12, python3.11 (nor a python3 that" \
			"new) is on the PATH; install one or run: make PYTHON=/path/to/python3.11 $(MAKECMDGOALS)" >&2; \
		exit 1; \
	fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
		echo "PYTHON=$(PYTHON) is older than 3.11; memscan needs Python >= 3.11" >&2; exit 1; }
	@echo "using $$(command -v $(PYTHON)) ($$($(PYTHON) --version))"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/memscan demo --out demo-output

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Headless Chromium + its driver for the report's browser test (tests/report/test_report_browser.py).
# Installed with apt-get when missing and we are root on a Debian/Ubuntu machine; otherwise explains why
# that test will be skipped. Never fails.
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "browser: /usr/bin/chromium and /usr/bin/chromedriver present"; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "browser: installing chromium and chromium-driver with apt-get"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
			>/dev/null) || echo "browser: apt-get install failed; the browser test will be skipped"; \
	else \
		echo "browser: /usr/bin/chromium or /usr/bin/chromedriver missing and cannot install them here" \
			"(needs root and apt-get); the browser test will be skipped"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	$(BIN)/python benchmarks/bench_scan.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
