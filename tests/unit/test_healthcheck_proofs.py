"""The healthcheck reuses what this run's phases proved, and skips a host they proved whole.

A host whose every gate and every unit its phases proved in this run, nothing restarted
since, has nothing left for the healthcheck's verify: its play ends it (meta: end_host).
These are the rules over the run's own records (plugins/action/phase.py host_proofs);
tests/integration/test_rotate_playbook.py sees it on the lab.
"""
import pytest
from ansible_collections.privsec.vault_rotate.plugins.action.phase import host_proofs, ungated_units
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _catalog
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils._run import Run

AGENT_GATES = [{"name": "agent app01 login", "kind": "login", "ok": True},
               {"name": "vault-agent-app01 running", "kind": "unit", "unit": "vault-agent-app01", "ok": True},
               {"name": "agent app01 new token", "kind": "token", "ok": True}]
APP_GATES = [{"name": "files of app01", "kind": "files", "ok": True},
             {"name": "nginx-app01 running", "kind": "unit", "unit": "nginx-app01", "ok": True},
             {"name": "frontend of app01 serves its cert", "kind": "probe", "ok": True}]


def run_with(tmp_path, agent=None, app=None, restarted=False, listener_rotated=False):
    run = Run({"dir": str(tmp_path), "id": "test"})
    if agent is not None:
        run.write(agent, "phase", "agent_login", "apply", "app01")
    if app is not None:
        run.write(app, "phase", "app_leaf", "apply", "app01")
    if restarted:
        run.write({"do": True}, "phase", "restart", "decide")
    if listener_rotated:
        run.write({"slots": [{"slot": "server_tls", "action": "rotated"}]}, "phase", "server_tls", "apply", "vault")
    return run


def applied(gates, ungated=()):
    return {"gates": [dict(g) for g in gates], "failure": None, "units_ungated": list(ungated)}


def test_every_gate_and_unit_proven_is_whole(tmp_path):
    run = run_with(tmp_path, applied(AGENT_GATES), applied(APP_GATES))
    proven, whole = host_proofs(run, "app01", ["agent_login", "app_leaf"])
    assert whole
    assert proven == dict([(g["name"], "agent_login") for g in AGENT_GATES] +
                          [(g["name"], "app_leaf") for g in APP_GATES])


def test_a_unit_no_gate_proved_keeps_the_host_visited(tmp_path):
    run = run_with(tmp_path, applied(AGENT_GATES), applied(APP_GATES[:1], ungated=["nginx-app01"]))
    proven, whole = host_proofs(run, "app01", ["agent_login", "app_leaf"])
    assert not whole and "files of app01" in proven


def test_a_gate_that_did_not_check_keeps_the_host_visited(tmp_path):
    """An agent this run did not restart: its token gate says `checked: False` (nothing to prove)."""
    agent = applied(AGENT_GATES)
    agent["gates"][2]["checked"] = False
    proven, whole = host_proofs(run_with(tmp_path, agent, applied(APP_GATES)), "app01", ["agent_login", "app_leaf"])
    assert not whole and "agent app01 new token" not in proven and "agent app01 login" in proven


def test_a_phase_without_its_record_keeps_the_host_visited(tmp_path):
    """A run where the plan had nothing due: the phases ended at once and recorded nothing."""
    proven, whole = host_proofs(run_with(tmp_path, applied(AGENT_GATES)), "app01", ["agent_login", "app_leaf"])
    assert not whole and set(proven) == set(g["name"] for g in AGENT_GATES)


def test_a_restart_voids_every_proof(tmp_path):
    run = run_with(tmp_path, applied(AGENT_GATES), applied(APP_GATES), restarted=True)
    assert host_proofs(run, "app01", ["agent_login", "app_leaf"]) == ({}, False)


def test_a_new_listener_cert_voids_the_phases_before_it(tmp_path):
    run = Run({"dir": str(tmp_path), "id": "test"})
    run.write(applied([{"name": "admin login through admin", "kind": "admin_login", "ok": True}]),
              "phase", "admin_cert", "apply", "ctl")
    run.write({"slots": [{"slot": "server_tls", "action": "rotated"}]}, "phase", "server_tls", "apply", "vault")
    assert host_proofs(run, "ctl", ["admin_cert"]) == ({}, False)


def test_ungated_units():
    assert ungated_units(["nginx-app01", "vault-agent-app01"], AGENT_GATES) == ["nginx-app01"]
    assert ungated_units(["nginx-app01"], APP_GATES) == []


@pytest.mark.parametrize("phase", ["server_tls", "agent_login", "app_leaf", "proxy_trust"])
def test_every_host_phase_gates_every_unit_it_touches(phase):
    """Each phase proves its units running after its reload or restart, so a host whose phases
    all held can be proven whole (the admin phase has no unit)."""
    variables = {"vault_rotate_app": "app01", "vault_rotate_home_root": "/srv/apps",
                 "vault_rotate_domain": "prod.example", "vault_rotate_pki_mount": "pki_int",
                 "vault_rotate_ca_cert": "/etc/vault/ca.pem", "vault_rotate_server_unit": "container-vaultprod",
                 "vault_rotate_proxy_unit": "container-proxyprod", "vault_rotate_vault_url": "https://vault:8200",
                 "vault_rotate_tls_server_name": "vault.prod.example", "vault_rotate_server_tls_dir": "/srv/vault/tls",
                 "vault_rotate_admin_cert": "/root/vault/admin.crt"}
    work = _catalog.host_work(phase, lambda name: variables.get(name, _catalog.MISSING))
    assert work["units"] and ungated_units(work["units"], work["gates"]) == []
