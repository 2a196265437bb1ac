"""The role docs are generated from the variable catalog and cannot drift from it.

scripts/role_docs.py writes every role's meta/argument_specs.yml, the variables
table of every role README and the globals table of docs/variables.md from
plugins/plugin_utils/_catalog.py; `--check` fails when one of them is out of
date. The argument specs are also what role argument validation runs: they
must accept the catalog's own defaults and the values our playbooks, tests and
molecule scenarios pass.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _catalog

REPO = Path(__file__).resolve().parents[2]
# The entry points of every role (tasks/<entry point>.yml).
ENTRY_POINTS = dict((role, ("main", "phase")) for role in _catalog.ROLES)
ENTRY_POINTS.update(preflight=("main", "open"), report=("main",))


def specs(role):
    with open(REPO / "roles" / role / "meta" / "argument_specs.yml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)["argument_specs"]


def test_generated_docs_are_up_to_date():
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "role_docs.py"), "--check"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("role", sorted(_catalog.ROLES))
def test_entry_points_and_options_follow_the_catalog(role):
    found = specs(role)
    assert sorted(found) == sorted(ENTRY_POINTS[role])
    for entry in ENTRY_POINTS[role]:
        assert (REPO / "roles" / role / "tasks" / ("%s.yml" % entry)).is_file()
        assert sorted(found[entry]["options"]) == sorted("%s_%s" % (role, s.key) for s in _catalog.ROLES[role])


@pytest.mark.parametrize("role", sorted(_catalog.ROLES))
def test_specs_accept_their_defaults(role):
    for entry, spec in specs(role).items():
        result = ArgumentSpecValidator(spec["options"]).validate({})
        assert not result.error_messages, (role, entry, result.error_messages)


@pytest.mark.parametrize("role, values", [
    # what a phase role passes when it includes preflight (tasks/main.yml)
    ("preflight", {"preflight_phases": ["app_leaf"], "preflight_opened_by": "app_leaf"}),
    ("preflight", {"preflight_phases": [], "preflight_opened_by": "restart"}),
    # extensions/molecule/restart/converge.yml
    ("restart", {"restart_unseal_keys": ["a2V5"]}),
    # -e key=value of the integration and fault tests (strings)
    ("healthcheck", {"healthcheck_wait_timeout": "1",
                     "healthcheck_proxy_endpoint": {"host": "127.0.0.1", "port": 1}}),
    ("app_leaf", {"app_leaf_min_days_left": "0"}),
    ("server_tls", {"server_tls_pki_role": "nginx-ncprd1", "server_tls_common_name": "ncprd1.prod.privsec.ch",
                    "server_tls_dns_names": ["ncprd1.prod.privsec.ch"], "server_tls_ip_addresses": [],
                    "server_tls_wait_timeout": 5}),
    ("restart", {"restart_wait_timeout": 15, "restart_sealed_grace": 2}),
    ("agent_login", {"agent_login_wait_timeout": 10}),
    ("proxy_trust", {"proxy_trust_wait_timeout": 5}),
])
def test_specs_accept_what_our_playbooks_pass(role, values):
    for entry, spec in specs(role).items():
        result = ArgumentSpecValidator(spec["options"]).validate(dict(values))
        assert not result.error_messages, (role, entry, result.error_messages)


def test_specs_refuse_a_wrong_type():
    spec = specs("app_leaf")["main"]["options"]
    result = ArgumentSpecValidator(spec).validate({"app_leaf_min_days_left": "soon", "app_leaf_key_type": "dsa"})
    assert len(result.error_messages) == 2, result.error_messages


def test_check_fails_on_a_hand_edit(monkeypatch, capsys):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import role_docs
    finally:
        sys.path.pop(0)
    real = role_docs._read
    edited = "roles/app_leaf/README.md"
    monkeypatch.setattr(role_docs, "_read", lambda rel: real(rel).replace("Frontend key.", "Frontend key!")
                        if rel == edited else real(rel))
    assert role_docs.main(["--check"]) == 1
    assert edited in capsys.readouterr().err
