#!/usr/bin/env bash
# Source me: makes this checkout importable as the kestrel.virt collection
# (Ansible finds collections only under .../ansible_collections/<ns>/<name>).
_kestrel_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$_kestrel_root/.build/collections/ansible_collections/kestrel"
ln -sfn "$_kestrel_root" "$_kestrel_root/.build/collections/ansible_collections/kestrel/virt"
export ANSIBLE_COLLECTIONS_PATH="$_kestrel_root/.build/collections"
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
