"""pytest fixtures shared by every suite: the real lab (tests/lab), no mocks.

- `lab` (session): the default lab (LAB_DIR / LAB_*_PORT honoured), brought `up`
  once; stopped at the end of the session unless it was already running before.
  Under pytest-xdist (`make test` runs workers side by side), worker gw0 uses the
  default lab and every other worker a lab of its own (.lab/xdist-gwN, ports
  reserved in 22700-22799), purged at the end: tests that rotate the session lab
  never race another worker's run on it.
- `throwaway_lab` (function): factory `throwaway_lab(**kw)` -> a fresh lab in a
  tmp folder on a port block reserved in 22600-22699 (tests/ports.py), always
  `down --purge`d after the test.

Test order and the workers' scheduling units: see xdist_group() below.
"""
import json
import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO / "collections", REPO / "tests", REPO / "tests" / "lab"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import ports  # noqa: E402
from lab import Lab  # noqa: E402
from labhandle import LabHandle  # noqa: E402

THROWAWAY_PORTS = range(22600, 22700)
WORKER_LAB_PORTS = range(22700, 22800)
BLOCK = 10  # vault, cluster, proxy, frontends...


def _up_or_fail(handle):
    proc = handle.labctl("up")
    if proc.returncode != 0:
        pytest.fail("lab up failed in %s:\n%s%s" % (handle.dir, proc.stdout, proc.stderr), pytrace=False)
    return proc


def _xdist_worker():
    """'gw1', 'gw2'... for an xdist worker with a lab of its own; None for gw0 or no xdist."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return worker if worker and worker != "gw0" else None


@pytest.fixture(scope="session")
def lab():
    """The running session lab: the default one (honours LAB_DIR, LAB_VAULT_PORT, LAB_PROXY_PORT, ...),
    or for xdist workers past gw0 one of the worker's own, which LAB_DIR then names for every child."""
    worker = _xdist_worker()
    if worker is None:
        handle = LabHandle(Lab())
        was_running = handle.dir.exists() and handle.running()
        _up_or_fail(handle)
        yield handle
        if not was_running:
            handle.labctl("down")
        return
    labdir = REPO / ".lab" / ("xdist-" + worker)
    if (labdir / "lab.json").exists():  # left by an interrupted session: its ports may differ
        left = json.loads((labdir / "lab.json").read_text())
        LabHandle(Lab(dir=labdir, vault_port=left["ports"]["vault"], proxy_port=left["ports"]["proxy"],
                      frontend_port_base=left["ports"]["frontend_base"], apps=left["apps"])).labctl("down", "--purge")
    base = ports.reserve(WORKER_LAB_PORTS, BLOCK)
    handle = LabHandle(Lab(dir=labdir, vault_port=base, proxy_port=base + 2, frontend_port_base=base + 3))
    os.environ["LAB_DIR"] = str(labdir)
    try:
        _up_or_fail(handle)
        yield handle
    finally:
        handle.labctl("down", "--purge")
        ports.release(base)


@pytest.fixture
def throwaway_lab(tmp_path):
    """Factory: `throwaway_lab(vault_port=..., proxy_port=..., frontend_port_base=..., apps=[...], up=True,
    ports_from=range(...))`: the ports not given come from a block of 10 reserved in `ports_from`
    (default 22600-22699), held until the test ends."""
    made = []
    held = []

    def make(up=True, ports_from=THROWAWAY_PORTS, **kw):
        opts = dict(kw)
        base = None
        if {"vault_port", "proxy_port", "frontend_port_base"} - set(opts):
            base = ports.reserve(ports_from, BLOCK)
            held.append(base)
        lab = Lab(dir=opts.pop("dir", tmp_path / ("lab%d" % len(made))),
                  vault_port=opts.pop("vault_port", base),
                  proxy_port=opts.pop("proxy_port", base and base + 2),
                  frontend_port_base=opts.pop("frontend_port_base", base and base + 3),
                  apps=opts.pop("apps", None))
        if opts:
            raise TypeError("throwaway_lab: unknown options %s" % sorted(opts))
        handle = LabHandle(lab)
        made.append(handle)
        if up:
            _up_or_fail(handle)
        return handle

    yield make
    for handle in made:
        handle.labctl("down", "--purge")
    for base in held:
        ports.release(base)


def socket_closed(port, host="127.0.0.1"):
    """True when nothing accepts on host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True


# Longest first, so that `make test`'s xdist workers end together (durations of a
# serial run on the 2-core machine, docs/development.md "Test suites"); the rest keeps its order.
LONGEST_FIRST = (
    "tests/integration/test_molecule.py",  # ~8.5 min, one group: the scenarios share a private lab
    "tests/integration/test_faults.py",    # ~10 min over 13 tests, each on a throwaway lab
    "tests/fleet/",                        # ~3.5 min, one group: one fleet, fixed network namespaces
    "tests/integration/test_install.py",
    "tests/integration/test_dropin.py",
    "tests/integration/test_control.py",
    "tests/integration/test_ansible_versions.py",
    "tests/integration/test_secrets.py",
)
# Files whose tests share nothing but the session lab fixture: each test may run on any worker.
SPLIT_BY_TEST = ("tests/integration/test_faults.py", "tests/integration/test_dropin.py",
                 "tests/integration/test_control.py")


def _rank(nodeid):
    for rank, prefix in enumerate(LONGEST_FIRST):
        if nodeid.startswith(prefix):
            return rank
    return len(LONGEST_FIRST)


def xdist_group(nodeid):
    """The scheduling unit of a test under `make test`'s workers: the fleet is one unit,
    each test of SPLIT_BY_TEST one, every other file one (its tests keep their order and
    module fixtures on one worker)."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/fleet/"):
        return "fleet"
    return nodeid if path in SPLIT_BY_TEST else path


def pytest_collection_modifyitems(config, items):
    """Longest first (stable: every file keeps its own order)."""
    items.sort(key=lambda item: _rank(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """xdist's scheduling by scope, the scopes being xdist_group() and taken in the
    collection order above. (Not `--dist loadgroup`: with pytest 9 the xdist_group mark
    no longer reaches the scheduler, xdist 3.8 rewrites item._nodeid, which pytest 9
    no longer reads; every test then ran wherever.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return xdist_group(nodeid)

    config.option.loadscopereorder = False
    return GroupScheduling(config, log)
