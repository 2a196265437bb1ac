#!/usr/bin/env python3
# Inventory script of the lab: reads the lab's own description (<lab dir>/lab.json,
# written by tests/lab/labctl.py) ONCE per run and hands the `lab` group every
# environment value as plain data: the same variables as
# inventories/prod/group_vars/prod.yml, with the lab's paths, ports and unit
# commands. Plain values cost nothing to template at each use (Jinja over the
# lab description cost ~0.2 s of every task). Hosts and groups stay in hosts.yml.
#   lab folder: $LAB_DIR, else <repo>/.lab/default (the labctl.py default).
# With no lab there, the inventory still loads: every lab value then fails only
# when a lab host uses it, naming the missing file.
import json
import os
import sys


def lab_vars(lab_dir, lab):
    paths, apps = lab["paths"], lab["app_paths"]
    proxy = lab["proxy_app"]
    return {
        "vault_rotate_lab_dir": lab_dir,
        "vault_rotate_lab": lab,
        "vault_rotate_env": "lab",
        "vault_rotate_vault_url": lab["url"],
        "vault_rotate_tls_server_name": lab["tls_server_name"],
        "vault_rotate_pki_mount": lab["pki"]["mount"],
        "vault_rotate_cert_auth_mount": lab["cert_auth"]["mount"],
        "vault_rotate_admin_cert": paths["admin_crt"],
        "vault_rotate_admin_key": paths["admin_key"],
        "vault_rotate_admin_issuing_ca": paths["admin_issuing_ca"],
        "vault_rotate_ca_cert": paths["admin_ca"],
        "vault_rotate_admin_mapping": lab["admin"]["mapping"],
        "vault_rotate_admin_common_name": lab["admin"]["cn"],
        "vault_rotate_admin_mapping_policies": [lab["admin"]["policy"]],
        "vault_rotate_apps": lab["apps"],
        "vault_rotate_proxy_apps": [proxy],
        "vault_rotate_home_root": os.path.join(lab_dir, "home"),
        "vault_rotate_server_tls_dir": paths["vault_tls_dir"],
        "vault_rotate_proxy_unit": apps[proxy]["nginx_unit"],
        "vault_rotate_proxy_agent_unit": apps[proxy]["agent_unit"],
        "vault_rotate_proxy_endpoint": {"host": "127.0.0.1", "port": lab["ports"]["proxy"]},
        # app -> {host (default 127.0.0.1), port, sni, ...}: the lab's app entries.
        "vault_rotate_frontend_endpoints": dict((app, entry) for app, entry in apps.items() if app != proxy),
        "vault_rotate_report_dir": os.path.join(lab_dir, "reports"),
        "vault_rotate_lock_dir": os.path.join(lab_dir, "run"),
        # Services: the lab's units are driven by `labctl.py unit NAME ACTION`.
        "vault_rotate_service_commands": dict((name, unit["commands"]) for name, unit in lab["units"].items()),
    }


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        print("{}")
        return
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
    lab_dir = os.environ.get("LAB_DIR") or os.path.join(repo, ".lab", "default")
    path = os.path.join(lab_dir, "lab.json")
    try:
        with open(path) as fh:
            variables = lab_vars(lab_dir, json.load(fh))
    except (OSError, ValueError, KeyError) as exc:
        # Evaluated only when used: the same error the file lookup gave before.
        missing = "{{ undef(hint=%s) }}" % json.dumps(
            "no lab description at %s (%s): start the lab with tests/lab/labctl.py up, "
            "or point LAB_DIR at its folder" % (path, exc.__class__.__name__))
        variables = {"vault_rotate_lab_dir": lab_dir, "vault_rotate_lab": missing, "vault_rotate_env": "lab", "vault_rotate_vault_url": missing,
                     "vault_rotate_admin_cert": missing}
    print(json.dumps({"lab": {"vars": variables}, "_meta": {"hostvars": {}}}))


if __name__ == "__main__":
    main()
