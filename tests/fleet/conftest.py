"""Fixtures of the fleet suite (marker `fleet`): one fleet of real hosts per test session.

- `fleet` (session): a fleet made from nothing in `FLEET_TEST_DIR` (default
  <repo>/.cache/fleet/test) on 10.212.FLEET_TEST_NET.0/24 (default 13, so a
  `make fleet-up` fleet on 12 can run beside it), brought down and purged as
  soon as the last fleet test is done (the rest of `make test` does not need
  it); that teardown fails when anything of it is left on the machine.
  FLEET_TEST_KEEP=1 keeps it up (and reuses a running one).
- `healthy_fleet` (function): the session fleet, repaired before the test when an
  earlier test left it broken (drop-ins, sshd, sealed Vault, stopped units).
Root only: without root every fleet test is skipped.
"""
import os
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for _p in (HERE, HERE.parent / "lab"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from fleet import Fleet, FleetError  # noqa: E402

REPO = HERE.parents[1]
TEST_DIR = Path(os.environ.get("FLEET_TEST_DIR") or REPO / ".cache" / "fleet" / "test")
TEST_NET = int(os.environ.get("FLEET_TEST_NET") or 13)


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="the fleet lab needs root (network namespaces, mounts, cgroups)")
    for item in items:
        if "fleet" in item.keywords:
            item.add_marker(skip)


_ACTIVE = {}


def _fleet_down():
    """Bring the session fleet down (once): at the end of the session, or as soon as the last
    fleet test is done (the rest of `make test` does not need its hosts)."""
    f = _ACTIVE.pop("fleet", None)
    if f is None or os.environ.get("FLEET_TEST_KEEP") == "1":
        return
    t0 = time.monotonic()
    f.down(purge=True, log=lambda _m: None)
    left = f.leftovers()
    print("fleet: session fleet down in %.1f s" % (time.monotonic() - t0))
    assert left == [], "the fleet left things behind: %s" % left


def pytest_runtest_teardown(item, nextitem):
    if nextitem is None or HERE not in Path(str(nextitem.path)).parents:
        _fleet_down()


@pytest.fixture(scope="session")
def fleet():
    keep = os.environ.get("FLEET_TEST_KEEP") == "1"
    f = Fleet(dir=TEST_DIR, net=TEST_NET)
    if not keep:
        f.down(purge=True, log=lambda _m: None)
        f = Fleet(dir=TEST_DIR, net=TEST_NET)
    t0 = time.monotonic()
    try:
        f.up(log=lambda m: print(m))
    except FleetError as exc:
        pytest.fail("fleet up failed: %s" % exc, pytrace=False)
    f.up_seconds = time.monotonic() - t0
    print("fleet: session fleet up in %.1f s" % f.up_seconds)
    _ACTIVE["fleet"] = f
    yield f
    _fleet_down()


def repair(f):
    """Undo what a failed test may have left: fault drop-ins and hook files, a stopped sshd,
    a sealed Vault, stopped units. Returns what it did."""
    did = []
    for h in f.hosts.values():
        if not f.pid1(h):
            continue
        for user in h.users:
            home = h.dir / "home" / user
            dropins = list((home / ".config" / "systemd" / "user").glob("*.service.d/fleet-fault.conf"))
            for d in dropins:
                d.unlink()
                did.append("removed %s" % d)
            for hook in (home / ".fleet-fault").glob("*") if (home / ".fleet-fault").exists() else []:
                hook.unlink()
            if dropins:
                f.systemctl(h, "daemon-reload", user=user)
        if f.systemctl(h, "is-active", "ssh.service").returncode != 0:
            f.systemctl(h, "start", "ssh.service")
            did.append("started sshd on %s" % h.name)
    for conf_app in f.apps:
        conf = f.p["apps"][conf_app]["nginx_conf"]
        want = f._nginx_conf(f._unit("nginx-%s" % conf_app))
        if conf.read_text() != want:
            conf.write_text(want)
            did.append("restored %s" % conf)
    did += f.up(log=lambda _m: None)
    return did


@pytest.fixture
def healthy_fleet(fleet):
    did = repair(fleet)
    if did:
        print("fleet repaired before the test: %s" % "; ".join(did))
    st = fleet.status()
    assert st["healthy"], "the fleet is not healthy before the test: %s" % {
        k: v for k, v in st.items() if k in ("units", "seal", "hosts")}
    return fleet
