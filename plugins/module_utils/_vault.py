# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One Vault/OpenBao connection for every module: address, TLS server name
(SNI + hostname check) distinct from the address, CA bundle, client cert on
every request, cert or token auth, namespace, an HTTP proxy (CONNECT),
timeouts, bounded retries. Built on
http.client + ssl so SNI and the raw failure (errno 104, alert names) stay
visible; errors come out as classified RotateError.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import os
import time

try:
    import http.client as http_client
    from urllib.parse import urlsplit, quote
except ImportError:  # pragma: no cover
    http_client = None

from ansible.module_utils.basic import AnsibleModule, env_fallback

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _timing
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import (
    RotateError,
    classify_exception,
    classify_http,
)
from ansible_collections.privsec.vault_rotate.plugins.module_utils._tls import Proxy, connect, make_context, pending_alert


CONNECTION_ARGSPEC = dict(
    url=dict(type="str", fallback=(env_fallback, ["VAULT_ADDR", "BAO_ADDR"])),
    ca_cert=dict(type="path", fallback=(env_fallback, ["VAULT_CACERT", "BAO_CACERT"])),
    client_cert=dict(type="path", fallback=(env_fallback, ["VAULT_CLIENT_CERT", "BAO_CLIENT_CERT"])),
    client_key=dict(type="path", no_log=False, fallback=(env_fallback, ["VAULT_CLIENT_KEY", "BAO_CLIENT_KEY"])),
    tls_server_name=dict(type="str", fallback=(env_fallback, ["VAULT_TLS_SERVER_NAME", "BAO_TLS_SERVER_NAME"])),
    validate_certs=dict(type="bool", default=True),
    timeout=dict(type="float", default=10),
    retries=dict(type="int", default=0),
    auth_method=dict(type="str", choices=["cert", "token", "none"], default=None),
    cert_auth_mount=dict(type="str", default="cert"),
    cert_role=dict(type="str"),
    token=dict(type="str", no_log=True, fallback=(env_fallback, ["VAULT_TOKEN", "BAO_TOKEN"])),
    namespace=dict(type="str", fallback=(env_fallback, ["VAULT_NAMESPACE", "BAO_NAMESPACE"])),
    proxy=dict(type="str", fallback=(env_fallback, ["VAULT_PROXY_ADDR", "BAO_PROXY_ADDR"])),
)

# Endpoints that exist in the root namespace only: they never carry X-Vault-Namespace
# (a namespaced sys/health or sys/seal-status is a 404 on Vault Enterprise and OpenBao).
ROOT_ONLY_PATHS = (
    "sys/health", "sys/seal-status", "sys/unseal", "sys/seal", "sys/init", "sys/leader", "sys/step-down",
    "sys/key-status", "sys/rekey", "sys/generate-root", "sys/metrics", "sys/host-info", "sys/storage",
    "sys/license", "sys/replication", "sys/ha-status", "sys/config/state", "sys/in-flight-req",
)


def root_only(path):
    """True for a path of ROOT_ONLY_PATHS (or below one): sent without the namespace header."""
    path = path.lstrip("/").split("?", 1)[0]
    return any(path == p or path.startswith(p + "/") for p in ROOT_ONLY_PATHS)


def normalize_namespace(namespace):
    """'team-a/' -> 'team-a'; None or '' or '/' or 'root' -> None (the root namespace)."""
    text = (namespace or "").strip().strip("/")
    if not text or text == "root":
        return None
    if any(not part or part in (".", "..") or part.strip() != part for part in text.split("/")) or any(
            ch in text for ch in "?#% \t\r\n"):
        raise RotateError("bad_input", "invalid Vault namespace %r" % (namespace,),
                          "a namespace path is names separated by '/', for example team-a or team-a/prod")
    return text


# Statuses worth another try when the caller asked for retries.
RETRY_STATUSES = (429, 503)
RETRY_CLASSES = ("refused", "reset", "timeout", "unreachable", "sealed", "standby")
HEALTH_STATUSES = (200, 429, 472, 473, 501, 503)
MAX_BACKOFF = 5.0


def backoff_delays(initial=0.25, factor=2.0, cap=MAX_BACKOFF):
    """Growing sleep times between retried requests: 0.25, 0.5, 1, 2, 4, 5, 5, ..."""
    return _timing.pauses(initial, factor, cap)


class _SNIConnection(http_client.HTTPConnection if http_client else object):
    """HTTPS connection whose TLS goes through _tls.connect (SNI name distinct
    from the address, classified errors)."""

    default_port = 443

    def __init__(self, host, port, server_name, context, timeout, proxy=None):
        http_client.HTTPConnection.__init__(self, host, port, timeout=timeout)
        self._server_name = server_name
        self._context = context
        self._proxy = proxy

    def connect(self):
        self.sock = connect(self.host, self.port, server_name=self._server_name, context=self._context,
                            timeout=self.timeout, proxy=self._proxy)


class _TunnelConnection(http_client.HTTPConnection if http_client else object):
    """Plain-HTTP connection through a CONNECT tunnel (an http:// Vault address with a proxy)."""

    def __init__(self, host, port, timeout, proxy):
        http_client.HTTPConnection.__init__(self, host, port, timeout=timeout)
        self._proxy = proxy

    def connect(self):
        self.sock = self._proxy.tunnel(self.host, self.port, self.timeout)


class VaultClient(object):
    """Minimal Vault HTTP API client (paths are relative to /v1/)."""

    def __init__(self, url, ca_cert=None, client_cert=None, client_key=None, tls_server_name=None,
                 validate_certs=True, timeout=10.0, retries=0, token=None, namespace=None, proxy=None):
        if not url:
            raise RotateError("bad_input", "no Vault address", "set url or VAULT_ADDR / BAO_ADDR")
        parts = urlsplit(url if "://" in url else "https://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RotateError("bad_input", "invalid Vault address %r" % (url,), "use https://host:port")
        self.url = url
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.base_path = parts.path.rstrip("/")
        self.tls_server_name = tls_server_name or None
        self.server_name = self.tls_server_name or self.host
        self.timeout = float(timeout)
        self.retries = max(0, int(retries or 0))
        self.token = token or None
        self.requests_made = 0
        self.target = "%s:%s" % (self.host, self.port)
        self.namespace = normalize_namespace(namespace)
        self.proxy = Proxy(proxy) if proxy else None
        self._context = None
        if self.scheme == "https":
            self._context = make_context(
                ca_cert=ca_cert, client_cert=client_cert, client_key=client_key,
                verify=validate_certs, check_hostname=validate_certs,
            )
        self._conn = None

    # -- connection ---------------------------------------------------------

    def _new_connection(self):
        if self.scheme == "https":
            return _SNIConnection(self.host, self.port, self.server_name, self._context, self.timeout, self.proxy)
        if self.proxy is not None:
            return _TunnelConnection(self.host, self.port, self.timeout, self.proxy)
        return http_client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def close(self):
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._conn = None

    def _host_header(self):
        default = 443 if self.scheme == "https" else 80
        host = self.server_name
        if ":" in host and not host.startswith("["):
            host = "[%s]" % host
        return host if self.port == default else "%s:%s" % (host, self.port)

    def _send_once(self, method, path, payload, headers):
        """One HTTP exchange; reuses the keep-alive connection and reconnects
        once when the server closed an idle one."""
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = self._new_connection()
            phase = "connect" if not reused else "request"
            try:
                if not reused:
                    self._conn.connect()
                phase = "request"
                self.requests_made += 1
                self._conn.request(method, path, body=payload, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.close()
                return response.status, raw
            except RotateError:
                self.close()
                raise
            except Exception as exc:  # pylint: disable=broad-except
                if isinstance(exc, (BrokenPipeError, ConnectionResetError)) and not reused:
                    exc = pending_alert(self._conn.sock) or exc
                self.close()
                stale = reused and attempt == 0 and isinstance(
                    exc, (http_client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
                )
                if stale:
                    continue
                err = classify_exception(exc, target=self.target, server_name=self.server_name, phase=phase)
                if self.proxy is not None:
                    err.details.setdefault("proxy", self.proxy.display)
                raise err
        raise RotateError("reset", "connection to %s reset twice" % self.target)  # pragma: no cover

    def request(self, method, path, body=None, auth=True, expect=(200, 204)):
        """Send METHOD /v1/<path>; return (status, parsed JSON or None).

        Raises a classified RotateError unless the status is in `expect`.
        Retries (only when retries > 0) transport errors and 429/503 with backoff.
        With a namespace, every request but those to a root-only path
        (ROOT_ONLY_PATHS) carries it as X-Vault-Namespace.
        """
        path = path.lstrip("/")
        full_path = "%s/v1/%s" % (self.base_path, quote(path, safe="/?=&-_.~:,"))
        headers = {"X-Vault-Request": "true", "Host": self._host_header(), "Accept": "application/json"}
        if auth and self.token:
            headers["X-Vault-Token"] = self.token
        namespace = self.namespace if not root_only(path) else None
        if namespace:
            headers["X-Vault-Namespace"] = namespace
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        delays = backoff_delays()
        attempts_left = self.retries
        while True:
            try:
                status, raw = self._send_once(method.upper(), full_path, payload, headers)
                data = _parse_json(raw)
                errors = (data or {}).get("errors") if isinstance(data, dict) else None
                # A 404 that read()/delete() take for "absent" is no such thing when the namespace is missing.
                namespace_missing = namespace and status == 404 and "namespace not found" in str(errors).lower()
                if status in expect and not namespace_missing:
                    return status, data
                if errors is None and raw and data is None:
                    errors = [raw[:200].decode("utf-8", "replace")]
                error = classify_http(status, errors or [], path)
                if namespace:
                    error = self._namespace_error(error, namespace, path, namespace_missing)
                retryable = status in RETRY_STATUSES
            except RotateError as exc:
                error = exc
                retryable = exc.failure_class in RETRY_CLASSES
            if attempts_left <= 0 or not retryable:
                raise error
            attempts_left -= 1
            time.sleep(next(delays))

    @staticmethod
    def _namespace_error(error, namespace, path, missing):
        """The HTTP error of a namespaced request, told with its namespace (``missing``: Vault
        answered that the namespace itself does not exist)."""
        details = dict(error.details, namespace=namespace)
        if missing:
            return RotateError(
                "not_found",
                "Vault namespace '%s' not found (HTTP 404 on '%s')" % (namespace, path),
                "check the namespace option (vault_rotate_vault_namespace, VAULT_NAMESPACE / BAO_NAMESPACE): the "
                "full path from the root, without a leading or trailing '/'; list them with: bao namespace list "
                "(in the parent namespace)", details)
        if error.failure_class in ("not_found", "permission_denied"):
            hint = "%s; the request went to namespace '%s': the mount, the mapping and the token must live in it" % (
                error.hint or "check the path", namespace)
            return RotateError(error.failure_class, error.message, hint, details)
        error.details["namespace"] = namespace
        return error

    # -- API helpers ----------------------------------------------------------

    def read(self, path):
        status, data = self.request("GET", path, expect=(200, 204, 404))
        if status == 404:
            return None
        return data

    def write(self, path, body):
        return self.request("POST", path, body=body or {})[1]

    def delete(self, path):
        self.request("DELETE", path, expect=(200, 204, 404))

    def login_cert(self, mount="cert", name=None):
        body = {"name": name} if name else {}
        mount = (mount or "cert").strip("/")
        data = self.request("POST", "auth/%s/login" % mount, body=body, auth=False)[1] or {}
        auth = data.get("auth") or {}
        token = auth.get("client_token")
        if not token:
            raise RotateError(
                "permission_denied",
                "cert login at auth/%s/login%s returned no token" % (mount, " as %s" % name if name else ""),
                "check that the client cert matches the mapping (allowed CN, CA bundle)",
                {"path": "auth/%s/login" % mount},
            )
        self.token = token
        return auth

    def lookup_self(self):
        return (self.request("GET", "auth/token/lookup-self")[1] or {}).get("data") or {}

    def revoke_self(self):
        self.request("POST", "auth/token/revoke-self", body={})

    def health(self):
        return self.request("GET", "sys/health", auth=False, expect=HEALTH_STATUSES)

    def seal_status(self):
        return self.request("GET", "sys/seal-status", auth=False)[1] or {}

    def unseal(self, key):
        try:
            return self.request("POST", "sys/unseal", body={"key": key}, auth=False)[1] or {}
        except RotateError as exc:
            if exc.failure_class == "bad_input":  # never echo the key
                raise RotateError("bad_input", "Vault rejected an unseal key", "check the unseal keys (wrong cluster or a stale key?)",
                                  {"path": "sys/unseal", "status": exc.details.get("status")})
            raise


def _parse_json(raw):
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        return None


class VaultModule(AnsibleModule):
    """AnsibleModule with the shared connection options and the client setup."""

    def __init__(self, argument_spec=None, **kwargs):
        spec = dict(CONNECTION_ARGSPEC)
        spec.update(argument_spec or {})
        super(VaultModule, self).__init__(argument_spec=spec, **kwargs)

    def _check_connection_options(self):
        p = self.params
        if not p.get("url"):
            self.fail_json(msg="no Vault address: set the url option or the VAULT_ADDR (or BAO_ADDR) environment variable",
                           failure_class="bad_input")
        if p.get("client_cert") and not p.get("client_key"):
            self.fail_json(msg="client_cert is set without client_key (VAULT_CLIENT_KEY)", failure_class="bad_input")
        if p.get("client_key") and not p.get("client_cert"):
            self.fail_json(msg="client_key is set without client_cert (VAULT_CLIENT_CERT)", failure_class="bad_input")
        for option in ("ca_cert", "client_cert", "client_key"):
            path = p.get(option)
            if path and not os.path.isfile(path):
                self.fail_json(msg="%s %s does not exist on this host" % (option, path), failure_class="missing_file",
                               hint="Vault API tasks run where the admin identity lives (the controller by default): "
                                    "check the path on that host",
                               path=path)
        if p.get("timeout") is not None and p["timeout"] <= 0:
            self.fail_json(msg="timeout must be > 0", failure_class="bad_input")
        if p.get("retries") is not None and p["retries"] < 0:
            self.fail_json(msg="retries must be >= 0", failure_class="bad_input")

    def vault_client(self):
        """A VaultClient from the options; not authenticated. Fails the module
        (before any network call) when the options cannot work."""
        self._check_connection_options()
        p = self.params
        try:
            return VaultClient(
                p["url"], ca_cert=p.get("ca_cert"), client_cert=p.get("client_cert"), client_key=p.get("client_key"),
                tls_server_name=p.get("tls_server_name"), validate_certs=p.get("validate_certs", True),
                timeout=p.get("timeout") or 10, retries=p.get("retries") or 0, token=p.get("token"),
                namespace=p.get("namespace"), proxy=p.get("proxy"),
            )
        except RotateError as err:
            self.fail_from(err)

    def auth_method(self):
        p = self.params
        if p.get("auth_method"):
            return p["auth_method"]
        return "cert" if p.get("client_cert") and not p.get("token") else "token"

    def authenticated_client(self):
        """A VaultClient logged in per auth_method (cert login through
        cert_auth_mount/cert_role, or the token)."""
        method = self.auth_method()
        if method == "cert" and not self.params.get("client_cert"):
            self.fail_json(msg="auth_method=cert needs client_cert and client_key (VAULT_CLIENT_CERT / VAULT_CLIENT_KEY)",
                           failure_class="bad_input")
        if method == "token" and not self.params.get("token"):
            self.fail_json(msg="no Vault token: set the token option or VAULT_TOKEN (or BAO_TOKEN), "
                               "or use auth_method=cert with a client cert", failure_class="bad_input")
        client = self.vault_client()
        if method == "cert":
            client.token = None
            try:
                client.login_cert(self.params.get("cert_auth_mount") or "cert", self.params.get("cert_role"))
            except RotateError as err:
                self.fail_from(err, auth_method="cert")
        return client

    def fail_from(self, err, **extra):
        """fail_json from a RotateError: msg, failure_class, hint and its details."""
        if not isinstance(err, RotateError):
            err = classify_exception(err)
        self.fail_json(**err.as_failure(**extra))
