#!/usr/bin/env bash
# Run `ansible-test sanity` for every ansible-core line meta/runtime.yml's
# requires_ansible admits, each on a copy of the collection under a real
# ansible_collections/privsec/vault_rotate folder (.cache/sanity/<line>/),
# offline-safe.
#
#   scripts/sanity.sh               every line, oldest first (SANITY_LINES overrides)
#   scripts/sanity.sh 2.21          one line (2.19, 2.20, 2.21)
#   scripts/sanity.sh newest|older  the newest line | every other one (make test:
#                                   `make lint` runs the newest, the others run
#                                   beside pytest)
#
#  - each line runs the ansible-test of its own ansible-core, from the venv
#    scripts/core_venv.py gives it (2.19: .cache/venv-oldest from
#    tests/requirements-oldest.txt; 2.20: .cache/venv-2.20 from
#    tests/requirements-2.20.txt; 2.21: .venv from requirements-controller.txt),
#    with that venv's Python as the controller Python; ansible-test reads the
#    line's tests/sanity/ignore-<line>.txt;
#  - the copy is what ships: the tarball `ansible-galaxy collection build`
#    makes of the working tree, unpacked (galaxy.yml build_ignore leaves out
#    what is not the collection: venvs, labs, caches, the checkout's tools and
#    config, the pytest suites, the labs and molecule, which are controller-only
#    and linted by ruff; of tests/ only tests/sanity ships); the copy gets a
#    throwaway git repo so ansible-test lists its files (see below);
#  - ansible-test's pip bootstrap (get-pip, normally downloaded) is provided
#    locally by scripts/ansible_test_get_pip.py;
#  - every test runs with the controller Python (--venv); `compile` and
#    `import` also run for each other Python >= 3.9 the line supports that
#    exists here: ansible-test looks for `pythonX.Y` on PATH, so a folder of
#    symlinks to the real interpreters (pyenv versions by full path: its shims
#    are broken) is put first on PATH.
#
# Env: SANITY_LINES="2.19 2.20" the lines to run when none is given;
#      SANITY_TESTS="validate-modules yamllint" runs only those tests with the
#      controller Python; SANITY_EXTRA_PYTHONS=0 skips the other Pythons;
#      SANITY_DIR=/tmp/x puts the copies there instead of .cache/sanity/.
# Prints the seconds each line took; exit 1 when any line failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$REPO/.venv}"
export VENV
COPY_ROOT="${SANITY_DIR:-$REPO/.cache/sanity}"

say() { printf 'sanity: %s\n' "$*"; }

all_lines="$("$VENV/bin/python" "$REPO/scripts/core_venv.py" --lines)"
read -r -a all <<<"$all_lines"
if [ "$#" -gt 0 ]; then asked=("$@"); else read -r -a asked <<<"${SANITY_LINES:-$all_lines}"; fi
lines=()
for line in "${asked[@]}"; do
    case "$line" in
        newest) lines+=("${all[-1]}");;
        older) lines+=("${all[@]:0:${#all[@]}-1}");;
        *) case " $all_lines " in *" $line "*) lines+=("$line");;
               *) say "unknown line $line (supported: $all_lines, newest, older)"; exit 2;; esac;;
    esac
done

pyenv_root=""
command -v pyenv >/dev/null 2>&1 && pyenv_root="$(pyenv root 2>/dev/null || true)"
pyenv_root="${pyenv_root:-${PYENV_ROOT:-$HOME/.pyenv}}"

# ansible-test, minus this machine's harmless pip index noise.
ansible_test() {
    local status
    ansible-test "$@" 2>&1 | { grep -v -e "is ignored: it is neither a file nor a directory" || true; }
    status="${PIPESTATUS[0]}"
    return "$status"
}

# sanity_line LINE: one line, in a subshell of its own (PATH, cwd); status 0 =
# passed. Called in an `||` list, where `set -e` does not apply: every step
# that must not fail says `|| return 1`.
sanity_line() (
    local line="$1" core_venv dest pybin controller supported v cand t0 rc=0
    core_venv="$("$VENV/bin/python" "$REPO/scripts/core_venv.py" "$line")" || return 1
    dest="$COPY_ROOT/$line/ansible_collections/privsec/vault_rotate"
    pybin="$COPY_ROOT/$line/pythons"

    # 1. Fresh copy of the collection: what ships, the built tarball unpacked.
    rm -rf "$dest" && mkdir -p "$dest" || return 1
    tar -C "$dest" -xzf "$tarball" || return 1
    # ansible-test lists content with git when it finds a .git in the folder or
    # any parent: without its own repository the copy would resolve to the outer
    # repo, where .cache/ is ignored, and every target would be skipped. A
    # throwaway repository with everything staged fixes that (tests/output,
    # ansible-test's own output, is left out as the checkout's .gitignore does).
    git -C "$dest" init -q && printf 'tests/output/\n' >>"$dest/.git/info/exclude" && git -C "$dest" add -A || return 1

    # 2. Local pip bootstrap for ansible-test's venvs (the pip this line's
    #    ansible-test wants).
    "$core_venv/bin/python" "$REPO/scripts/ansible_test_get_pip.py" >/dev/null || return 1

    # 3. pythonX.Y symlinks to every working interpreter >= 3.9 this line's
    #    ansible-test supports (managed hosts: Python >= 3.9).
    controller="$("$core_venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" || return 1
    supported="$("$core_venv/bin/python" -c 'from ansible_test._util.target.common.constants import \
REMOTE_ONLY_PYTHON_VERSIONS as r, CONTROLLER_PYTHON_VERSIONS as c
print(" ".join(v for v in r + c if tuple(map(int, v.split("."))) >= (3, 9)))')" || return 1
    rm -rf "$pybin" && mkdir -p "$pybin" || return 1
    local extra=()
    for v in $supported; do
        for cand in "$pyenv_root"/versions/"$v".*/bin/python"$v" "/usr/local/bin/python$v" "/usr/bin/python$v"; do
            [ -x "$cand" ] || continue
            # A candidate counts only if it runs and can make a venv.
            "$cand" -c 'import venv, ensurepip' >/dev/null 2>&1 || continue
            ln -sf "$cand" "$pybin/python$v"
            [ "$v" != "$controller" ] && extra+=("$v")
            break
        done
    done
    export PATH="$pybin:$core_venv/bin:$PATH"

    cd "$dest" || return 1
    if [ -n "${SANITY_TESTS:-}" ]; then
        local tests=()
        for t in $SANITY_TESTS; do tests+=(--test "$t"); done
        say "$line: ansible-test sanity ${SANITY_TESTS} (ansible-core $(ansible --version | sed -n '1s/.*core \([^]]*\)].*/\1/p'), Python $controller)"
        ansible_test sanity --venv --python "$controller" --color no "${tests[@]}" || rc=$?
        return "$rc"
    fi
    t0=$SECONDS
    say "$line: ansible-test sanity, all tests (ansible-core $(ansible --version | sed -n '1s/.*core \([^]]*\)].*/\1/p'), Python $controller)"
    ansible_test sanity --venv --python "$controller" --color no || rc=$?
    say "$line: all tests on $controller: $((SECONDS - t0)) s"
    if [ "${SANITY_EXTRA_PYTHONS:-1}" != 0 ] && [ "${#extra[@]}" -gt 0 ]; then
        t0=$SECONDS
        for v in "${extra[@]}"; do
            say "$line: ansible-test sanity compile + import (Python $v)"
            ansible_test sanity --venv --python "$v" --color no --test compile --test import || rc=$?
        done
        say "$line: compile + import on ${extra[*]}: $((SECONDS - t0)) s"
    fi
    return "$rc"
)

# What ships: `ansible-galaxy collection build` of the working tree (galaxy.yml
# build_ignore decides), once for every line.
build="$COPY_ROOT/build"
rm -rf "$build"
mkdir -p "$build"
"$VENV/bin/ansible-galaxy" collection build --output-path "$build" "$REPO" >/dev/null
tarball="$(ls "$build"/*.tar.gz)"

summary=()
failed=()
for line in "${lines[@]}"; do
    t0=$SECONDS
    rc=0
    sanity_line "$line" || rc=$?
    if [ "$rc" = 0 ]; then summary+=("$line passed $((SECONDS - t0)) s"); else summary+=("$line FAILED $((SECONDS - t0)) s"); failed+=("$line"); fi
done
say "$(IFS=,; printf '%s' "${summary[*]}" | sed 's/,/, /g')"
if [ "${#failed[@]}" -gt 0 ]; then
    say "FAILED on ansible-core ${failed[*]}: see the output above (copies in $COPY_ROOT/<line>/)"
    exit 1
fi
