# Every target sets itself up from nothing on Debian 12 (as root): apt packages,
# then .venv. Debian's python3-systemd/-sdnotify/-yaml are used through
# --system-site-packages, the same modules the .deb depends on.
SHELL := /bin/bash
PYTHON := /usr/bin/python3
VENV := .venv
PY := $(VENV)/bin/python
# Runtime modules (all that `make demo` needs), plus what the tests drive: systemd-analyze, debootstrap +
# systemd-nspawn for the system test on a real systemd, libfaketime as the daemon's
# controllable clock, headless Chromium (with CJK fonts) to render the digest, and
# tinyproxy as the real HTTP proxy between the bot and Feishu (tests/http_proxy.py), and
# PostgreSQL 15 with the driver the .deb recommends (tests/postgres.py starts a cluster),
# the Authentication-Results parser that replies by mail are checked with, and Dovecot
# as the bot's mailbox (tests/dovecot.py runs one with a config of its own).
RUNTIME_PACKAGES := python3 python3-venv python3-pip python3-systemd python3-sdnotify python3-yaml \
	python3-regex python3-authres
TEST_PACKAGES := python3-psycopg2 \
	systemd debootstrap systemd-container faketime chromium fonts-noto-cjk tinyproxy postgresql-15 \
	dovecot-imapd
DEB_BUILD_PACKAGES := build-essential debhelper dh-python python3-pip lintian

VERSION := $(shell sed -n '1s/.*(\(.*\)).*/\1/p' packaging/debian/changelog)
ARCH := $(shell dpkg --print-architecture)
DEB := dist/feishu-mailbot_$(VERSION)_$(ARCH).deb
DEB_SOURCES := $(shell git ls-files feishu_mailbot packaging etc docs README.md 2>/dev/null)

# invoke-rc.d and deb-systemd-invoke ask this file whether a postinst may start a service.
POLICY_RC_D := /usr/sbin/policy-rc.d

# Install the Debian packages in $(1) that are not installed yet. No postinst may start
# its service (DESIGN §4: the tests start what they need, with configs of their own), so
# the install runs under a policy-rc.d that denies every start (exit 101). It is created
# only if there is none, and then removed again however apt-get ends; one that was there
# already is left alone.
define apt_ensure
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "installing: $$missing"; \
	    if [ ! -e $(POLICY_RC_D) ]; then \
	        trap 'rm -f $(POLICY_RC_D)' EXIT; trap 'exit 130' INT TERM HUP; \
	        printf '#!/bin/sh\n# apt_ensure (Makefile): no service starts while installing.\nexit 101\n' \
	            >$(POLICY_RC_D) && chmod 755 $(POLICY_RC_D) || exit 1; \
	    fi; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi
endef

.PHONY: all setup setup-runtime test test-hours lint demo deb bench clean

all: test

$(VENV)/.ready: pyproject.toml
	$(call apt_ensure,$(RUNTIME_PACKAGES))
	rm -rf $(VENV)
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

# setup-runtime: the venv on the runtime packages (the demo, lint); setup: and what the
# tests and the bench start (PostgreSQL, Dovecot, tinyproxy, a container, Chromium).
setup-runtime: $(VENV)/.ready

setup: setup-runtime
	$(call apt_ensure,$(TEST_PACKAGES))

lint: setup-runtime
	$(VENV)/bin/ruff check feishu_mailbot tests
	$(VENV)/bin/ruff format --check feishu_mailbot tests
	$(VENV)/bin/mypy feishu_mailbot

# The system test (tests/system) installs the freshly built .deb on a real systemd.
test: setup lint deb
	$(PY) -m pytest -q tests
	$(MAKE) --no-print-directory test-hours

# What depends on the hour (report days, digest spans, batch boundaries) once more with
# the whole test process, emulator and daemons under libfaketime, at hours a run would
# otherwise meet only by chance: 00:30 Shanghai (a new date, still yesterday's report
# day) and 09:30 (the batch test fakes 10:59 the same day, ahead of Feishu's clock).
HOUR_TESTS := tests/compose/test_daily_report.py tests/compose/test_batch.py tests/core/test_daily_report.py \
	tests/mail/test_daily_report.py
FAKETIME_LIB := /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1
test-hours: setup
	@for utc in 16:30 01:30; do echo "pytest at $$utc UTC (libfaketime): $(HOUR_TESTS)"; \
	    LD_PRELOAD=$(FAKETIME_LIB) FAKETIME="@$$(date -u +%F) $$utc:00" \
	    $(PY) -m pytest -q -p no:cacheprovider $(HOUR_TESTS) || exit 1; done

demo: setup-runtime
	$(PY) -m tests.demo

# Performance figures (medians; run it on an otherwise idle machine): the last line is
# BENCH {json}. `$(PY) -m tests.bench --quick` does one repetition of everything.
bench: setup
	$(PY) -m tests.bench

# The .deb: dpkg-buildpackage in a copy of the tree with packaging/debian as debian/;
# it lands in dist/ only once lintian (0 errors, 0 warnings) has passed.
deb: $(DEB)

$(DEB): $(DEB_SOURCES)
	$(call apt_ensure,$(DEB_BUILD_PACKAGES))
	rm -rf build/deb && mkdir -p build/deb/feishu-mailbot-$(VERSION) dist
	cp -r feishu_mailbot etc docs README.md build/deb/feishu-mailbot-$(VERSION)/
	cp -r packaging/debian build/deb/feishu-mailbot-$(VERSION)/debian
	cp packaging/systemd/feishu-mailbot.service build/deb/feishu-mailbot-$(VERSION)/debian/
	for unit in service timer; do cp packaging/systemd/feishu-mailbot-metrics.$$unit \
	    build/deb/feishu-mailbot-$(VERSION)/debian/feishu-mailbot.feishu-mailbot-metrics.$$unit; done
	cd build/deb/feishu-mailbot-$(VERSION) && dpkg-buildpackage -us -uc -b >../build.log 2>&1 \
	    || { tail -40 ../build.log; exit 1; }
	lintian --fail-on error,warning build/deb/feishu-mailbot_$(VERSION)_$(ARCH).deb
	mv build/deb/feishu-mailbot_$(VERSION)_$(ARCH).deb $@

clean:
	rm -rf $(VENV) build dist *.egg-info test-output
