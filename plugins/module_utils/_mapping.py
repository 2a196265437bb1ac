# -*- coding: utf-8 -*-
# Copyright (c) privsec.vault_rotate contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of a cert-auth mapping (`auth/<mount>/certs/<name>`): normalise, compare, diff.

Vault answers a read with its own spelling (TTLs in seconds, lists in the order
they were written, the CA bundle as PEM text); a desired state arrives as the
user wrote it ("1h", policies in any order, a bundle with other line endings).
Both sides go through `normalise()` so that only real differences count, and
the CA bundle is compared as a set of certificates (by SHA-256 fingerprint),
never as text. Only `read_mapping` and `ensure_mapping` talk to Vault, through
the client they are given (the cert_auth_mapping module and the phase engine).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type


from ansible_collections.privsec.vault_rotate.plugins.module_utils import _timing
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import (
    bundle_to_pem,
    cert_info,
    dedupe,
    load_pem_bundle,
)

# Fields this collection manages. A write always sends every one of them (the
# full desired state): leaving one out would keep (or, on some servers, reset)
# whatever was there, so "remove this CN" must be an explicit empty list.
LIST_FIELDS = (
    "allowed_common_names",
    "allowed_dns_sans",
    "allowed_uri_sans",
    "token_policies",
    "token_bound_cidrs",
)
TTL_FIELDS = ("token_ttl", "token_max_ttl", "token_period")
MANAGED_FIELDS = ("certificate", "display_name") + LIST_FIELDS + TTL_FIELDS


def parse_duration(value):
    """Whole seconds of a TTL as Vault accepts it (3600, "3600", "1h30m", "2d"; see
    _timing.parse_duration). None and "" mean 0 (unset). Raises ValueError naming the
    value otherwise. Vault truncates to whole seconds; so do we ("90.5s" == 90)."""
    try:
        seconds = _timing.parse_duration(value)
    except RotateError:
        raise ValueError("not a duration: %r (use seconds, or e.g. 90m, 1h30m, 2d)" % (value,))
    return int(seconds or 0)


def normalise_list(value):
    """A list field as a sorted list of unique, stripped, non-empty strings.

    Vault accepts a list or a comma-separated string and returns what was
    written, order and duplicates included; order carries no meaning for any
    of the list fields we manage.
    """
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return sorted(set(str(item).strip() for item in value if str(item).strip()))


def ca_entries(pem):
    """Parse a PEM bundle into [{subject, serial, not_after, fingerprint_sha256}], one per
    distinct certificate (duplicates dropped), sorted by not_after then serial.

    Raises RotateError('bad_pem') (from _x509) on a bundle that does not parse.
    """
    if not pem or not str(pem).strip():
        return []
    entries = []
    for cert in dedupe(load_pem_bundle(pem, what="CA bundle (certificate)")):
        info = cert_info(cert)
        entries.append(dict((key, info[key]) for key in ("subject", "serial", "not_after", "fingerprint_sha256")))
    return sorted(entries, key=lambda e: (e["not_after"], e["serial"]))


def unique_pem_bundle(pem):
    """The bundle to write: each distinct certificate once, in the order given, PEM text."""
    return bundle_to_pem(dedupe(load_pem_bundle(pem, what="CA bundle (certificate)")))


def normalise(data, name):
    """Normalise a mapping (Vault's read `data`, or the desired options) for comparison.

    `name` is the mapping name: Vault stores display_name = name when none is given.
    Fields absent from `data` take Vault's defaults (empty list, 0 seconds).
    """
    out = {"certificate": ca_entries(data.get("certificate"))}
    out["display_name"] = data.get("display_name") or name
    for field in LIST_FIELDS:
        out[field] = normalise_list(data.get(field))
    for field in TTL_FIELDS:
        out[field] = parse_duration(data.get(field))
    return out


def _comparable(field, value):
    if field == "certificate":
        return sorted(entry["fingerprint_sha256"] for entry in value)
    return value


def changed_fields(current, desired):
    """Names of the managed fields whose normalised values differ, in MANAGED_FIELDS order.

    `current` None (no mapping yet) means every field changes.
    """
    if current is None:
        return list(MANAGED_FIELDS)
    return [
        field for field in MANAGED_FIELDS
        if _comparable(field, current.get(field)) != _comparable(field, desired.get(field))
    ]


def display(normalised):
    """A normalised mapping as shown to people (diff, return values): the CA bundle as a
    list of {subject, serial, not_after}; never PEM. None stays None (no mapping)."""
    if normalised is None:
        return None
    out = dict(normalised)
    out["certificate"] = [
        {"subject": e["subject"], "serial": e["serial"], "not_after": e["not_after"]}
        for e in normalised["certificate"]
    ]
    return out


def render_diff(path, before, after):
    """Ansible diff dict for a mapping change; `before`/`after` are normalised or None."""
    return {
        "before_header": path,
        "after_header": path,
        "before": display(before) or {},
        "after": display(after) or {},
    }


def write_body(params, name):
    """The full desired state as the JSON body of `auth/<mount>/certs/<name>`.

    Every managed field is sent, empty ones included, so that a value removed from
    the desired state is removed in Vault too; TTLs go as whole seconds.
    """
    body = {
        "certificate": unique_pem_bundle(params["certificate"]),
        "display_name": params.get("display_name") or name,
    }
    for field in LIST_FIELDS:
        body[field] = normalise_list(params.get(field))
    for field in TTL_FIELDS:
        body[field] = parse_duration(params.get(field))
    return body


# ---------------------------------------------------------------- in Vault

def mapping_path(mount, name):
    """The API path of mapping `name` on the cert auth mount `mount` (default cert)."""
    return "auth/%s/certs/%s" % ("cert" if mount is None else mount.strip("/"), name.strip("/"))


def desired_mapping(params, name, path):
    """normalise(params, name), the desired state; a TTL that is not a duration is
    RotateError bad_input naming `path` (a bundle that does not parse: bad_pem)."""
    try:
        return normalise(params, name)
    except ValueError as err:
        raise RotateError("bad_input", "%s: %s" % (path, err))


def read_mapping(client, path, name):
    """(raw data or None, normalised or None) of the mapping in Vault."""
    answer = client.read(path)
    if not answer or not answer.get("data"):
        return None, None
    return answer["data"], normalise(answer["data"], name)


def _with_fields(err, fields):
    """`err` with the module's result fields in its details (set after construction: mapping=None stays)."""
    err.details.update(fields)
    return err


def ensure_mapping(client, mount, name, params, state="present", check_mode=False):
    """Make auth/<mount>/certs/<name> hold `params` (state=present: the cert_auth_mapping
    options, certificate required) or not exist (state=absent), and read a write back.

    Returns (result, before, desired): result = {path, changed, changed_fields
    (MANAGED_FIELDS names), mapping (display() of the mapping after; None
    when absent)}, before/desired the normalised states (None when there is
    none) for render_diff(path, before, desired). A mapping already as
    desired is not written. Raises RotateError (bad_input/bad_pem for the
    desired state before any request, the client's classes, server_error when
    Vault did not store what was written); its details carry the result fields
    as they stood at the failure.
    """
    name = name.strip("/")
    path = mapping_path(mount, name)
    result = dict(path=path, changed=False, changed_fields=[], mapping=None)
    desired = None
    try:
        if state == "present":
            desired = desired_mapping(params, name, path)
        _raw, current = read_mapping(client, path, name)
    except RotateError as err:
        raise _with_fields(err, result)

    if state == "absent":
        fields = list(MANAGED_FIELDS) if current is not None else []
        if fields and not check_mode:
            try:
                client.delete(path)
            except RotateError as err:
                raise _with_fields(err, result)
    else:
        fields = changed_fields(current, desired)
        result["mapping"] = display(desired if fields else current)
        if fields and not check_mode:
            failed = dict(result, changed=True, changed_fields=fields)
            try:
                client.write(path, write_body(params, name))
                _raw, stored = read_mapping(client, path, name)
            except RotateError as err:
                raise _with_fields(err, failed)
            not_stored = changed_fields(stored, desired)
            result["mapping"] = failed["mapping"] = display(stored)
            if not_stored:
                raise _with_fields(RotateError(
                    "server_error", "Vault did not store %s of %s as written" % (", ".join(not_stored), path),
                    "read the mapping back (bao read %s) and compare" % path), failed)
    result["changed"] = bool(fields)
    result["changed_fields"] = fields
    return result, current, desired
