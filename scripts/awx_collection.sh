#!/usr/bin/env bash
# awx.awx for the development tools: ansible-lint (and ansible-doc, ansible-playbook
# --syntax-check) check extensions/awx/configure.yml against the real modules'
# argument specs, not against mocks.
#
# Galaxy is not reachable from the machines this project runs on (PyPI is), and
# awx.awx is not a Python package: it is taken from the `ansible` community
# package on PyPI, the last release that bundles it (ansible 13.8.0 bundles
# awx.awx 24.6.1, the last AWX release; ansible 14 no longer does). Only the
# wheel is downloaded (--no-deps, about 55 MB, pip's cache keeps it), nothing is
# installed into the venv; awx/awx is unpacked into
# collections/ansible_collections/awx/awx (ignored by git, by the collection
# build and by ansible-lint's own checks), which ansible.cfg's collections_path
# already searches. A stamp (its MANIFEST.json version) makes a rerun a no-op.
#
#   VENV=dir   the venv whose pip downloads (default: .venv in the repo)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
ANSIBLE_PACKAGE=13.8.0
AWX_VERSION=24.6.1
DEST="$REPO/collections/ansible_collections/awx/awx"

say() { printf 'awx_collection: %s\n' "$*"; }

if [ -f "$DEST/MANIFEST.json" ] && grep -q "\"version\": \"$AWX_VERSION\"" "$DEST/MANIFEST.json"; then
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
say "fetching awx.awx $AWX_VERSION from the ansible $ANSIBLE_PACKAGE wheel (PyPI)"
"$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" \
    "ansible==$ANSIBLE_PACKAGE" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/python" - "$tmp" "$DEST" "$AWX_VERSION" <<'EOF'
import glob, json, os, shutil, sys, zipfile
tmp, dest, want = sys.argv[1:]
wheel = glob.glob(os.path.join(tmp, "ansible-*.whl"))[0]
prefix = "ansible_collections/awx/awx/"
stage = os.path.join(tmp, "stage")
with zipfile.ZipFile(wheel) as zf:
    members = [m for m in zf.namelist() if m.startswith(prefix) and not m.endswith("/")]
    if not members:
        sys.exit("awx_collection: %s holds no %s" % (os.path.basename(wheel), prefix))
    for m in members:
        zf.extract(m, stage)
got = json.load(open(os.path.join(stage, prefix, "MANIFEST.json")))["collection_info"]["version"]
if got != want:
    sys.exit("awx_collection: the wheel bundles awx.awx %s, expected %s" % (got, want))
shutil.rmtree(dest, ignore_errors=True)
os.makedirs(os.path.dirname(dest), exist_ok=True)
shutil.move(os.path.join(stage, prefix), dest)
EOF
say "ready: $DEST (awx.awx $AWX_VERSION)"
