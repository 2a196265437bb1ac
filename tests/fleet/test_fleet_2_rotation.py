"""`playbooks/rotate_all.yml -l fleet` over SSH on the fleet, checked from outside the playbook.

A forced rotation, a plain rerun that changes nothing, and a Vault restart with unseal, on one
fleet (in that order). What is checked does not depend on how the rotation is implemented:
- every file the run writes is on its own host: each host's changed files are that host's own
  certificates (and their backups), nothing on another host, nothing on the controller;
- every private key is on exactly one host, its own; no key, unseal key or token in the
  playbook's output (-vvv), the report, the hosts' journals or a controller file;
- every reload and restart went through the unit owner's systemd: the unit's MainPID (same
  after a reload, new after a restart, in the unit's cgroup) and its journal (systemd's
  Reloading/Started lines, the service's own SIGHUP line);
- probes inside every host, each with that host's own identity, saw 0 failures while the
  certificates rotated (no restart).
"""
import json
import os
from pathlib import Path

import fleetcheck as fc
import pytest

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

STATE = {}


def owners(fleet):
    """slot key file -> (uid, mode) as the host has it."""
    out = {}
    for slot, (host, _crt, key) in fc.slot_certs(fleet).items():
        st = os.stat(fc.host_file(fleet, host, key))
        out[slot] = (st.st_uid, oct(st.st_mode & 0o777))
    return out


def assert_no_secret_anywhere(fleet, run, keys):
    """Keys only on their own host; no key/unseal key/token in outputs, journals, controller files."""
    where = {fp: {h for h, _p in e["where"]} for fp, e in keys.items()}
    shared = {fp: sorted(e["where"]) for fp, e in keys.items() if len(where[fp]) > 1}
    assert shared == {}, "private keys on more than one host: %s" % shared
    for slot, (host, _crt, key) in fc.slot_certs(fleet).items():
        fp = fc.keys_in(fc.host_file(fleet, host, key).read_bytes())[0][0]
        assert where.get(fp) == {host}, "%s's key is on %s, not only on %s" % (slot, where.get(fp), host)
    offline = fc.controller_keys(fleet)
    assert not set(offline) & set(keys), "the offline CA key is on a host"
    needles = fc.secret_needles(fleet, dict(keys, **offline))
    assert fc.leaks(run.output, needles) == [], "secrets in the playbook's output: %s" % fc.leaks(run.output, needles)
    for f in (fleet.dir / "reports").glob("*"):
        assert fc.leaks(f.read_text(), needles) == [], f
    for host, text in fc.journals(fleet).items():
        assert fc.leaks(text, needles) == [], "secrets in the journal of %s" % host
    assert fc.controller_leaks(fleet, needles, run.started - 1) == []


def test_forced_rotation(healthy_fleet):
    fleet = healthy_fleet
    info = fleet.info
    before_serials, before_owners = fc.serials(fleet), owners(fleet)
    before = fc.snapshot(fleet)
    watch = fc.UnitWatch(fleet)
    probes = fc.Probes(fleet).start()
    try:
        run = fc.playbook(fleet, "-e", "vault_rotate_force=true", verbosity=3)
    finally:
        summary = probes.stop()
    print("forced rotation on the fleet: %.1f s" % run.seconds)
    rep = fc.assert_green(fleet, run)
    after = fc.snapshot(fleet)

    # every certificate new, on its own host, with the owner and mode it had
    now = fc.serials(fleet)
    assert [s for s in now if now[s] == before_serials[s]] == [], "not rotated: %s" % rep["summary"]
    assert owners(fleet) == before_owners
    seen = fc.served(fleet)
    assert seen == {k: now[k] for k in seen}, "served certificates are not the files on disk"

    # every file written on its own host only; nothing of the hosts on the controller
    changed = fc.changes(before, after)
    print("files written per host: %s" % {h: len(p) for h, p in changed.items()})
    assert fc.misplaced_writes(fleet, changed) == []
    for host, files in fc.slot_files(fleet).items():
        for f in files:
            if f.endswith(("key", ".crt")) or "fullchain" in f:
                assert f in changed.get(host, []), "%s not rewritten on %s" % (f, host)
            assert not Path(f).exists(), "%s exists on the controller" % f
    assert not Path("/root/vault").exists() and not any(Path("/home", u).exists() for u in ["vaultprod"] + info["apps"])

    keys = fc.private_keys(fleet)
    assert_no_secret_anywhere(fleet, run, keys)

    # reloads and restarts through systemd, seen in MainPID and the journal
    for unit, u in info["units"].items():
        events, pid = watch.events(unit), fleet.unit_pid(unit)
        if u["kind"] == "agent":  # a new login needs a new process
            assert pid != watch.pids[unit] and "started" in events, (unit, events)
            assert watch.in_unit_cgroup(unit, pid)
        else:  # SIGHUP through ExecReload: same process, new certificate
            assert pid == watch.pids[unit], "%s was restarted (%s -> %s): %s" % (unit, watch.pids[unit], pid, events)
            assert "reloaded" in events and "started" not in events, (unit, events)
            if u["kind"] == "vault":
                said = watch.service_log(unit, until=lambda m: "reload triggered" in m)
                assert any("reload triggered" in m for m in said), said
            else:
                assert fc.nginx_sighup_since(fleet, unit, watch.t0), "%s: no SIGHUP in its log" % unit

    # probes from every host's own identity: no failure while everything rotated
    for name, s in summary.items():
        print("probe %-45s attempts %4d failures %d serials %d" % (name, s["attempts"], s["failures"],
                                                                 len(s.get("serials_seen", []))))
    assert {n: s["failure_classes"] for n, s in summary.items() if s["failures"]} == {}
    assert all(s["attempts"] >= 10 for s in summary.values()), {n: s["attempts"] for n, s in summary.items()}
    assert all(len(s["serials_seen"]) >= 2 for n, s in summary.items() if "listener" in n or "frontend" in n)
    STATE["forced"] = True


def test_noop_run_changes_nothing(healthy_fleet):
    fleet = healthy_fleet
    if not STATE.get("forced"):
        fc.assert_green(fleet, fc.playbook(fleet))  # settle: whatever is due now
    before, before_serials = fc.snapshot(fleet), fc.serials(fleet)
    watch = fc.UnitWatch(fleet)
    run = fc.playbook(fleet)
    print("no-op run on the fleet: %.1f s" % run.seconds)
    rep = fc.assert_green(fleet, run)
    assert rep["summary"]["rotated"] == 0, rep["summary"]
    assert fc.changes(before, fc.snapshot(fleet)) == {}
    assert fc.serials(fleet) == before_serials
    for unit in fleet.unit_names():
        assert fleet.unit_pid(unit) == watch.pids[unit], unit
        assert watch.events(unit) == [], (unit, watch.events(unit))


def test_restart_with_unseal(healthy_fleet):
    fleet = healthy_fleet
    keys = json.loads(fleet.p["init_json"].read_text())["keys_base64"]
    unseal = fleet.dir / "secrets" / "unseal-vars.json"  # as an AWX credential would inject it
    fd = os.open(str(unseal), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"vault_rotate_unseal_keys": keys}, fh)
    before = fc.snapshot(fleet)
    watch = fc.UnitWatch(fleet)
    run = fc.playbook(fleet, "-e", "vault_rotate_restart_vault=always", "-e", "@%s" % unseal)
    print("restart + unseal on the fleet: %.1f s" % run.seconds)
    fc.assert_green(fleet, run)
    unit = "container-vaultprod"
    pid = fleet.unit_pid(unit)
    events = watch.events(unit)
    assert pid != watch.pids[unit] and "started" in events, (pid, watch.pids[unit], events)
    assert watch.in_unit_cgroup(unit, pid), "the new Vault process is not the unit's"
    st = fleet.status()
    assert st["seal"]["sealed"] is False and st["healthy"], st["seal"]
    assert fc.misplaced_writes(fleet, fc.changes(before, fc.snapshot(fleet))) == []
    needles = fc.secret_needles(fleet, fc.controller_keys(fleet))
    assert fc.leaks(run.output, needles) == [], "the unseal key or a token is in the output"
