#!/usr/bin/env bash
# Run ansible-test on the kestrel.virt collection artifact, the way Galaxy users get it.
#
#   scripts/ansible-test.sh sanity|units|integration [extra ansible-test arguments]
#
# Builds the collection with ansible-galaxy (so build_ignore is exercised too),
# installs it under <build dir>/collections/ansible_collections/kestrel/virt
# (where ansible-test insists a collection lives) and runs ansible-test there.
# The build dir is outside the checkout: inside it, ansible-test would list
# files with git, and git ignores build trees.
# Environment: PYTHON (default: the repo's .venv python), KESTREL_BUILD_DIR
# (default: $TMPDIR/kestrel-virt-ansible-test), ANSIBLE_TEST_PYTHON (default: 3.11).
set -euo pipefail

usage() { echo "usage: $0 sanity|units|integration [ansible-test arguments...]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
command=$1; shift
case "$command" in sanity|units|integration) ;; *) usage ;; esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
bin=$(dirname "$python")
build=${KESTREL_BUILD_DIR:-${TMPDIR:-/tmp}/kestrel-virt-ansible-test}
test_python=${ANSIBLE_TEST_PYTHON:-3.11}
collections=$build/collections
installed=$collections/ansible_collections/kestrel/virt

# ansible-test bootstraps pip in each of its virtual environments with a
# get-pip script it downloads from ci-files.testing.ansible.com, which is not
# reachable here, and runs pip with PIP_CONFIG_FILE=/dev/null. The stand-in
# (ansible-test looks for it in its cache first) installs the pip that ships
# with Python, then the exact pip version ansible-test asked for.
install_get_pip_stand_in() {
    local version cache
    version=$("$python" - <<'PY'
import re
from pathlib import Path
import ansible_test
source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
print(re.search(r"pip='([0-9.]+)'", source.read_text()).group(1))
PY
)
    cache=$HOME/.ansible/test/cache/get_pip_${version//./_}.py
    [[ -f $cache ]] && grep -q 'kestrel.virt stand-in' "$cache" && return 0
    mkdir -p "$(dirname "$cache")"
    cat >"$cache" <<'PY'
"""kestrel.virt stand-in for get-pip.py: ensurepip, then pip install with the given arguments."""
import os
import subprocess
import sys

# Options only the real get-pip.py understands.
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"], check=True,
               stdout=subprocess.DEVNULL)
argv = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
cert = os.environ.get("PIP_CERT") or (CA_BUNDLE if os.path.exists(CA_BUNDLE) else None)
command = [sys.executable, "-m", "pip", "install", "--quiet"]
if cert:
    command += ["--cert", cert]
sys.exit(subprocess.run(command + argv).returncode)
PY
}

build_and_install() {
    rm -rf "$build/dist" "$installed"
    mkdir -p "$build/dist" "$collections"
    "$bin/ansible-galaxy" collection build --force --output-path "$build/dist" "$repo" >/dev/null
    ANSIBLE_GALAXY_COLLECTIONS_PATH_WARNING=false "$bin/ansible-galaxy" collection install --force --no-deps \
        -p "$collections" "$build"/dist/kestrel-virt-*.tar.gz >/dev/null
    echo "kestrel.virt installed from $(basename "$build"/dist/kestrel-virt-*.tar.gz) into $installed"
}

install_get_pip_stand_in
build_and_install
cd "$installed"
export PATH=$bin:$PATH
extra=()
# Integration targets run the modules here, against a throwaway engine
# directory each (tests/integration/targets/setup_engine), with this Python.
[[ $command == integration ]] && extra=(--local)
exec "$bin/ansible-test" "$command" "${extra[@]}" --python "$test_python" --color no "$@"
