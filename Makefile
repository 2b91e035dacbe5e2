# qcimage — `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
FUZZ_EXAMPLES ?= 5000
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Debian packages: ImageMagick's library for Wand, the font the watermark uses, and the
# real servers the end-to-end tests start (Redis, nginx) plus openssl for nginx's test cert,
# Node.js, which runs the README's JavaScript example against a live server, and Chromium,
# which loads a page of demo images the way a person does.
APT_PACKAGES := python3 python3-venv libmagickwand-6.q16-6 imagemagick fonts-dejavu-core redis-server nginx-light \
                openssl wrk procps nodejs chromium
# Several boxes (issue 14): hosts as network namespaces (iproute2), Redis Sentinel and
# redis-cli for the cluster, and systemd-analyze to verify the shipped unit.
APT_PACKAGES += iproute2 redis-sentinel redis-tools systemd

.DEFAULT_GOAL := help
.PHONY: help system-deps venv lint test test-fast fuzz demo bench clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

system-deps: ## Install the Debian packages that are missing (needs root or sudo)
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(VENV)/.installed: setup.cfg pyproject.toml
	[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## Create the virtualenv with the package and its test tools

lint: venv ## flake8 over the code (configured in setup.cfg)
	$(VENV)/bin/flake8 qcimage tests tools bench wsgi.py gunicorn.conf.py

test: system-deps venv lint ## Install what is missing, lint, run the whole suite
	$(VENV)/bin/pytest

test-fast: venv ## The suite without the end-to-end tests
	$(VENV)/bin/pytest -m "not e2e"

fuzz: system-deps venv ## Fuzz every API operation for longer (FUZZ_EXAMPLES, default 5000)
	QCIMAGE_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest --timeout=3600 tests/test_fuzz.py

demo: system-deps venv ## Run the stand-in upstream + gunicorn on loopback, print a key and URLs
	$(PY) -m tools.demo

# Benchmarks: libvips for the pyvips comparison (wrk is in APT_PACKAGES already).
bench: APT_PACKAGES += libvips42
bench: system-deps $(VENV)/.bench-installed ## Benchmarks on loopback -> BENCHMARKS.md + .png (~3-5 min)
	$(PY) -m bench

$(VENV)/.bench-installed: $(VENV)/.installed setup.cfg
	$(PY) -m pip install -q -e '.[bench]'
	touch $@

clean: ## Remove the virtualenv, caches and generated samples
	rm -rf $(VENV) *.egg-info .pytest_cache instance tools/.samples
