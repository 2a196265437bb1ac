#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: vault_health
short_description: Wait until a Vault/OpenBao node is ready (initialised, unsealed, active), optionally unsealing it
version_added: 0.1.0
description:
  - Reads C(sys/health) (and C(sys/seal-status) when sealed) over (m)TLS with the TLS server name
    distinct from the address.
  - Only HTTP 200 (initialised, unsealed, active) counts as ready. 503 is sealed, 429/472/473 standby,
    501 not initialised. A restarted server answers 503, then 429, then 200.
  - Waits with a bound (O(wait_timeout)) and a growing pause, through refused and reset connections
    (a container port forwarder resets connections until the server inside listens).
  - When the node is sealed and O(unseal_keys) are given, unseals it (C(changed=true)).
  - C(sys/health), C(sys/seal-status) and C(sys/unseal) need no token; the auth options are accepted
    (so C(module_defaults) can set them for the whole group) and not used.
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.connection
attributes:
  check_mode:
    support: full
    description: In check mode a sealed node is not unsealed; the module reports C(changed=true) when it would unseal.
  diff_mode:
    support: none
    description: An unseal has no before/after worth a diff; RV(unsealed) says whether it happened.
options:
  wait_timeout:
    description:
      - Keep checking until the node is ready or this many seconds have passed. V(0) checks once.
      - After an unseal the module waits up to 10 seconds more for the node to become active, even with V(0).
    type: float
    default: 0
  interval:
    description:
      - First pause between checks, in seconds; it grows by half each time, up to 5 seconds (or
        O(interval) when larger).
    type: float
    default: 1
  unseal_keys:
    description:
      - Unseal keys (as printed by C(bao operator init)) to use when the node is sealed, as many as the threshold needs.
      - Never logged nor returned.
    type: list
    elements: str
  standby_ok:
    description:
      - Count an unsealed standby node (429, 472, 473) as ready.
    type: bool
    default: false
seealso:
  - module: privsec.vault_rotate.tls_probe
"""

EXAMPLES = r"""
- name: Wait for the restarted Vault, unsealing it with the keys from the vault
  privsec.vault_rotate.vault_health:
    url: https://127.0.0.1:22400
    tls_server_name: vault.prod.privsec.ch
    ca_cert: /home/vaultprod/tls-prod/root_ca.pem
    client_cert: /root/vault/tls-admin/prod/admin.crt
    client_key: /root/vault/tls-admin/prod/admin.key
    wait_timeout: 60
    unseal_keys: "{{ vault_unseal_keys }}"

- name: Check once, with the connection from the environment (VAULT_ADDR, VAULT_CACERT, ...)
  privsec.vault_rotate.vault_health:
  register: health

- name: Report
  ansible.builtin.debug:
    msg: "{{ health.version }} sealed={{ health.sealed }} standby={{ health.standby }}"
"""

RETURN = r"""
ready:
  description: Whether the node is initialised, unsealed and active (or standby with O(standby_ok)).
  returned: always
  type: bool
initialized:
  description: Whether the node is initialised.
  returned: when the node answered
  type: bool
sealed:
  description: Whether the node is sealed (at the last check; in check mode before any unseal).
  returned: when the node answered
  type: bool
standby:
  description: Whether the node is a standby.
  returned: when the node answered
  type: bool
unsealed:
  description: Whether this task unsealed the node.
  returned: always
  type: bool
version:
  description: Server version.
  returned: when the node answered
  type: str
  sample: 2.7.2
cluster_name:
  description: Cluster name.
  returned: when the node answered and is unsealed
  type: str
status_code:
  description: HTTP status of the last C(sys/health) answer.
  returned: when the node answered
  type: int
  sample: 200
seal_threshold:
  description: Number of keys needed to unseal.
  returned: when the node was sealed
  type: int
seal_progress:
  description: Keys given so far toward the threshold.
  returned: when the node was sealed
  type: int
failure_class:
  description: Why the node is not ready (V(sealed), V(standby), V(uninitialized), or a transport class
    such as V(refused), V(reset), V(tls_alert)); V(null) when ready.
  returned: always
  type: str
hint:
  description: What to check next when not ready.
  returned: always
  type: str
observed:
  description:
    - The states seen, in order, consecutive repeats folded, for example
      V([reset, sealed, unsealed, standby, ready]) for a restart, or V([ready]).
  returned: always
  type: list
  elements: str
attempts:
  description: Number of C(sys/health) checks made.
  returned: always
  type: int
elapsed:
  description: Seconds spent.
  returned: always
  type: float
"""

import time

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError, classify_http
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultModule

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


def _check(module, client, keys, result):
    """One sys/health check (plus an unseal when sealed and keys are given).

    Returns (error or None when ready, stop) and updates `result`."""
    p = module.params
    try:
        status, data = client.health()
        result.update(_state(status, data))
        if status == 200 or (p["standby_ok"] and status in STANDBY_CODES):
            result["ready"] = True
            return None, True
        error = _not_ready_error(status)
        if status == 501:
            return error, True  # waiting will not initialise it
        if status == 503 and result["sealed"]:
            seal = client.seal_status()
            result.update(seal_threshold=seal.get("t"), seal_progress=seal.get("progress"))
            if keys and module.check_mode:
                result["changed"] = True
                return error, True
            if keys:
                _unseal(client, keys)
                result.update(unsealed=True, changed=True)
        return error, False
    except RotateError as err:
        return err, err.failure_class not in TRANSIENT


def main():
    module = VaultModule(
        argument_spec=dict(
            wait_timeout=dict(type="float", default=0),
            interval=dict(type="float", default=1),
            unseal_keys=dict(type="list", elements="str", no_log=True),
            standby_ok=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["wait_timeout"] < 0 or p["interval"] <= 0:
        module.fail_json(msg="wait_timeout must be >= 0 and interval > 0", failure_class="bad_input")
    client = module.vault_client()
    keys = [k for k in (p["unseal_keys"] or []) if k]

    start = time.monotonic()
    deadline = start + p["wait_timeout"]
    pause = p["interval"]
    attempts = 0
    result = {"ready": False, "unsealed": False, "changed": False, "failure_class": None, "hint": None}
    observed = []
    while True:
        attempts += 1
        error, stop = _check(module, client, keys, result)
        _observe(observed, error.failure_class if error else "ready")
        if result["unsealed"] and "unsealed" not in observed:
            observed.append("unsealed")
            deadline = max(deadline, time.monotonic() + UNSEAL_GRACE)
            pause = min(p["interval"], 0.1)
        if stop:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        time.sleep(min(pause, remaining))
        pause = min(max(pause, 0.1) * 1.5, max(MAX_PAUSE, p["interval"]))

    client.close()
    result.update(attempts=attempts, elapsed=round(time.monotonic() - start, 3), observed=observed)
    if result["ready"]:
        result["msg"] = "Vault %s is ready (HTTP %s)%s" % (
            result.get("version"), result.get("status_code"), ", unsealed by this task" if result["unsealed"] else "")
        module.exit_json(**result)
    if module.check_mode and result["changed"]:
        result.update(failure_class=error.failure_class, hint=error.hint,
                      msg="Vault is sealed; would unseal it with the given keys (check mode)")
        module.exit_json(**result)
    extra = dict((k, v) for k, v in result.items() if k not in ("failure_class", "hint", "msg"))
    if p["wait_timeout"] and attempts > 1:
        error.message = "%s (still after %d checks in %.1f s)" % (error.message, attempts, result["elapsed"])
    module.fail_from(error, **extra)


if __name__ == "__main__":
    main()
