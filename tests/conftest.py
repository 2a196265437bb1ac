"""pytest fixtures shared by every suite: the real lab (tests/lab), no mocks.

- `lab` (session): the default lab (LAB_DIR / LAB_*_PORT honoured), brought `up`
  once; stopped at the end of the session unless it was already running before.
- `throwaway_lab` (function): factory `throwaway_lab(**kw)` -> a fresh lab in a
  tmp folder on free ports from 22600-22699, always `down --purge`d after the test.
"""
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "collections", REPO / "tests", REPO / "tests" / "lab"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from lab import Lab, port_free  # noqa: E402
from labhandle import LabHandle  # noqa: E402

THROWAWAY_PORTS = range(22600, 22700)
THROWAWAY_BLOCK = 10  # vault, cluster, proxy, frontends...


def _up_or_fail(handle):
    proc = handle.labctl("up")
    if proc.returncode != 0:
        pytest.fail("lab up failed in %s:\n%s%s" % (handle.dir, proc.stdout, proc.stderr), pytrace=False)
    return proc


@pytest.fixture(scope="session")
def lab():
    """The running default lab (honours LAB_DIR, LAB_VAULT_PORT, LAB_PROXY_PORT, ...)."""
    handle = LabHandle(Lab())
    was_running = handle.dir.exists() and handle.running()
    _up_or_fail(handle)
    yield handle
    if not was_running:
        handle.labctl("down")


def _free_block(taken):
    for base in range(THROWAWAY_PORTS.start, THROWAWAY_PORTS.stop - THROWAWAY_BLOCK + 1, THROWAWAY_BLOCK):
        if base in taken:
            continue
        if all(port_free(p) for p in range(base, base + THROWAWAY_BLOCK)):
            return base
    raise RuntimeError("no free block of %d ports in 22600-22699 for a throwaway lab" % THROWAWAY_BLOCK)


@pytest.fixture
def throwaway_lab(tmp_path):
    """Factory: `throwaway_lab(vault_port=..., proxy_port=..., frontend_port_base=..., apps=[...], up=True)`."""
    made = []
    taken = set()

    def make(up=True, **kw):
        explicit = {"vault_port", "proxy_port", "frontend_port_base"} & set(kw)
        for attempt in range(3):
            base = _free_block(taken)
            taken.add(base)
            opts = dict(kw)
            lab = Lab(dir=opts.pop("dir", tmp_path / ("lab%d" % len(made))),
                      vault_port=opts.pop("vault_port", base),
                      proxy_port=opts.pop("proxy_port", base + 2),
                      frontend_port_base=opts.pop("frontend_port_base", base + 3),
                      apps=opts.pop("apps", None))
            if opts:
                raise TypeError("throwaway_lab: unknown options %s" % sorted(opts))
            handle = LabHandle(lab)
            made.append(handle)
            if not up:
                return handle
            proc = handle.labctl("up")
            if proc.returncode == 0:
                return handle
            # another session may have taken the block between our check and our start
            if explicit or "already in use" not in proc.stderr or attempt == 2:
                pytest.fail("lab up failed in %s:\n%s%s" % (handle.dir, proc.stdout, proc.stderr), pytrace=False)
            handle.labctl("down", "--purge")
        raise AssertionError("unreachable")

    yield make
    for handle in made:
        handle.labctl("down", "--purge")


def socket_closed(port, host="127.0.0.1"):
    """True when nothing accepts on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True
