# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The phase engine: what every phase does to its certificates, in one place.

A phase is a list of slots (certificate + key files), trust bundles (CA files)
and cert-auth mappings, the units that read them, and the gates that prove
the result. The action plugin ``privsec.vault_rotate.phase`` builds those from
the inventory (plugin_utils/_catalog.py) and calls one step of this engine per
host, either through the module of the same name or, for a host whose
connection is the controller itself, in its own process:

host steps (run where the files live, one call per host for all its slots)
  plan      inspect every slot and bundle, read the units; with ``prepare``,
            stage a new key and make the CSR of every slot that is due
  apply     install the signed certificates (key + cert + chains as one group),
            write the bundles, reload/restart the units that read what
            changed, then run the host's gates
  rollback  put back what this run changed (``.prev`` of the slots whose new
            serial is installed, bundles as they were before the run), reload/
            restart again, run the proofs

admin steps (run where the admin identity lives, one login per call)
  check     Vault ready and the admin identity logs in; the issuers of the mount
  sign      sign every CSR of the run
  mappings  write the cert-auth mappings in full where they differ
  gate      the gates that need the admin identity
  ready     wait, bounded, until a restarted Vault is ready, unsealing it

Every step returns data, never raises for a failed gate: the result carries
``failure`` ({gate, failure_class, msg, hint}) and the caller decides.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import json
import os
import threading
import time

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509
from ansible_collections.privsec.vault_rotate.plugins.module_utils._bundle import ensure_bundle, restore_bundle
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError, classify_exception
from ansible_collections.privsec.vault_rotate.plugins.module_utils._files import backup_path
from ansible_collections.privsec.vault_rotate.plugins.module_utils._health import wait_ready
from ansible_collections.privsec.vault_rotate.plugins.module_utils._login import cert_login, compare_policies
from ansible_collections.privsec.vault_rotate.plugins.module_utils._mapping import ensure_mapping
from ansible_collections.privsec.vault_rotate.plugins.module_utils._material import Material, fields
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _timing
from ansible_collections.privsec.vault_rotate.plugins.module_utils._pki import load_csr, read_issuers, sign_or_issue
from ansible_collections.privsec.vault_rotate.plugins.module_utils._services import Services
from ansible_collections.privsec.vault_rotate.plugins.module_utils._timing import Deadline
from ansible_collections.privsec.vault_rotate.plugins.module_utils._tls import make_context, probe_until
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultClient

HOST_STEPS = ("plan", "apply", "rollback", "verify")
ADMIN_STEPS = ("check", "sign", "mappings", "gate", "ready")
STEPS = HOST_STEPS + ADMIN_STEPS
# A probe gate follows the reload of what it probes: nginx serves the new cert some
# milliseconds after the SIGHUP, so its retries start this short (growing to the gate's interval
# and beyond) instead of waiting a whole interval (0.5 s per frontend) for a change under way.
PROBE_FIRST_PAUSE = 0.05

# ------------------------------------------------------------------ specs
# Argument specs (AnsibleModule format) of everything a step takes: the module
# validates its arguments with them, the in-process path with the same spec,
# so a misspelt key fails loudly either way.

NOTIFY_OPTIONS = dict(
    unit=dict(type="str", required=True),
    action=dict(type="str", required=True, choices=["reload", "restart"]),
)

SLOT_OPTIONS = dict(
    name=dict(type="str", required=True),
    phase=dict(type="str", required=True),
    label=dict(type="str"),
    # The leaf file, the fullchain file, or both (see cert_material: the layout follows what is installed).
    cert_path=dict(type="path"),
    key_path=dict(type="path", required=True),
    fullchain_path=dict(type="path"),
    chain_path=dict(type="path"),
    common_name=dict(type="str", required=True),
    # Names the new cert must carry on top of every name of the cert it replaces (a drop-in
    # replacement), minus drop_names: dropping a name is explicit.
    dns_names=dict(type="list", elements="str", default=[]),
    ip_addresses=dict(type="list", elements="str", default=[]),
    drop_names=dict(type="list", elements="str", default=[]),
    pki_mount=dict(type="str", required=True),
    pki_role=dict(type="str", required=True),
    ttl=dict(type="str"),
    # Empty: the type and size of the key installed now (else EC P-256, checked against the role).
    key_type=dict(type="str", choices=["", "ec", "rsa"], default=""),
    key_size=dict(type="int"),
    key_source=dict(type="str"),
    owner=dict(type="str"),
    group=dict(type="str"),
    key_mode=dict(type="str", default="0600"),
    cert_mode=dict(type="str", default="0644"),
    renew_fraction=dict(type="float", default=0.6667),
    force=dict(type="bool", default=False),
    notify=dict(type="list", elements="dict", options=NOTIFY_OPTIONS, default=[]),
    # apply: the certificate signed for this run (PEM) and its CA chain
    certificate=dict(type="str"),
    chain=dict(type="str"),
    # rollback: the serial this run installed (only that one is rolled back)
    new_serial=dict(type="str"),
)

BUNDLE_OPTIONS = dict(
    name=dict(type="str", required=True),
    phase=dict(type="str", required=True),
    path=dict(type="path", required=True),
    owner=dict(type="str"),
    group=dict(type="str"),
    mode=dict(type="str", default="0644"),
    notify=dict(type="list", elements="dict", options=NOTIFY_OPTIONS, default=[]),
    # Why a restart of Vault is needed when this file changes (read at start only).
    restart_reason=dict(type="str"),
    # rollback: restore (this run wrote it: put the .prev back), repair (the run found it as
    # wanted: write that again if something broke it under the run), leave
    rollback=dict(type="str", choices=["restore", "repair", "leave"], default="leave"),
)

GATE_KINDS = ("unit", "login", "token", "files", "probe", "client_ca", "health", "admin_login")
GATE_OPTIONS = dict(
    kind=dict(type="str", required=True, choices=list(GATE_KINDS)),
    name=dict(type="str", required=True),
    # unit, token
    unit=dict(type="str"),
    # login, token (the identity that logs in / reads its token; directly, never through the proxy)
    url=dict(type="str"),
    tls_server_name=dict(type="str"),
    namespace=dict(type="str"),
    ca_cert=dict(type="path"),
    client_cert=dict(type="path"),
    client_key=dict(type="path", no_log=False),
    mount=dict(type="str", default="cert"),
    mapping=dict(type="str"),
    expected_policies=dict(type="list", elements="str"),
    policies_match=dict(type="str", choices=["exact", "superset"], default="exact"),
    # token: the rendered lookup-self (whoami) file, or the agent's token sink; fresh: created
    # after this step's restart of the unit (off: valid and from the current cert)
    whoami_path=dict(type="path"),
    sink_path=dict(type="path"),
    fresh=dict(type="bool", default=True),
    # files, probe: which slot's certificate must be there / served
    slot=dict(type="str"),
    min_days_left=dict(type="float", default=0),
    # probe
    host=dict(type="str"),
    port=dict(type="int"),
    server_name=dict(type="str"),
    ca_pem=dict(type="str"),
    http_path=dict(type="str"),
    expect_status=dict(type="int"),
    expect_serial=dict(type="str"),
    # probe: every DNS name (as SNI, hostname verified) and IP address (verified as the address)
    # the served cert must answer for; all_names: those of the gate's slot
    names=dict(type="list", elements="str", default=[]),
    addresses=dict(type="list", elements="str", default=[]),
    all_names=dict(type="bool", default=False),
    # client_ca: a bundle file that must verify a client certificate (PEM)
    path=dict(type="path"),
    cert_pem=dict(type="str"),
    cert_label=dict(type="str"),
    # every kind
    wait_timeout=dict(type="float", default=0),
    interval=dict(type="float", default=0.5),
    next=dict(type="str"),
)

CONNECTION_OPTIONS = dict(
    url=dict(type="str", required=True),
    ca_cert=dict(type="path"),
    client_cert=dict(type="path"),
    client_key=dict(type="path", no_log=False),
    tls_server_name=dict(type="str"),
    cert_auth_mount=dict(type="str", default="cert"),
    cert_role=dict(type="str"),
    timeout=dict(type="float", default=10),
    # X-Vault-Namespace of every namespaced request (the admin's and the agents' logins included)
    namespace=dict(type="str"),
    # The admin identity's API requests only: an HTTP proxy reached with CONNECT
    proxy=dict(type="str"),
)

SIGN_OPTIONS = dict(
    slot=dict(type="str", required=True),
    key_source=dict(type="str"),
    key_setting=dict(type="str"),
    old_lifetime_days=dict(type="float"),
    pki_mount=dict(type="str", required=True),
    pki_role=dict(type="str", required=True),
    csr=dict(type="str", required=True),
    common_name=dict(type="str", required=True),
    dns_names=dict(type="list", elements="str", default=[]),
    ip_addresses=dict(type="list", elements="str", default=[]),
    ttl=dict(type="str"),
)

MAPPING_OPTIONS = dict(
    name=dict(type="str", required=True),
    mount=dict(type="str", default="cert"),
    allowed_common_names=dict(type="list", elements="str", required=True),
    token_policies=dict(type="list", elements="str", required=True),
    display_name=dict(type="str"),
    token_ttl=dict(type="raw"),
    token_max_ttl=dict(type="raw"),
)

SERVICE_OPTIONS = dict(
    backend=dict(type="str", choices=["systemd_user", "command"], default="systemd_user"),
    user=dict(type="str"),
    commands=dict(type="dict", default={}),
)

ARGUMENT_SPEC = dict(
    phase=dict(type="str", required=True),
    step=dict(type="str", required=True, choices=list(STEPS)),
    slots=dict(type="list", elements="dict", options=SLOT_OPTIONS, default=[]),
    bundles=dict(type="list", elements="dict", options=BUNDLE_OPTIONS, default=[]),
    units=dict(type="list", elements="str", default=[]),
    gates=dict(type="list", elements="dict", options=GATE_OPTIONS, default=[]),
    proofs=dict(type="list", elements="dict", options=GATE_OPTIONS, default=[]),
    ca_bundle=dict(type="str"),
    prepare=dict(type="list", elements="str", default=[]),
    service=dict(type="dict", options=SERVICE_OPTIONS),
    connection=dict(type="dict", options=CONNECTION_OPTIONS),
    pki_mount=dict(type="str"),
    expected_policies=dict(type="list", elements="str", default=[]),
    requests=dict(type="list", elements="dict", options=SIGN_OPTIONS, default=[]),
    mappings=dict(type="list", elements="dict", options=MAPPING_OPTIONS, default=[]),
    compare=dict(type="list", elements="dict", options=MAPPING_OPTIONS, default=[]),
    restart=dict(type="list", elements="str", default=[]),
    unseal_keys=dict(type="list", elements="str", no_log=True, default=[]),
    wait_timeout=dict(type="float", default=30),
    interval=dict(type="float", default=0.05),
    sealed_grace=dict(type="float", default=5),
)

# What a failed files gate means, by the first bad reason of the inspection.
_REASON_CLASS = {
    "missing": "missing_file", "key_missing": "missing_file", "unparsable": "bad_pem",
    "fullchain_mismatch": "bad_pem", "key_mismatch": "key_mismatch", "expired": "expired",
    "cn_differs": "hostname_mismatch", "san_differs": "hostname_mismatch",
    "issuer_untrusted": "untrusted_server_cert",
}


class GateFailed(Exception):
    """A gate did not hold: which one, and the classified error."""

    def __init__(self, gate, error):
        super(GateFailed, self).__init__(str(error))
        self.gate = gate
        self.error = error


def failure_of(error, gate=None, where=None):
    """The ``failure`` dict of a result: gate, failure_class, msg, hint (never secrets)."""
    if not isinstance(error, RotateError):
        error = classify_exception(error)
    out = {"gate": gate, "failure_class": error.failure_class, "msg": error.message, "hint": error.hint}
    if where:
        out["where"] = where
    return out


# ------------------------------------------------------------------ slots

def _material_params(slot, ca_bundle, **extra):
    """cert_material's options for one slot spec."""
    params = dict(
        step="inspect", cert_path=slot.get("cert_path"), key_path=slot["key_path"],
        fullchain_path=slot.get("fullchain_path"), chain_path=slot.get("chain_path"),
        common_name=slot["common_name"], dns_names=slot.get("dns_names") or [],
        ip_addresses=slot.get("ip_addresses") or [], ca_bundle=ca_bundle or None,
        renew_fraction=slot.get("renew_fraction") or 0.6667, renew_before=None, force=bool(slot.get("force")),
        key_type=slot.get("key_type") or "ec", key_size=slot.get("key_size"), certificate=None, chain=None,
        private_key=None, owner=slot.get("owner") or None, group=slot.get("group") or None,
        key_mode=slot.get("key_mode") or "0600", cert_mode=slot.get("cert_mode") or "0644", backup=True,
        expect_serial=None, slots=None,
    )
    params.update(extra)
    return params


def _cert_fields(info):
    """The public fields of a certificate for records and reports."""
    if not info:
        return None
    return dict((k, info.get(k)) for k in ("serial", "not_after", "not_before", "fingerprint_sha256",
                                           "common_name", "dns_names", "ip_addresses", "days_left", "lifetime_days",
                                           "key_type", "key_size")
                if k in info)


def _norm_name(name):
    text = str(name).strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _is_ip(text):
    try:
        ipaddress.ip_address(str(text))
        return True
    except ValueError:
        return False


def effective_names(slot, current):
    """The names the new cert carries: the configured ones, plus every DNS and IP name of the
    cert it replaces (its CN too), minus ``drop_names``. With what changes, for the plan."""
    drop = set(_norm_name(n) for n in slot.get("drop_names") or [])
    want_dns = [str(n) for n in slot.get("dns_names") or []]
    want_ips = [str(n) for n in slot.get("ip_addresses") or []]
    have_dns, have_ips = [], []
    if current:
        have_dns = list(current.get("dns_names") or [])
        old_cn = current.get("common_name")
        if old_cn and old_cn != slot["common_name"] and not _is_ip(old_cn):
            have_dns.append(old_cn)
        have_ips = list(current.get("ip_addresses") or [])

    def merged(first, then):
        out, seen = [], set()
        for name in list(first) + list(then):
            key = _norm_name(name)
            if key not in seen and key not in drop:
                seen.add(key)
                out.append(name)
        return out

    dns, ips = merged(want_dns, have_dns), merged(want_ips, have_ips)
    have = set(_norm_name(n) for n in have_dns + have_ips)
    configured = set(_norm_name(n) for n in want_dns + want_ips)
    carried = set(_norm_name(n) for n in dns + ips) - configured - {_norm_name(slot["common_name"])}
    return {"dns_names": dns, "ip_addresses": ips, "kept": sorted(carried & have),
            "added": sorted(configured - have), "dropped": sorted(have & drop)}


def effective_key(slot, current, key_file=None):
    """(type, size, source) of the new key: the slot's setting, else the key installed now
    (its cert's public key, else the key file), else EC P-256 (checked against the PKI role)."""
    if slot.get("key_type"):
        return slot["key_type"], slot.get("key_size"), slot.get("key_source") or "setting"
    found = ((current or {}).get("key_type"), (current or {}).get("key_size"))
    if not found[0] and key_file is not None:
        found = _x509.key_description(key_file)[:2]
    if found[0] in ("ec", "rsa"):
        return found[0], found[1], "installed"
    if found[0]:
        raise RotateError("bad_input", "the key of %s is %s, which this collection cannot generate" % (
            slot.get("label") or slot["name"], found[0]), hint="set the slot's key_type (ec or rsa) explicitly")
    return "ec", 256, "default"


def plan_slot(slot, ca_bundle, prepare, check_mode):
    """Inspect one slot; with ``prepare`` stage a key and make the CSR when it is due.

    The new cert is a drop-in replacement: its names and its key's type and size follow what
    is installed (effective_names, effective_key) unless the slot says otherwise."""
    reader = Material(_material_params(slot, ca_bundle), check_mode=True)
    _cert, info, _problem = reader.read_cert()
    key_now, _key_problem = reader.read_key(slot["key_path"])
    names = effective_names(slot, info)
    key_type, key_size, key_source = effective_key(slot, info, key_now)
    params = _material_params(slot, ca_bundle, step="prepare" if prepare else "inspect",
                              dns_names=names["dns_names"], ip_addresses=names["ip_addresses"],
                              key_type=key_type, key_size=key_size)
    material = Material(params, check_mode=check_mode)
    found = material.prepare() if prepare else material.inspect()
    record = {
        "changed": bool(found.get("changed")), "names": names, "layout": found.get("layout"),
        "key": {"type": key_type, "size": key_size or (2048 if key_type == "rsa" else 256), "source": key_source},
        "slot": slot["name"], "phase": slot["phase"], "cert_path": slot.get("cert_path") or slot.get("fullchain_path"),
        "decision": "rotate" if found["rotate"] else "keep", "reasons": found["reasons"],
        "reason_text": "; ".join(found["reason_text"]), "due_at": found.get("due_at"),
        "old": _cert_fields(found.get("current")), "chain_verified": found.get("chain_verified"),
        "csr": found.get("csr"), "staged_key": found.get("staged_key"),
    }
    if found.get("parse_error"):
        record["parse_error"] = found["parse_error"]
    return record


def install_slot(slot, ca_bundle, check_mode):
    """Install the certificate signed for this run; the result says what was written."""
    material = Material(_material_params(slot, ca_bundle, step="install", certificate=slot["certificate"],
                                         chain=slot.get("chain")), check_mode=check_mode)
    done = material.install()
    return {"slot": slot["name"], "changed": bool(done.get("changed")), "serial": done.get("serial"),
            "before": fields(done.get("before")), "after": fields(done.get("after")),
            "backup_files": done.get("backup_files") or []}


def restore_slot(slot, check_mode):
    """Put the previous generation back, only if this run's serial is the one installed."""
    material = Material(_material_params(slot, None, step="restore", expect_serial=slot.get("new_serial")),
                        check_mode=check_mode)
    done = material.restore()
    return {"slot": slot["name"], "changed": bool(done.get("changed")), "serial": done.get("serial"),
            "restored_files": done.get("restored_files") or []}


# ------------------------------------------------------------------ units

def _notify_order(items):
    """(unit, action) to run, in first-seen order; restart wins over reload of the same unit."""
    wanted = []
    for unit, action in items:
        for i, (u, a) in enumerate(wanted):
            if u == unit:
                if action == "restart" and a == "reload":
                    wanted[i] = (unit, "restart")
                break
        else:
            wanted.append((unit, action))
    return wanted


def run_units(services, items, check_mode):
    """Reload/restart what read a changed file; {unit: {action, at}}; raises reload_failed."""
    done = {}
    for unit, action in _notify_order(items):
        if not check_mode:
            started = time.time()
            services.act(unit, action)
            done[unit] = {"action": action, "at": started}
        else:
            done[unit] = {"action": action, "at": None}
    return done


# ------------------------------------------------------------------ gates

def _client(connection, with_identity=True, token=None):
    c = connection
    return VaultClient(c["url"], ca_cert=c.get("ca_cert"), tls_server_name=c.get("tls_server_name"),
                       client_cert=c.get("client_cert") if with_identity else None,
                       client_key=c.get("client_key") if with_identity else None,
                       timeout=c.get("timeout") or 10, token=token, namespace=c.get("namespace"),
                       proxy=c.get("proxy"))


def _gate_connection(gate):
    """An agent identity's connection: the listener directly (as the agent reaches it), in the namespace."""
    return {"url": gate["url"], "ca_cert": gate.get("ca_cert"), "client_cert": gate.get("client_cert"),
            "client_key": gate.get("client_key"), "tls_server_name": gate.get("tls_server_name"),
            "namespace": gate.get("namespace"), "timeout": 10}


def _until(gate, attempt):
    """Call attempt() until it returns without RotateError or the gate's wait_timeout passes."""
    deadline = Deadline(float(gate.get("wait_timeout") or 0), max(float(gate.get("interval") or 0.5), 0.05), cap=2.0)
    while True:
        try:
            return attempt()
        except RotateError:
            if not deadline.wait():
                raise


def _gate_unit(gate, ctx):
    unit = gate["unit"]

    def attempt():
        if not ctx["services"].active(unit):
            raise RotateError("unit_not_active", "%s is not running" % unit,
                              hint="its log (it may have failed to start with the new material)")
        return {"active": True}
    return _until(gate, attempt)


def _gate_login(gate, ctx):
    def attempt():
        client = _client(_gate_connection(gate))
        try:
            return cert_login(client, gate.get("mount") or "cert", gate.get("mapping"),
                              expected_policies=gate.get("expected_policies"),
                              policies_match=gate.get("policies_match") or "exact", cert_path=gate.get("client_cert"))
        finally:
            client.close()
    result = _until(gate, attempt)
    return {"policies": result.get("token_policies"), "display_name": result.get("display_name")}


def _gate_admin_login(gate, ctx):
    connection = ctx["connection"]
    client = _client(connection)
    try:
        result = cert_login(client, connection.get("cert_auth_mount") or "cert", gate.get("mapping"),
                            expected_policies=gate.get("expected_policies"),
                            policies_match=gate.get("policies_match") or "superset",
                            cert_path=connection.get("client_cert"))
    finally:
        client.close()
    return {"policies": result.get("token_policies"), "display_name": result.get("display_name")}


def _token_data(gate, unit):
    """{creation_time, policies, meta, display_name} of the token the agent holds: lookup-self of
    the token in its sink (over the listener with the agent's own client cert), or its rendered
    whoami file."""
    if gate.get("sink_path"):
        token = (_read_text(gate["sink_path"]) or "").strip()
        if not token:
            raise RotateError("missing_file", "the token sink %s is empty" % gate["sink_path"],
                              hint="the agent has not logged in: read the log of %s" % unit)
        client = _client(_gate_connection(gate), token=token)
        try:
            data = client.lookup_self()
        except RotateError as err:
            if err.failure_class == "permission_denied":
                raise RotateError("stale_token", "%s holds a token Vault does not accept (expired or revoked)" % unit,
                                  hint="the log of %s: it could not log in again" % unit)
            raise
        finally:
            client.close()
        return data
    text = _read_text(gate["whoami_path"])
    if text is None:
        raise RotateError("missing_file", "%s does not exist" % gate["whoami_path"],
                          hint="the agent renders it after its login: read the log of %s" % unit)
    try:
        return json.loads(text)
    except ValueError:
        raise RotateError("bad_input", "%s is not JSON (yet)" % gate["whoami_path"])


def _token_wanted(gate, ctx):
    """(since, current serial) a token gate asks for; since None: no freshness (not restarted by
    this step, or ``fresh`` off). Returns None when the gate does not apply."""
    unit = gate.get("unit")
    since = None
    if gate.get("fresh", True):
        restarted = (ctx["units"].get(unit) or {}).get("at") if unit else None
        if not restarted:
            return None
        since = int(restarted)
    current = None
    if gate.get("client_cert"):
        cert = _read_bytes(gate["client_cert"])
        current = _x509.load_pem_bundle(cert, what=gate["client_cert"])[0].serial_number if cert else None
    return since, current


def _token_attempt(gate, since, current):
    """One look at the agent's token: fresh (when ``since``) and from the ``current`` cert."""
    unit = gate.get("unit")
    if since is not None:
        # The agent writes its sink (or renders its whoami file) after each login: a file older
        # than the restart holds the old token, no need to ask Vault (a TLS handshake) yet.
        path = gate.get("sink_path") or gate.get("whoami_path")
        try:
            written = os.stat(path).st_mtime
        except (OSError, TypeError):
            written = None
        if written is not None and written < since - 1:
            raise RotateError("stale_token", "%s has not written a new token to %s since its restart at %s: it did "
                              "not log in again with the new cert" % (unit, path, since),
                              hint="the log of %s (a login refused with the new cert?)" % unit,
                              details={"unwritten": True})
    data = _token_data(gate, unit)
    created, policies, meta = data.get("creation_time"), data.get("policies"), data.get("meta") or {}
    if since is not None and int(created or 0) < since:
        raise RotateError("stale_token", "%s holds a token created at %s, before its restart at %s: it did not "
                          "log in again with the new cert" % (unit, created, since),
                          hint="the log of %s (a login refused with the new cert?)" % unit)
    serial = meta.get("serial_number")
    if current is not None and serial and str(serial) != str(current):
        raise RotateError("stale_token", "%s holds a token from the cert with serial %s, not from its current "
                          "cert %s" % (unit, _x509.format_serial(int(serial)), _x509.format_serial(current)),
                          hint="restart %s: an agent logs in again with a rotated cert only at its next login "
                               "(a SIGHUP keeps the old token)" % unit)
    return {"creation_time": created, "policies": sorted(policies or []),
            "cert_serial": _x509.format_serial(int(serial)) if serial else None,
            "mapping": meta.get("cert_name"), "display_name": data.get("display_name")}


def _gate_token(gate, ctx):
    """The agent holds a token from its CURRENT cert: cert auth records the serial it logged in
    with. With ``fresh`` (after a restart by this step) the token must also be younger than it."""
    wanted = _token_wanted(gate, ctx)
    if wanted is None:
        return {"checked": False, "why": "not restarted by this step"}
    return _until(gate, lambda: _token_attempt(gate, *wanted))


class _AgentProof(object):
    """The login gate of an agent this step restarted, proven by the agent's own login.

    The agent logged in with its new cert after the restart (its token gate: fresh, from the
    current serial); when that token carries exactly the mapped policies and names the mapping,
    it is the login the gate would make, so the gate makes none (one login, lookup and revocation
    fewer per agent). When the agent has not logged in again within the login gate's own wait,
    or its token differs, the gate logs in itself: a refusal or other policies fail as a login
    gate always did, naming the mapping and the cert; an agent that stopped running ends the
    wait (the unit gate names it). The token gate then reuses what was seen.
    """

    def __init__(self, login, token, wanted, ctx):
        self.login_gate, self.token_gate, self.wanted, self.ctx = login, token, wanted, ctx
        self.token_result = self.token_error = None

    def _await_agent(self):
        """Wait for the agent's fresh token; a direct login once its grace has passed (raises when
        Vault refuses it). Returns that login's result, or None."""
        since, current = self.wanted
        gate = self.token_gate
        deadline = Deadline(float(gate.get("wait_timeout") or 0), max(float(gate.get("interval") or 0.5), 0.05),
                            cap=2.0)
        grace = time.monotonic() + float(self.login_gate.get("wait_timeout") or 5)
        direct = None
        while True:
            try:
                self.token_result, self.token_error = _token_attempt(gate, since, current), None
                return direct
            except RotateError as err:
                self.token_error = err
                if err.details.get("unwritten"):
                    deadline.restart_pauses(0.1)  # only a stat() so far: look again soon, it costs nothing
            if time.monotonic() >= grace:
                if direct is None:
                    direct = _gate_login(dict(self.login_gate, wait_timeout=0), self.ctx)
                unit = gate.get("unit")
                services = self.ctx.get("services")
                if unit and services is not None and not services.active(unit):
                    return direct  # the unit gate that follows names it; no use waiting for its token
            if not deadline.wait():
                return direct

    def login(self):
        direct = self._await_agent()
        seen = self.token_result
        if seen is not None:
            expected = self.login_gate.get("expected_policies")
            missing, unexpected = compare_policies(expected, seen["policies"], self.login_gate.get("policies_match")
                                                   or "exact") if expected is not None else ([], [])
            mapping = self.login_gate.get("mapping")
            if not (missing or unexpected) and (not mapping or seen.get("mapping") == mapping):
                return {"policies": seen["policies"], "display_name": seen.get("display_name"),
                        "proven_by": "the agent's own login after its restart (token created %s, cert %s)"
                                     % (seen.get("creation_time"), seen.get("cert_serial"))}
        return direct or _gate_login(self.login_gate, self.ctx)

    def token(self):
        # login() comes first (the pairing takes a token gate after its login gate) and always
        # leaves what it saw: the fresh token, or the error of the last look at it.
        if self.token_result is None:
            raise self.token_error
        return self.token_result


def _agent_proofs(gates, ctx):
    """{id(gate): proof step} for each login gate followed by the fresh-token gate of the same
    client cert whose unit this step restarted (the agent phase's apply), and for that token gate."""
    found = {}
    for i, login in enumerate(gates):
        if login["kind"] != "login" or not login.get("client_cert"):
            continue
        for token in gates[i + 1:]:
            if token["kind"] != "token" or token.get("client_cert") != login["client_cert"]:
                continue
            wanted = _token_wanted(token, ctx) if token.get("sink_path") or token.get("whoami_path") else None
            if wanted is not None and wanted[0] is not None:
                proof = _AgentProof(login, token, wanted, ctx)
                found[id(login)] = proof.login
                found[id(token)] = proof.token
            break
    return found


def _gate_files(gate, ctx):
    slot = ctx["slots"][gate["slot"]]
    found = Material(_material_params(slot, ctx["ca_bundle"]), check_mode=True).inspect()
    current = found.get("current") or {}
    expect = ctx["serials"].get(slot["name"])
    bad = [r for r in found["reasons"] if r not in ("valid", "due", "forced")]
    if expect and current.get("serial") != expect:
        raise RotateError("serial_mismatch", "%s holds serial %s, expected %s" % (
            slot.get("cert_path") or slot.get("fullchain_path"), current.get("serial") or "none", expect))
    if bad:
        raise RotateError(_REASON_CLASS.get(bad[0], "bad_input"), "the files of %s are not usable: %s" % (
            slot.get("label") or slot["name"], "; ".join(found["reason_text"])))
    if found.get("chain_verified") is False:
        raise RotateError("untrusted_server_cert", "%s does not chain to the PKI issuers: %s" % (
            slot.get("cert_path") or slot.get("fullchain_path"), found.get("chain_problem") or "not verified"))
    days = float(current.get("days_left") or 0)
    if days < float(gate.get("min_days_left") or 0):
        raise RotateError("expired", "%s is valid %.2f more days, less than the minimum (%s)" % (
            slot.get("cert_path") or slot.get("fullchain_path"), days, gate["min_days_left"]))
    return {"serial": current.get("serial"), "days_left": round(days, 2)}


def _probe_names(gate, ctx):
    """The names (SNI) and addresses a probe gate checks: its server_name first, then every
    name and address it lists (or its slot's, with all_names), each once."""
    names, addresses = list(gate.get("names") or []), list(gate.get("addresses") or [])
    if gate.get("all_names") and gate.get("slot") in ctx["slots"]:
        slot = ctx["slots"][gate["slot"]]
        names += slot.get("dns_names") or []
        addresses += slot.get("ip_addresses") or []
    out = []
    for name in [gate.get("server_name")] + names + addresses:
        if name and _norm_name(name) not in [_norm_name(n) for n in out]:
            out.append(name)
    return out or [None]


def _gate_probe(gate, ctx):
    """A verified handshake with the expected serial, for every name and address the cert answers for."""
    expect = gate.get("expect_serial") or (ctx["serials"].get(gate["slot"]) if gate.get("slot") else None)
    context = make_context(ca_cert=gate.get("ca_cert"), ca_pem=gate.get("ca_pem"),
                           client_cert=gate.get("client_cert"), client_key=gate.get("client_key"))
    unverified = make_context(client_cert=gate.get("client_cert"), client_key=gate.get("client_key"), verify=False)
    checked = []
    for name in _probe_names(gate, ctx):
        result = _probe_one(gate, name, context, unverified, expect)
        checked.append(name)
    result["names_verified"] = checked
    return result


def _probe_one(gate, name, context, unverified, expect):
    result = probe_until(gate["host"], gate["port"], server_name=name, context=context,
                         unverified_context=unverified, http_path=gate.get("http_path"), expect_serial=expect,
                         wait_timeout=gate.get("wait_timeout") or 0, interval=gate.get("interval") or 0.5,
                         first_pause=PROBE_FIRST_PAUSE)
    if result["ok"] and gate.get("expect_status") and result.get("http_status") != gate["expect_status"]:
        result.update(ok=False, failure_class="server_error", hint="read the log of the proxy and of Vault",
                      msg="%s (TLS name %s) answered HTTP %s to GET %s, expected %s" % (
                          result.get("target"), result.get("server_name"), result.get("http_status"),
                          gate.get("http_path"), gate["expect_status"]))
    if not result["ok"]:
        msg, hint = result.get("msg") or "probe failed", result.get("hint")
        if result.get("failure_class") == "hostname_mismatch" and result.get("serial"):
            served = []
            for served_name in [result.get("common_name")] + list(result.get("dns_names") or []) + list(
                    result.get("ip_addresses") or []):
                if served_name and served_name not in served:
                    served.append(served_name)
            msg = "%s: it served serial %s for %s" % (msg.rstrip(". "), result["serial"], ", ".join(served) or "no name")
            if _is_ip(name):
                # The cert installed for this slot carries the address (the plan kept it); a client
                # that connects by address sends no SNI and got another certificate.
                hint = ("a client that connects to %s sends no SNI and gets the certificate of the port's default "
                        "server: make this service the default server of its port (nginx: listen ... "
                        "default_server), or drop %s from the cert on purpose (drop_names)" % (name, name))
        raise RotateError(result.get("failure_class") or "tls_error", msg,
                          hint=hint, details={"tls_alert": result.get("tls_alert")})
    return {"serial": result.get("serial"), "http_status": result.get("http_status"),
            "tls_version": result.get("tls_version"), "days_left": result.get("days_left"),
            "not_after": result.get("not_after"), "attempts": result.get("attempts")}


def _gate_client_ca(gate, ctx):
    """The client CA file a server reads at its next start must verify a client cert of it."""
    data = _read_bytes(gate["path"])
    label = gate.get("cert_label") or "the client cert"
    if data is None:
        raise RotateError("client_ca_incomplete", "the client CA file %s does not exist" % gate["path"])
    try:
        anchors = _x509.load_pem_bundle(data, what=gate["path"])
        client = _x509.load_pem_bundle(gate["cert_pem"], what=label)
    except RotateError as err:
        raise RotateError("client_ca_incomplete", "the client CA file %s does not parse: %s" % (gate["path"], err))
    ok, problem = _x509.verify_chain(client[0], client[1:], anchors)
    if not ok:
        raise RotateError(
            "client_ca_incomplete",
            "the listener client CA file %s does not verify %s (%s): at its next start Vault would refuse "
            "every client cert (TLS alert unknown ca)" % (gate["path"], label, problem),
            hint="%s must hold every valid issuer + root" % gate["path"])
    return {"verified": True}


def _gate_health(gate, ctx):
    client = _client(ctx["connection"])
    try:
        result = wait_ready(client, wait_timeout=gate.get("wait_timeout") or 0, interval=gate.get("interval") or 0.5)
    finally:
        client.close()
    return {"status_code": result.get("status_code"), "version": result.get("version")}


_GATES = {"unit": _gate_unit, "login": _gate_login, "token": _gate_token, "files": _gate_files,
          "probe": _gate_probe, "client_ca": _gate_client_ca, "health": _gate_health,
          "admin_login": _gate_admin_login}


def run_gates(gates, ctx, stop_on_failure=True):
    """Run the gates in order; [{name, kind, ok, ...}]; raises GateFailed at the first that fails."""
    out = []
    proofs = _agent_proofs(gates, ctx)
    for gate in gates:
        try:
            found = proofs[id(gate)]() if id(gate) in proofs else _GATES[gate["kind"]](gate, ctx)
        except Exception as exc:  # every failure of a gate is data for the report
            error = exc if isinstance(exc, RotateError) else classify_exception(exc)
            if gate.get("next"):
                error.hint = "%s; %s" % (error.hint, gate["next"]) if error.hint else gate["next"]
            out.append({"name": gate["name"], "kind": gate["kind"], "ok": False,
                        "failure_class": error.failure_class, "msg": error.message, "hint": error.hint})
            if stop_on_failure:
                raise GateFailed(gate["name"], error)
            continue
        entry = {"name": gate["name"], "kind": gate["kind"], "ok": True}
        entry.update(found or {})
        out.append(entry)
    return out


def _read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _read_text(path):
    data = _read_bytes(path)
    return None if data is None else data.decode("utf-8", "replace")


# ------------------------------------------------------------------ host steps

def _services(params):
    service = params.get("service") or {}
    return Services(service.get("backend") or "command", user=service.get("user"), commands=service.get("commands"))


def host_plan(params, check_mode=False):
    prepare = set(params.get("prepare") or [])
    slots = [plan_slot(s, params.get("ca_bundle"), s["phase"] in prepare, check_mode) for s in params["slots"]]
    bundles = []
    for bundle in params["bundles"]:
        found = ensure_bundle(bundle["path"], params["ca_bundle"], owner=bundle.get("owner"), group=bundle.get("group"),
                              mode=bundle.get("mode"), check_mode=True)
        bundles.append({"bundle": bundle["name"], "phase": bundle["phase"], "path": bundle["path"],
                        "differs": bool(found.get("changed")),
                        "added": [c.get("subject") for c in found.get("added") or []],
                        "removed": [c.get("subject") for c in found.get("removed") or []]})
    units = _services(params).status_all(params["units"]) if params["units"] else {}
    return {"changed": any(s.pop("changed") for s in slots), "slots": slots, "bundles": bundles, "units": units}


def host_apply(params, check_mode=False):
    """Install, write bundles, reload/restart, then the gates of this host."""
    services = _services(params)
    slot_specs = dict((s["name"], s) for s in params["slots"])
    out = {"changed": False, "slots": [], "bundles": [], "units": {}, "gates": [], "restart_reasons": [],
           "failure": None}
    notify = []
    serials = {}
    where = "restart"
    try:
        for unit in params["restart"]:
            out["units"].update(run_units(services, [(unit, "restart")], check_mode))
            out["changed"] = True
        where = "install"
        for slot in params["slots"]:
            if slot.get("certificate"):
                done = install_slot(slot, params.get("ca_bundle"), check_mode)
                out["slots"].append(done)
                serials[slot["name"]] = done["serial"]
                if done["changed"]:
                    out["changed"] = True
                    notify.extend((n["unit"], n["action"]) for n in slot["notify"])
            else:
                serials.update(current_serials([slot]))
        for bundle in params["bundles"]:
            done = ensure_bundle(bundle["path"], params["ca_bundle"], owner=bundle.get("owner"),
                                 group=bundle.get("group"), mode=bundle.get("mode"), check_mode=check_mode)
            changed = bool(done.get("changed"))
            out["bundles"].append({"bundle": bundle["name"], "path": bundle["path"], "changed": changed})
            if changed:
                out["changed"] = True
                notify.extend((n["unit"], n["action"]) for n in bundle["notify"])
                if bundle.get("restart_reason"):
                    out["restart_reasons"].append(bundle["restart_reason"])
        where = "reload"
        out["units"].update(run_units(services, notify, check_mode))
        where = "gate"
        if not check_mode:
            ctx = {"services": services, "units": out["units"], "slots": slot_specs, "serials": serials,
                   "ca_bundle": params.get("ca_bundle"), "connection": params.get("connection")}
            out["gates"] = run_gates(params["gates"], ctx)
    except GateFailed as failed:
        out["failure"] = failure_of(failed.error, gate=failed.gate, where=where)
    except RotateError as err:
        out["failure"] = failure_of(err, gate=where, where=where)
    out["serials"] = serials
    out["service_calls"] = services.log
    return out


def current_serials(slots):
    """{slot: serial of the cert installed now} (None when there is none)."""
    out = {}
    for slot in slots:
        current = Material(_material_params(slot, None), check_mode=True).read_cert()[1]
        out[slot["name"]] = (current or {}).get("serial")
    return out


def host_verify(params, check_mode=False):
    """Every gate of this host against what is installed and running now (the healthcheck):
    every gate runs; the first that fails is the result's failure, all of them are listed."""
    services = _services(params)
    out = {"changed": False, "gates": [], "failure": None}
    # The names a rotation keeps (effective_names, as the plan gives them): a name of the cert
    # in place that the configuration does not list is carried, not a reason to fail.
    slots = []
    for slot in params["slots"]:
        names = effective_names(slot, Material(_material_params(slot, None), check_mode=True).read_cert()[1])
        slots.append(dict(slot, dns_names=names["dns_names"], ip_addresses=names["ip_addresses"]))
    ctx = {"services": services, "units": {}, "slots": dict((s["name"], s) for s in slots),
           "serials": current_serials(slots), "ca_bundle": params.get("ca_bundle"),
           "connection": params.get("connection")}
    out["gates"] = run_gates(params["gates"], ctx, stop_on_failure=False)
    out["serials"] = ctx["serials"]
    failed = [g for g in out["gates"] if not g["ok"]]
    if failed:
        first = failed[0]
        out["failure"] = {"gate": first["name"], "failure_class": first["failure_class"],
                          "msg": "; ".join("%s: %s" % (g["name"], g["msg"]) for g in failed),
                          "hint": first.get("hint")}
    return out


def host_rollback(params, check_mode=False):
    """Put back what this run changed on this host, act on the units again, run the proofs."""
    services = _services(params)
    out = {"changed": False, "slots": [], "bundles": [], "units": {}, "proofs": [], "problems": []}
    notify = []
    serials = {}
    for slot in params["slots"]:
        try:
            if slot.get("new_serial"):
                done = restore_slot(slot, check_mode)
                out["slots"].append(done)
                if done["changed"]:
                    out["changed"] = True
                    notify.extend((n["unit"], n["action"]) for n in slot["notify"])
                serials[slot["name"]] = done["serial"]
        except RotateError as err:
            out["problems"].append(failure_of(err, gate="restore %s" % slot["name"]))
    for bundle in params["bundles"]:
        try:
            if bundle["rollback"] == "restore" and os.path.exists(backup_path(bundle["path"])):
                done = restore_bundle(bundle["path"], check_mode=check_mode)
            elif bundle["rollback"] == "repair":
                # The run found it as wanted (so it did not write it): what it held before
                # the run is the wanted content; write that again if something broke it.
                done = ensure_bundle(bundle["path"], params["ca_bundle"], owner=bundle.get("owner"),
                                     group=bundle.get("group"), mode=bundle.get("mode"), check_mode=check_mode)
            else:
                continue
            changed = bool(done.get("changed"))
            out["bundles"].append({"bundle": bundle["name"], "path": bundle["path"], "changed": changed})
            if changed:
                out["changed"] = True
                notify.extend((n["unit"], n["action"]) for n in bundle["notify"])
        except RotateError as err:
            out["problems"].append(failure_of(err, gate="restore %s" % bundle["name"]))
    for unit, action in _notify_order(notify):
        try:
            out["units"].update(run_units(services, [(unit, action)], check_mode))
        except RotateError as err:
            out["problems"].append(failure_of(err, gate="%s %s" % (action, unit)))
    if not check_mode and params["proofs"]:
        serials.update(current_serials([s for s in params["slots"] if s["name"] not in serials]))
        ctx = {"services": services, "units": out["units"], "slots": dict((s["name"], s) for s in params["slots"]),
               "serials": serials, "ca_bundle": params.get("ca_bundle"), "connection": params.get("connection")}
        out["proofs"] = run_gates(params["proofs"], ctx, stop_on_failure=False)
    out["service_calls"] = services.log
    return out


# ------------------------------------------------------------------ admin steps

def admin_check(params, check_mode=False):
    """Vault ready for the admin identity's certificate (TLS with it, sys/health 200) and the
    issuers of the mount, read where no token is needed: no login here (sign logs in)."""
    connection = params["connection"]
    client = _client(connection)
    out = {"changed": False, "failure": None}
    try:
        out["admin_cert_pem"] = _read_text(connection["client_cert"]) if connection.get("client_cert") else None
        health = wait_ready(client, wait_timeout=params.get("wait_timeout") or 0, interval=params.get("interval") or 0.5)
        out["health"] = {"status_code": health.get("status_code"), "version": health.get("version")}
    except RotateError as err:
        out["failure"] = failure_of(err, gate="vault")
        client.close()
        return out
    try:
        if params.get("pki_mount"):
            issuers = read_issuers(client, params["pki_mount"], public=True)
            out["issuers"] = {"ca_bundle": issuers["ca_bundle"], "issuers": issuers["issuers"],
                              "default_issuer_id": issuers.get("default_issuer_id")}
    except RotateError as err:
        if err.failure_class == "permission_denied":
            # An existing PKI mount answers LIST <mount>/issuers without a token.
            err = RotateError("not_found", "PKI mount '%s' not found: LIST %s/issuers answered %s" % (
                params["pki_mount"], params["pki_mount"], err.message),
                hint="check vault_rotate_pki_mount; list the mounts with: bao secrets list")
        out["failure"] = failure_of(err, gate="issuers")
    finally:
        client.close()
    out["vault_requests"] = client.requests_made
    return out


def _revoke(client):
    if client.token:
        try:
            client.revoke_self()
        except RotateError:
            pass
        client.token = None


def _login(connection):
    client = _client(connection)
    try:
        client.login_cert(connection.get("cert_auth_mount") or "cert", connection.get("cert_role"))
    except RotateError:
        client.close()
        raise
    return client


def admin_sign(params, check_mode=False):
    """One admin login: prove the identity (and its policies), write ``mappings`` where they
    differ, compare ``compare`` (read only), sign every CSR of ``requests`` (not in check mode).
    Returns {signed: {slot: issued (public material only)}, mappings, compared, login}."""
    out = {"changed": False, "signed": {}, "mappings": [], "compared": [], "failure": None, "vault_requests": 0}
    connection = params["connection"]
    client = _client(connection)
    try:
        try:
            login = cert_login(client, connection.get("cert_auth_mount") or "cert", connection.get("cert_role"),
                               expected_policies=params.get("expected_policies") or None, policies_match="superset",
                               cert_path=connection.get("client_cert"), revoke=False)
        except RotateError as err:
            hint = err.hint or ("check the admin cert (expired? CN allowed by the mapping? issued by a CA in the "
                                "mapping's bundle?) and the mapping itself")
            out["failure"] = failure_of(RotateError(
                err.failure_class, "the admin identity cannot reach Vault: %s: %s" % (err.failure_class, err.message),
                hint=hint), gate="login")
            return out
        out["login"] = {"policies": login.get("token_policies"), "display_name": login.get("display_name")}
        for key, dry in (("mappings", check_mode), ("compare", True)):
            for mapping in params[key]:
                body = dict(mapping, certificate=params["ca_bundle"])
                try:
                    done, _before, _desired = ensure_mapping(client, mapping.get("mount") or "cert", mapping["name"],
                                                             body, check_mode=dry)
                except RotateError as err:
                    out["failure"] = failure_of(err, gate="mapping %s" % mapping["name"], where=key)
                    return out
                fields_ = done.get("changed_fields") or []
                out["mappings" if key == "mappings" else "compared"].append(
                    {"name": mapping["name"], "changed": bool(fields_), "changed_fields": fields_})
                if key == "mappings" and fields_:
                    out["changed"] = True
        out["rekey"], out["warnings"] = {}, []
        roles, to_sign = {}, []
        for request in params["requests"]:
            try:
                rekey = key_for_role(client, roles, request)
            except RotateError as err:
                out["failure"] = failure_of(err, gate=request["slot"], where="sign")
                out["failure"]["slot"] = request["slot"]
                return out
            if rekey is not None:
                out["rekey"][request["slot"]] = rekey
            elif not check_mode:
                to_sign.append(request)
        results, requests_made = _sign_side_by_side(client, connection, to_sign)
        out["vault_requests"] += requests_made
        for request in to_sign:
            issued = results[request["slot"]]
            if isinstance(issued, RotateError):  # the first failure in request order stops the run
                out["failure"] = failure_of(issued, gate=request["slot"], where="sign")
                out["failure"]["slot"] = request["slot"]
                break
            out["signed"][request["slot"]] = dict(
                (k, issued.get(k)) for k in ("certificate", "issuing_ca", "ca_chain", "serial", "not_after",
                                             "not_before", "fingerprint_sha256", "dns_names", "ip_addresses"))
            out["changed"] = True
            shorter = _shorter_life(request, issued)
            if shorter:
                out["warnings"].append(shorter)
    finally:
        _revoke(client)
        out["vault_requests"] += client.requests_made
        client.close()
    return out


# Signing waits on Vault (its storage writes each issued cert), not on this process: a few
# requests side by side, each thread with its own keep-alive connection and the one token.
SIGN_THREADS = 4


def _sign_one(client, request):
    try:
        return sign_or_issue(client, request["pki_mount"], request["pki_role"], csr=request["csr"],
                             common_name=request["common_name"], alt_names=request.get("dns_names"),
                             ip_sans=request.get("ip_addresses"), ttl=request.get("ttl") or None)
    except RotateError as err:
        return err


def _sign_side_by_side(client, connection, requests):
    """{slot: issued data or RotateError} for every request; (that, requests made by the extra clients)."""
    if len(requests) < 2:
        return dict((r["slot"], _sign_one(client, r)) for r in requests), 0
    queue = list(requests)
    lock = threading.Lock()
    results, clients = {}, [client]
    while len(clients) < min(SIGN_THREADS, len(requests)):
        clients.append(_client(connection, token=client.token))

    def work(own):
        while True:
            with lock:
                if not queue:
                    return
                request = queue.pop(0)
            result = _sign_one(own, request)
            with lock:
                results[request["slot"]] = result

    threads = [threading.Thread(target=work, args=(c,)) for c in clients[1:]]
    for thread in threads:
        thread.start()
    try:
        work(client)
    finally:
        for thread in threads:
            thread.join()
        made = 0
        for extra in clients[1:]:
            made += extra.requests_made
            extra.close()
    return results, made


def _role_key(client, roles, mount, role):
    """(key_type, key_bits) a PKI role demands; key_type 'any' demands nothing. Read once per role."""
    if (mount, role) not in roles:
        data = (client.read("%s/roles/%s" % (mount.strip("/"), role.strip("/"))) or {}).get("data") or {}
        roles[(mount, role)] = (data.get("key_type") or "any", int(data.get("key_bits") or 0))
    return roles[(mount, role)]


def key_for_role(client, roles, request):
    """None when the CSR's key suits the PKI role; else {key_type, key_size} of a key that does
    (the key is then made again on its host). A key type the operator set that the role refuses
    is an error before anything is signed."""
    role_type, role_bits = _role_key(client, roles, request["pki_mount"], request["pki_role"])
    if role_type == "any":
        return None
    key_type, key_bits, _curve = _x509.key_description(load_csr(request["csr"]).public_key())
    if key_type == role_type and (not role_bits or (key_bits >= role_bits if key_type == "rsa"
                                                    else key_bits == role_bits)):
        return None
    if role_type not in ("ec", "rsa"):
        raise RotateError("bad_input", "PKI role %s/roles/%s requires %s keys, which this collection cannot "
                          "generate" % (request["pki_mount"], request["pki_role"], role_type),
                          hint="let the role accept ec or rsa keys (key_type), or rotate this certificate by hand")
    size = max(role_bits, 2048) if role_type == "rsa" else (role_bits or 256)
    if request.get("key_source") == "setting":
        setting = request.get("key_setting") or "the slot's key_type"
        raise RotateError(
            "bad_input", "%s asks for %s-%s keys, but PKI role %s/roles/%s requires %s-%s keys" % (
                setting, key_type, key_bits, request["pki_mount"], request["pki_role"], role_type, size),
            hint="set %s (and its key_size) to what the role requires, or leave them empty (the key installed "
                 "now, else what the role requires)" % setting)
    return {"key_type": role_type, "key_size": size, "was": "%s-%s" % (key_type, key_bits)}


def _shorter_life(request, issued):
    """A warning when the new certificate lives shorter than the one it replaces."""
    old = request.get("old_lifetime_days")
    try:
        new = (_timing.parse_time(issued["not_after"]) - _timing.parse_time(issued["not_before"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None
    new_days = new / 86400.0
    if old and new_days < float(old) * 0.9:
        return ("%s: the new certificate lives %.1f days, the one it replaces lived %.1f days (a lower max_ttl of "
                "PKI role %s/roles/%s, or a shorter ttl asked for?)" % (
                    request["slot"], new_days, float(old), request["pki_mount"], request["pki_role"]))
    return None


def admin_mappings(params, check_mode=False):
    """Write every cert-auth mapping in full where it differs (CA bundle = every valid issuer + root)."""
    out = {"changed": False, "mappings": [], "failure": None, "vault_requests": 0}
    if not params["mappings"]:
        return out
    client = None
    try:
        client = _login(params["connection"])
        for mapping in params["mappings"]:
            body = dict(mapping, certificate=params["ca_bundle"])
            try:
                done, _before, _desired = ensure_mapping(client, mapping.get("mount") or "cert", mapping["name"], body,
                                                         check_mode=check_mode)
            except RotateError as err:
                out["failure"] = failure_of(err, gate="mapping %s" % mapping["name"], where="mappings")
                break
            changed_fields = done.get("changed_fields") or []
            out["mappings"].append({"name": mapping["name"], "changed": bool(changed_fields),
                                    "changed_fields": changed_fields})
            out["changed"] = out["changed"] or bool(changed_fields)
        _revoke(client)
    except RotateError as err:
        out["failure"] = failure_of(err, gate="mappings", where="login")
    finally:
        if client is not None:
            out["vault_requests"] = client.requests_made
            client.close()
    return out


def admin_gate(params, check_mode=False):
    out = {"changed": False, "gates": [], "failure": None}
    if check_mode:
        return out
    ctx = {"services": None, "units": {}, "slots": {}, "serials": {}, "ca_bundle": params.get("ca_bundle"),
           "connection": params.get("connection")}
    try:
        out["gates"] = run_gates(params["gates"], ctx)
    except GateFailed as failed:
        out["failure"] = failure_of(failed.error, gate=failed.gate, where="gate")
        out["gates"] = []
    if params["proofs"]:
        out["proofs"] = run_gates(params["proofs"], ctx, stop_on_failure=False)
    return out


def admin_ready(params, check_mode=False):
    """After a restart: a TLS session with the admin identity, then unsealed and HTTP 200."""
    connection = params["connection"]
    out = {"changed": False, "failure": None}
    if check_mode:
        return out
    started = time.time()
    host, port = _host_port(connection["url"])
    context = make_context(ca_cert=connection.get("ca_cert"), client_cert=connection.get("client_cert"),
                           client_key=connection.get("client_key"))
    tls = probe_until(host, port, server_name=connection.get("tls_server_name"), context=context,
                      http_path="/v1/sys/seal-status", wait_timeout=params["wait_timeout"],
                      interval=params["interval"])
    out["tls"] = {"ok": tls["ok"], "attempts": tls.get("attempts"), "observed": tls.get("observed")}
    if not tls["ok"]:
        klass = tls.get("failure_class") or "timeout"
        alert = " (%s)" % tls["tls_alert"] if tls.get("tls_alert") else ""
        if klass in ("reset", "refused", "timeout"):
            hint = "the server did not start listening within %g s: read the log of the Vault unit" % params[
                "wait_timeout"]
        else:
            hint = ("the listener is up but the handshake fails: compare its cert/client CA file with what the "
                    "phases installed")
        out["failure"] = {"gate": "restart", "failure_class": klass, "hint": hint,
                          "msg": "Vault restarted but no TLS session after %g s: %s%s: %s" % (
                              params["wait_timeout"], klass, alert, tls.get("msg") or "")}
        return out
    keys = [k for k in params["unseal_keys"] if k]
    client = _client(connection)
    try:
        health = wait_ready(client, wait_timeout=params["wait_timeout"] if keys else params["sealed_grace"],
                            interval=params["interval"], unseal_keys=keys or None)
    except RotateError as err:
        details = err.details or {}
        if details.get("sealed") and not keys:
            out["failure"] = {"gate": "restart", "failure_class": "sealed",
                              "msg": "Vault restarted and is sealed: provide vault_rotate_unseal_keys (AWX credential "
                                     "/ ansible-vault) or unseal by hand, then run playbooks/healthcheck.yml",
                              "hint": "the phases before the restart are done and their material is in place: "
                                      "only the unseal is missing"}
        else:
            out["failure"] = failure_of(err, gate="restart", where="ready")
        return out
    finally:
        client.close()
    out.update(ready=True, unsealed=bool(health.get("unsealed")), ready_at=health.get("ready_at"),
               readiness_s=round(time.time() - started, 3), status_code=health.get("status_code"),
               changed=bool(health.get("unsealed")))
    return out


def _host_port(url):
    from ansible.module_utils.six.moves.urllib.parse import urlsplit

    parts = urlsplit(url if "://" in url else "https://" + url)
    return parts.hostname, parts.port or 443


STEP_FUNCTIONS = {"plan": host_plan, "apply": host_apply, "rollback": host_rollback, "verify": host_verify,
                  "check": admin_check,
                  "sign": admin_sign, "mappings": admin_mappings, "gate": admin_gate, "ready": admin_ready}


def run_step(params, check_mode=False):
    """Run the step named in ``params`` (already validated against ARGUMENT_SPEC)."""
    return STEP_FUNCTIONS[params["step"]](params, check_mode=check_mode)
