#!/usr/bin/env python3
# Inventory script of the fleet lab (tests/fleet/fleetctl.py): hosts of their own
# (network namespace, sshd, users, systemd with a user manager per service user)
# reached over SSH like production machines. It reads the fleet's own description
# (<fleet dir>/fleet.json) ONCE per run and hands out, as plain data (nothing to
# template at each use):
#   - the hosts, their functional groups, and per host ansible_host,
#     vault_rotate_app, vault_rotate_service_user;
#   - the `fleet` group's environment values: the same variables as
#     inventories/prod/group_vars/prod.yml with the fleet's addresses and paths,
#     and the SSH connection (the fleet's key and known_hosts).
# Values that do not depend on the description are in group_vars/fleet.yml.
#   fleet folder: $FLEET_DIR, else <repo>/.fleet/default (the fleetctl.py default).
# With no fleet there, the default hosts are listed and every fleet value fails
# only when a fleet host uses it, naming the missing file.
import json
import os
import sys

DEFAULT_APPS = ["ncprd1", "resume2me"]
DEFAULT_NET = 12
GROUPS = {"vault_admin": "admin", "vault_servers": "vault", "vault_apps": "app", "vault_proxies": "proxy"}


def default_hosts():
    """The hosts a default fleet has (the addresses of tests/fleet/fleet.py)."""
    net = "10.212.%d" % DEFAULT_NET
    hosts = {"fleet-admin": {"role": "admin", "app": None, "address": net + ".10", "service_user": None},
             "fleet-vaultprod": {"role": "vault", "app": None, "address": net + ".11", "service_user": "vaultprod"},
             "fleet-proxyprod": {"role": "proxy", "app": "proxyprod", "address": net + ".12",
                                 "service_user": "proxyprod"}}
    for i, app in enumerate(DEFAULT_APPS):
        hosts["fleet-%s" % app] = {"role": "app", "app": app, "address": "%s.%d" % (net, 20 + i),
                                   "service_user": app}
    return hosts


def fleet_vars(fleet_dir, fleet):
    paths, apps = fleet["paths"], fleet["app_paths"]
    proxy = fleet["proxy_app"]
    ssh = fleet["ssh"]
    return {
        # SSH as the fleet's deploy user with the key the fleet made; host keys checked
        # against the fleet's own known_hosts (made by `fleetctl.py up`: lab only).
        "ansible_user": ssh["user"],
        "ansible_ssh_private_key_file": ssh["key"],
        "ansible_ssh_common_args": "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
                                   % ssh["known_hosts"],
        "ansible_python_interpreter": fleet["python"],
        "vault_rotate_vault_url": fleet["url"],
        "vault_rotate_tls_server_name": fleet["tls_server_name"],
        "vault_rotate_pki_mount": fleet["pki"]["mount"],
        "vault_rotate_cert_auth_mount": fleet["cert_auth"]["mount"],
        "vault_rotate_admin_cert": paths["admin_crt"],
        "vault_rotate_admin_key": paths["admin_key"],
        "vault_rotate_admin_issuing_ca": paths["admin_issuing_ca"],
        "vault_rotate_ca_cert": paths["admin_ca"],
        "vault_rotate_admin_mapping": fleet["admin"]["mapping"],
        "vault_rotate_admin_common_name": fleet["admin"]["cn"],
        "vault_rotate_admin_mapping_policies": [fleet["admin"]["policy"]],
        "vault_rotate_apps": fleet["apps"],
        "vault_rotate_proxy_apps": [proxy],
        "vault_rotate_server_tls_dir": paths["vault_tls_dir"],
        "vault_rotate_server_ip_addresses": [fleet["hosts"]["fleet-vaultprod"]["address"]],
        "vault_rotate_proxy_unit": apps[proxy]["nginx_unit"],
        "vault_rotate_proxy_agent_unit": apps[proxy]["agent_unit"],
        # The proxy and each app's frontend at their own host's address.
        "vault_rotate_proxy_endpoint": fleet["endpoints"]["proxy"],
        "vault_rotate_frontend_endpoints": fleet["endpoints"]["frontends"],
        # Run bookkeeping on the controller (this machine), beside the fleet.
        "vault_rotate_report_dir": os.path.join(fleet_dir, "reports"),
        "vault_rotate_lock_dir": os.path.join(fleet_dir, "run"),
    }


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        print("{}")
        return
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    fleet_dir = os.environ.get("FLEET_DIR") or os.path.join(repo, ".fleet", "default")
    path = os.path.join(fleet_dir, "fleet.json")
    try:
        with open(path) as fh:
            fleet = json.load(fh)
        hosts = fleet["hosts"]
        variables = fleet_vars(fleet_dir, fleet)
    except (OSError, ValueError, KeyError) as exc:
        hosts = default_hosts()
        missing = "{{ undef(hint=%s) }}" % json.dumps(
            "no fleet description at %s (%s): start the fleet with tests/fleet/fleetctl.py up, "
            "or point FLEET_DIR at its folder" % (path, exc.__class__.__name__))
        variables = {"ansible_user": missing,
                     "vault_rotate_vault_url": missing, "vault_rotate_admin_cert": missing}
    out = {"fleet": {"hosts": sorted(hosts), "vars": variables}}
    for group, role in GROUPS.items():
        out[group] = {"hosts": sorted(n for n, h in hosts.items() if h["role"] == role)}
    hostvars = {}
    for name, h in hosts.items():
        hv = {"ansible_host": h["address"], "vault_rotate_service_user": h.get("service_user") or ""}
        if h.get("app"):
            hv["vault_rotate_app"] = h["app"]
        hostvars[name] = hv
    out["_meta"] = {"hostvars": hostvars}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
