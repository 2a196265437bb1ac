# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Vault/OpenBao connection and authentication, shared by every module that
    # talks to the Vault API (see plugins/module_utils/_vault.py).
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Address of the Vault/OpenBao API, for example V(https://127.0.0.1:22400).
      - May be an IP address while the certificate names the service; set O(tls_server_name) then.
      - If not set, the environment variable E(VAULT_ADDR), then E(BAO_ADDR), is used.
    type: str
  ca_cert:
    description:
      - Path to a PEM bundle of CA certificates that verifies the server certificate.
      - During a CA rollover it may hold the old and the new CA.
      - If not set, E(VAULT_CACERT), then E(BAO_CACERT), is used; without any, the system trust store.
      - The path is read on the host that runs the task.
    type: path
  client_cert:
    description:
      - Path to the PEM client certificate presented on every request (mutual TLS).
      - Send leaf + intermediate when the listener trusts only the root.
      - If not set, E(VAULT_CLIENT_CERT), then E(BAO_CLIENT_CERT), is used.
    type: path
  client_key:
    description:
      - Path to the unencrypted PEM private key of O(client_cert).
      - If not set, E(VAULT_CLIENT_KEY), then E(BAO_CLIENT_KEY), is used.
    type: path
  tls_server_name:
    description:
      - TLS server name sent as SNI and checked against the server certificate, instead of the host of O(url).
      - Lets V(https://127.0.0.1:22400) be validated as V(vault.prod.privsec.ch).
      - If not set, E(VAULT_TLS_SERVER_NAME), then E(BAO_TLS_SERVER_NAME), is used.
    type: str
  validate_certs:
    description:
      - Verify the server certificate chain and name. Only disable it to diagnose.
    type: bool
    default: true
  timeout:
    description:
      - Seconds to wait for the TCP connect, the TLS handshake and each answer.
    type: float
    default: 10
  retries:
    description:
      - How many times to retry a request after a connection error (refused, reset, timeout) or an
        HTTP 429/503 answer, with a growing pause (0.25 s doubling up to 5 s) in between.
      - V(0) tries once.
    type: int
    default: 0
  auth_method:
    description:
      - How to authenticate.
      - V(cert) logs in at C(auth/<cert_auth_mount>/login) with the client certificate (the mapping O(cert_role)).
      - V(token) uses O(token).
      - V(none) sends no token (enough for C(sys/health) and C(sys/seal-status)).
      - Default is V(cert) when O(client_cert) is set and no O(token) is, V(token) otherwise.
    type: str
    choices: [cert, token, none]
  cert_auth_mount:
    description:
      - Mount path of the cert auth method used by O(auth_method=cert).
    type: str
    default: cert
  cert_role:
    description:
      - Name of the cert-auth mapping (C(auth/<mount>/certs/<name>)) to log in with.
      - If not set, Vault picks the mapping that matches the client certificate.
    type: str
  token:
    description:
      - Vault token for O(auth_method=token).
      - If not set, E(VAULT_TOKEN), then E(BAO_TOKEN), is used.
      - Never logged nor returned.
    type: str
  namespace:
    description:
      - Vault namespace (Vault Enterprise, OpenBao 2.3 and later) in which the request paths live, that is the
        cert auth mount of the login, the PKI mount, the mappings and the token.
      - The full path from the root namespace, for example V(team-a) or V(team-a/prod); a leading or trailing
        C(/) is ignored, V(root) and an empty value mean the root namespace.
      - Sent as the C(X-Vault-Namespace) header on every request except those to endpoints that exist in the root
        namespace only (C(sys/health), C(sys/seal-status), C(sys/unseal) and the other root-only C(sys/) paths), so
        M(privsec.vault_rotate.vault_health) works with it set.
      - A namespace that does not exist fails with C(failure_class=not_found) naming it.
      - If not set, E(VAULT_NAMESPACE), then E(BAO_NAMESPACE), is used.
    type: str
    version_added: 1.0.0
  proxy:
    description:
      - HTTP proxy to reach Vault through, as V(http://host:port) (port 3128 when left out).
      - The module opens a C(CONNECT host:port) tunnel through it and runs TLS end to end inside. The SNI
        (O(tls_server_name)), the server certificate check and the client certificate are the same as without a
        proxy, and the proxy sees neither the client certificate nor the token.
      - Proxy credentials and TLS to the proxy itself (V(https://) proxies) are not supported.
      - If not set, E(VAULT_PROXY_ADDR), then E(BAO_PROXY_ADDR), is used (the variables of the Vault and OpenBao
        CLIs). E(HTTPS_PROXY), E(HTTP_PROXY) and E(NO_PROXY) are not read, so a proxy set for other traffic
        (package downloads in an execution environment) never carries the Vault connection.
      - An unreachable proxy, or one that refuses the tunnel (HTTP 403, 407), fails with a message that names the
        proxy, the target and what to check.
    type: str
    version_added: 1.0.0
notes:
  - The client certificate is presented on every request, as a listener with
    C(tls_require_and_verify_client_cert) needs it also after the login.
  - Errors come back with C(failure_class) (for example V(reset), V(tls_alert), V(untrusted_server_cert),
    V(hostname_mismatch), V(sealed), V(permission_denied)) and a C(hint) that names the next thing to check.
  - Set these options once per play with C(module_defaults) and the action group C(group/privsec.vault_rotate.vault).
"""
