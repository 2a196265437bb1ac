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
  - These endpoints exist in the root namespace only. O(namespace) is accepted and not sent, so the same
    C(module_defaults) serve a namespaced deployment.
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
  - module: community.hashi_vault.vault_read
    description: Read other Vault API paths with a token (no waiting, no unseal).
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
ready_at:
  description:
    - When the node was seen ready, in seconds since the epoch (the clock of the host that ran the check), to
      measure how long after a restart readiness was seen.
  returned: when ready
  type: float
  sample: 1764351000.123
  version_added: 1.0.0
"""

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.module_utils._health import wait_ready
from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultModule


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
    try:
        result = wait_ready(client, wait_timeout=p["wait_timeout"], interval=p["interval"], unseal_keys=p["unseal_keys"],
                            standby_ok=p["standby_ok"], check_mode=module.check_mode)
    except RotateError as err:
        client.close()
        module.fail_from(err)
    client.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
