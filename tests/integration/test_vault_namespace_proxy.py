"""The Vault connection options `namespace` and `proxy` against the real lab (OpenBao 2.7.2).

namespace: a namespace of its own in the lab server (made with the root token, cert auth enabled in it,
deleted at the end). A mapping written with `namespace:` exists in the namespace and not at the root; the
agent cert logs in through it only with the namespace (option or BAO_NAMESPACE); sys/health (root only:
a namespaced one is a 400) keeps working with the option set; an unknown namespace is named.

proxy: a real CONNECT proxy (tests/connect_proxy.py) between the module and the listener. The proxy logs
the CONNECT, relays TLS with the same SNI and sees no HTTP in clear; refusing the tunnel (403, 407) and a
proxy that is down give errors naming the proxy and the target. HTTPS_PROXY is not read.
"""
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import ports
from connect_proxy import ConnectProxy
from helpers import run_module
from vault_api_helpers import admin_args, app_identity_args, pem_of, root_client

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
APP = "ncprd1"
PROXY_PORTS = range(23300, 23400)  # tests/ports.py: CONNECT proxies of the tests
POLICIES = ["i13-ns-policy"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def namespace(lab):
    """A namespace with cert auth enabled in it; deleted with everything in it afterwards."""
    name = "i13-%s" % secrets.token_hex(3)
    root = root_client(lab)
    root.write("sys/namespaces/%s" % name, {})
    inside = root_client(lab)
    inside.namespace = name
    inside.write("sys/auth/cert", {"type": "cert"})
    yield name
    inside.delete("sys/auth/cert")
    root.delete("sys/namespaces/%s" % name)


@pytest.fixture
def proxy():
    port = ports.reserve(PROXY_PORTS)
    try:
        with ConnectProxy(port) as running:
            yield running
    finally:
        ports.release(port)


def _mapping_args(lab, namespace, name):
    agent_cn = "agent-%s.prod.privsec.ch" % APP
    return admin_args(lab, auth_method="token", token=lab.root_token(), namespace=namespace, name=name,
                      certificate=pem_of(lab.info["paths"]["ca_chain"]), allowed_common_names=[agent_cn],
                      token_policies=POLICIES)


def test_namespace_mapping_and_login_live_in_the_namespace_not_at_the_root(lab, namespace):
    name = "i13-agent-%s" % APP
    made = run_module("cert_auth_mapping", _mapping_args(lab, namespace, name))
    assert not made["failed"], made["msg"]
    assert made["changed"] is True
    root = root_client(lab)
    assert root.read("auth/cert/certs/%s" % name) is None  # not at the root
    inside = root_client(lab)
    inside.namespace = namespace
    assert (inside.read("auth/cert/certs/%s" % name) or {}).get("data", {}).get("token_policies") == POLICIES
    again = run_module("cert_auth_mapping", _mapping_args(lab, namespace, name))
    assert not again["failed"] and again["changed"] is False  # read back inside the namespace too

    args = app_identity_args(lab, APP, cert_role=name, expected_policies=POLICIES)
    res = run_module("cert_login", dict(args, namespace=namespace))
    assert not res["failed"], res["msg"]
    assert res["token_policies"] == ["default"] + POLICIES and res["revoked"] is True
    assert res["metadata"]["cert_name"] == name
    by_env = run_module("cert_login", args, env=_env(BAO_NAMESPACE=namespace))
    assert not by_env["failed"], by_env["msg"]
    at_root = run_module("cert_login", args)  # the mapping does not exist at the root
    assert at_root["failed"] and at_root["failure_class"] == "permission_denied", at_root["msg"]
    assert name in at_root["msg"]


def test_health_is_root_only_and_works_with_a_namespace_set(lab, namespace):
    res = run_module("vault_health", admin_args(lab, namespace=namespace))
    assert not res["failed"], res["msg"]
    assert res["ready"] is True


def test_unknown_namespace_is_named(lab):
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-" + APP, namespace="i13-nope/x"))
    assert res["failed"] and res["failure_class"] == "not_found", res["msg"]
    assert "namespace 'i13-nope/x' not found" in res["msg"] and "VAULT_NAMESPACE" in res["msg"]


def test_requests_go_through_the_proxy_tunnel_end_to_end(lab, namespace, proxy):
    res = run_module("cert_login", app_identity_args(lab, APP, cert_role="agent-" + APP, proxy=proxy.url))
    assert not res["failed"], res["msg"]
    assert res["revoked"] is True
    target = "127.0.0.1:%d" % lab.vault_port
    assert proxy.targets() and set(proxy.targets()) == {target}
    relayed = bytes(proxy.relayed)
    assert b"vault.prod.privsec.ch" in relayed  # the SNI of the ClientHello: TLS runs end to end
    assert b"X-Vault" not in relayed and b"/v1/" not in relayed  # requests and token only inside TLS
    assert all(h.startswith(("CONNECT %s " % target).encode()) for h in proxy.heads)

    before = len(proxy.log)
    health = run_module("vault_health", admin_args(lab, namespace=namespace), env=_env(VAULT_PROXY_ADDR=proxy.url))
    assert not health["failed"] and health["ready"] is True, health["msg"]
    assert len(proxy.log) == before + 1  # VAULT_PROXY_ADDR is honoured


@pytest.mark.parametrize("status,reason,words", [
    (403, "Forbidden", "refused CONNECT"),
    (407, "Proxy Authentication Required", "requires authentication"),
])
def test_proxy_refusing_the_tunnel_is_named(lab, proxy, status, reason, words):
    proxy.refuse = (status, reason)
    res = run_module("vault_health", admin_args(lab, proxy=proxy.url))
    assert res["failed"] and res["failure_class"] == "permission_denied", res["msg"]
    target = "127.0.0.1:%d" % lab.vault_port
    assert words in res["msg"] and proxy.url in res["msg"] and target in res["msg"] and str(status) in res["msg"]
    assert res["proxy"] == proxy.url and res["status"] == status
    assert proxy.log == [(target, status)]


def test_proxy_down_and_https_proxy_env_ignored(lab):
    port = ports.reserve(PROXY_PORTS)  # reserved and free: nothing listens there
    try:
        down = "http://127.0.0.1:%d" % port
        res = run_module("vault_health", admin_args(lab, proxy=down))
        assert res["failed"] and res["failure_class"] == "refused", res["msg"]
        assert "cannot reach the proxy %s" % down in res["msg"] and "vault_rotate_vault_proxy" in res["msg"]
        # A proxy for other traffic (HTTPS_PROXY, as an execution environment may set) is not used.
        res = run_module("vault_health", admin_args(lab), env=_env(HTTPS_PROXY=down, https_proxy=down))
        assert not res["failed"] and res["ready"] is True, res["msg"]
    finally:
        ports.release(port)


def test_run_engine_admin_through_the_proxy_agent_gate_direct_in_the_namespace(lab, namespace, proxy):
    """The run's connection (catalog: vault_rotate_vault_proxy / _namespace): the admin identity's login goes
    through the proxy, the agent's login gate reaches the listener directly, in the namespace."""
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

    from ansible_collections.privsec.vault_rotate.plugins.module_utils import _engine

    name = "i13-gate-%s" % APP
    inside = root_client(lab)
    inside.namespace = namespace
    inside.write("auth/cert/certs/%s" % name, {
        "certificate": pem_of(lab.info["paths"]["ca_chain"]), "allowed_common_names": ["agent-%s.prod.privsec.ch" % APP],
        "token_policies": POLICIES})
    env, agent = lab.admin_env(), lab.info["app_paths"][APP]
    connection = {"url": env["VAULT_ADDR"], "ca_cert": env["VAULT_CACERT"], "client_cert": env["VAULT_CLIENT_CERT"],
                  "client_key": env["VAULT_CLIENT_KEY"], "tls_server_name": env["VAULT_TLS_SERVER_NAME"],
                  "cert_role": "admin", "proxy": proxy.url}
    gates = [{"kind": "admin_login", "name": "admin login", "mapping": "admin", "policies_match": "superset"},
             {"kind": "login", "name": "agent login in the namespace", "url": env["VAULT_ADDR"],
              "tls_server_name": env["VAULT_TLS_SERVER_NAME"], "namespace": namespace, "ca_cert": agent["ca"],
              "client_cert": agent["agent_crt"], "client_key": agent["agent_key"], "mapping": name,
              "expected_policies": POLICIES}]
    checked = ArgumentSpecValidator(_engine.ARGUMENT_SPEC).validate(
        {"phase": "agent_login", "step": "gate", "connection": connection, "gates": gates})
    assert not checked.error_messages, checked.error_messages
    out = _engine.run_step(checked.validated_parameters)
    assert out["failure"] is None, out["failure"]
    assert [g["ok"] for g in out["gates"]] == [True, True]
    assert out["gates"][1]["policies"] == ["default"] + POLICIES
    assert proxy.targets() == ["127.0.0.1:%d" % lab.vault_port]  # the admin's one connection; the gate went direct

    # The admin's connection in a namespace without its mapping: the failure names the namespace.
    connection.update(namespace=namespace)
    checked = ArgumentSpecValidator(_engine.ARGUMENT_SPEC).validate(
        {"phase": "agent_login", "step": "gate", "connection": connection, "gates": gates[:1]})
    out = _engine.run_step(checked.validated_parameters)
    assert out["failure"]["failure_class"] == "permission_denied", out["failure"]
    assert "in namespace '%s'" % namespace in out["failure"]["msg"], out["failure"]
    assert "bao read -namespace=%s auth/cert/certs/admin" % namespace in out["failure"]["hint"]


def _preflight_check(lab, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "ANSIBLE_", "LAB_"))}
    env.update({"LAB_DIR": str(lab.dir), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})
    argv = [str(PLAYBOOK), "playbooks/preflight.yml", "-l", "lab", "--check"]
    for item in extra:
        argv += ["-e", item]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    return proc, " ".join((proc.stdout + proc.stderr).split())


def test_run_variables_reach_the_engine(lab, proxy):
    """vault_rotate_vault_proxy / _namespace from the inventory to every admin request of a real run (--check)."""
    proc, text = _preflight_check(lab, "vault_rotate_vault_proxy=" + proxy.url)
    assert proc.returncode == 0, text[-3000:]
    assert len(proxy.log) >= 2 and set(proxy.targets()) == {"127.0.0.1:%d" % lab.vault_port}  # check + sign

    proc, text = _preflight_check(lab, "vault_rotate_vault_namespace=i13-nope")
    assert proc.returncode != 0
    assert "Vault namespace 'i13-nope' not found" in text and "vault_rotate_vault_namespace" in text, text[-3000:]

    proc, text = _preflight_check(lab, "vault_rotate_vault_namespace=a//b", "vault_rotate_vault_proxy=http://u:pw@x:1")
    assert proc.returncode != 0 and "REFUSED (variables of lab)" in text, text[-3000:]
    assert "vault_rotate_vault_namespace: invalid Vault namespace 'a//b'" in text
    assert "vault_rotate_vault_proxy: the proxy address http://***@x:1 carries credentials" in text
    assert "u:pw@" not in text
