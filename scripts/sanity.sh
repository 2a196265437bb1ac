#!/usr/bin/env bash
# Run `ansible-test sanity` on a copy of the collection under a real
# ansible_collections/privsec/vault_rotate folder (.cache/), offline-safe.
#
#  - the copy is what ships: the tarball `ansible-galaxy collection build`
#    makes of the working tree, unpacked (galaxy.yml build_ignore leaves out
#    what is not the collection: venvs, labs, caches, the checkout's tools and
#    config, the pytest suites, the labs and molecule, which are controller-only
#    and linted by ruff; of tests/ only tests/sanity ships); the copy gets a
#    throwaway git repo so ansible-test lists its files (see below);
#  - ansible-test's pip bootstrap (get-pip, normally downloaded) is provided
#    locally by scripts/ansible_test_get_pip.py;
#  - every test runs with the controller Python (--venv); `compile` and
#    `import` also run for each other supported Python 3.9+ that exists here:
#    ansible-test looks for `pythonX.Y` on PATH, so a folder of symlinks to the
#    real interpreters (pyenv versions by full path: its shims are broken) is
#    put first on PATH.
#
# Env: SANITY_TESTS="validate-modules yamllint" runs only those tests with the
#      controller Python; SANITY_EXTRA_PYTHONS=0 skips the other Pythons;
#      SANITY_DIR=/tmp/x puts the copy there instead of .cache/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
COPY_ROOT="${SANITY_DIR:-$REPO/.cache}"
DEST="$COPY_ROOT/ansible_collections/privsec/vault_rotate"
PYBIN="$COPY_ROOT/pythons"

say() { printf 'sanity: %s\n' "$*"; }

# 1. Fresh copy of the collection: what ships, the tarball `ansible-galaxy
#    collection build` makes of the working tree (galaxy.yml build_ignore
#    decides), unpacked.
rm -rf "$DEST" "$COPY_ROOT/build"
mkdir -p "$DEST" "$COPY_ROOT/build"
"$VENV/bin/ansible-galaxy" collection build --output-path "$COPY_ROOT/build" "$REPO" >/dev/null
tar -C "$DEST" -xzf "$(ls "$COPY_ROOT"/build/*.tar.gz)"
# ansible-test lists content with git when it finds a .git in the folder or any
# parent: without its own repository the copy would resolve to the outer repo,
# where .cache/ is ignored, and every target would be skipped. A throwaway
# repository with everything staged fixes that (tests/output, ansible-test's
# own output, is left out as the checkout's .gitignore does).
git -C "$DEST" init -q
printf 'tests/output/\n' >>"$DEST/.git/info/exclude"
git -C "$DEST" add -A

# 2. Local pip bootstrap for ansible-test's venvs.
"$VENV/bin/python" "$REPO/scripts/ansible_test_get_pip.py" >/dev/null

# 3. pythonX.Y symlinks to every working interpreter (3.9 .. 3.14).
rm -rf "$PYBIN"
mkdir -p "$PYBIN"
controller="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
pyenv_root=""
command -v pyenv >/dev/null 2>&1 && pyenv_root="$(pyenv root 2>/dev/null || true)"
pyenv_root="${pyenv_root:-${PYENV_ROOT:-$HOME/.pyenv}}"
extra=()
for v in 3.9 3.10 3.11 3.12 3.13 3.14; do
    for cand in "$pyenv_root"/versions/"$v".*/bin/python"$v" "/usr/local/bin/python$v" "/usr/bin/python$v"; do
        [ -x "$cand" ] || continue
        # A candidate counts only if it runs and can make a venv.
        "$cand" -c 'import venv, ensurepip' >/dev/null 2>&1 || continue
        ln -sf "$cand" "$PYBIN/python$v"
        [ "$v" != "$controller" ] && extra+=("$v")
        break
    done
done
export PATH="$PYBIN:$VENV/bin:$PATH"

# ansible-test, minus this machine's harmless pip index noise.
ansible_test() {
    local status
    ansible-test "$@" 2>&1 | { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
    status="${PIPESTATUS[0]}"
    return "$status"
}

cd "$DEST"
rc=0
if [ -n "${SANITY_TESTS:-}" ]; then
    tests=()
    for t in $SANITY_TESTS; do tests+=(--test "$t"); done
    say "ansible-test sanity ${SANITY_TESTS} (Python $controller)"
    ansible_test sanity --venv --python "$controller" --color no "${tests[@]}" || rc=$?
    exit "$rc"
fi

say "ansible-test sanity, all tests (Python $controller)"
ansible_test sanity --venv --python "$controller" --color no || rc=$?
if [ "${SANITY_EXTRA_PYTHONS:-1}" != 0 ]; then
    for v in "${extra[@]}"; do
        say "ansible-test sanity compile + import (Python $v)"
        ansible_test sanity --venv --python "$v" --color no --test compile --test import || rc=$?
    done
fi
[ "$rc" = 0 ] && say "passed (controller $controller; compile/import also on: ${extra[*]:-none})"
exit "$rc"
