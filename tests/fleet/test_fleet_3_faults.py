"""Faults that involve services and hosts, on the fleet (the lab's tests/integration/test_faults.py
asserts the same contract on one filesystem): a refused reload, a unit that does not come back
after its restart, an agent mapping changed under the run, and an app host that becomes
unreachable in the middle of the run (its sshd stopped).

For each: the run stops with a clear message (the gate, its failure class and what to check
next; for the unreachable host, the host and the connection error), the failing phase's old
material is back on disk and served, nothing is half installed (every key matches its
certificate, every service serves what is on its disk), the admin identity still works, and
with the fault removed the next run passes every gate. Faults are injected into the real
units by their owner's systemd: a drop-in with a one-shot hook (tests/fleet/fault_hook.sh) or
a broken config file on the host.
"""
import json
import re

import fleetcheck as fc
import pytest
from cryptography.hazmat.primitives import serialization
from lab import http_json, tls_context

pytestmark = [pytest.mark.fleet, pytest.mark.slow]
FORCE = ("-e", "vault_rotate_force=true")


def serial(fleet, host, path):
    return fc.cert(fleet, host, path).serial_number


def admin_works(fleet):
    """seal-status (unsealed) and a cert login through the admin mapping, with the admin host's files."""
    p = fleet.p
    ctx = tls_context(str(p["admin_ca"]), str(p["admin_crt"]), str(p["admin_key"]))
    status, seal = http_json(fleet.vault_port, "GET", "/v1/sys/seal-status", ctx, host=fleet.address())
    assert status == 200 and seal["sealed"] is False, (status, seal)
    status, login = http_json(fleet.vault_port, "POST", "/v1/auth/cert/login", ctx, host=fleet.address(),
                              body={"name": "admin"})
    assert status == 200, login


def agent_login(fleet, app):
    a = fleet.p["apps"][app]
    ctx = tls_context(str(fleet.p["admin_ca"]), str(a["agent_crt"]), str(a["agent_key"]))
    return http_json(fleet.vault_port, "POST", "/v1/auth/cert/login", ctx, host=fleet.address(),
                     body={"name": "agent-%s" % app})


def nothing_half_installed(fleet):
    """Every slot's key matches its certificate (and its fullchain starts with it); every listener,
    frontend and the proxy serve the certificate on their host's disk; every unit is active."""
    problems = []
    for slot, (host, crt, key) in fc.slot_certs(fleet).items():
        cert = fc.cert(fleet, host, crt)
        priv = serialization.load_pem_private_key(fc.host_file(fleet, host, key).read_bytes(), None)
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        if (priv.public_key().public_bytes(serialization.Encoding.DER, pub)
                != cert.public_key().public_bytes(serialization.Encoding.DER, pub)):
            problems.append("%s: key and certificate do not match on %s" % (slot, host))
    on_disk = {slot: fc.cert(fleet, h, c).serial_number for slot, (h, c, _k) in fc.slot_certs(fleet).items()}
    for slot, s in fc.served(fleet).items():
        if s != on_disk[slot]:
            problems.append("%s: serves %x, disk has %x" % (slot, s, on_disk[slot]))
    for unit in fleet.unit_names():
        if not fleet.unit_status(unit)["active"]:
            problems.append("%s is not active" % unit)
    assert problems == [], problems


def test_refused_reload(healthy_fleet):
    """nginx-<app>'s config no longer passes `nginx -t`: ExecReload refuses the reload, the
    frontend keeps serving; app_leaf stops, its certificate of that app is back."""
    fleet = healthy_fleet
    info = fleet.info
    app = info["apps"][0]
    a, unit = info["app_paths"][app], "nginx-%s" % app
    conf = fc.host_file(fleet, a["host"], a["nginx_conf"])
    good = conf.read_text()
    old = serial(fleet, a["host"], a["frontend_crt"])
    conf.write_text(good + "\nthis_is_not_a_directive on;\n")
    try:
        watch = fc.UnitWatch(fleet)
        run = fc.playbook(fleet, *FORCE)
        fc.assert_stopped_at(fleet, run, "app_leaf")
        assert serial(fleet, a["host"], a["frontend_crt"]) == old
        assert fc.served_serial(a["address"], a["port"], a["sni"], str(fleet.p["admin_ca"])) == old
        assert fleet.unit_pid(unit) == watch.pids[unit], "the refused reload restarted nginx"
        events = watch.events(unit)
        assert "reloading" in events and ("reload_failed" in events or "failed" in events), events
        said = watch.service_log(unit, until=lambda m: "this_is_not_a_directive" in m)
        assert any("this_is_not_a_directive" in m for m in said), ("nginx -t's error not in the journal", said)
        admin_works(fleet)
    finally:
        conf.write_text(good)
    again = fc.playbook(fleet, *FORCE)
    fc.assert_green(fleet, again)
    new = serial(fleet, a["host"], a["frontend_crt"])
    assert new != old and fc.served_serial(a["address"], a["port"], a["sni"], str(fleet.p["admin_ca"])) == new
    nothing_half_installed(fleet)


def test_unit_not_back_after_restart(healthy_fleet):
    """vault-agent-<app>'s restart fails once (its ExecStartPre exits 1): agent_login stops, the
    agent's old certificate is back, and the agent runs again (started by the rollback)."""
    fleet = healthy_fleet
    info = fleet.info
    app = info["apps"][0]
    a, unit = info["app_paths"][app], "vault-agent-%s" % app
    old = serial(fleet, a["host"], a["agent_crt"])
    watch = fc.UnitWatch(fleet)
    with fc.FaultHook(fleet, unit, "ExecStartPre", "start-fails", verdict="fail") as hook:
        run = fc.playbook(fleet, *FORCE)
        assert hook.fired, "the unit was never restarted"
    fc.assert_stopped_at(fleet, run, "agent_login")
    assert serial(fleet, a["host"], a["agent_crt"]) == old
    st = fleet.unit_status(unit)
    assert st["active"], "the rollback did not bring %s back: %s" % (unit, st)
    events = watch.events(unit)
    assert "failed" in events and events[-1] == "started", events
    assert watch.in_unit_cgroup(unit, st["pid"])
    status, _ = agent_login(fleet, app)
    assert status == 200
    admin_works(fleet)
    again = fc.playbook(fleet, *FORCE)
    fc.assert_green(fleet, again)
    assert serial(fleet, a["host"], a["agent_crt"]) != old
    nothing_half_installed(fleet)


def test_agent_mapping_changed_under_the_run(healthy_fleet):
    """When agent_login restarts vault-agent-<app> (after writing its mapping), another tool
    rewrites the mapping with other policies: the login gate (exact policies) fails, the old
    certificate is back, the next run writes the mapping in full again and passes."""
    fleet = healthy_fleet
    info = fleet.info
    app = info["apps"][0]
    a, unit = info["app_paths"][app], "vault-agent-%s" % app
    mapping = "agent-%s" % app
    status, good = fleet.api("GET", "/v1/auth/cert/certs/%s" % mapping, token=fleet.root_token())
    assert status == 200, good
    good = good["data"]
    old = serial(fleet, a["host"], a["agent_crt"])

    def rewrite(f):
        body = {"certificate": good["certificate"], "allowed_common_names": good["allowed_common_names"],
                "token_policies": ["default"]}
        st, data = f.api("POST", "/v1/auth/cert/certs/%s" % mapping, token=f.root_token(), body=body)
        assert st < 300, (st, data)

    with fc.FaultHook(fleet, unit, "ExecStartPre", "mapping", action=rewrite) as hook:
        run = fc.playbook(fleet, *FORCE)
    assert hook.fired and hook.error is None, hook.error
    gate, klass, msg, nxt = fc.assert_stopped_at(fleet, run, "agent_login")
    assert "policies" in (msg + klass).lower() or klass in ("policy_mismatch", "permission_denied"), (klass, msg)
    assert serial(fleet, a["host"], a["agent_crt"]) == old
    admin_works(fleet)
    other = info["apps"][1]
    assert agent_login(fleet, other)[0] == 200
    again = fc.playbook(fleet, *FORCE)
    fc.assert_green(fleet, again)
    status, login = agent_login(fleet, app)
    assert status == 200 and set(login["auth"]["token_policies"]) - {"default"} == set(good["token_policies"]) - {"default"}
    assert serial(fleet, a["host"], a["agent_crt"]) != old
    nothing_half_installed(fleet)


def test_host_unreachable_mid_run(healthy_fleet):
    """When the Vault listener reloads (server_tls), the first app host's sshd is stopped and its
    sessions ended: the run cannot reach that host any more. It must stop with an error that
    names the host, leave nothing half installed (that host untouched), and a run after sshd is
    back passes."""
    fleet = healthy_fleet
    info = fleet.info
    app = info["apps"][0]
    host = info["app_paths"][app]["host"]
    before = fc.snapshot(fleet)

    def cut(f):
        f.systemctl(host, "stop", "ssh.service", check=True)
        f.host_exec(host, ["loginctl", "terminate-user", "deploy"])

    try:
        with fc.FaultHook(fleet, "container-vaultprod", "ExecReload", "cut-ssh", action=cut) as hook:
            run = fc.playbook(fleet, *FORCE)
        assert hook.fired and hook.error is None, hook.error
        assert run.returncode != 0, run.tail()
        # a clear error: the host, that it cannot be reached, and why (ansible's UNREACHABLE, or
        # the rotation's own message naming the host)
        text = fc.one_line(run.output)
        said = [m.group(0) for m in re.finditer(r"(UNREACHABLE|unreachable|cannot reach)[^|]{0,300}", text)
                if host in m.group(0)] + re.findall(r"\[%s\]: UNREACHABLE[^|]{0,300}" % re.escape(host), text)
        assert said, "no clear error for %s:\n%s" % (host, run.tail())
        print("unreachable host: %s" % said[0][:400])
        assert re.search(r"Connection refused|Connection reset|Connection closed|timed out", text), run.tail()
        # that host's live files are as before (a key staged by the plan before the cut is allowed)
        after = fc.snapshot(fleet)
        changed = fc.changes(before, after)
        live = set(fc.slot_files(fleet)[host])
        assert sorted(live & set(changed.get(host, []))) == [], "files of the unreachable host changed"
        assert fc.misplaced_writes(fleet, changed) == []
        nothing_half_installed(fleet)
        admin_works(fleet)
        try:
            rep = fc.report(fleet)
            print("report after the unreachable host: status %s, failed phase %s" % (
                rep["status"], rep["summary"].get("failed_phase")))
        except (OSError, ValueError):
            print("no report after the unreachable host")
    finally:
        fleet.systemctl(host, "start", "ssh.service", check=True)
    again = fc.playbook(fleet, *FORCE)
    fc.assert_green(fleet, again)
    nothing_half_installed(fleet)
    rep = json.loads((fleet.dir / "reports" / "latest.json").read_text())
    assert rep["summary"]["rotated"] >= 8, rep["summary"]
