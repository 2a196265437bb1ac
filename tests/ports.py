"""Ports for the labs, forwarders and test servers the suites make, reserved across processes.

`make test` runs pytest-xdist workers side by side, and a developer may run a
second session beside it: a port block checked free by one process can be taken
by another before its server binds. A block is ours while this process holds an
flock on <tmp>/privsec-vault-rotate-ports/<first port>.lock AND every port in it
was free when the lock was taken; the lock goes with the process (crash
included), so nothing needs cleaning up. Every suite picks its ports here, each
from a range of its own:

    21500-21999  test_control's throwaway labs (blocks of 10)
    22600-22699  conftest's `throwaway_lab` (blocks of 10)
    22700-22799  the `lab` fixture of xdist workers other than gw0 (blocks of 10)
    23200-23299  test_tls_probe's local servers (single ports)
    23300-23399  the CONNECT proxies of test_vault_proxy / test_vault_namespace_proxy (single ports)
    28600-28699  test_molecule's private lab (blocks of 10)
    30000-30999  faults.py's resetting forwarders (single ports)

The default lab (22400, 22300, 22443...) is not reserved here: gw0, or a
session without xdist, uses it as `labctl.py` does.
"""
import fcntl
import os
import tempfile
from pathlib import Path

from lab import port_free  # tests/lab, on sys.path from tests/conftest.py

LOCK_DIR = Path(tempfile.gettempdir()) / "privsec-vault-rotate-ports"
LOOPBACK = "127.0.0.1"

_held = {}  # first port -> fd of its lock file


def reserve(ports, size=1, host=LOOPBACK):
    """The first port of a free block of `size` ports in range `ports` (blocks start at
    ports.start + k * size), held by this process until release()."""
    LOCK_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
    for base in range(ports.start, ports.stop - size + 1, size):
        if base in _held:
            continue
        fd = os.open(str(LOCK_DIR / ("%d.lock" % base)), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if all(port_free(p, host) for p in range(base, base + size)):
            _held[base] = fd
            return base
        os.close(fd)
    raise RuntimeError("no free block of %d port(s) in %d-%d (held here: %s; locks in %s): stop stray labs "
                       "(tests/lab/labctl.py --dir DIR down) or other test sessions"
                       % (size, ports.start, ports.stop - 1, sorted(_held) or "none", LOCK_DIR))


def release(base):
    """Give back a block reserve() returned (a no-op for one not held)."""
    fd = _held.pop(base, None)
    if fd is not None:
        os.close(fd)
