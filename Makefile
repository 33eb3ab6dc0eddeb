# Every target sets itself up from nothing on Debian 12 (as root): apt packages,
# then .venv. Debian's python3-systemd/-sdnotify/-yaml are used through
# --system-site-packages, the same modules the .deb will depend on.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := python3 python3-venv python3-pip python3-systemd python3-sdnotify python3-yaml systemd

.PHONY: all setup test lint typecheck unit demo clean

all: test

$(VENV)/.ready: pyproject.toml
	@if ! dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -qv '^install ok installed$$' \
	    && [ "$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | wc -l)" -eq "$(words $(APT_PACKAGES))" ]; then :; \
	else \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES); \
	fi
	rm -rf $(VENV)
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

setup: $(VENV)/.ready

lint: setup
	$(VENV)/bin/ruff check feishu_mailbot tests
	$(VENV)/bin/ruff format --check feishu_mailbot tests
	$(VENV)/bin/mypy feishu_mailbot

test: setup lint
	$(PY) -m pytest -q tests

demo: setup
	$(PY) -m tests.demo

clean:
	rm -rf $(VENV) build dist *.egg-info test-output
