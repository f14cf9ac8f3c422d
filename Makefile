# nodeguard: the two commands of the README are `sudo make demo` and `sudo make test`.
# CI runs .ci/run, which runs `make test`.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV := .venv
BIN := $(VENV)/bin
SHELL_SCRIPTS := scripts/setup.sh scripts/gen-proto.sh deploy/containerd/make-base-spec.sh vagrant/provision.sh deploy/kind/e2e.sh .ci/run

.PHONY: help setup demo test lint bench doctor vm

help:
	@echo "make setup   install system packages, kernel headers, mounts and .venv (root)"
	@echo "make demo    setup, then run the demo: an agent under a policy, violations shown (root)"
	@echo "make test    setup, then lint and every test, kernel tests included (root)"
	@echo "make lint    ruff check, ruff format --check, mypy --strict, shellcheck"
	@echo "make bench   setup, then run the benchmarks (root)"
	@echo "make doctor  setup, then report the kernel features nodeguard needs (root)"
	@echo "make vm      a Debian 12 VM with nodeguard set up (Vagrant; docs/try-it.md)"

setup:
	bash scripts/setup.sh

demo: setup
	$(BIN)/nodeguard demo

test: setup
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q tests

lint:
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy
	@if command -v shellcheck >/dev/null; then \
		echo "shellcheck $(SHELL_SCRIPTS)"; shellcheck $(SHELL_SCRIPTS); \
	else \
		echo "shellcheck not installed (scripts/setup.sh installs it): skipped" >&2; \
	fi

bench: setup
	$(BIN)/python -m bench

doctor: setup
	$(BIN)/nodeguard doctor

vm:
	cd vagrant && vagrant up
