# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A CA trust file (a proxy's upstream CA chain, a client's CA file): make it hold
exactly a set of CA certificates, compared by fingerprint, never as text, or
put its previous generation back.

Used by the trust_bundle module and by the phase engine. Results describe the
certificates (subject, serial, not_after), never PEM; failures are RotateError.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _files
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError


def wanted_certs(value):
    """Certs of a PEM text or a list of PEM texts, deduplicated in first-seen order."""
    if isinstance(value, (list, tuple)):
        text = "".join(str(item).strip() + "\n" for item in value if item)
    else:
        text = value
    return _x509.dedupe(_x509.load_pem_bundle(text, what="certificates"))


def current_certs(path):
    """(certs, problem): [] when the file is missing, (None, reason) when it does not parse."""
    data = _files.read_file(path)
    if data is None:
        return [], None
    try:
        return _x509.load_pem_bundle(data, what=path), None
    except RotateError as err:
        return None, err.message


def diff_lines(described):
    """One line per certificate (sorted), the text of the module's diff."""
    return "".join("%s  serial=%s  not_after=%s\n" % (d["subject"], d["serial"], d["not_after"])
                   for d in sorted(described, key=lambda d: (d["subject"], d["serial"])))


def ensure_bundle(path, certificates, owner=None, group=None, mode="0644", backup=True, check_mode=False, warn=None):
    """Make `path` hold exactly `certificates` (PEM text or list of PEM texts), state=present.

    Returns {changed, before, after, added, removed, expired} (described
    certificates), plus before_unparsable (why the old file does not parse)
    and backup_file (the .prev written) when there is one. An expired
    certificate in `certificates` is a warn() call, not a failure. The same
    set in another order or spelling changes only owner/group/mode.
    Raises RotateError (bad_input without certificates, bad_pem, write_failed).
    """
    if certificates in (None, "", []):
        raise RotateError("bad_input", "state=present needs certificates",
                          hint="pass the PEM bundle (for example the ca_bundle of pki_issuers_info)")
    want = wanted_certs(certificates)
    have, problem = current_certs(path)
    want_fps = [_x509.fingerprint_sha256(c) for c in want]
    have_fps = None if have is None else [_x509.fingerprint_sha256(c) for c in have]
    now = _x509.utcnow()
    result = dict(
        before=_x509.describe_bundle(have or []),
        after=_x509.describe_bundle(want),
        added=_x509.describe_bundle([c for c, fp in zip(want, want_fps) if have_fps is None or fp not in have_fps]),
        removed=_x509.describe_bundle([c for c, fp in zip(have or [], have_fps or []) if fp not in want_fps]),
        expired=_x509.describe_bundle([c for c in want if _x509.not_after(c) < now]),
    )
    if problem:
        result["before_unparsable"] = problem
    if warn is not None:
        for item in result["expired"]:
            warn("%s (serial %s) in %s expired at %s" % (item["subject"], item["serial"], path, item["not_after"]))

    same_set = have_fps is not None and set(have_fps) == set(want_fps) and os.path.exists(path)
    if same_set:
        result["after"] = result["before"]
        result["changed"] = _files.ensure_attributes(path, owner, group, mode, check_mode=check_mode)
        return result
    result["changed"] = True
    if not check_mode:
        backups = _files.install_set([(path, _x509.bundle_to_pem(want), owner, group, mode)], backup=backup)
        if backups:
            result["backup_file"] = backups[0]
    return result


def restore_bundle(path, check_mode=False):
    """Put `path`.prev back (state=restored): {changed, before, after} (described certificates).

    Raises RotateError: missing_file without a .prev, bad_pem when it does not parse (nothing changed).
    """
    if not os.path.exists(_files.backup_path(path)):
        raise RotateError("missing_file", "no previous generation of %s to restore (%s is missing)" % (
            path, _files.backup_path(path)), hint="the backup is written by state=present with backup=true")
    have, _problem = current_certs(path)
    prev, problem = current_certs(_files.backup_path(path))
    if prev is None:
        raise RotateError("bad_pem", "the backup %s does not parse: %s" % (_files.backup_path(path), problem),
                          hint="restore by hand; nothing was changed")
    changed = bool(_files.restore_set([path], check_mode=check_mode))
    return dict(changed=changed, before=_x509.describe_bundle(have or []), after=_x509.describe_bundle(prev))
