#!/usr/bin/env bash
# make demo: two lab hosts, a playbook that deploys them and boots a real
# guest through the engine, then everything torn down again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/collection-path.sh
LAB_DIR=${LAB_DIR:-/srv/kestrel-lab}
export PATH="$PWD/.venv/bin:$PATH" ANSIBLE_FORCE_COLOR=${ANSIBLE_FORCE_COLOR:-1}

step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*"; }

step "Building the tiny test guest (Debian kernel + busybox initramfs) into $LAB_DIR/shared/images"
kestrel-lab guest --dest "$LAB_DIR/shared/images"

step "Bringing up 2 lab hosts (network namespaces, each with its own libvirtd, virtlogd and sshd)"
ENGINE_DIR="$LAB_DIR/engine"
teardown() {
  step "Stopping the engine loop and tearing the lab down"
  if [ -s "$ENGINE_DIR/engine.pid" ]; then kill "$(cat "$ENGINE_DIR/engine.pid")" 2>/dev/null || true; fi
  kestrel-lab down --state-dir "$LAB_DIR"
}
trap teardown EXIT
kestrel-lab up --hosts 2 --state-dir "$LAB_DIR"

step "Running playbooks/demo.yml: engine init, host role on both hosts, cluster, VM lifecycle"
ansible-playbook -i "$LAB_DIR/inventory.yml" playbooks/demo.yml \
  -e "kestrel_lab_dir=$LAB_DIR"

step "The engine's audit log of this run (kestrel events)"
kestrel events --engine-dir "$ENGINE_DIR" --limit 16

step "Demo finished: the VM booted on a lab host, was stopped and removed"
