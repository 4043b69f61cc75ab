# kestrel.virt — one command to see it work, one to test it.
#   make demo   lab of two hosts, a playbook that boots a real guest, then teardown
#   make test   unit, real-libvirt/agent/engine and Ansible tests
SHELL := /bin/bash
PYTHON ?= python3
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
LAB_DIR ?= /srv/kestrel-lab
LAB_HOSTS ?= 2
export PATH := $(BIN):$(PATH)

.PHONY: demo test lint deps venv images unit system sanity units integration ee ee-lock molecule lab-up lab-down clean bench-scheduler bench-xml bench-agent bench-migration ha-faults bench-matching bench-images bench-api bench-stats bench-snapshots api-fuzz

deps:
	@echo "==> system packages (libvirt, QEMU, sshd, PostgreSQL, ...)"
	@bash scripts/install-system-deps.sh

$(BIN)/kestrel: pyproject.toml lab/pyproject.toml requirements-dev.txt
	@echo "==> Python environment in .venv"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip
	@$(BIN)/pip install -q -r requirements-dev.txt -e '.[plot]' -e lab
	@touch $@

venv: $(BIN)/kestrel

# The lab's guest disks (Debian 12 with cloud-init; the tiny guest), cached in
# $(LAB_DIR)/images by recipe: minutes the first time, instant afterwards.
images: deps venv
	$(BIN)/kestrel-lab image debian --state-dir $(LAB_DIR)
	$(BIN)/kestrel-lab image tiny --state-dir $(LAB_DIR)

demo: deps venv
	@bash scripts/demo.sh

# The conventions, held by tools: ruff, mypy (strict on the pure packages), the
# import contracts of DESIGN.md, yamllint and ansible-lint (production profile).
lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/yamllint -s .
	source scripts/collection-path.sh && $(BIN)/ansible-lint -q

unit: venv
	$(BIN)/pytest -q -n 2 tests/lib

system: deps venv
	$(BIN)/pytest -q tests/system

sanity: venv
	bash scripts/ansible-test.sh sanity
	$(BIN)/antsibull-changelog lint

# schemathesis, driven by the served OpenAPI document, against a fresh engine API over TLS
# with a SuperUser token (in a network namespace of its own); fails on any 5xx, status,
# content type or body the document does not promise. About 75 s on 2 cores with the
# 10 examples make test runs (3,300 requests, each answered at once: TCP_NODELAY).
# A fixed seed keeps it repeatable; FUZZ_SEED= explores afresh.
FUZZ_SEED ?= 19
FUZZ_EXAMPLES ?= 20
api-fuzz: venv
	$(BIN)/python scripts/api_fuzz.py --max-examples $(FUZZ_EXAMPLES) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))

units: venv
	bash scripts/ansible-test.sh units

integration: venv
	bash scripts/ansible-test.sh integration

# ansible-builder: the collection's EE requirements, and a build context for AWX (docs/awx.md).
ee: venv
	bash scripts/ee-check.sh

# Re-pin ee/requirements.lock (with hashes) after pyproject.toml's dependencies change.
ee-lock: venv
	@test -x .build/pip-tools/bin/pip-compile || \
		($(PYTHON) -m venv .build/pip-tools && .build/pip-tools/bin/pip install -q pip-tools)
	@cd ee && ../.build/pip-tools/bin/pip-compile -q --upgrade --generate-hashes --allow-unsafe \
		--strip-extras --no-header --no-emit-index-url --no-emit-find-links \
		-o requirements.lock ../pyproject.toml

molecule: deps venv
	source scripts/collection-path.sh && molecule test
	source scripts/collection-path.sh && molecule test -s migration

test: deps venv
	@echo "==> [$$(date -u +%T)] lint: ruff, mypy, import contracts, yamllint, ansible-lint"
	$(MAKE) --no-print-directory lint
	@echo "==> [$$(date -u +%T)] engine_lib unit tests (two workers: many wait on PostgreSQL, TLS servers and agents)"
	$(BIN)/pytest -q -n 2 tests/lib
	@echo "==> [$$(date -u +%T)] engine API: schemathesis finds no 5xx and no response the OpenAPI document does not allow"
	$(MAKE) --no-print-directory api-fuzz FUZZ_EXAMPLES=10
	@echo "==> [$$(date -u +%T)] real libvirt/QEMU, agents and playbooks on lab hosts"
	$(BIN)/pytest -q --durations=15 tests/system
	@echo "==> [$$(date -u +%T)] molecule: host role and VM lifecycle on two lab hosts (converge, idempotence, verify)"
	source scripts/collection-path.sh && molecule test
	@echo "==> [$$(date -u +%T)] molecule: three lab hosts, live migration and host maintenance (about 5 min)"
	source scripts/collection-path.sh && molecule test -s migration
	@echo "==> [$$(date -u +%T)] ansible-test sanity and units"
	bash scripts/ansible-test.sh sanity
	bash scripts/ansible-test.sh units
	$(BIN)/antsibull-changelog lint
	@echo "==> [$$(date -u +%T)] AWX execution environment: ansible-builder introspect and create"
	bash scripts/ee-check.sh
	@echo "==> [$$(date -u +%T)] ansible-test integration: modules in three beats (check mode, real run, check mode again)"
	bash scripts/ansible-test.sh integration
	@echo "==> [$$(date -u +%T)] make test passed"

bench-scheduler: venv
	@$(BIN)/pip install -q "numpy>=1.26"
	@$(BIN)/python bench/scheduler/bench.py

# Domain XML render speed vs lxml and virt-manager's virtinst (Debian package, system Python).
bench-xml: venv
	@test -d /usr/share/virt-manager/virtinst || \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends virtinst
	@$(BIN)/python bench/xml/bench.py

# Host agent vs bare libvirt on a lab host (start a VM; stats poll of 30 VMs); uses the lab lock.
bench-agent: deps venv
	@KESTREL_LAB_STATE_DIR=$(LAB_DIR) flock /tmp/kestrel-lab.lock $(BIN)/python -m bench.agent.bench

# Live migration through the engine vs raw virsh migrate --live, h1 <-> h2; uses the lab lock.
bench-migration: deps venv
	@KESTREL_LAB_STATE_DIR=$(LAB_DIR) flock /tmp/kestrel-lab.lock $(BIN)/python -m bench.migration.bench

ha-faults: deps venv
	@KESTREL_LAB_STATE_DIR=$(LAB_DIR) flock /tmp/kestrel-lab.lock $(BIN)/python -m bench.ha.faults

# Device matching vs lxml's bare parse of the same 1,000 live XMLs; one monitoring cycle
# over 500 VMs, engine-only and through the lab hosts' agents; uses the lab lock.
bench-matching: deps venv
	@$(BIN)/python -c "import lxml" 2>/dev/null || $(BIN)/pip install -q "lxml>=5"
	@KESTREL_LAB_STATE_DIR=$(LAB_DIR) flock /tmp/kestrel-lab.lock $(BIN)/python bench/matching/bench.py

# Upload of 1 GiB through the agent vs qemu-img convert; a thin VM from a template through
# the engine vs qemu-img create -b + define + start; peak RSS of the upload path; uses the lab lock.
bench-images: deps venv
	@KESTREL_LAB_STATE_DIR=$(LAB_DIR) flock /tmp/kestrel-lab.lock $(BIN)/python -m bench.images.bench

# The engine API vs direct engine_lib calls: pages of GET /vms over 10,000 VMs, a VM
# start on lab host h1 (a job, polled), requests/s on this machine; uses the lab lock.
bench-api: deps venv
	@KESTREL_LAB_STATE_DIR=$(LAB_DIR) flock /tmp/kestrel-lab.lock $(BIN)/python -m bench.api.bench

# The engine applying one VM poll's statistics of 500 stand-in hosts / 10,000 VMs (CPU per
# cycle vs the 15 s interval, rows/s) and history rollups, on SQLite and a throwaway PostgreSQL.
bench-stats: deps venv
	@$(BIN)/python -m bench.stats.bench

# Live snapshot and live merge through the agent vs virsh snapshot-create-as / blockcommit
# --active --pivot; incremental backup bytes vs what the guest changed; full backup vs
# qemu-img convert of the same disk; on lab host h1; uses the lab lock.
bench-snapshots: deps venv
	@KESTREL_LAB_STATE_DIR=$(LAB_DIR) flock /tmp/kestrel-lab.lock $(BIN)/python -m bench.snapshots.bench

lab-up: deps venv
	$(BIN)/kestrel-lab up --hosts $(LAB_HOSTS) --state-dir $(LAB_DIR)

lab-down: venv
	$(BIN)/kestrel-lab down --state-dir $(LAB_DIR)

clean:
	rm -rf .build tests/output .pytest_cache
