"""Signing side by side: every request signed once, each thread on its own connection with the one
token, and the first failure in request order is the one reported.

Vault is faked here only to make one request of many fail at a chosen place (the lab cannot be
told to refuse the 5th CSR of a run); the lab's runs sign for real (tests/integration).
"""
import threading

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _engine
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError


class FakeClient(object):
    made = []

    def __init__(self, token):
        self.token = token
        self.requests_made = 0
        self.closed = False
        FakeClient.made.append(self)

    def close(self):
        self.closed = True


def _requests(n):
    return [{"slot": "slot%02d" % i, "pki_mount": "pki", "pki_role": "r", "csr": "csr%d" % i, "common_name": "cn%d" % i}
            for i in range(n)]


def _run(monkeypatch, n, fail=()):
    FakeClient.made = []
    threads, tokens = set(), set()

    def fake_sign(client, mount, role, csr, **kw):
        client.requests_made += 1
        threads.add(threading.current_thread().name)
        tokens.add(client.token)
        if csr in fail:
            raise RotateError("permission_denied", "refused %s" % csr)
        return {"certificate": "cert of %s" % csr}

    monkeypatch.setattr(_engine, "sign_or_issue", fake_sign)
    monkeypatch.setattr(_engine, "_client", lambda connection, token=None, **kw: FakeClient(token))
    first = FakeClient("s.admin")
    results, extra = _engine._sign_side_by_side(first, {"url": "https://vault:8200"}, _requests(n))
    return first, results, extra, threads, tokens


def test_every_request_is_signed_once_on_up_to_four_connections_with_the_one_token(monkeypatch):
    first, results, extra, threads, tokens = _run(monkeypatch, 10)
    assert sorted(results) == ["slot%02d" % i for i in range(10)]
    assert all(results["slot%02d" % i] == {"certificate": "cert of csr%d" % i} for i in range(10))
    assert len(FakeClient.made) == _engine.SIGN_THREADS  # the caller's client and 3 more
    assert tokens == {"s.admin"}
    assert sum(c.requests_made for c in FakeClient.made) == 10
    assert extra == sum(c.requests_made for c in FakeClient.made[1:])
    assert all(c.closed for c in FakeClient.made[1:]) and not first.closed  # the caller closes its own


def test_one_request_stays_on_the_callers_connection(monkeypatch):
    first, results, extra, threads, _tokens = _run(monkeypatch, 1)
    assert list(results) == ["slot00"] and extra == 0 and len(FakeClient.made) == 1
    assert threads == {threading.current_thread().name}


def test_admin_sign_reports_the_first_failure_in_request_order(monkeypatch):
    FakeClient.made = []

    def fake_sign(client, mount, role, csr, **kw):
        client.requests_made += 1
        if csr in ("csr3", "csr7"):
            raise RotateError("permission_denied", "refused %s" % csr)
        return {"certificate": "cert of %s" % csr, "serial": csr}

    class Login(FakeClient):
        def read(self, path):
            return {"data": {"key_type": "any"}}

    monkeypatch.setattr(_engine, "sign_or_issue", fake_sign)
    monkeypatch.setattr(_engine, "_client", lambda connection, token=None, **kw: Login(token or "s.admin"))
    monkeypatch.setattr(_engine, "cert_login", lambda client, *a, **kw: {"token_policies": ["admin"]})
    monkeypatch.setattr(_engine, "_revoke", lambda client: None)
    out = _engine.admin_sign({"connection": {"url": "https://vault:8200"}, "mappings": [], "compare": [],
                              "requests": _requests(10), "ca_bundle": ""})
    assert out["failure"]["slot"] == "slot03" and "refused csr3" in out["failure"]["msg"]
    assert sorted(out["signed"]) == ["slot00", "slot01", "slot02"]
    assert out["vault_requests"] == 10
