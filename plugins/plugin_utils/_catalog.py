# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The phase catalog: every variable of the collection, its one default, and
what each phase does on each host, built from them.

This is the one place where a setting gets its name and its default. A role
variable ``<role>_<key>`` (say ``app_leaf_pki_role``) wins; else the global
``vault_rotate_<key>`` it falls back to; else the default written here. The
roles' ``meta/argument_specs.yml`` are generated from this table
(``scripts/role_docs.py``; a unit test keeps them in step).

Controller side only: the action plugins call it with a getter over the task's
variables; the specs it returns are validated again by the engine's argument
spec (plugins/module_utils/_engine.py) before anything runs.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib
import os

from ansible.module_utils.common.validation import (
    check_type_bool,
    check_type_dict,
    check_type_float,
    check_type_int,
    check_type_list,
)
from ansible.module_utils.six.moves.urllib.parse import urlsplit

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

PHASES = ("preflight", "admin_cert", "server_tls", "agent_login", "app_leaf", "proxy_trust", "restart",
          "healthcheck")
# The phases that rotate something (the others check or restart).
ROTATING_PHASES = ("admin_cert", "server_tls", "agent_login", "app_leaf", "proxy_trust")
# Which functional inventory group's hosts own each phase's files and units.
PHASE_GROUPS = {"admin_cert": "vault_admin", "server_tls": "vault_servers", "agent_login": "vault_apps",
                "app_leaf": "vault_apps", "proxy_trust": "vault_proxies"}
ADMIN_GROUP = "vault_admin"
MISSING = object()


class Setting(object):
    """One variable: ``<prefix>_<key>``, its type, and where its value comes from."""

    __slots__ = ("key", "type", "default", "glob", "doc", "elements", "choices", "no_log", "shown", "controller")

    def __init__(self, key, type="str", default=None, glob=None, doc="", elements=None, choices=None,
                 no_log=False, shown=None, controller=False):
        self.key = key
        self.type = type
        self.default = default      # a value, or a function of the values resolved so far
        self.glob = glob            # name of the global (vault_rotate_...) it falls back to
        self.doc = doc
        self.elements = elements
        self.choices = choices
        self.no_log = no_log
        self.shown = shown          # the default as documented, when it is computed
        self.controller = controller  # a path on the controller: a leading ~ is expanded there


S = Setting
_FORCE = S("force", "bool", glob="vault_rotate_force", doc="Rotate even when not due.")
_RENEW = S("renew_fraction", "float", glob="vault_rotate_renew_fraction",
           doc="Share of a certificate's lifetime after which it is due (0 < x < 1).")
_MOUNT = S("pki_mount", glob="vault_rotate_pki_mount", doc="PKI mount that signs.")
_TTL = S("ttl", default="", doc="TTL asked of the PKI role (empty: the role's default).")
_KEY_TYPE = S("key_type", default="", choices=["", "ec", "rsa"],
              doc="Type of the new key. Empty (the default): the type and size of the key installed now; with none "
                  "installed, what the PKI role requires (EC P-256 when it takes any).")
_KEY_SIZE = S("key_size", "int", doc="Size of the new key (RSA 2048/3072/4096, EC 256/384); with key_type set, empty "
                                     "means the type's default.")
_DROP = S("drop_names", "list", [], elements="str",
          doc="DNS names and IP addresses of the cert installed now that the new one must NOT carry. By default a "
              "new cert carries every name and address of the one it replaces, plus the configured ones.")


def _names(prefix=""):
    """The name settings of a slot: <prefix>dns_names, <prefix>ip_addresses, <prefix>drop_names."""
    return [S(prefix + "ip_addresses", "list", [], elements="str",
              doc="IP SANs the new cert carries (on top of those of the cert it replaces)."),
            S(prefix + "drop_names", "list", [], elements="str", doc=_DROP.doc)]


def _keys(prefix=""):
    return [S(prefix + "key_type", default="", choices=["", "ec", "rsa"], doc=_KEY_TYPE.doc),
            S(prefix + "key_size", "int", doc=_KEY_SIZE.doc)]


def _app(v):
    return v["app"]


# Where a run keeps its lock, journal and reports when vault_rotate_lock_dir / _report_dir are not
# set: the controller user's own state folder (XDG Base Directory: $XDG_STATE_HOME, else
# ~/.local/state), per environment. It exists or can be made for any user with a home folder, root
# or not, on a workstation as in an execution environment (whose entrypoint gives the job user a
# writable HOME; ansible-core needs one anyway for ~/.ansible/tmp). docs/operating.md "6. The report
# and the run lock" says when to point them elsewhere (shared or persistent storage).
STATE_SHOWN = "${XDG_STATE_HOME:-~/.local/state}/vault-rotate/<vault_rotate_env>"


def env_off(name):
    """True when the controller's environment variable ``name`` turns a default-on behaviour off
    (0, false or no, any case): VAULT_ROTATE_INPROCESS, VAULT_ROTATE_WARM_OPENSSL."""
    return str(os.environ.get(name, "1")).strip().lower() in ("0", "false", "no")


def controller_state_dir(env):
    """``<state>/vault-rotate/<env>`` on the controller, or RotateError when the user has no home."""
    base = os.environ.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):  # unset, or relative (the XDG spec says: ignore it)
        home = os.path.expanduser("~")
        if not os.path.isabs(home):
            raise RotateError("bad_input", "vault_rotate_lock_dir and vault_rotate_report_dir are not set and the "
                                           "controller user has no home folder (HOME unset, no passwd entry) for "
                                           "their default %s" % STATE_SHOWN,
                              hint="set XDG_STATE_HOME or HOME, or set both variables to absolute paths")
        base = os.path.join(home, ".local", "state")
    return os.path.join(base, "vault-rotate", env)


GLOBALS = [
    S("env", doc="Environment of the selected hosts: the name of their inventory group (-l <env>)."),
    S("vault_url", doc="Vault listener URL as the admin identity reaches it (https://host:port)."),
    S("tls_server_name", doc="TLS server name (SNI) the listener serves and clients verify."),
    S("vault_namespace", default="",
      doc="Vault namespace of the PKI mount, the cert auth method and its mappings (Vault Enterprise, OpenBao): "
          "sent as X-Vault-Namespace on every request of the run but those to root-only endpoints (sys/health, "
          "sys/seal-status, sys/unseal). Empty: the root namespace."),
    S("vault_proxy", default="",
      doc="HTTP proxy (http://host:port, CONNECT; not the vault_proxies app) for the admin identity's Vault API "
          "requests. TLS runs end to end "
          "through the tunnel. The gates' TLS probes and the agents' logins reach the listener directly. Empty: "
          "no proxy; HTTPS_PROXY and NO_PROXY are not read."),
    S("pki_mount", doc="PKI mount (intermediate) that signs every certificate."),
    S("cert_auth_mount", default="cert", doc="Mount of the cert auth method."),
    S("admin_cert", "path", doc="Admin client certificate on the vault_admin host."),
    S("admin_key", "path", doc="Admin client key on the vault_admin host."),
    S("admin_issuing_ca", "path", doc="Issuing CA file next to the admin certificate."),
    S("ca_cert", "path", doc="CA bundle the admin identity verifies the listener with."),
    S("admin_mapping", default="admin", doc="Cert-auth mapping of the admin identity."),
    S("admin_common_name", doc="CN of the admin certificate."),
    S("admin_mapping_policies", "list", [], elements="str",
      doc="Policies of the admin mapping; set: the mapping is written in full; empty: left alone."),
    S("apps", "list", [], elements="str", doc="The apps of the environment."),
    S("proxy_apps", "list", [], elements="str", doc="The proxy apps of the environment."),
    S("app", doc="The app of an app or proxy host (host variable)."),
    S("domain", doc="DNS domain of the agents' and frontends' names."),
    S("home_root", "path", "/home", doc="Folder holding the apps' homes."),
    S("server_tls_dir", "path", doc="Folder of the listener's key, cert, fullchain and client CA file."),
    S("server_owner", default="", doc="Owner of the listener files (kept when empty)."),
    S("server_group", default="", doc="Group of the listener files (kept when empty)."),
    S("app_owner", default="", doc="Owner of an app's files (kept when empty)."),
    S("app_group", default="", doc="Group of an app's files (kept when empty)."),
    S("server_unit", default="container-vaultprod", doc="Unit of the Vault server."),
    S("proxy_unit", default="container-proxyprod", doc="Unit of the proxy."),
    S("proxy_agent_unit", default="vault-agent-proxyprod-ca", doc="Unit of the proxy's agent."),
    S("server_ip_addresses", "list", ["127.0.0.1"], elements="str", doc="IP SANs of the listener cert."),
    S("proxy_endpoint", "dict", {}, doc="Where the proxy listens ({host, port}); empty: not probed."),
    S("frontend_endpoints", "dict", {}, doc="app -> {host, port} of its nginx frontend; an app without one gets "
                                            "the file checks only."),
    S("force", "bool", False, doc="Rotate every certificate, due or not."),
    S("renew_fraction", "float", 0.6667, doc="Share of the lifetime after which a certificate is due."),
    S("restart_vault", default="auto", choices=["auto", "always", "never"],
      doc="Restart Vault when a file it reads only at start changed (auto), always, or never."),
    S("unseal_keys", "list", [], elements="str", no_log=True, doc="Unseal keys for a Vault that comes back sealed."),
    S("report_dir", "path", lambda v: os.path.join(controller_state_dir(v.glob("env")), "reports"),
      shown=STATE_SHOWN + "/reports", controller=True,
      doc="Folder of the reports on the controller (absolute, or starting with ~/). The default is the controller user's "
          "state folder; set it to keep the reports on persistent storage."),
    S("lock_dir", "path", lambda v: controller_state_dir(v.glob("env")), shown=STATE_SHOWN, controller=True,
      doc="Folder of the run lock (and the run's journal) on the controller (absolute, or starting with ~/). The lock "
          "serialises the runs of one environment that share this folder: point every operator of a controller at "
          "one folder they can all write."),
    S("service_backend", default="systemd_user", choices=["systemd_user", "command"],
      doc="How units are driven on a host."),
    S("service_user", default="", doc="Owner of the systemd user units of a host."),
    S("service_commands", "dict", {}, doc="The command backend: unit -> {status, reload, restart, ...: argv}."),
    S("phases", "list", list(ROTATING_PHASES), elements="str", doc="The rotating phases this run prepares."),
    S("inprocess", "bool", True, doc="Run the engine inside the controller's worker for hosts whose connection is "
                                     "local and without become (no module start-up)."),
]
# Facts and inventory data of the collection itself, never reported as unknown.
GLOBAL_EXTRA = ("run", "due", "lab", "lab_dir", "report", "restart")

ROLES = {
    "preflight": [
        S("env_groups", "list", ["prod", "lab"], elements="str", doc="Extra group names that count as environments."),
        S("admin_policies", "list", [], elements="str", doc="Policies the admin identity's token must carry."),
        S("lock_break_stale", "bool", True, doc="Take over a lock whose holder ran on this controller and is gone."),
        S("vault_wait_timeout", "float", 0, doc="Seconds to wait for sys/health 200."),
        S("check_units", "bool", True, doc="Check that the units of every host run."),
        S("phases", "list", glob="vault_rotate_phases", elements="str",
          doc="The rotating phases this run prepares (keys, CSRs, signatures)."),
        S("opened_by", default="preflight", doc="Who opens the run: preflight, or a phase role used on its own."),
    ],
    "admin_cert": [
        _MOUNT,
        S("pki_role", default="admin-client", doc="PKI role that signs the admin cert."),
        S("common_name", glob="vault_rotate_admin_common_name", doc="CN of the admin cert."),
        S("ttl", default="720h", doc="TTL of the new admin cert."),
        _KEY_TYPE, _KEY_SIZE,
        S("dns_names", "list", [], elements="str", doc="DNS SANs of the admin cert (besides those it has now)."),
        *_names(),
        S("cert_path", "path", glob="vault_rotate_admin_cert", doc="Admin certificate file."),
        S("key_path", "path", glob="vault_rotate_admin_key", doc="Admin private key file."),
        S("chain_path", "path", glob="vault_rotate_admin_issuing_ca", doc="Issuing CA file next to the admin cert."),
        S("owner", default="", doc="Owner of the files (kept when empty)."),
        S("group", default="", doc="Group of the files (kept when empty)."),
        S("mapping", glob="vault_rotate_admin_mapping", doc="Cert-auth mapping the gate logs in through."),
        S("expected_policies", "list", [], elements="str", doc="Policies the login must yield (empty: any)."),
        S("mapping_policies", "list", glob="vault_rotate_admin_mapping_policies", elements="str",
          doc="Policies of the admin mapping; set: written in full (every valid issuer + root); empty: left alone."),
        S("mapping_display_name", default=lambda v: v["mapping"], shown="admin_cert_mapping",
          doc="Display name of the admin mapping's tokens."),
        S("mapping_token_ttl", default="1h", doc="Token TTL of the admin mapping."),
        S("mapping_token_max_ttl", default="24h", doc="Token max TTL of the admin mapping."),
        _FORCE, _RENEW,
        S("wait_timeout", "float", 30, doc="Seconds the seal-status gate waits for readiness."),
    ],
    "server_tls": [
        _MOUNT,
        S("pki_role", default="vault-server", doc="PKI role of the listener cert."),
        S("common_name", glob="vault_rotate_tls_server_name", doc="CN of the listener cert."),
        S("dns_names", "list", lambda v: [v["common_name"]], elements="str", shown="[server_tls_common_name]",
          doc="DNS SANs of the listener cert."),
        S("ip_addresses", "list", glob="vault_rotate_server_ip_addresses", elements="str",
          doc="IP SANs of the listener cert (clients that connect by address), on top of those it has now."),
        _DROP, _TTL, _KEY_TYPE, _KEY_SIZE,
        S("dir", "path", glob="vault_rotate_server_tls_dir", doc="Folder of the listener's files."),
        S("key_path", "path", lambda v: v["dir"] + "/server.key", shown="<dir>/server.key", doc="Listener key."),
        S("cert_path", "path", lambda v: v["dir"] + "/server.crt", shown="<dir>/server.crt", doc="Listener cert."),
        S("fullchain_path", "path", lambda v: v["dir"] + "/fullchain.crt", shown="<dir>/fullchain.crt",
          doc="Listener cert + intermediate (what the listener serves)."),
        S("client_ca_path", "path", lambda v: v["dir"] + "/ca_chain.pem", shown="<dir>/ca_chain.pem",
          doc="The listener's client CA file (tls_client_ca_file), read at start only."),
        S("owner", glob="vault_rotate_server_owner", doc="Owner of the files (kept when empty)."),
        S("group", glob="vault_rotate_server_group", doc="Group of the files (kept when empty)."),
        S("unit", glob="vault_rotate_server_unit", doc="Unit of the Vault server (SIGHUP reloads the listener cert)."),
        S("probe_host", default=lambda v: urlsplit(v.glob("vault_url")).hostname, shown="host of vault_rotate_vault_url",
          doc="Host the gate probes."),
        S("probe_port", "int", default=lambda v: urlsplit(v.glob("vault_url")).port or 8200,
          shown="port of vault_rotate_vault_url", doc="Port the gate probes."),
        _FORCE, _RENEW,
        S("wait_timeout", "float", 30, doc="Seconds the gates wait for the new serial and readiness."),
    ],
    "agent_login": [
        S("app", glob="vault_rotate_app", doc="The app whose agent is rotated (host variable)."),
        _MOUNT,
        S("pki_role", default=lambda v: "agent-mtls-" + _app(v), shown="agent-mtls-<app>",
          doc="PKI role of the agent login cert."),
        S("common_name", default=lambda v: "agent-%s.%s" % (_app(v), v.glob("domain")),
          shown="agent-<app>.<vault_rotate_domain>", doc="CN of the agent login cert."),
        S("dns_names", "list", lambda v: [v["common_name"]], elements="str", shown="[agent_login_common_name]",
          doc="DNS SANs of the agent login cert (besides those it has now)."),
        *_names(),
        _TTL, _KEY_TYPE, _KEY_SIZE,
        S("home", "path", lambda v: "%s/%s" % (v.glob("home_root"), _app(v)), shown="<vault_rotate_home_root>/<app>",
          doc="Home of the app."),
        S("key_path", "path", lambda v: v["home"] + "/vault/mtls/agent.key", shown="<home>/vault/mtls/agent.key",
          doc="Agent login key."),
        S("cert_path", "path", lambda v: v["home"] + "/vault/mtls/agent.crt", shown="<home>/vault/mtls/agent.crt",
          doc="Agent login cert."),
        S("ca_path", "path", lambda v: v["home"] + "/vault/ca/ca.pem", shown="<home>/vault/ca/ca.pem",
          doc="CA file the agent (and the gate) verify the listener with."),
        S("sink_path", "path", lambda v: v["home"] + "/vault/token", shown="<home>/vault/token",
          doc="The agent's token sink: the gates look the token up (lookup-self over the listener with the agent's "
              "own cert) to prove the agent logged in again with its NEW cert."),
        S("whoami_path", "path", default="",
          doc="Instead of the sink: a file the agent renders from auth/token/lookup-self (empty: the sink)."),
        S("owner", glob="vault_rotate_app_owner", doc="Owner of the files (kept when empty)."),
        S("group", glob="vault_rotate_app_group", doc="Group of the files (kept when empty)."),
        S("unit", default=lambda v: "vault-agent-" + _app(v), shown="vault-agent-<app>", doc="Unit of the agent."),
        S("mapping", default=lambda v: "agent-" + _app(v), shown="agent-<app>", doc="Cert-auth mapping of the agent."),
        S("mapping_display_name", default=lambda v: v["mapping"], shown="agent_login_mapping",
          doc="Display name of the mapping's tokens."),
        S("mapping_policies", "list", lambda v: ["pki-issue-" + _app(v), "marker-cert-auth"], elements="str",
          shown="[pki-issue-<app>, marker-cert-auth]", doc="Policies of the mapping (the login must yield exactly these)."),
        S("mapping_token_ttl", default="1h", doc="Token TTL of the mapping."),
        S("mapping_token_max_ttl", default="24h", doc="Token max TTL of the mapping."),
        _FORCE, _RENEW,
        S("wait_timeout", "float", 60, doc="Seconds the gates wait for the agent's new login."),
    ],
    "app_leaf": [
        S("app", glob="vault_rotate_app", doc="The app whose frontend cert is rotated (host variable)."),
        _MOUNT,
        S("pki_role", default=lambda v: "nginx-" + _app(v), shown="nginx-<app>", doc="PKI role of the frontend cert."),
        S("common_name", default=lambda v: "%s.%s" % (_app(v), v.glob("domain")), shown="<app>.<vault_rotate_domain>",
          doc="CN of the frontend cert."),
        S("dns_names", "list", lambda v: [v["common_name"]], elements="str", shown="[app_leaf_common_name]",
          doc="DNS SANs of the frontend cert."),
        S("ip_addresses", "list", [], elements="str",
          doc="IP SANs of the frontend cert (clients that connect by address), on top of those it has now."),
        _DROP, _TTL, _KEY_TYPE, _KEY_SIZE,
        S("home", "path", lambda v: "%s/%s" % (v.glob("home_root"), _app(v)), shown="<vault_rotate_home_root>/<app>",
          doc="Home of the app."),
        S("key_path", "path", lambda v: v["home"] + "/nginx/tls/frontend.key", shown="<home>/nginx/tls/frontend.key",
          doc="Frontend key."),
        S("cert_path", "path", lambda v: v["home"] + "/nginx/tls/frontend.crt", shown="<home>/nginx/tls/frontend.crt",
          doc="Frontend cert."),
        S("fullchain_path", "path", lambda v: v["home"] + "/nginx/tls/frontend.fullchain.pem",
          shown="<home>/nginx/tls/frontend.fullchain.pem", doc="Frontend cert + intermediate (what nginx serves)."),
        S("owner", glob="vault_rotate_app_owner", doc="Owner of the files (kept when empty)."),
        S("group", glob="vault_rotate_app_group", doc="Group of the files (kept when empty)."),
        S("unit", default=lambda v: "nginx-" + _app(v), shown="nginx-<app>", doc="Unit of the frontend (reloaded)."),
        S("endpoint", "dict", lambda v: v.glob_item("frontend_endpoints", _app(v)) or {},
          shown="vault_rotate_frontend_endpoints[app]", doc="Where the frontend serves ({host, port}); empty: file checks only."),
        S("min_days_left", "float", 1, doc="A new cert must be valid at least this many days."),
        _FORCE, _RENEW,
        S("wait_timeout", "float", 30, doc="Seconds the probe waits for the new serial."),
    ],
    "proxy_trust": [
        S("app", glob="vault_rotate_app", doc="The proxy app (host variable)."),
        _MOUNT,
        S("home", "path", lambda v: "%s/%s" % (v.glob("home_root"), _app(v)), shown="<vault_rotate_home_root>/<app>",
          doc="Home of the proxy app."),
        S("owner", glob="vault_rotate_app_owner", doc="Owner of the files (kept when empty)."),
        S("group", glob="vault_rotate_app_group", doc="Group of the files (kept when empty)."),
        S("ca_chain_path", "path", lambda v: v["home"] + "/nginx/ca/current-ca-chain.pem",
          shown="<home>/nginx/ca/current-ca-chain.pem",
          doc="Upstream trust of the proxy (proxy_ssl_trusted_certificate): every valid issuer + root."),
        S("agent_unit", glob="vault_rotate_proxy_agent_unit", doc="Unit of the proxy's agent."),
        S("agent_pki_role", default=lambda v: "agent-mtls-" + _app(v), shown="agent-mtls-<app>",
          doc="PKI role of the proxy agent cert."),
        S("agent_common_name", default=lambda v: "agent-%s.%s" % (_app(v), v.glob("domain")),
          shown="agent-<app>.<vault_rotate_domain>", doc="CN of the proxy agent cert."),
        S("agent_key_path", "path", lambda v: v["home"] + "/vault/mtls/agent.key", shown="<home>/vault/mtls/agent.key",
          doc="Proxy agent key (also the proxy's upstream client key)."),
        S("agent_cert_path", "path", lambda v: v["home"] + "/vault/mtls/agent.crt", shown="<home>/vault/mtls/agent.crt",
          doc="Proxy agent cert (also the proxy's upstream client cert)."),
        S("agent_ca_path", "path", lambda v: v["home"] + "/vault/ca/ca.pem", shown="<home>/vault/ca/ca.pem",
          doc="CA file of the proxy's agent (the root mirror)."),
        S("agent_sink_path", "path", lambda v: v["home"] + "/vault/token", shown="<home>/vault/token",
          doc="The proxy agent's token sink (looked up to prove its login with its NEW cert)."),
        S("agent_whoami_path", "path", default="",
          doc="Instead of the sink: a file the proxy's agent renders from lookup-self (empty: the sink)."),
        S("agent_mapping", default=lambda v: "agent-" + _app(v), shown="agent-<app>", doc="Mapping of the proxy's agent."),
        S("agent_policies", "list", lambda v: ["marker-cert-auth", "pki-issue-" + _app(v), "pki-ca-read-" + _app(v)],
          elements="str", shown="[marker-cert-auth, pki-issue-<app>, pki-ca-read-<app>]",
          doc="Policies of the proxy agent's mapping."),
        S("agent_ttl", default="", doc="TTL of the proxy agent cert."),
        S("agent_dns_names", "list", lambda v: [v["agent_common_name"]], elements="str",
          shown="[proxy_trust_agent_common_name]", doc="DNS SANs of the proxy agent cert (besides those it has now)."),
        *_names("agent_"), *_keys("agent_"),
        S("frontend_pki_role", default=lambda v: "nginx-" + _app(v), shown="nginx-<app>",
          doc="PKI role of the proxy's frontend cert."),
        S("frontend_common_name", glob="vault_rotate_tls_server_name", doc="CN of the proxy's frontend cert."),
        S("frontend_dns_names", "list", lambda v: [v["frontend_common_name"]], elements="str",
          shown="[proxy_trust_frontend_common_name]", doc="DNS SANs of the proxy's frontend cert (besides those it "
                                                          "has now)."),
        *_names("frontend_"), *_keys("frontend_"),
        S("frontend_key_path", "path", lambda v: v["home"] + "/nginx/tls/proxy.key", shown="<home>/nginx/tls/proxy.key",
          doc="Proxy frontend key."),
        S("frontend_cert_path", "path", lambda v: v["home"] + "/nginx/tls/proxy.crt", shown="<home>/nginx/tls/proxy.crt",
          doc="Proxy frontend cert."),
        S("frontend_fullchain_path", "path", lambda v: v["home"] + "/nginx/tls/proxy.fullchain.pem",
          shown="<home>/nginx/tls/proxy.fullchain.pem", doc="Proxy frontend cert + intermediate."),
        S("frontend_ttl", default="", doc="TTL of the proxy frontend cert."),
        S("unit", glob="vault_rotate_proxy_unit", doc="Unit of the proxy (reloaded)."),
        S("endpoint", "dict", glob="vault_rotate_proxy_endpoint", doc="Where the proxy listens ({host, port})."),
        S("upstream_host", default=lambda v: urlsplit(v.glob("vault_url")).hostname, shown="host of vault_rotate_vault_url",
          doc="The listener as the proxy reaches it."),
        S("upstream_port", "int", lambda v: urlsplit(v.glob("vault_url")).port or 8200,
          shown="port of vault_rotate_vault_url", doc="Port of the listener as the proxy reaches it."),
        S("health_path", default="/v1/sys/seal-status", doc="Request sent through the proxy."),
        _FORCE, _RENEW,
        S("wait_timeout", "float", 30, doc="Seconds the gates wait."),
    ],
    "restart": [
        S("vault_mode", glob="vault_rotate_restart_vault", choices=["auto", "always", "never"],
          doc="auto: restart when a phase said so; always; never (warn when required)."),
        S("proxy", "bool", True, doc="Restart the proxy stack too whenever Vault restarts."),
        S("vault_unit", glob="vault_rotate_server_unit", doc="Unit of the Vault server."),
        S("proxy_unit", glob="vault_rotate_proxy_unit", doc="Unit of the proxy."),
        S("unseal_keys", "list", glob="vault_rotate_unseal_keys", elements="str", no_log=True,
          doc="Unseal keys (AWX credential / ansible-vault / -e)."),
        S("wait_timeout", "float", 90, doc="Bound in seconds for readiness after the restart."),
        S("wait_interval", "float", 0.05, doc="Seconds between readiness attempts."),
        S("sealed_grace", "float", 5, doc="Without keys: seconds to wait for an auto-unseal."),
    ],
    "healthcheck": [
        S("proxy_endpoint", "dict", glob="vault_rotate_proxy_endpoint",
          doc="The proxy in front of the listener ({host, port}); empty: no proxy check."),
        S("proxy_client_cert", "bool", True, doc="Present the admin cert to the proxy too."),
        S("http_path", default="/v1/sys/seal-status", doc="Request sent after each handshake."),
        S("wait_timeout", "float", 10, doc="Bound per probe in seconds."),
        S("interval", "float", 0.5, doc="Seconds between attempts."),
    ],
    "report": [
        S("dir", "path", glob="vault_rotate_report_dir", controller=True,
          doc="Folder of the reports on the controller (absolute, or starting with ~/)."),
        S("set_stats", "bool", True, doc="Publish a summary with set_stats (AWX/AAP artifacts)."),
    ],
}

# What to check next when a phase's gate fails (the phase's own part of "Next:").
NEXT = {
    "admin_cert": "the admin mapping '{mapping}' (its CA bundle and allowed CN {common_name}), the PKI role "
                  "{pki_mount}/roles/{pki_role}, and that the restored admin cert still logs in",
    "server_tls": "the server log of {unit} (a key that does not match keeps the old cert serving), {fullchain_path} "
                  "(leaf + intermediate), {client_ca_path} (every valid issuer + root), the SANs of PKI role "
                  "{pki_mount}/roles/{pki_role}, and {ca_cert}",
    "agent_login": "the mapping auth/{cert_auth_mount}/certs/{mapping} (CA bundle, allowed CN {common_name}, policies), "
                   "the PKI role {pki_mount}/roles/{pki_role}, and the log of {unit}",
    "app_leaf": "the files under {tls_dir}, the log of {unit} (config test, key/cert pair), and the PKI role "
                "{pki_mount}/roles/{pki_role}",
    "proxy_trust": "{ca_chain_path} against the chain the listener serves, the log of {unit} (upstream verify "
                   "errors), and the mapping {agent_mapping}",
}


def _coerce(setting, name, value):
    if value is None:
        return None
    try:
        if setting.type == "bool":
            return check_type_bool(value)
        if setting.type == "float":
            return None if value == "" else check_type_float(value)
        if setting.type == "int":
            return None if value == "" else check_type_int(value)
        if setting.type == "list":
            value = check_type_list(value)
            return [str(x) for x in value] if setting.elements == "str" else value
        if setting.type == "dict":
            return check_type_dict(value) if value != "" else {}
        value = value if isinstance(value, str) else str(value)
        # A controller path is used by this process: ~ means the controller user's home (left as it
        # is when there is none; the run's variable check then refuses it as not absolute).
        return os.path.expanduser(value) if setting.controller else value
    except (TypeError, ValueError) as exc:
        raise RotateError("bad_input", "%s: %s" % (name, exc), hint="fix the variable %s" % name)


class Values(object):
    """The resolved settings of one role for one host (``v[key]``), with the globals at hand."""

    def __init__(self, role, get, get_item=None):
        self.role = role
        self._get = get
        self._get_item = get_item
        self._values = {}
        self._globals = {}

    def glob(self, key):
        if key not in self._globals:
            setting = _GLOBAL_BY_KEY[key]
            name = "vault_rotate_" + key
            value = self._get(name)
            if value is MISSING or value is None:
                value = setting.default(self) if callable(setting.default) else setting.default
            if value is None:
                raise RotateError("bad_input", "%s is not set" % name,
                                  hint="set it in the environment's group_vars (see inventories/prod)")
            self._globals[key] = _coerce(setting, name, value)
        return self._globals[key]

    def glob_item(self, key, item):
        """``glob(key).get(item)`` of a mapping global. With a ``get_item`` only that entry is
        templated: a mapping with an entry per app, templated whole on every app host, costs
        O(apps^2) over a run. A missing entry, or a value that is not a mapping as written,
        reads the whole value (its default, or the error that names its type)."""
        if self._get_item is not None and key not in self._globals:
            value = self._get_item("vault_rotate_" + key, item)
            if value is not MISSING:
                return value
        return (self.glob(key) or {}).get(item)

    def __getitem__(self, key):
        return self._values[key]

    def get(self, key, default=None):
        return self._values.get(key, default)

    def resolve(self, settings):
        for setting in settings:
            name = "%s_%s" % (self.role, setting.key)
            value = self._get(name)
            if value is MISSING or value is None:
                if setting.glob:
                    value = self.glob(setting.glob[len("vault_rotate_"):])
                else:
                    value = setting.default(self) if callable(setting.default) else setting.default
            value = _coerce(setting, name, value)
            if setting.choices and value not in setting.choices:
                raise RotateError("bad_input", "%s must be one of %s, got %r" % (name, ", ".join(
                    repr(c) for c in setting.choices), value), hint="fix the variable %s" % name)
            self._values[setting.key] = value
        return self

    def as_dict(self):
        return dict(self._values)


_GLOBAL_BY_KEY = dict((s.key, s) for s in GLOBALS)


def settings(role, get, get_item=None):
    """The resolved settings of ``role`` (a Values); RotateError('bad_input') names a bad variable.
    ``get_item(name, key)``: one entry of a mapping variable, templated alone (see service())."""
    return Values(role, get, get_item).resolve(ROLES[role])


# Role prefixes distinctive enough that an unknown variable with one is a misspelling of ours
# (refused); restart_, report_ and healthcheck_ are common words: those only warn.
DISTINCT_PREFIXES = tuple("%s_" % r for r in ("preflight", "admin_cert", "server_tls", "agent_login", "app_leaf",
                                              "proxy_trust"))


def unknown_variables(names):
    """Variables that look like ours but are not (misspelt): [(name, suggestion or None)]."""
    known = set("vault_rotate_" + s.key for s in GLOBALS) | set("vault_rotate_" + k for k in GLOBAL_EXTRA)
    for role, table in ROLES.items():
        known |= set("%s_%s" % (role, s.key) for s in table)
    prefixes = tuple(r + "_" for r in ROLES) + ("vault_rotate_",)
    out = []
    for name in sorted(names):
        if name.startswith(prefixes) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.8)
            out.append((name, close[0] if close else None))
    return out


def next_hint(phase, values, globals_):
    template = NEXT.get(phase)
    if not template:
        return None
    data = dict(globals_)
    data.update(values)
    if phase == "app_leaf":
        data["tls_dir"] = values["fullchain_path"].rsplit("/", 1)[0]
    try:
        return template.format(**data)
    except (KeyError, IndexError):
        return None


# ---------------------------------------------------------------- the work of a phase on a host

def _notify(unit, action):
    return {"unit": unit, "action": action}


def _slot(name, phase, label, v, prefix="", common_name=None, pki_role=None, ttl=None, cert_path=None,
          key_path=None, fullchain_path=None, chain_path=None, notify=()):
    """A slot spec (plugins/module_utils/_engine.py SLOT_OPTIONS) from resolved settings; the names
    and the key come from the role's <prefix>dns_names, ip_addresses, drop_names, key_type, key_size."""
    return {
        "name": name, "phase": phase, "label": label,
        "cert_path": cert_path or None, "key_path": key_path, "fullchain_path": fullchain_path or None,
        "chain_path": chain_path or None, "common_name": common_name,
        "dns_names": list(v.get(prefix + "dns_names") or []), "ip_addresses": list(v.get(prefix + "ip_addresses") or []),
        "drop_names": list(v.get(prefix + "drop_names") or []),
        "pki_mount": v["pki_mount"], "pki_role": pki_role, "ttl": ttl or None,
        "key_type": v.get(prefix + "key_type") or "", "key_size": v.get(prefix + "key_size"),
        "owner": v.get("owner") or None, "group": v.get("group") or None,
        "renew_fraction": v["renew_fraction"], "force": bool(v["force"]),
        "notify": [_notify(u, a) for u, a in notify],
    }


def _bundle(name, phase, path, v, notify=(), restart_reason=None):
    return {"name": name, "phase": phase, "path": path, "owner": v.get("owner") or None,
            "group": v.get("group") or None, "mode": "0644", "notify": [_notify(u, a) for u, a in notify],
            "restart_reason": restart_reason}


def _mapping(name, common_name, policies, display_name, ttl, max_ttl, mount):
    return {"name": name, "mount": mount, "allowed_common_names": [common_name], "token_policies": list(policies),
            "display_name": display_name, "token_ttl": ttl, "token_max_ttl": max_ttl}


def _agent_gates(prefix, v, unit, mapping, policies, ca_path, cert_path, key_path, whoami, sink, g):
    login = {"kind": "login", "name": "%s login" % prefix, "url": g("vault_url"),
             "tls_server_name": g("tls_server_name"), "namespace": g("vault_namespace") or None,
             "ca_cert": ca_path, "client_cert": cert_path,
             "client_key": key_path, "mount": g("cert_auth_mount"), "mapping": mapping,
             "expected_policies": list(policies), "policies_match": "exact", "wait_timeout": 5}
    token = {"kind": "token", "name": "%s new token" % prefix, "unit": unit, "whoami_path": whoami or None,
             "sink_path": None if whoami else sink, "url": g("vault_url"), "tls_server_name": g("tls_server_name"),
             "namespace": g("vault_namespace") or None,
             "ca_cert": ca_path, "client_cert": cert_path, "client_key": key_path,
             "wait_timeout": v["wait_timeout"], "interval": 0.2}
    return [login, unit_gate(unit), token]


def unit_gate(unit, wait_timeout=2):
    """The gate "<unit> running" (after a reload or restart it may take ``wait_timeout`` seconds)."""
    gate = {"kind": "unit", "name": "%s running" % unit, "unit": unit}
    if wait_timeout:
        gate["wait_timeout"] = wait_timeout
    return gate


def host_work(phase, get, get_item=None):
    """What ``phase`` does on the host whose variables ``get`` reads (``get_item``: see settings()).

    Returns {slots, bundles, units, gates, mappings, next}: the engine's specs.
    """
    v = settings(phase, get, get_item)
    g = v.glob
    work = {"slots": [], "bundles": [], "units": [], "gates": [], "mappings": [], "values": v.as_dict()}
    if phase == "admin_cert":
        work["slots"].append(_slot(
            "admin_cert", phase, "admin client cert %s" % v["common_name"], v, common_name=v["common_name"],
            pki_role=v["pki_role"], ttl=v["ttl"], cert_path=v["cert_path"], key_path=v["key_path"],
            chain_path=v["chain_path"]))
        if v["mapping_policies"]:
            work["mappings"].append(_mapping(v["mapping"], v["common_name"], v["mapping_policies"],
                                             v["mapping_display_name"], v["mapping_token_ttl"],
                                             v["mapping_token_max_ttl"], g("cert_auth_mount")))
        work["gates"] = [
            {"kind": "health", "name": "seal-status with the admin cert", "wait_timeout": v["wait_timeout"]},
            {"kind": "admin_login", "name": "admin login through %s" % v["mapping"], "mapping": v["mapping"],
             "expected_policies": v["expected_policies"] or None, "policies_match": "exact"},
        ]
    elif phase == "server_tls":
        work["slots"].append(_slot(
            "server_tls", phase, "Vault listener cert %s" % v["common_name"], v, common_name=v["common_name"],
            pki_role=v["pki_role"], ttl=v["ttl"],
            cert_path=v["cert_path"], key_path=v["key_path"], fullchain_path=v["fullchain_path"],
            notify=[(v["unit"], "reload")]))
        work["bundles"].append(_bundle(
            "server_tls/client_ca", phase, v["client_ca_path"], v,
            restart_reason="the listener client CA file %s changed" % v["client_ca_path"]))
        work["units"] = [v["unit"]]
        # The client_ca gate gets the admin cert (public) from the run: see the action plugin.
        # The served serial is the phase's gate step (on the admin host); here, the server still runs
        # after its SIGHUP, so every unit of the phase is proven (see app_leaf).
        work["gates"] = [unit_gate(v["unit"]),
                         {"kind": "client_ca", "name": "client CA file verifies the admin cert",
                          "path": v["client_ca_path"], "cert_label": "the admin client cert %s" % g("admin_cert")}]
    elif phase == "agent_login":
        app = v["app"]
        unit = v["unit"]
        work["slots"].append(_slot(
            "agent_login/%s" % app, phase, "agent login cert for %s" % app, v, common_name=v["common_name"],
            pki_role=v["pki_role"], ttl=v["ttl"], cert_path=v["cert_path"],
            key_path=v["key_path"], notify=[(unit, "restart")]))
        work["bundles"].append(_bundle("agent_login/%s/ca" % app, phase, v["ca_path"], v, notify=[(unit, "restart")]))
        work["mappings"].append(_mapping(v["mapping"], v["common_name"], v["mapping_policies"],
                                         v["mapping_display_name"], v["mapping_token_ttl"],
                                         v["mapping_token_max_ttl"], g("cert_auth_mount")))
        work["units"] = [unit]
        work["gates"] = _agent_gates("agent %s" % app, v, unit, v["mapping"], v["mapping_policies"], v["ca_path"],
                                     v["cert_path"], v["key_path"], v["whoami_path"], v["sink_path"], g)
    elif phase == "app_leaf":
        app = v["app"]
        slot = _slot("app_leaf/%s" % app, phase, "frontend cert of %s (%s)" % (app, v["common_name"]), v,
                     common_name=v["common_name"], pki_role=v["pki_role"], ttl=v["ttl"], cert_path=v["cert_path"],
                     key_path=v["key_path"],
                     fullchain_path=v["fullchain_path"], notify=[(v["unit"], "reload")])
        work["slots"].append(slot)
        work["units"] = [v["unit"]]
        # nginx running after its reload: with the other gates, every unit of the phase is proven
        # (the healthcheck then need not visit the host, see the action's proven_hosts()).
        work["gates"] = [{"kind": "files", "name": "files of %s" % app, "slot": slot["name"],
                          "min_days_left": v["min_days_left"]},
                         unit_gate(v["unit"])]
        endpoint = v["endpoint"] or {}
        if str(endpoint.get("port") or ""):
            work["gates"].append({"kind": "probe", "name": "frontend of %s serves its cert" % app,
                                  "host": endpoint.get("host") or "127.0.0.1", "port": int(endpoint["port"]),
                                  "server_name": v["common_name"], "slot": slot["name"], "ca_pem": "@issuers",
                                  "all_names": True, "wait_timeout": v["wait_timeout"]})
    elif phase == "proxy_trust":
        app = v["app"]
        unit, agent_unit = v["unit"], v["agent_unit"]
        agent = _slot("proxy_trust/agent-%s" % app, phase, "agent login cert for %s" % app, v, prefix="agent_",
                      common_name=v["agent_common_name"],
                      pki_role=v["agent_pki_role"], ttl=v["agent_ttl"], cert_path=v["agent_cert_path"],
                      key_path=v["agent_key_path"], notify=[(agent_unit, "restart"), (unit, "reload")])
        front = _slot("proxy_trust/frontend-%s" % app, phase, "frontend cert of %s (%s)" % (
            app, v["frontend_common_name"]), v, prefix="frontend_", common_name=v["frontend_common_name"],
            pki_role=v["frontend_pki_role"], ttl=v["frontend_ttl"],
            cert_path=v["frontend_cert_path"], key_path=v["frontend_key_path"],
            fullchain_path=v["frontend_fullchain_path"], notify=[(unit, "reload")])
        work["slots"] += [agent, front]
        work["bundles"] += [
            _bundle("proxy_trust/%s/ca_chain" % app, phase, v["ca_chain_path"], v, notify=[(unit, "reload")]),
            _bundle("proxy_trust/%s/agent_ca" % app, phase, v["agent_ca_path"], v, notify=[(agent_unit, "restart")]),
        ]
        work["mappings"].append(_mapping(v["agent_mapping"], v["agent_common_name"], v["agent_policies"],
                                         v["agent_mapping"], "1h", "24h", g("cert_auth_mount")))
        work["units"] = [unit, agent_unit]
        endpoint = v["endpoint"] or {}
        work["gates"] = _agent_gates("proxy agent %s" % app, v, agent_unit, v["agent_mapping"], v["agent_policies"],
                                     v["agent_ca_path"], v["agent_cert_path"], v["agent_key_path"],
                                     v["agent_whoami_path"], v["agent_sink_path"], g)
        work["gates"].append(unit_gate(unit))
        work["gates"].append({"kind": "files", "name": "files of the proxy frontend", "slot": front["name"]})
        if str(endpoint.get("port") or ""):
            work["gates"].append({"kind": "probe", "name": "proxy serves its frontend cert",
                                  "host": endpoint.get("host") or "127.0.0.1", "port": int(endpoint["port"]),
                                  "server_name": v["frontend_common_name"], "slot": front["name"], "ca_pem": "@issuers",
                                  "all_names": True, "wait_timeout": v["wait_timeout"]})
        work["gates"].append({"kind": "probe", "name": "upstream chain + client cert of the proxy verify the listener",
                              "host": v["upstream_host"], "port": v["upstream_port"],
                              "server_name": g("tls_server_name"), "ca_cert": v["ca_chain_path"],
                              "client_cert": v["agent_cert_path"], "client_key": v["agent_key_path"],
                              "wait_timeout": v["wait_timeout"]})
        if str(endpoint.get("port") or ""):
            work["gates"].append({"kind": "probe", "name": "GET %s through the proxy" % v["health_path"],
                                  "host": endpoint.get("host") or "127.0.0.1", "port": int(endpoint["port"]),
                                  "server_name": g("tls_server_name"), "ca_pem": "@issuers",
                                  "http_path": v["health_path"], "expect_status": 200,
                                  "wait_timeout": v["wait_timeout"]})
    else:
        raise RotateError("bad_input", "phase %s has no host work" % phase)
    work["next"] = next_hint(phase, v.as_dict(), {"cert_auth_mount": g("cert_auth_mount"), "ca_cert": g("ca_cert")})
    return work


def connection(get):
    """The admin identity's Vault connection (paths on the vault_admin host)."""
    v = Values("vault_rotate", get)
    g = v.glob
    return {"url": g("vault_url"), "ca_cert": g("ca_cert"), "client_cert": g("admin_cert"),
            "client_key": g("admin_key"), "tls_server_name": g("tls_server_name"),
            "cert_auth_mount": g("cert_auth_mount"), "cert_role": g("admin_mapping"), "timeout": 10,
            "namespace": g("vault_namespace") or None, "proxy": g("vault_proxy") or None}


def service(get, units=None, get_item=None):
    """The service settings of a step. With ``units``, the command table keeps those units only:
    it covers every unit of the environment (one per app and agent), a step needs the few it
    names, and a table of every unit per host and step costs O(apps^2) over a run.
    ``get_item(name, key)`` reads one entry of a mapping variable (MISSING when there is
    none), so that the other entries are not even templated."""
    v = Values("vault_rotate", get)
    name = "vault_rotate_service_commands"
    if units is None or get_item is None:
        commands = v.glob("service_commands") or {}
        if units is not None:
            commands = dict((u, c) for u, c in commands.items() if u in units)
    else:
        commands = {}
        for unit in sorted(set(units)):
            entry = get_item(name, unit)
            if entry is not MISSING:
                commands[unit] = entry
        commands = _coerce(_GLOBAL_BY_KEY["service_commands"], name, commands)
    return {"backend": v.glob("service_backend"), "user": v.glob("service_user") or None, "commands": commands}


def admin_host(groups, env, play_hosts=None):
    """The one vault_admin host of the environment (among the play's hosts when given)."""
    members = set(groups.get(env) or [])
    admins = [h for h in groups.get(ADMIN_GROUP) or [] if h in members]
    if play_hosts is not None:
        selected = [h for h in admins if h in play_hosts]
        admins = selected or admins
    if len(admins) != 1:
        raise RotateError("bad_input", "exactly one host of group %s in %s is needed, found %d (%s)" % (
            ADMIN_GROUP, env, len(admins), ", ".join(admins) or "none"),
            hint="put the host that holds the admin identity (the controller by default) in %s" % ADMIN_GROUP)
    return admins[0]


def phases_of_host(host, groups):
    """The rotating phases whose files live on ``host`` (by its functional groups)."""
    return [p for p in ROTATING_PHASES if host in (groups.get(PHASE_GROUPS[p]) or [])]
