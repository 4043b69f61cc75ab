#!/usr/bin/env bash
# Check that kestrel.virt goes into an AWX execution environment:
#   1. ansible-builder introspect reads the collection's meta/execution-environment.yml
#      (from the collection as Galaxy users install it) and finds its Python and
#      system requirements;
#   2. ansible-builder create turns an EE definition that installs the collection and
#      the kestrel-engine wheel (docs/awx.md) into a build context without error.
# Needs no container engine: nothing is built or pulled.
# Environment: PYTHON (default: the repo's .venv python), KESTREL_EE_DIR (default: a temp dir).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
bin=$(dirname "$python")
work=${KESTREL_EE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/kestrel-ee.XXXXXX")}
mkdir -p "$work/dist" "$work/collections" "$work/wheels"

"$bin/ansible-galaxy" collection build --force --output-path "$work/dist" "$repo" >/dev/null
tarball=$(ls "$work"/dist/kestrel-virt-*.tar.gz)
ANSIBLE_GALAXY_COLLECTIONS_PATH_WARNING=false "$bin/ansible-galaxy" collection install --force \
    --no-deps -p "$work/collections" "$tarball" >/dev/null

echo "==> ansible-builder introspect (meta/execution-environment.yml of the installed collection)"
introspected=$("$bin/ansible-builder" introspect "$work/collections")
echo "$introspected"
for needed in "kestrel-engine" "openssh-client"; do
    grep -q -- "$needed" <<<"$introspected" || {
        echo "introspect did not find $needed in kestrel.virt's requirements" >&2; exit 1; }
done

echo "==> ee/requirements.lock: every package the engine needs, pinned and hashed"
# pip refuses, in --require-hashes mode, any package (dependencies included) that is not
# pinned with a hash; the dry run resolves without installing anything.
"$bin/pip" install --quiet --dry-run --ignore-installed --require-hashes --only-binary :all: \
    -r "$repo/ee/requirements.lock"

# The engine library itself (the agent wheel carries only what a host runs).
"$bin/pip" wheel --quiet --no-deps -w "$work/wheels" "$repo" >/dev/null
cp "$tarball" "$repo/ee/requirements.lock" "$work/"
cat >"$work/execution-environment.yml" <<YAML
version: 3
images:
  base_image:
    name: quay.io/ansible/awx-ee:latest
dependencies:
  galaxy:
    collections:
      - name: /build/$(basename "$tarball")
        type: file
additional_build_files:
  - src: wheels
    dest: wheels
  - src: $(basename "$tarball")
    dest: .
  - src: requirements.lock
    dest: .
additional_build_steps:
  prepend_builder:
    - RUN pip install --require-hashes -r /build/requirements.lock
    - RUN pip install --no-deps /build/wheels/kestrel_engine-*.whl
YAML

echo "==> ansible-builder create"
(cd "$work" && "$bin/ansible-builder" create -f execution-environment.yml -c context \
    --output-filename Containerfile)
test -s "$work/context/Containerfile"
ls "$work/context/_build/wheels"/kestrel_engine-*.whl >/dev/null
echo "build context: $work/context (Containerfile, collection, kestrel-engine wheel)"
[[ -n ${KESTREL_EE_DIR:-} ]] || rm -rf "$work"
