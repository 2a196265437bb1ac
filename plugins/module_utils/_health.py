# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wait until a Vault/OpenBao node is ready (initialised, unsealed, active), unsealing it
when keys are given: the readiness loop of the vault_health module and of the
phase engine's restart gate.

`sys/health` is polled with a growing pause; the states seen are folded into
`observed` ([reset, sealed, unsealed, standby, ready] for a restart). A sealed
node with keys is unsealed once, and the deadline then gets UNSEAL_GRACE more.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible_collections.privsec.vault_rotate.plugins.module_utils._timing import Deadline
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError, classify_http

MAX_PAUSE = 5.0
UNSEAL_GRACE = 10.0
STANDBY_CODES = (429, 472, 473)
# Transport failures that a starting server produces; anything else (an
# alert, an untrusted cert, a name mismatch) will not fix itself by waiting.
TRANSIENT = ("refused", "reset", "timeout", "unreachable", "tls_error", "server_error")


def _state(status, data):
    data = data or {}
    return {
        "status_code": status,
        "initialized": data.get("initialized", status != 501),
        "sealed": data.get("sealed", status == 503),
        "standby": data.get("standby", status in STANDBY_CODES),
        "version": data.get("version"),
        "cluster_name": data.get("cluster_name"),
    }


def _not_ready_error(status):
    details = {"status": status, "path": "sys/health"}
    if status == 503:
        return RotateError(
            "sealed", "Vault is sealed",
            "pass unseal_keys (no_log) to unseal it, or unseal it by hand (bao operator unseal); "
            "a restart seals it unless it auto-unseals", details)
    if status in STANDBY_CODES:
        return RotateError(
            "standby", "Vault is unsealed but not active (standby, HTTP %s)" % status,
            "right after an unseal it answers 429 for a moment: wait (wait_timeout), or set standby_ok "
            "for a standby node", details)
    if status == 501:
        return RotateError("uninitialized", "Vault is not initialized",
                           "initialize it (bao operator init) and keep the keys safe", details)
    return classify_http(status, [], "sys/health")


def _unseal(client, keys):
    """Give keys until the node is unsealed; return the last seal-status."""
    status = {}
    for key in keys:
        status = client.unseal(key)
        if not status.get("sealed", True):
            return status
    raise RotateError(
        "sealed",
        "Vault is still sealed after %d unseal key(s): threshold %s, progress %s"
        % (len(keys), status.get("t"), status.get("progress")),
        "give at least as many keys as the threshold, from this cluster's init",
    )


def _observe(observed, label):
    if not observed or observed[-1] != label:
        observed.append(label)


def _check(client, keys, result, standby_ok, check_mode):
    """One sys/health check (plus an unseal when sealed and keys are given).

    Returns (error or None when ready, stop) and updates `result`."""
    try:
        status, data = client.health()
        result.update(_state(status, data))
        if status == 200 or (standby_ok and status in STANDBY_CODES):
            result["ready"] = True
            result["ready_at"] = time.time()
            return None, True
        error = _not_ready_error(status)
        if status == 501:
            return error, True  # waiting will not initialise it
        if status == 503 and result["sealed"]:
            seal = client.seal_status()
            result.update(seal_threshold=seal.get("t"), seal_progress=seal.get("progress"))
            if keys and check_mode:
                result["changed"] = True
                return error, True
            if keys:
                _unseal(client, keys)
                result.update(unsealed=True, changed=True)
        return error, False
    except RotateError as err:
        return err, err.failure_class not in TRANSIENT


def wait_ready(client, wait_timeout=0, interval=1, unseal_keys=None, standby_ok=False, check_mode=False):
    """Check sys/health until the node is ready or `wait_timeout` seconds have passed.

    `client` is a VaultClient (no token needed). Returns the result dict:
    ready, unsealed, changed, failure_class, hint (None when ready), observed,
    attempts, elapsed (s), msg, the node's state when it answered
    (status_code, initialized, sealed, standby, version, cluster_name;
    seal_threshold and seal_progress when sealed) and ready_at (time.time()
    when ready was seen). Returns too, not ready, in check mode when it
    would unseal (changed true, failure_class sealed). Raises RotateError
    otherwise (sealed, standby, uninitialized or a transport class; the
    message says how long it waited), with every result field but
    failure_class, hint and msg in its details.
    """
    keys = [k for k in (unseal_keys or []) if k]
    deadline = Deadline(wait_timeout, interval, cap=MAX_PAUSE)
    attempts = 0
    result = {"ready": False, "unsealed": False, "changed": False, "failure_class": None, "hint": None}
    observed = []
    while True:
        attempts += 1
        error, stop = _check(client, keys, result, standby_ok, check_mode)
        _observe(observed, error.failure_class if error else "ready")
        if result["unsealed"] and "unsealed" not in observed:
            # Unsealed by us: it answers 429 (standby) for a moment, then 200; look again soon.
            observed.append("unsealed")
            deadline.extend(UNSEAL_GRACE)
            deadline.restart_pauses(min(interval, 0.1))
        if stop or not deadline.wait():
            break

    result.update(attempts=attempts, elapsed=deadline.elapsed(), observed=observed)
    if result["ready"]:
        result["msg"] = "Vault %s is ready (HTTP %s)%s" % (
            result.get("version"), result.get("status_code"), ", unsealed by this task" if result["unsealed"] else "")
        return result
    if check_mode and result["changed"]:
        result.update(failure_class=error.failure_class, hint=error.hint,
                      msg="Vault is sealed; would unseal it with the given keys (check mode)")
        return result
    if wait_timeout and attempts > 1:
        error.message = "%s (still after %d checks in %.1f s)" % (error.message, attempts, result["elapsed"])
    # Set after construction: the fields that are None (version of a node that never answered) stay.
    error.details.update((k, v) for k, v in result.items() if k not in ("failure_class", "hint", "msg"))
    raise error
