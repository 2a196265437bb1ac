# privsec.vault_rotate: every entry point a person or CI uses.
# Each target that needs tools runs scripts/bootstrap.sh first (fast no-op when
# nothing changed). Lab ports/folder: LAB_DIR, LAB_VAULT_PORT, LAB_PROXY_PORT,
# LAB_FRONTEND_PORT_BASE, LAB_APPS (see docs/development.md).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV   ?= .venv
PY     := $(VENV)/bin/python
LABCTL := $(PY) tests/lab/labctl.py
# The fleet lab (tests/fleet): real hosts over SSH, root only. FLEET_DIR, FLEET_APPS, FLEET_NET.
FLEETCTL := $(PY) tests/fleet/fleetctl.py
# Tools that shell out to ansible-* expect them on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export ANSIBLE_FORCE_COLOR ?= 0
export PY_COLORS ?= 0

# pytest, except that "no tests collected" (exit 5) is not a failure while a
# suite is still empty; pytest's own summary line stays the last output.
PYTEST = $(PY) -m pytest $(PYTEST_ARGS)
define run_pytest
	rc=0; $(PYTEST) $(1) || rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc
endef
# The lab suites run on TEST_WORKERS pytest-xdist workers side by side (most of
# a rotation is waiting on servers): each worker past the first gets a session
# lab of its own, the longest units go first (tests/conftest.py: xdist_group).
# TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 3
WORKERS = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS))

# ansible-test sanity lines (scripts/sanity.sh): empty = every line requires_ansible
# admits (2.19 2.20 2.21), else e.g. "2.20", "newest", "older".
SANITY_LINES ?=
# make test: `make lint` runs the newest sanity line, the older lines run beside
# pytest in the background at nice 10 (the lab suites mostly wait on servers and
# leave CPU idle; a line keeps one core busy 70-90 s warm, 2.5-3 min on a fresh
# machine), so they add no serial time (make test grows ~30 s: docs/development.md).
# Their output goes to .cache/sanity/beside.log (the errors are shown when a line
# fails); make test fails when pytest or a line fails. An interrupt stops them too.
define run_pytest_beside_sanity
	mkdir -p .cache/sanity; log=.cache/sanity/beside.log; \
	setsid nice -n 10 scripts/sanity.sh $(2) >$$log 2>&1 & spid=$$!; \
	trap 'kill -TERM -- -$$spid 2>/dev/null || true' INT TERM; \
	rc=0; $(PYTEST) $(1) || rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; \
	src=0; wait $$spid || src=$$?; trap - INT TERM; \
	if [ $$src -ne 0 ]; then grep -E '^(ERROR: |FATAL: The )' $$log || true; fi; \
	grep '^sanity: ' $$log | tail -n $$([ $$src -eq 0 ] && echo 1 || echo 2) || true; \
	if [ $$src -ne 0 ]; then echo "sanity: beside pytest: exit $$src (the whole output: $$log)"; fi; \
	exit $$(( rc != 0 ? rc : src ))
endef

.PHONY: bench
.PHONY: help bootstrap demo test test-faults lint ruff ansible-lint shellcheck sanity unit integration lab-up lab-down lab-status clean distclean
.PHONY: fleet-up fleet-down fleet-status fleet-demo test-fleet

help:
	@echo "make demo         bootstrap, lab up + state, rotate everything on it (rotate_all -l lab), state again"
	@echo "make test         bootstrap, lint (sanity: the newest line), then every pytest suite (unit, integration, molecule,"
	@echo "                  faults, fleet) on TEST_WORKERS=3 workers, the older sanity lines beside it (niced; last output line)"
	@echo "make test-faults  the fault-injection suite alone (issue 5; also part of make test)"
	@echo "make lint         ruff + ansible-lint (production) + shellcheck + ansible-test sanity (every line, as make sanity)"
	@echo "make sanity       ansible-test sanity only, offline, on a copy under .cache/sanity/<line>/, for every"
	@echo "                  ansible-core line requires_ansible admits (2.19 2.20 2.21), each from its own venv;"
	@echo "                  one line: SANITY_LINES=2.20 (or newest, older); SANITY_TESTS, SANITY_EXTRA_PYTHONS=0"
	@echo "make unit         pytest tests/unit"
	@echo "make integration  pytest everything but tests/unit (needs/starts the lab)"
	@echo "make bench        rotate_all timings, current tree beside a baseline worktree, N = 2 8 32 apps (docs/performance.md)"
	@echo "make lab-up | lab-down | lab-status"
	@echo "make fleet-demo   bootstrap, fleet up + state, rotate_all -l fleet over SSH (systemd user units), state again"
	@echo "make fleet-up | fleet-down | fleet-status   the fleet lab alone (hosts of their own; root)"
	@echo "make test-fleet   the fleet suite alone (marker fleet; also part of make test)"
	@echo "make clean        stop the lab, remove .lab/ .cache/ and test caches (keeps .venv)"
	@echo "make distclean    clean + remove .venv"

bootstrap:
	@scripts/bootstrap.sh

# The main job on the embedded default: lab up, its state, the full rotation
# against it (every phase with its gate), the state again (new serials).
demo: bootstrap
	$(LABCTL) up
	$(LABCTL) status
	$(VENV)/bin/ansible-playbook playbooks/rotate_all.yml -l lab
	$(LABCTL) status

# Not part of `make test`. rotate_all on private N-app labs (BENCH_APPS, default
# "2 8 32"), the current tree beside a git worktree of bench/baseline.ref
# (BENCH_BASELINE=<ref>|none; at N in BENCH_BASELINE_APPS, default "2"), each
# tree on a lab of its own kind, runs alternated; BENCH_REPS, BENCH_KINDS,
# BENCH_RESTART, BENCH_PROBES=0 (no probers), BENCH_SAVE=1, BENCH_KEEP=1;
# BENCH_TARGETS="lab fleet" adds the
# fleet (root, BENCH_FLEET_APPS). About 7 min (BENCH_REPS=3: 19 min), most of
# it the baseline (docs/performance.md).
# Ports 31000-31999 (BENCH_PORT_BASE). Quickest look:
# BENCH_APPS=2 BENCH_KINDS=forced BENCH_RESTART=0 make bench
bench: bootstrap
	$(PY) bench/bench.py

lab-up: bootstrap
	$(LABCTL) up

lab-down:
	@if [ -x $(PY) ]; then $(LABCTL) down; else echo "no $(VENV): nothing to stop"; fi

lab-status: bootstrap
	$(LABCTL) status

# The fleet lab: a host per Vault, app, proxy and admin (network namespace,
# sshd, users, systemd with a user manager per service user), driven over SSH.
fleet-up: bootstrap
	$(FLEETCTL) up

fleet-down:
	@if [ -x $(PY) ]; then $(FLEETCTL) down; else echo "no $(VENV): nothing to stop"; fi

fleet-status: bootstrap
	$(FLEETCTL) status

fleet-demo: bootstrap
	$(FLEETCTL) up
	$(FLEETCTL) status
	$(VENV)/bin/ansible-playbook -i inventories/fleet playbooks/rotate_all.yml -l fleet
	$(FLEETCTL) status

lint: bootstrap
	@# -k: run every linter and report every failure, not just the first
	$(MAKE) -k --no-print-directory ruff ansible-lint shellcheck sanity

ruff:
	$(VENV)/bin/ruff check .

ansible-lint:
	$(VENV)/bin/ansible-lint --nocolor

# The checkout's shell scripts (they do not ship, so ansible-test's shellcheck
# does not see them); shellcheck is optional like for ansible-test.
shellcheck:
	@if command -v shellcheck >/dev/null; then shellcheck scripts/*.sh tests/fleet/*.sh && echo "shellcheck: passed"; \
	else echo "shellcheck: not installed, skipped (scripts/bootstrap.sh installs it as root)"; fi

sanity:
	scripts/sanity.sh $(SANITY_LINES)

unit: bootstrap
	@$(call run_pytest,tests/unit)

integration: bootstrap
	@$(call run_pytest,tests --ignore=tests/unit $(WORKERS))

# Lint first (fail fast, about 1.5 min; sanity on the newest line), then one
# pytest session over every suite, the fault suite (marker `faults`) included, so
# the run ends with one summary line for all of them, with the older sanity lines
# beside it (their result is the last line). `make test-faults` runs the fault
# suite alone.
test: bootstrap
	$(MAKE) --no-print-directory lint SANITY_LINES=newest
	@$(call run_pytest_beside_sanity,tests $(WORKERS),older)

test-faults: bootstrap
	@$(call run_pytest,tests -m faults $(WORKERS))

test-fleet: bootstrap
	@$(call run_pytest,tests/fleet -m fleet)

clean: lab-down fleet-down
	rm -rf .lab .fleet .cache tests/output .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
