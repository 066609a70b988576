# otlp-ebpf: `make run` and `make test` do all set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := gcc g++ binutils make openssl clang llvm libbpf-dev libbpf1 bpftool iproute2 nftables strace valgrind \
	libc6-dbg linux-perf bpftrace chromium prometheus
# Commands that may come from elsewhere than Debian (a vendor Node.js ships its own npm).
APT_IF_NO_COMMAND := npm:npm
RUN_ARGS ?= cpu --duration 5 -o flame.html

.PHONY: setup apt venv bpf run test lint typecheck unit integration bench docs clean

setup: apt venv bpf tracefs ## idempotent: system packages, .venv, BPF objects

apt:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	for pair in $(APT_IF_NO_COMMAND); do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python
	@$(BIN)/python -c "import otlp_ebpf, pytest, ruff" 2>/dev/null && \
		$(BIN)/pip check >/dev/null 2>&1 && [ $(BIN)/otlp-ebpf -nt pyproject.toml ] || \
		{ $(BIN)/pip install -q -e '.[dev]' && touch $(BIN)/otlp-ebpf; }

bpf:
	@$(BIN)/python tools/build_bpf.py

tracefs:
	@[ -e /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true

.PHONY: tracefs

run: setup
	$(BIN)/otlp-ebpf $(RUN_ARGS)

lint:
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	PYTHONPATH=src $(BIN)/lint-imports --no-cache --no-logo

typecheck:
	$(BIN)/mypy

test: setup lint typecheck
	$(BIN)/pytest --cov --cov-report=term --cov-fail-under=80 -q tests

unit: setup
	$(BIN)/pytest -q -m "not bpf" tests

integration: setup
	$(BIN)/pytest -q -m bpf tests

bench: setup
	@for b in bench/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

docs: setup
	$(BIN)/python tools/gen_docs.py

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .coverage src/otlp_ebpf/bpf/*.bpf.o
