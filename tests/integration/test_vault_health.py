"""vault_health against the real lab: ready over mTLS with SNI, the connection
from the environment (as the production wrapper passes it), fast failures for
what waiting cannot fix, and on throwaway labs: sealed -> unseal (changed once),
check mode, and waiting through a restart (refused/reset, sealed, standby, ready).
"""
import json
import threading
import time

import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultClient

from helpers import run_module
from lab import port_free

pytestmark = pytest.mark.lab

SNI = "vault.prod.privsec.ch"


def conn_args(handle, **kw):
    p = handle.info["paths"]
    args = {"url": handle.url, "tls_server_name": SNI, "ca_cert": p["admin_ca"],
            "client_cert": p["admin_crt"], "client_key": p["admin_key"]}
    args.update(kw)
    return args


def unseal_keys(handle):
    return json.loads((handle.dir / "secrets" / "init.json").read_text())["keys_base64"]


def seal(handle):
    p = handle.info["paths"]
    client = VaultClient(handle.url, ca_cert=p["admin_ca"], client_cert=p["admin_crt"], client_key=p["admin_key"],
                         tls_server_name=SNI, token=handle.root_token())
    client.request("POST", "sys/seal", body={})
    status, _ = client.health()
    assert status == 503


# --- the default lab (read-only) ----------------------------------------------------------


def test_ready(lab):
    r = run_module("vault_health", conn_args(lab))
    assert not r["failed"], r["msg"]
    assert r["ready"] is True and r["changed"] is False and r["unsealed"] is False
    assert r["status_code"] == 200 and r["sealed"] is False and r["initialized"] is True and r["standby"] is False
    assert r["version"] and r["cluster_name"] and r["failure_class"] is None
    assert r["attempts"] == 1 and r["observed"] == ["ready"]


def test_shared_client_cert_login_against_openbao(lab):
    """The VaultClient every module uses: cert login through the admin mapping, token
    sent afterwards, one keep-alive connection, the client cert on every request."""
    p = lab.info["paths"]
    client = VaultClient(lab.url, ca_cert=p["admin_ca"], client_cert=p["admin_crt"], client_key=p["admin_key"],
                         tls_server_name=SNI)
    auth = client.login_cert("cert", "admin")
    assert "vault-rotate-admin" in auth["policies"]
    assert client.lookup_self()["display_name"].startswith("cert-")
    assert client.read("auth/cert/certs/does-not-exist") is None
    for _ in range(20):
        assert client.health()[0] == 200
    assert client.requests_made == 23
    client.revoke_self()
    with pytest.raises(RotateError) as info:
        client.lookup_self()
    assert info.value.failure_class == "permission_denied"


def test_connection_from_vault_environment(lab):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env.update(lab.admin_env())
    r = run_module("vault_health", {}, env=env)
    assert not r["failed"], r["msg"]
    assert r["ready"] is True


def test_no_client_cert_fails_fast_with_the_alert(lab):
    args = conn_args(lab, wait_timeout=10)
    del args["client_cert"], args["client_key"]
    r = run_module("vault_health", args)
    assert r["failed"] and r["failure_class"] == "tls_alert" and r["tls_alert"] == "certificate required"
    assert r["attempts"] == 1 and r["elapsed"] < 2  # waiting cannot fix a missing client cert


def test_wrong_server_name(lab):
    r = run_module("vault_health", conn_args(lab, tls_server_name="wrong.prod.privsec.ch"))
    assert r["failed"] and r["failure_class"] == "hostname_mismatch"


def test_ip_address_is_not_the_server_name(lab):
    """Without tls_server_name the IP must be in the cert, or it fails with a clear class."""
    args = conn_args(lab)
    del args["tls_server_name"]
    r = run_module("vault_health", args)
    served = _x509.cert_info(_x509.load_certificate(open(lab.info["paths"]["server_crt"]).read()))
    if "127.0.0.1" in served["ip_addresses"]:
        assert r["ready"] is True
    else:
        assert r["failed"] and r["failure_class"] == "hostname_mismatch"


def test_refused_with_bounded_wait():
    port = next(p for p in range(23290, 23300) if port_free(p))
    r = run_module("vault_health", {"url": "https://127.0.0.1:%d" % port, "wait_timeout": 1.5, "interval": 0.2})
    assert r["failed"] and r["failure_class"] == "refused"
    assert r["attempts"] > 2 and 1.4 < r["elapsed"] < 3
    assert "still after" in r["msg"]


# --- throwaway labs: sealed, unseal, restart -----------------------------------------------


@pytest.mark.destructive
@pytest.mark.slow
def test_sealed_then_unseal_changed_once(throwaway_lab):
    t = throwaway_lab()
    seal(t)
    keys = unseal_keys(t)

    r = run_module("vault_health", conn_args(t))
    assert r["failed"] and r["failure_class"] == "sealed"
    assert r["msg"].startswith("Vault is sealed") and "unseal_keys" in r["hint"]
    assert r["sealed"] is True and r["seal_threshold"] == 1

    r = run_module("vault_health", conn_args(t, unseal_keys=keys), check=True)
    assert not r["failed"] and r["changed"] is True and r["ready"] is False and r["unsealed"] is False
    assert run_module("vault_health", conn_args(t))["failure_class"] == "sealed"  # check mode unsealed nothing

    r = run_module("vault_health", conn_args(t, unseal_keys=keys))
    assert not r["failed"], r["msg"]
    assert r["changed"] is True and r["unsealed"] is True and r["ready"] is True and r["sealed"] is False
    out = json.dumps(r)
    assert all(k not in out for k in keys) and t.root_token() not in out

    r = run_module("vault_health", conn_args(t, unseal_keys=keys))
    assert r["changed"] is False and r["ready"] is True


@pytest.mark.destructive
@pytest.mark.slow
def test_wrong_unseal_key(throwaway_lab):
    t = throwaway_lab()
    seal(t)
    wrong = "A" * 44
    r = run_module("vault_health", conn_args(t, unseal_keys=[wrong]))
    assert r["failed"] and r["failure_class"] in ("bad_input", "sealed")
    assert wrong not in json.dumps(r)
    assert run_module("vault_health", conn_args(t, unseal_keys=unseal_keys(t)))["ready"] is True


@pytest.mark.destructive
@pytest.mark.slow
def test_wait_through_a_restart_and_unseal(throwaway_lab):
    """Stop the server, start waiting, start it again: refused -> sealed -> unseal -> ready."""
    t = throwaway_lab()
    keys = unseal_keys(t)
    assert t.unit("container-vaultprod", "stop").returncode == 0
    results = {}

    def wait():
        results["r"] = run_module("vault_health", conn_args(t, unseal_keys=keys, wait_timeout=60, interval=0.2))

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.5)
    assert t.unit("container-vaultprod", "start").returncode == 0
    waiter.join(90)
    r = results["r"]
    assert not r["failed"], r["msg"]
    assert r["ready"] is True and r["unsealed"] is True and r["changed"] is True
    assert r["attempts"] > 2 and r["elapsed"] >= 1.4
    assert r["observed"][0] in ("refused", "reset") and r["observed"][-1] == "ready"
    assert r["observed"].index("sealed") < r["observed"].index("unsealed")


@pytest.mark.destructive
@pytest.mark.slow
def test_restart_without_keys_reports_sealed_after_the_wait(throwaway_lab):
    t = throwaway_lab()
    assert t.unit("container-vaultprod", "restart").returncode == 0
    r = run_module("vault_health", conn_args(t, wait_timeout=1, interval=0.2))
    assert r["failed"] and r["failure_class"] == "sealed" and r["attempts"] > 1
    r = run_module("vault_health", conn_args(t, unseal_keys=unseal_keys(t), wait_timeout=10))
    assert r["ready"] is True and r["changed"] is True
