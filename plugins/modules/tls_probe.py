#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: tls_probe
short_description: Probe a TLS endpoint like C(openssl s_client), with SNI, client cert and a failure class
version_added: 0.1.0
description:
  - Connects to O(host):O(port), sends O(server_name) as SNI and checks the served certificate against
    that name and the CA bundle, optionally presenting a client certificate.
  - Returns what the server served (serial, fingerprint, names, validity, chain), the TLS version and,
    when something is wrong, a RV(failure_class) that tells a reset from an alert from a trust problem.
  - Always reads after the handshake, because a TLS 1.3 server that requires a client certificate
    sends its alert (V(certificate required), V(unknown ca)) only then.
  - When verification fails, a second, unverified handshake still describes the served certificate.
  - Can wait, with a bound and a growing pause, until the endpoint answers as expected
    (after a restart a port forwarder resets connections until the server listens).
  - Never changes anything.
author:
  - privsec platform engineering (@privsec)
attributes:
  check_mode:
    support: full
    description: The probe only reads; it runs the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is nothing to diff.
options:
  host:
    description:
      - Address to connect to (IP or name).
    type: str
    required: true
  port:
    description:
      - TCP port.
    type: int
    default: 443
  server_name:
    description:
      - TLS server name sent as SNI and checked against the served certificate.
      - Default is O(host). Set it whenever O(host) is an IP address and the certificate names the
        service (Python sends no SNI for an IP address).
    type: str
  ca_cert:
    description:
      - Path to a PEM bundle of CA certificates to verify the served chain with (read on the host
        that runs the task).
      - Without O(ca_cert) and O(ca_pem) the system trust store is used.
    type: path
  ca_pem:
    description:
      - The PEM bundle itself, instead of a path.
    type: str
  client_cert:
    description:
      - Path to a PEM client certificate to present (leaf, plus the intermediate when the server trusts only the root).
    type: path
  client_key:
    description:
      - Path to the unencrypted PEM key of O(client_cert).
    type: path
  validate_certs:
    description:
      - Verify the served chain (and name, see O(check_hostname)). With V(false) the probe only reports
        what is served.
    type: bool
    default: true
  check_hostname:
    description:
      - Check that the served certificate is valid for O(server_name).
    type: bool
    default: true
  expect_serial:
    description:
      - Serial the leaf must have (any hex format, colons optional). Otherwise RV(failure_class=serial_mismatch).
    type: str
  expect_fingerprint:
    description:
      - SHA-256 fingerprint of the DER leaf it must have (any hex format). Otherwise RV(failure_class=serial_mismatch).
    type: str
  http_path:
    description:
      - Send C(GET <http_path>) after the handshake and return RV(http_status), for example V(/v1/sys/seal-status).
      - Any HTTP status counts as a working TLS connection; assert on RV(http_status) for more.
    type: str
  timeout:
    description:
      - Seconds for the TCP connect, the handshake and the HTTP answer of one attempt.
    type: float
    default: 10
  wait_timeout:
    description:
      - Keep trying until the probe succeeds or this many seconds have passed. V(0) tries once.
      - Option problems (a missing file, a bad PEM) fail at once.
    type: float
    default: 0
  interval:
    description:
      - First pause between attempts, in seconds; it grows by half each time, up to 5 seconds (or
        O(interval) when larger).
    type: float
    default: 1
  fail_on_error:
    description:
      - Fail the task when the probe does not succeed.
      - With V(false) the task succeeds and returns RV(ok=false) and the failure class as data, for a
        later C(assert) or to compare several endpoints.
    type: bool
    default: true
notes:
  - Failure classes (RV(failure_class)) V(refused), V(reset), V(timeout), V(dns), V(unreachable),
    V(tls_alert) (with RV(tls_alert)), V(untrusted_server_cert), V(hostname_mismatch), V(expired),
    V(not_yet_valid), V(tls_error), V(serial_mismatch); with O(fail_on_error=true) also V(missing_file),
    V(bad_pem), V(key_mismatch) for the options.
  - The probe connects to O(host) and O(port) directly, never through a proxy (unlike the Vault API modules'
    O(privsec.vault_rotate.vault_health#module:proxy) option). It proves what that listener itself serves and
    answers.
seealso:
  - module: privsec.vault_rotate.vault_health
  - module: community.crypto.get_certificate
    description: Fetch the certificate a TLS server serves (no client certificate, no failure class).
"""

EXAMPLES = r"""
- name: The Vault listener serves the new serial for its SNI name, verified with the trust bundle
  privsec.vault_rotate.tls_probe:
    host: 127.0.0.1
    port: 22400
    server_name: vault.prod.privsec.ch
    ca_cert: /home/vaultprod/tls-prod/root_ca.pem
    client_cert: /root/vault/tls-admin/prod/admin.crt
    client_key: /root/vault/tls-admin/prod/admin.key
    http_path: /v1/sys/seal-status
    expect_serial: "{{ server_cert.serial }}"
    wait_timeout: 30

- name: Probe the proxy without failing, to report every endpoint at once
  privsec.vault_rotate.tls_probe:
    host: 127.0.0.1
    port: 22300
    server_name: vault.prod.privsec.ch
    ca_cert: /home/proxyprod/vault/ca/ca.pem
    fail_on_error: false
  register: proxy_probe

- name: Gate on the probe
  ansible.builtin.assert:
    that: proxy_probe.ok
    fail_msg: "proxy: {{ proxy_probe.failure_class }}: {{ proxy_probe.msg }} ({{ proxy_probe.hint }})"
"""

RETURN = r"""
ok:
  description: Whether the probe succeeded (handshake, verification, post-handshake read, expected serial/fingerprint).
  returned: always
  type: bool
failure_class:
  description: Why it did not succeed; V(null) when RV(ok).
  returned: always
  type: str
  sample: tls_alert
tls_alert:
  description: Name of the TLS alert the server sent, when RV(failure_class=tls_alert).
  returned: always
  type: str
  sample: certificate required
msg:
  description: What happened, in words.
  returned: always
  type: str
hint:
  description: What to check next when the probe failed.
  returned: always
  type: str
verified:
  description: Whether the served chain was verified against the CA bundle.
  returned: always
  type: bool
serial:
  description: Serial of the served leaf, lowercase colon-separated hex.
  returned: when the server served a certificate
  type: str
  sample: "3a:1f:00:9c"
fingerprint_sha256:
  description: SHA-256 fingerprint of the served leaf (DER), lowercase colon-separated hex.
  returned: when the server served a certificate
  type: str
subject:
  description: Subject of the served leaf (RFC 4514).
  returned: when the server served a certificate
  type: str
issuer:
  description: Issuer of the served leaf (RFC 4514).
  returned: when the server served a certificate
  type: str
common_name:
  description: Common name of the served leaf.
  returned: when the server served a certificate
  type: str
dns_names:
  description: DNS SANs of the served leaf.
  returned: when the server served a certificate
  type: list
  elements: str
ip_addresses:
  description: IP SANs of the served leaf.
  returned: when the server served a certificate
  type: list
  elements: str
not_before:
  description: Start of validity (ISO 8601 UTC).
  returned: when the server served a certificate
  type: str
not_after:
  description: End of validity (ISO 8601 UTC).
  returned: when the server served a certificate
  type: str
  sample: "2026-12-25T17:50:00Z"
days_left:
  description: Days until RV(not_after) (negative when expired).
  returned: when the server served a certificate
  type: float
chain:
  description: Every certificate the server sent, leaf first.
  returned: when the server served a certificate
  type: list
  elements: dict
  contains:
    subject:
      description: Subject (RFC 4514).
      type: str
    issuer:
      description: Issuer (RFC 4514).
      type: str
    serial:
      description: Serial, colon-separated hex.
      type: str
tls_version:
  description: Negotiated TLS version.
  returned: when the handshake completed
  type: str
  sample: TLSv1.3
cipher:
  description: Negotiated cipher suite.
  returned: when the handshake completed
  type: str
http_status:
  description: HTTP status of the O(http_path) request.
  returned: when O(http_path) is set and the server answered
  type: int
  sample: 200
http_body:
  description: Start (at most 4 KiB) of the HTTP answer body.
  returned: when O(http_path) is set and the server answered
  type: str
observed:
  description:
    - Outcomes seen while waiting, in order, consecutive repeats folded, for example
      V([reset, ok]) for a port forwarder whose server came up, or V([serial_mismatch, ok]) for a reload.
  returned: always
  type: list
  elements: str
issuer_common_name:
  description: Common name of the issuer of the served leaf.
  returned: when the server served a certificate and cryptography is installed
  type: str
lifetime_days:
  description: Validity period of the served leaf, in days.
  returned: when the server served a certificate and cryptography is installed
  type: float
is_ca:
  description: Whether the served leaf is a CA certificate (a misconfigured listener).
  returned: when the server served a certificate and cryptography is installed
  type: bool
key_type:
  description: Key type of the served leaf (V(ec), V(rsa), V(ed25519)).
  returned: when the server served a certificate and cryptography is installed
  type: str
key_size:
  description: Key size in bits.
  returned: when the server served a certificate and cryptography is installed
  type: int
target:
  description: The C(host:port) probed.
  returned: always
  type: str
server_name:
  description: The TLS name sent (SNI) and checked.
  returned: always
  type: str
verify_message:
  description: OpenSSL's reason when verification failed (for example V(unable to get local issuer certificate)).
  returned: always
  type: str
errno:
  description: OS error number of a transport failure (104 for a reset, 111 refused).
  returned: always
  type: int
phase:
  description: Where a failure happened, V(connect), V(handshake) or V(request) (after the handshake).
  returned: always
  type: str
attempts:
  description: Number of probes made.
  returned: always
  type: int
elapsed:
  description: Seconds spent, all attempts included.
  returned: always
  type: float
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._tls import make_context, probe_until
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509


def main():
    module = AnsibleModule(
        argument_spec=dict(
            host=dict(type="str", required=True),
            port=dict(type="int", default=443),
            server_name=dict(type="str"),
            ca_cert=dict(type="path"),
            ca_pem=dict(type="str"),
            client_cert=dict(type="path"),
            client_key=dict(type="path", no_log=False),
            validate_certs=dict(type="bool", default=True),
            check_hostname=dict(type="bool", default=True),
            expect_serial=dict(type="str"),
            expect_fingerprint=dict(type="str"),
            http_path=dict(type="str"),
            timeout=dict(type="float", default=10),
            wait_timeout=dict(type="float", default=0),
            interval=dict(type="float", default=1),
            fail_on_error=dict(type="bool", default=True),
        ),
        mutually_exclusive=[("ca_cert", "ca_pem")],
        required_together=[("client_cert", "client_key")],
        supports_check_mode=True,
    )
    if not _x509.HAS_CRYPTOGRAPHY:
        module.warn("%s Without it the probe reports the fingerprint, and the serial, names and validity only "
                    "when the chain was verified; no chain list." % missing_required_lib("cryptography"))
    p = module.params
    if p["timeout"] <= 0 or p["wait_timeout"] < 0 or p["interval"] <= 0:
        module.fail_json(msg="timeout and interval must be > 0, wait_timeout >= 0", failure_class="bad_input")
    if p["http_path"] and not p["http_path"].startswith("/"):
        module.fail_json(msg="http_path must start with '/'", failure_class="bad_input")

    try:
        context = make_context(ca_cert=p["ca_cert"], ca_pem=p["ca_pem"], client_cert=p["client_cert"],
                               client_key=p["client_key"], verify=p["validate_certs"],
                               check_hostname=p["check_hostname"])
        unverified = None
        if p["validate_certs"]:
            unverified = make_context(client_cert=p["client_cert"], client_key=p["client_key"], verify=False)
    except RotateError as err:
        module.fail_json(msg=err.message, ok=False, changed=False, attempts=0, elapsed=0.0, **dict(
            (k, v) for k, v in err.as_result().items() if k != "msg"))

    result = probe_until(p["host"], p["port"], server_name=p["server_name"], context=context,
                         unverified_context=unverified, timeout=p["timeout"], http_path=p["http_path"],
                         expect_serial=p["expect_serial"], expect_fingerprint=p["expect_fingerprint"],
                         wait_timeout=p["wait_timeout"], interval=p["interval"])
    result["changed"] = False
    if not result["ok"] and p["fail_on_error"]:
        msg = result["msg"]
        if result.get("hint"):
            msg = "%s. Next: %s" % (msg.rstrip("."), result["hint"])
        if p["wait_timeout"]:
            msg = "%s (after %d attempts in %.1f s)" % (msg, result["attempts"], result["elapsed"])
        details = dict((k, v) for k, v in result.items() if k != "msg")
        module.fail_json(msg=msg, **details)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
