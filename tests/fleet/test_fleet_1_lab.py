"""The fleet lab itself: separate hosts (network, sshd, users, files, systemd, user managers), SSH
with host key checking and become, and `up` from nothing / `down` that leaves nothing behind."""
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from fleet import Fleet
from fleetctl import ssh_argv

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

# What a fleet host runs as system units: the minimal set, nothing of the machine's own.
SYSTEM_SERVICES = {"dbus.service", "systemd-journald.service", "systemd-logind.service", "ssh.service",
                   "systemd-user-sessions.service"}


def _in(fleet, host, *argv, user=None):
    proc = fleet.host_exec(host, list(argv), user=user)
    assert proc.returncode == 0, (host, argv, proc.stderr)
    return proc.stdout.strip()


def test_hosts_are_separate_machines(fleet):
    info = fleet.info
    machine_passwd = Path("/etc/passwd").read_text()
    marker = Path("/tmp/fleet-lab-marker-%d" % os.getpid())
    marker.write_text("the machine's /tmp\n")
    try:
        ids = set()
        for name, h in info["hosts"].items():
            assert _in(fleet, name, "hostname") == name
            assert _in(fleet, name, "cat", "/proc/1/comm") == "systemd", "PID 1 of %s is not systemd" % name
            ids.add(_in(fleet, name, "cat", "/etc/machine-id"))
            addrs = _in(fleet, name, "ip", "-4", "-o", "addr", "show", "dev", "eth0")
            assert " %s/24 " % h["address"] in addrs, addrs
            # its own users: on this host, nowhere else
            users = set(h["users"])
            passwd = {line.split(":")[0] for line in _in(fleet, name, "cat", "/etc/passwd").splitlines()}
            assert users <= passwd
            others = {u for n, o in info["hosts"].items() if n != name for u in o["users"]} - users
            assert not (others & passwd), "users of other hosts on %s: %s" % (name, others & passwd)
            assert set(_in(fleet, name, "ls", "/home").split()) == users
            # private /tmp, the fleet's folder hidden, the controller's /root not there
            assert _in(fleet, name, "sh", "-c", "ls -A %s || true" % marker) == ""
            assert _in(fleet, name, "ls", "-A", str(fleet.dir)) == ""
            # the minimal unit set, a user manager per service user
            running = {line.split()[0] for line in _in(fleet, name, "systemctl", "list-units", "--type=service",
                                                       "--state=active", "--no-legend", "--plain").splitlines()}
            extra = {u for u in running - SYSTEM_SERVICES if not u.startswith(("user@", "user-runtime-dir@"))}
            assert extra == set(), "%s runs units beyond the minimal set: %s" % (name, extra)
            for user, uid in h["users"].items():
                if user != "deploy":
                    assert _in(fleet, name, "systemctl", "is-active", "user@%d.service" % uid) == "active"
        assert len(ids) == len(info["hosts"]), "machine-ids are not unique"
        for user in {u for h in info["hosts"].values() for u in h["users"]}:
            assert "\n%s:" % user not in "\n" + machine_passwd, "%s exists on the machine" % user
            assert not Path("/home", user).exists()
        assert marker.read_text() == "the machine's /tmp\n"
    finally:
        marker.unlink()


def test_units_are_user_units_of_their_owners(fleet):
    info = fleet.info
    for unit, u in info["units"].items():
        props = dict(line.split("=", 1) for line in fleet.systemctl(
            u["host"], "show", "-p", "FragmentPath,CanReload,ActiveState,ControlGroup", unit,
            user=u["user"]).stdout.splitlines() if "=" in line)
        assert props["FragmentPath"] == "/home/%s/.config/systemd/user/%s.service" % (u["user"], unit), props
        assert props["ActiveState"] == "active", (unit, props)
        assert props["CanReload"] == "yes", "%s has no ExecReload" % unit
        assert "/user@%d.service/" % u["uid"] in props["ControlGroup"], props
    # the listener answers on the Vault host's address with the production SNI name
    st = fleet.status()
    assert st["listener"]["ok"] and st["listener"]["address"].startswith(info["hosts"]["fleet-vaultprod"]["address"])
    assert st["healthy"], st


def test_ssh_become_and_host_key_checking(fleet, tmp_path):
    info = fleet.info
    app = info["apps"][0]
    uid = info["units"]["vault-agent-%s" % app]["uid"]
    host = info["app_paths"][app]["host"]
    # the way ansible connects: the fleet's key, strict host key checking, sudo to the unit's owner
    cmd = "sudo -n -u %s env XDG_RUNTIME_DIR=/run/user/%d systemctl --user is-active vault-agent-%s" % (app, uid, app)
    proc = subprocess.run(ssh_argv(info, host, [cmd]), capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "active", proc.stderr
    proc = subprocess.run(ssh_argv(info, host, ["hostname; sudo -n id -u"]), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.stdout.split() == [host, "0"], proc.stderr
    # a known_hosts entry with another host's key: refused
    lines = Path(info["ssh"]["known_hosts"]).read_text().splitlines()
    addr = info["hosts"][host]["address"]
    other = next(ln for ln in lines if not ln.startswith(addr + ","))
    wrong = tmp_path / "known_hosts"
    wrong.write_text("%s %s\n" % (addr, " ".join(other.split()[1:])))
    argv = [a if not a.startswith("UserKnownHostsFile=") else "UserKnownHostsFile=%s" % wrong
            for a in ssh_argv(info, host, ["true"])]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in proc.stderr, proc.stderr
    # only the deploy user may log in, and only with the key
    argv = ssh_argv(info, host, ["true"])
    argv[argv.index("deploy@%s" % addr)] = "%s@%s" % (app, addr)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 255, proc.stderr


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_up_from_nothing_and_down_leaves_nothing(tmp_path_factory):
    """A one-app fleet of its own (10.212.14.0/24): up from nothing, a second up is a no-op, down
    removes every namespace, link, cgroup folder, mount and process; the machine's /tmp and /etc
    are as before."""
    folder = Path(__file__).resolve().parents[2] / ".cache" / "fleet" / "updown"
    f = Fleet(dir=folder, apps=["solo"], net=14)
    f.down(purge=True, log=lambda _m: None)
    # what Debian's tmpfiles `D /tmp` would remove at a normal boot: files and folders, old or new
    marker = Path("/tmp/fleet-updown-%d" % os.getpid())
    marker.mkdir()
    (marker / "old").write_text("stays\n")
    os.utime(marker / "old", (time.time() - 86400 * 30,) * 2)
    etc = {p: _sha(p) for p in ("/etc/passwd", "/etc/group", "/etc/hostname", "/etc/machine-id")
           if Path(p).exists()}
    try:
        t0 = time.monotonic()
        f = Fleet(dir=folder, apps=["solo"], net=14)
        f.up(log=lambda _m: None)
        up_s = time.monotonic() - t0
        assert f.status()["healthy"]
        t0 = time.monotonic()
        assert f.up(log=lambda _m: None) == [], "a second up did something"
        again_s = time.monotonic() - t0
        t0 = time.monotonic()
        f.down(log=lambda _m: None)
        down_s = time.monotonic() - t0
        print("fleet of 4 hosts: up from nothing %.1f s, second up %.1f s, down %.1f s" % (up_s, again_s, down_s))
        assert f.leftovers() == []
        assert up_s < 60 and down_s < 20
        # up again over the kept folder (Vault's data kept, unsealed with the stored key), down --purge
        f.up(log=lambda _m: None)
        assert f.status()["healthy"]
        f.down(purge=True, log=lambda _m: None)
        assert f.leftovers() == [] and not folder.exists()
        assert (marker / "old").read_text() == "stays\n", "the machine's /tmp was emptied"
        assert {p: _sha(p) for p in etc} == etc
    finally:
        shutil.rmtree(marker, ignore_errors=True)
        f.down(purge=True, log=lambda _m: None)
