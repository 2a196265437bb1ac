"""Checks of a fleet from the outside, for tests/fleet/test_fleet_*.py (no mocks).

Everything here looks at the fleet the way an auditor would, independent of how
the rotation is implemented: each host's disks (its folder on the controller and
its tmpfs mounts through /proc/<pid1>/root), TLS handshakes from the controller
over the fleet's bridge, systemd's own view of the units (MainPID, journal), and
probes that run inside each host with that host's own identity.

- `playbook(fleet, ...)`: `ansible-playbook -i inventories/fleet playbooks/<pb> -l fleet`.
- `snapshot` / `changes`: every file of every host (host paths), what changed.
- `private_keys`: every private key on every host (by public-key fingerprint).
- `leaks`: key material or secrets in a text (playbook output, reports, journals).
- `UnitWatch`: MainPID and journal of every unit before/after a run.
- `Probes`: tests/lab/probe.py inside the hosts, each with the host's own identity.
- `FaultHook`: one-shot barrier in a unit's start or reload (tests/fleet/fault_hook.sh).
"""
import base64
import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PROBE = REPO / "tests" / "lab" / "probe.py"
HOOK = HERE / "fault_hook.sh"
PHASES = ["preflight", "admin_cert", "server_tls", "agent_login", "app_leaf", "proxy_trust", "restart", "healthcheck"]
SNI = "vault.prod.privsec.ch"

# Written on a host by its services, its sshd/sudo or the tests themselves, never by the rotation.
VOLATILE = re.compile(r"^/home/vaultprod/data/|^/home/[^/]+/logs/|^/home/[^/]+/nginx/run/|^/home/[^/]+/vault/token$|"
                      r"^/home/[^/]+/vault/rendered/|^/home/[^/]+/\.fleet-fault(/|$)|^/home/[^/]+/\.config/systemd/|"
                      r"^/home/[^/]+/nginx/nginx\.conf$|^/var/log/|^/home/[^/]+/\.local/share/systemd/|"
                      r"^/home/[^/]+/\.cache/|^/root/\.cache/|^/home/[^/]+/\.ansible/tmp/?$|^/root/\.ansible/tmp/?$")
# Ansible's own folders (remote_tmp): may be created, must hold nothing after a run.
ANSIBLE_DIRS = re.compile(r"^/(home/[^/]+|root)/\.ansible(/|$)")
PEM_KEY = re.compile(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S)
MAX_FILE = 4 * 1024 * 1024


# --------------------------------------------------------------------------
# ansible-playbook against the fleet
# --------------------------------------------------------------------------

class Run:
    """One ansible-playbook run: returncode, stdout, stderr, started/ended (epoch), log file."""

    def __init__(self, proc, started, ended, log):
        self.returncode, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.started, self.ended, self.log = started, ended, log

    @property
    def output(self):
        return self.stdout + self.stderr

    @property
    def seconds(self):
        return self.ended - self.started

    def tail(self, n=6000):
        return "%s\n(full output: %s)" % (self.output[-n:], self.log)


_RUNS = [0]


def playbook(fleet, *extra, playbook="rotate_all.yml", verbosity=0, timeout=1200):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "ANSIBLE_"))}
    env.update({"FLEET_DIR": str(fleet.dir), "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
                "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})
    exe = REPO / ".venv" / "bin" / "ansible-playbook"
    argv = [str(exe) if exe.exists() else "ansible-playbook", "-i", str(REPO / "inventories" / "fleet"),
            str(REPO / "playbooks" / playbook), "-l", "fleet"] + list(extra)
    if verbosity:
        argv.append("-" + "v" * verbosity)
    started = time.time()
    proc = subprocess.run(argv, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout, check=False)
    ended = time.time()
    _RUNS[0] += 1
    log = fleet.dir / "logs" / ("run-%02d-%s.log" % (_RUNS[0], time.strftime("%H%M%S")))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("$ %s\n# rc=%s, %.1f s\n%s\n---- stderr\n%s" % (" ".join(argv), proc.returncode, ended - started,
                                                                 proc.stdout, proc.stderr))
    return Run(proc, started, ended, log)


def report(fleet):
    return json.loads((fleet.dir / "reports" / "latest.json").read_text())


def one_line(text):
    return re.sub(r"\s+", " ", text)


def gate_message(run):
    """(gate, failure class, message, next) of the run's `GATE ... FAILED` line."""
    m = re.search(r"GATE (\S+) FAILED \((\w+)\): (.*?)\. Next: (.*?)(?:\"|$| PLAY RECAP)", one_line(run.output))
    assert m, "no GATE ... FAILED message:\n" + run.tail()
    return m.groups()


def assert_green(fleet, run):
    assert run.returncode == 0, run.tail()
    rep = report(fleet)
    assert rep["status"] == "success", rep["summary"]
    gates = {p["phase"]: p["gate"] for p in rep["phases"]}
    assert all(g in ("passed", "skipped") for g in gates.values()), gates
    assert [p for p in PHASES if p not in gates] == [], gates
    assert not (fleet.dir / "run" / "vault_rotate-fleet.lock").exists(), "the run kept its lock"
    return rep


def assert_stopped_at(fleet, run, phase, classes=None):
    """The run failed at `phase`: GATE message with class and next step; report: earlier phases
    passed, this one failed, none later; the lock released. Returns (gate, class, msg, next)."""
    assert run.returncode != 0, run.tail()
    gate, klass, msg, nxt = gate_message(run)
    assert gate.split("/")[0] == phase, (gate, klass, msg)
    if classes:
        assert klass in classes, (gate, klass, msg)
    assert nxt.strip(), "no next step"
    rep = report(fleet)
    assert rep["status"] == "failed" and rep["summary"]["failed_phase"] == phase, rep["summary"]
    seen = [p["phase"] for p in rep["phases"]]
    assert seen == PHASES[:PHASES.index(phase) + 1], "ran %s, expected to stop at %s" % (seen, phase)
    assert all(p["gate"] == "passed" for p in rep["phases"][:-1]), rep["phases"]
    assert not (fleet.dir / "run" / "vault_rotate-fleet.lock").exists(), "the failed run kept its lock"
    print("FLEET FAULT at %s: GATE %s FAILED (%s): %s | Next: %s" % (phase, gate, klass, msg[:300], nxt[:300]))
    return gate, klass, msg, nxt


# --------------------------------------------------------------------------
# the hosts' disks
# --------------------------------------------------------------------------

def _host_trees(fleet, host):
    """(host path prefix, controller folder) of every filesystem the host writes to."""
    trees = [("/" + sub, host.dir / sub) for sub in ("home", "root", "srv", "var/log")]
    trees.append(("/etc", host.dir / "etc.upper"))
    pid = fleet.pid1(host)
    if pid:
        for sub in ("tmp", "var/tmp", "dev/shm"):
            trees.append(("/" + sub, Path("/proc/%d/root/%s" % (pid, sub))))
    return trees


def snapshot(fleet):
    """{host: {host path: (sha256 or 'dir', mode, uid, gid)}} of every file of every host."""
    out = {}
    for host in fleet.hosts.values():
        files = {}
        for prefix, root in _host_trees(fleet, host):
            for dirpath, dirs, names in os.walk(root):
                rel_dir = os.path.relpath(dirpath, root)
                hdir = prefix if rel_dir == "." else "%s/%s" % (prefix, rel_dir)
                if hdir.startswith("/home/vaultprod/data"):
                    dirs[:] = []
                    continue
                for n in dirs:
                    st = os.lstat(os.path.join(dirpath, n))
                    files["%s/%s" % (hdir, n)] = ("dir", st.st_mode & 0o7777, st.st_uid, st.st_gid)
                for n in names:
                    p = os.path.join(dirpath, n)
                    try:
                        st = os.lstat(p)
                        if not os.path.isfile(p) or os.path.islink(p) or st.st_size > MAX_FILE:
                            digest = "other:%d" % st.st_size
                        else:
                            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                    except OSError:
                        continue  # gone while we looked (a service's temp file)
                    files["%s/%s" % (hdir, n)] = (digest, st.st_mode & 0o7777, st.st_uid, st.st_gid)
        out[host.name] = files
    return out


def changes(before, after, volatile=True):
    """{host: sorted host paths new, changed or removed} (without the services' own files)."""
    out = {}
    for host in after:
        b, a = before.get(host, {}), after[host]
        diff = sorted(p for p in set(a) | set(b) if a.get(p) != b.get(p)
                      and not (volatile and VOLATILE.search(p)))
        if diff:
            out[host] = diff
    return out


def slot_files(fleet):
    """{host: [host paths the rotation may write there]}: each certificate's key/cert/chain files
    on the host that owns it (its backups and staged files are named after them)."""
    info = fleet.info
    p, a = info["paths"], info["app_paths"]
    out = {"fleet-admin": [p["admin_key"], p["admin_crt"], p["admin_issuing_ca"], p["admin_ca"]],
           "fleet-vaultprod": [p["server_key"], p["server_crt"], p["fullchain"], p["ca_chain"], p["root_ca"]]}
    for app in info["apps"]:
        out[a[app]["host"]] = [a[app][k] for k in ("agent_key", "agent_crt", "ca", "frontend_key", "frontend_crt",
                                                   "frontend_fullchain")]
    px = a[info["proxy_app"]]
    out[px["host"]] = [px[k] for k in ("agent_key", "agent_crt", "ca", "proxy_key", "proxy_crt", "proxy_fullchain",
                                       "current_ca_chain")]
    return out


def misplaced_writes(fleet, changed):
    """Changed paths that are not this host's own slot files (nor their backups/staged copies) nor
    empty Ansible folders: a write on the wrong host, or a stray file."""
    allowed = slot_files(fleet)
    bad = []
    for host, paths in changed.items():
        mine = allowed.get(host, [])
        for path in paths:
            d, name = os.path.split(path)
            ok = any(d == os.path.dirname(f) and (name.startswith((os.path.basename(f), "." + os.path.basename(f))))
                     for f in mine)
            if not ok and ANSIBLE_DIRS.search(path):
                ok = True  # checked for content separately (key scan): folders of the connection user
            if not ok and any(path == os.path.dirname(f) for f in mine):
                ok = True  # the slot's own folder (mtime)
            if not ok:
                bad.append("%s:%s" % (host, path))
    return bad


def host_file(fleet, host, path):
    """Controller path of a host file (its folder, or its tmpfs through /proc/<pid1>/root)."""
    host = fleet.host(host)
    if path.startswith("/run/"):  # the host's own /run (a tmpfs): the probes' summaries
        return Path("/proc/%d/root%s" % (fleet.pid1(host), path))
    for prefix, root in _host_trees(fleet, host):
        if path == prefix or path.startswith(prefix + "/"):
            return Path(str(root) + path[len(prefix):])
    raise ValueError("%s is not on a filesystem of %s" % (path, host.name))


def cert(fleet, host, path):
    return x509.load_pem_x509_certificate(host_file(fleet, host, path).read_bytes())


# --------------------------------------------------------------------------
# private keys and secrets
# --------------------------------------------------------------------------

def _fingerprint(key):
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()[:32]


def keys_in(data):
    """[(fingerprint, pem bytes)] of the PEM private keys in a blob."""
    out = []
    for m in PEM_KEY.finditer(data):
        try:
            key = serialization.load_pem_private_key(m.group(0), None)
        except (ValueError, TypeError):
            out.append(("unparsable:" + hashlib.sha256(m.group(0)).hexdigest()[:16], m.group(0)))
            continue
        out.append((_fingerprint(key), m.group(0)))
    return out


def private_keys(fleet):
    """{fingerprint: {"where": [(host, path)], "pem": bytes}} of every private key on every host."""
    found = {}
    for host in fleet.hosts.values():
        for prefix, root in _host_trees(fleet, host):
            for dirpath, _dirs, names in os.walk(root):
                for n in names:
                    p = os.path.join(dirpath, n)
                    try:
                        if os.path.islink(p) or not os.path.isfile(p) or os.path.getsize(p) > MAX_FILE:
                            continue
                        data = Path(p).read_bytes()
                    except OSError:
                        continue
                    if b"PRIVATE KEY-----" not in data:
                        continue
                    hpath = prefix + p[len(str(root)):]
                    for fp, pem in keys_in(data):
                        entry = found.setdefault(fp, {"where": [], "pem": pem})
                        entry["where"].append((host.name, hpath))
    return found


def controller_keys(fleet):
    """{fingerprint: pem} of the keys that live on the controller only (the offline CA)."""
    out = {}
    for f in (fleet.p["root_key"], fleet.p["int_key"]):
        for fp, pem in keys_in(Path(f).read_bytes()):
            out[fp] = pem
    return out


def secret_needles(fleet, keys):
    """Strings whose presence in an output is a leak: lines of every private key's base64 body,
    the unseal key and the root token."""
    needles = {}
    for fp, entry in keys.items():
        pem = entry["pem"] if isinstance(entry, dict) else entry
        body = [ln for ln in pem.decode().splitlines() if ln and not ln.startswith("-----")]
        for ln in body:
            if len(ln) >= 24:
                needles[ln] = "private key %s" % fp
        raw = base64.b64decode("".join(body))
        needles[raw.hex()] = "private key %s (hex)" % fp
    init = json.loads(fleet.p["init_json"].read_text())
    for k in init.get("keys_base64", []) + init.get("keys", []):
        needles[k] = "unseal key"
    needles[init["root_token"]] = "root token"
    return needles


def leaks(text, needles):
    """What of `needles` (or a PEM private key marker) appears in `text`."""
    out = sorted({what for needle, what in needles.items() if needle in text})
    if re.search(r"BEGIN [A-Z ]*PRIVATE KEY", text):
        out.append("a PEM private key block")
    return out


def controller_leaks(fleet, needles, since):
    """Files on the controller changed since `since` (outside the hosts' folders and the offline CA)
    that hold one of the fleet's secrets: /tmp, /var/tmp, ~/.ansible, the fleet folder."""
    roots = [Path("/tmp"), Path("/var/tmp"), Path.home() / ".ansible", fleet.dir]
    skip = [fleet.dir / "hosts", fleet.dir / "offline-ca", fleet.dir / "secrets"]
    found = []
    for root in roots:
        for dirpath, dirs, names in os.walk(root):
            dp = Path(dirpath)
            if any(dp == s or s in dp.parents for s in skip):
                dirs[:] = []
                continue
            for n in names:
                p = dp / n
                try:
                    st = p.stat()
                    if st.st_mtime < since or st.st_size > MAX_FILE or not p.is_file():
                        continue
                    text = p.read_bytes().decode(errors="replace")
                except OSError:
                    continue
                # the fleet's own secrets only: other labs' keys live in /tmp too
                hit = [w for w in leaks(text, needles) if w != "a PEM private key block"]
                if hit:
                    found.append("%s: %s" % (p, ", ".join(hit)))
    return found


def journals(fleet):
    """Every host's whole journal as text (services, sudo, sshd, user managers)."""
    return {h.name: fleet.host_exec(h, ["journalctl", "--no-pager", "-o", "cat"], timeout=60).stdout
            for h in fleet.hosts.values()}


# --------------------------------------------------------------------------
# units: systemd's view
# --------------------------------------------------------------------------

class UnitWatch:
    """MainPID of every unit now; after the run, what systemd did to each since then."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.t0 = time.time()
        self.pids = {u: fleet.unit_pid(u) for u in fleet.unit_names()}

    def events(self, unit):
        """What the unit's owner's systemd logged about it since t0: reload/start/stop/failure lines."""
        name = "%s.service" % unit
        out = []
        for t, msg in self.fleet.journal(unit, since=self.t0 - 0.5):
            if t < self.t0:
                continue
            if msg.startswith("Reloading %s" % name):
                out.append("reloading")
            elif msg.startswith("Reloaded %s" % name):
                out.append("reloaded")
            elif msg.startswith("Reload failed for %s" % name) or "reload" in msg.lower() and "failed" in msg.lower():
                out.append("reload_failed")
            elif msg.startswith("Started %s" % name):
                out.append("started")
            elif msg.startswith(("Stopped %s" % name, "Stopping %s" % name)):
                out.append("stopped")
            elif msg.startswith("Failed to start %s" % name) or (msg.startswith(name) and "Failed" in msg):
                out.append("failed")
        return out

    def service_log(self, unit, until=None, timeout=5.0):
        """The unit's journal messages since t0. With `until` (a predicate on one message), read again
        until one matches or `timeout` passes: journald writes a stream's lines when it gets to them."""
        deadline = time.monotonic() + timeout
        while True:
            out = [m for t, m in self.fleet.journal(unit, since=self.t0 - 0.5) if t >= self.t0]
            if until is None or any(until(m) for m in out) or time.monotonic() > deadline:
                return out
            time.sleep(0.2)

    def in_unit_cgroup(self, unit, pid):
        """True when `pid` (a pid inside the host) runs in the unit's own cgroup of its user manager."""
        host, _user = self.fleet._user_of(unit)
        cg = self.fleet.host_exec(host, ["cat", "/proc/%d/cgroup" % pid]).stdout
        return "/app.slice/%s.service" % unit in cg


def nginx_sighup_since(fleet, unit, t0):
    """nginx's own log lines since t0 saying it got SIGHUP (its reload)."""
    info = fleet.info
    u = info["units"][unit]
    path = host_file(fleet, u["host"], u["log"])
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d) \[notice\] .*signal 1 \(SIGHUP\) received", line)
        if m and time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S")) - time.timezone >= int(t0):
            out.append(line)
    return out


# --------------------------------------------------------------------------
# probes from the hosts themselves
# --------------------------------------------------------------------------

def probe_specs(fleet):
    """name -> (host, user or None for root, target address, port, SNI, CA, client cert, client key)."""
    info = fleet.info
    p, a = info["paths"], info["app_paths"]
    vault = info["hosts"]["fleet-vaultprod"]["address"]
    port = info["ports"]["vault"]
    specs = {"admin@fleet-admin -> listener": ("fleet-admin", None, vault, port, SNI, p["admin_ca"], p["admin_crt"],
                                                p["admin_key"]),
             "vaultprod@fleet-vaultprod -> listener": ("fleet-vaultprod", "vaultprod", vault, port, SNI, p["root_ca"],
                                                        p["server_crt"], p["server_key"])}
    for app in info["apps"] + [info["proxy_app"]]:
        specs["%s@%s -> listener" % (app, a[app]["host"])] = (a[app]["host"], app, vault, port, SNI, a[app]["ca"],
                                                              a[app]["agent_crt"], a[app]["agent_key"])
    px = a[info["proxy_app"]]
    specs["proxyprod@%s -> proxy" % px["host"]] = (px["host"], info["proxy_app"], px["address"], px["port"], SNI,
                                                   px["ca"], px["agent_crt"], px["agent_key"])
    for app in info["apps"]:
        specs["admin@fleet-admin -> %s frontend" % app] = ("fleet-admin", None, a[app]["address"], a[app]["port"],
                                                           a[app]["sni"], p["admin_ca"], p["admin_crt"], p["admin_key"])
    return specs


class Probes:
    """tests/lab/probe.py inside each host (as the identity's owner), every `interval` s, during a run."""

    def __init__(self, fleet, interval=0.1):
        self.fleet, self.interval = fleet, interval
        self.specs = probe_specs(fleet)
        self.names = {}

    def _files(self, name):
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        return "/run/fleet-probes/%s.pid" % slug, "/run/fleet-probes/%s.json" % slug

    def start(self):
        for h in {s[0] for s in self.specs.values()}:
            self.fleet.host_exec(h, ["install", "-d", "-m", "1777", "/run/fleet-probes"], check=True)
        for name, (host, user, addr, port, sni, ca, crt, key) in self.specs.items():
            pidfile, out = self._files(name)
            proc = self.fleet.host_exec(host, ["/usr/bin/python3", str(PROBE), "start", "--pidfile", pidfile,
                                               "--host", addr, "--port", str(port), "--server-name", sni, "--ca", ca,
                                               "--cert", crt, "--key", key, "--interval", str(self.interval),
                                               "--max-seconds", "1200", "--out", out], user=user, timeout=60)
            assert proc.returncode == 0, "probe %s did not start: %s %s" % (name, proc.stdout, proc.stderr)
        return self

    def stop(self):
        out = {}
        for name, (host, user, *_rest) in self.specs.items():
            pidfile, summary = self._files(name)
            self.fleet.host_exec(host, ["/usr/bin/python3", str(PROBE), "stop", "--pidfile", pidfile, "--out", summary],
                                 user=user, timeout=60)
            try:
                out[name] = json.loads(host_file(self.fleet, host, summary).read_text())
            except (OSError, ValueError):
                text = self.fleet.host_exec(host, ["cat", summary]).stdout
                out[name] = json.loads(text) if text.strip() else {"attempts": 0, "failures": -1}
        return out


# --------------------------------------------------------------------------
# faults: a barrier in a unit's start or reload
# --------------------------------------------------------------------------

class FaultHook:
    """Adds `ExecStartPre=` or `ExecReload=` running tests/fleet/fault_hook.sh NAME to a user unit
    (a drop-in), arms it once; `action(fleet)` runs on the controller when it fires, then the hook
    exits 0 ("ok") or 1 ("fail"). `remove()` takes the drop-in away again."""

    def __init__(self, fleet, unit, kind, name, action=None, verdict="ok"):
        self.fleet, self.unit, self.kind, self.name = fleet, unit, kind, name
        self.action, self.verdict = action, verdict
        u = fleet.info["units"][unit]
        self.host, self.user = u["host"], u["user"]
        home = "/home/%s" % self.user
        self.dir = host_file(fleet, self.host, home + "/.fleet-fault")
        self.dropin = host_file(fleet, self.host, "%s/.config/systemd/user/%s.service.d/fleet-fault.conf" % (home, unit))
        self.fired_at = None
        self.error = None
        self._thread = None

    def _chown(self, path):
        uid = self.fleet.info["units"][self.unit]["uid"]
        os.chown(path, uid, uid)

    def install(self):
        self.dir.mkdir(exist_ok=True)
        self._chown(self.dir)
        self.dropin.parent.mkdir(parents=True, exist_ok=True)
        self._chown(self.dropin.parent)
        self.dropin.write_text("[Service]\n%s=%s %s\n" % (self.kind, HOOK, self.name))
        self.fleet.systemctl(self.host, "daemon-reload", user=self.user, check=True)
        if self.action is None:
            (self.dir / ("%s.go" % self.name)).write_text(self.verdict)
        armed = self.dir / ("%s.armed" % self.name)
        armed.write_text("armed\n")
        self._chown(armed)
        if self.action is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def _watch(self):
        fired = self.dir / ("%s.fired" % self.name)
        deadline = time.monotonic() + 1200
        while not fired.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not fired.exists():
            return
        self.fired_at = time.time()
        verdict = self.verdict
        try:
            self.action(self.fleet)
        except Exception as exc:  # reported by the test
            self.error = exc
            verdict = "fail"
        go = self.dir / ("%s.go" % self.name)
        go.write_text(verdict)
        self._chown(go)

    @property
    def fired(self):
        return (self.dir / ("%s.fired" % self.name)).exists()

    def remove(self):
        if self._thread is not None:
            self._thread.join(5)
        self.dropin.unlink(missing_ok=True)
        for suffix in ("armed", "go"):
            (self.dir / ("%s.%s" % (self.name, suffix))).unlink(missing_ok=True)
        self.fleet.systemctl(self.host, "daemon-reload", user=self.user)

    def __enter__(self):
        return self.install()

    def __exit__(self, *exc):
        self.remove()


# --------------------------------------------------------------------------
# TLS from the controller over the fleet's bridge
# --------------------------------------------------------------------------

def served_serial(address, port, sni, cafile, certfile=None, keyfile=None):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    with socket.create_connection((address, port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname=sni) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


# --------------------------------------------------------------------------
# the certificates of the run, on disk and served
# --------------------------------------------------------------------------

def slot_certs(fleet):
    """slot -> (host, cert path, key path): every certificate the run rotates, on its own host."""
    info = fleet.info
    p, a = info["paths"], info["app_paths"]
    out = {"admin": ("fleet-admin", p["admin_crt"], p["admin_key"]),
           "listener": ("fleet-vaultprod", p["server_crt"], p["server_key"])}
    for app in info["apps"] + [info["proxy_app"]]:
        out["agent-%s" % app] = (a[app]["host"], a[app]["agent_crt"], a[app]["agent_key"])
    for app in info["apps"]:
        out["frontend-%s" % app] = (a[app]["host"], a[app]["frontend_crt"], a[app]["frontend_key"])
    px = a[info["proxy_app"]]
    out["frontend-%s" % info["proxy_app"]] = (px["host"], px["proxy_crt"], px["proxy_key"])
    return out


def serials(fleet):
    return {slot: cert(fleet, host, crt).serial_number for slot, (host, crt, _k) in slot_certs(fleet).items()}


def served(fleet):
    """Serials served now, seen from the controller over the bridge (verified chain, SNI)."""
    info = fleet.info
    p = fleet.p
    out = {"listener": served_serial(info["hosts"]["fleet-vaultprod"]["address"], info["ports"]["vault"], SNI,
                                        str(p["admin_ca"]), str(p["admin_crt"]), str(p["admin_key"]))}
    for app, ep in info["endpoints"]["frontends"].items():
        out["frontend-%s" % app] = served_serial(ep["host"], ep["port"], ep["sni"], str(p["admin_ca"]))
    ep = info["endpoints"]["proxy"]
    out["frontend-%s" % info["proxy_app"]] = served_serial(ep["host"], ep["port"], SNI, str(p["admin_ca"]))
    return out
