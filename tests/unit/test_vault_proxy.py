"""The proxy and namespace options where the lab cannot produce the case: proxy answers other than
200/403/407 (502, not HTTP, a close), the option's format, the namespace's format and the root-only
paths. Real sockets, no mocks; tests/integration/test_vault_namespace_proxy.py covers the real
OpenBao and a real CONNECT proxy."""
import socket
import threading

import pytest

import ports
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._tls import Proxy
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import (
    VaultClient,
    normalize_namespace,
    root_only,
)

PORTS = range(23300, 23400)  # tests/ports.py: the tests' CONNECT proxies


@pytest.fixture
def scripted():
    """A TCP server that answers every connection with `answer` (bytes) and closes: a broken proxy."""
    port = ports.reserve(PORTS)
    sock = socket.create_server(("127.0.0.1", port))
    state = {"answer": b"", "heads": []}

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                state["heads"].append(conn.recv(4096))
                if state["answer"]:
                    conn.sendall(state["answer"])

    threading.Thread(target=serve, daemon=True).start()
    state["url"] = "http://127.0.0.1:%d" % port
    yield state
    sock.close()
    ports.release(port)


def _fail(proxy_url, url="https://vault.example:8200", **kw):
    client = VaultClient(url, proxy=proxy_url, timeout=2, tls_server_name="vault.example", **kw)
    with pytest.raises(RotateError) as info:
        client.health()
    return info.value


def test_bad_gateway_is_unreachable_naming_proxy_and_target(scripted):
    scripted["answer"] = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
    err = _fail(scripted["url"])
    assert err.failure_class == "unreachable"
    assert "the proxy %s could not reach vault.example:8200 (HTTP 502 Bad Gateway)" % scripted["url"] in err.message
    assert "vault_rotate_vault_url" in err.hint
    assert scripted["heads"][0].startswith(b"CONNECT vault.example:8200 HTTP/1.1\r\nHost: vault.example:8200\r\n")


def test_not_http_and_close_without_answer(scripted):
    scripted["answer"] = b"SSH-2.0-OpenSSH_9.2\r\n\r\n"
    err = _fail(scripted["url"])
    assert err.failure_class == "server_error" and "not HTTP" in err.message and "HTTP proxy" in err.hint
    scripted["answer"] = b""
    err = _fail(scripted["url"])
    assert err.failure_class == "reset" and "closed the connection instead of answering CONNECT" in err.message


def test_the_tunnel_has_nagle_off(scripted):
    scripted["answer"] = b"HTTP/1.1 200 Connection established\r\n\r\n"
    sock = Proxy(scripted["url"]).tunnel("vault.example", 8200, 2)
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


def test_plain_http_vault_goes_through_the_tunnel_too(scripted):
    scripted["answer"] = b"HTTP/1.1 403 Forbidden\r\n\r\n"
    err = _fail(scripted["url"], url="http://10.0.0.9:8200")
    assert err.failure_class == "permission_denied" and "refused CONNECT 10.0.0.9:8200" in err.message


@pytest.mark.parametrize("url,words", [
    ("https://proxy:3128", "invalid proxy address"),
    ("socks5://proxy:1080", "invalid proxy address"),
    ("http://proxy:3128/path", "invalid proxy address"),
    ("http://user:secret@proxy:3128", "carries credentials"),
    ("http://proxy:99999", "invalid proxy address"),
])
def test_proxy_address_format(url, words):
    with pytest.raises(RotateError) as info:
        Proxy(url)
    assert info.value.failure_class == "bad_input" and words in info.value.message
    assert "secret" not in str(info.value)


def test_proxy_address_defaults():
    assert Proxy("proxy.example").display == "http://proxy.example:3128"
    assert Proxy("http://[::1]:8080/").display == "http://[::1]:8080"


@pytest.mark.parametrize("given,wanted", [
    (None, None), ("", None), ("/", None), ("root", None), ("team-a", "team-a"), ("/team-a/prod/", "team-a/prod"),
])
def test_namespace_normalized(given, wanted):
    assert normalize_namespace(given) == wanted


@pytest.mark.parametrize("bad", ["a//b", "a/../b", "a b", "a?x", "./a"])
def test_namespace_refused(bad):
    with pytest.raises(RotateError) as info:
        normalize_namespace(bad)
    assert info.value.failure_class == "bad_input" and "team-a/prod" in info.value.hint


def test_root_only_paths():
    assert root_only("sys/health") and root_only("/sys/seal-status") and root_only("sys/unseal")
    assert root_only("sys/health?standbyok=true") and root_only("sys/rekey/init")
    assert not root_only("sys/healthy") and not root_only("sys/mounts") and not root_only("auth/cert/login")
