#!/usr/bin/env python3
"""make bench: how fast rotate_all is against a baseline, how it scales with apps, whether clients notice.

The same scenarios run against two versions of the collection, in the same
bench, each on a lab of its own kind (below), with the same .venv and the same
measuring callback:

- current: this checkout (the working tree as it is);
- baseline: a git worktree of BENCH_BASELINE (default: the ref in
  bench/baseline.ref) under .cache/bench/baseline-<sha>; `none` skips it. Its
  own ansible.cfg and collections/ link make its playbooks load its own
  collection; every run records where its tasks and plugins came from and the
  bench fails the run when that is not the tree it was meant for.

For each N in BENCH_APPS (default "2 8 32") it builds, per tree, a private
lab with N apps made by that tree's own lab code (tests/lab/lab.py of the tree:
the lab follows production more closely over time, e.g. PKI roles that pin
RSA, which an older tree cannot rotate; ports from BENCH_PORT_BASE, default
31000: listener +0, raft +1, proxy +2, frontends +500+i; the baseline's lab
+100), enables a file audit device (every Vault request, seen from the
server), writes the tree's inventory (its own lab inventory, the example apps
expanded to N), then runs `rotate_all.yml -l lab`:

- forced (`-e vault_rotate_force=true`): every slot rotates;
- noop: nothing due (right after a forced run);
- restart (BENCH_RESTART=1, first N only): forced + `vault_rotate_restart_vault=always`
  with the unseal keys (extra-vars file 0600): restart outage and readiness lag.

BENCH_PROBES=0 runs no probers (see below; the failure, gap and restart-outage figures are then
not measured): the rotation alone, without the bench's own clients' CPU on the same cores.
BENCH_REPS times each (default 1). The baseline runs only for N in
BENCH_BASELINE_APPS (default "2"). Baseline and current alternate run by run
(B C, B C, ...; the next repetition starts with the other one), so a change of
load hits both. During every run tests/lab/probe.py opens a TLS connection
every 20 ms to the listener and through the proxy.

Per run: wall time, controller CPU, tasks executed, per-phase time (plays, from
the bench_timer callback), Vault requests from the audit log per phase (total,
sign/issue, cert logins, admin logins) and sign/issue per rotated slot (rotated
= leaf serials on disk that changed), controller peak memory as summed PSS of
ansible-playbook and all its descendants (and summed RSS beside it), probe
failures and gaps, restart outage and readiness lag. Output: a table on stdout
(current, baseline, current/baseline), JSON (format v3) in BENCH_WORKDIR (default
.cache/bench/bench-<stamp>.json and latest.json), a copy in bench/results/
with BENCH_SAVE=1. Secrets (root token, unseal key) never leave the lab's files.

Fleet mode (issue 12; BENCH_TARGETS, default "lab"; "fleet" or "lab fleet"): for each N in
BENCH_FLEET_APPS (default "2 8") a fleet of tests/fleet (a host of its own per Vault, proxy, admin
and app: network namespace, systemd, sshd, user units) under BENCH_WORKDIR/fleet-N on
10.212.BENCH_FLEET_NET.0/24 (default 20), the current tree's inventories/fleet over SSH with forks
>= hosts (BENCH_FLEET_FORKS, else max(hosts, ANSIBLE_FORKS or 10)), the same kinds (restart at
every N), cold SSH per run; the probers reach the listener and the proxy at the hosts' addresses
through the fleet's bridge; the audit log is the server's own file on its host. Also recorded: the
CPU the hosts spent (their cgroups, per host and role), the controller's CPU per extra app host (its
SSH masters included: getrusage misses them), the wall ratio largest/smallest N against
the 1.5x target, and where the time grows (per phase, per task). The fleet goes down after its runs
and the bench fails when Fleet.leftovers() finds anything left. No baseline (df581d1 has no fleet).
Root only.

    .venv/bin/python bench/bench.py                              # = make bench (long: see docs/performance.md)
    BENCH_APPS=2 BENCH_KINDS=forced BENCH_RESTART=0 make bench   # the quickest look, with the baseline
    BENCH_TARGETS=fleet make bench                               # the fleet alone: N = 2 and 8 app hosts
"""
import bisect
import importlib.util
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from cryptography import x509

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
import lab as labmod  # noqa: E402  (tests/lab/lab.py)

FORMAT = "privsec.vault_rotate.bench/v3"  # v3: runs and rows carry `target` (lab | fleet)
PY = sys.executable
BIN = Path(PY).parent
PROBE = REPO / "tests" / "lab" / "probe.py"
LABCTL = REPO / "tests" / "lab" / "labctl.py"
CALLBACKS = REPO / "bench" / "callback_plugins"
BASELINE_REF_FILE = REPO / "bench" / "baseline.ref"
PROBE_INTERVAL_S = 0.02
# sys/health answers 200 only when the node is unsealed AND active (503 sealed, 429
# standby): the same "ready" the restart step waits for, so the readiness lag
# compares like with like (seal-status says unsealed ~0.2 s before the node is active).
# Neither path is audited by the server.
PROBE_PATH = "/v1/sys/health"
# BENCH_PROBES=0: no probers. They are the bench's own clients (a full mTLS handshake and a
# GET every 20 ms, directly and through the proxy: about a quarter of a 2-core machine with
# the server's and the proxy's side); without them a run measures the rotation alone, and the
# failure and gap columns print "-".
PROBES = os.environ.get("BENCH_PROBES", "1") != "0"
# Phase keys from play names: "Phase <n> - ..." first, then the leading word;
# any other play keeps a key made from its name, so a renamed play is still
# timed and counted, only under another key.
PHASE_NUMBERS = {"0": "preflight", "1": "admin_cert", "2": "server_tls", "3": "agent_login", "4": "app_leaf",
                 "5": "proxy_trust", "6": "restart", "7": "healthcheck"}
TARGETS = ("lab", "fleet")
COLLECTION_PREFIX = "privsec.vault_rotate."
PHASE_WORDS = {"preflight": "preflight", "restart": "restart", "healthcheck": "healthcheck", "report": "report"}
OUTSIDE = "(outside plays)"
# Ansible settings that would make both trees load the same code or config.
SCRUB_ENV = ("ANSIBLE_CONFIG", "ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_COLLECTIONS_PATHS", "ANSIBLE_ROLES_PATH",
             "ANSIBLE_INVENTORY", "ANSIBLE_LIBRARY", "ANSIBLE_MODULE_UTILS", "ANSIBLE_ACTION_PLUGINS")


def env_list(name, default):
    return [x for x in os.environ.get(name, default).replace(",", " ").split() if x]


def env_flag(name, default):
    return os.environ.get(name, default).strip().lower() not in ("0", "", "false", "no", "off")


def app_names(n):
    if n == len(labmod.DEFAULT_APPS):
        return list(labmod.DEFAULT_APPS)
    return ["app%02d" % i for i in range(1, n + 1)]


def phase_key(play_name):
    m = re.match(r"\s*phase\s+(\d+)\b", play_name, re.I)
    if m and m.group(1) in PHASE_NUMBERS:
        return PHASE_NUMBERS[m.group(1)]
    word = (re.findall(r"[a-z0-9]+", play_name.lower()) or ["play"])[0]
    if word in PHASE_WORDS:
        return PHASE_WORDS[word]
    return "_".join(re.findall(r"[a-z0-9]+", play_name.lower())[:4]) or "play"


def iso_epoch(iso):
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def git(*args, cwd=REPO, check=True):
    """git, retried while another engineer's git holds a lock in the shared repository."""
    for attempt in range(20):
        out = subprocess.run(["git", *args], cwd=str(cwd), capture_output=True, text=True, check=False)
        if out.returncode == 0 or ".lock" not in out.stderr or attempt == 19:
            break
        time.sleep(0.5)
    if check and out.returncode != 0:
        raise SystemExit("bench: git %s failed: %s" % (" ".join(args), out.stderr.strip()))
    return out.stdout.strip()


# -- the two trees -------------------------------------------------------------


class Tree:
    """One version of the collection: its root holds ansible.cfg, collections/, playbooks/, inventories/lab/."""

    def __init__(self, side, root, ref, sha, dirty=0):
        self.side, self.root, self.ref, self.sha, self.dirty = side, Path(root).resolve(), ref, sha, dirty

    def describe(self):
        note = ", %d uncommitted changes in the tree" % self.dirty if self.dirty else ""
        return "%s %s (%s%s)" % (self.side, self.root, self.sha[:7], note)

    def as_json(self):
        return {"root": str(self.root), "ref": self.ref, "sha": self.sha, "uncommitted_changes": self.dirty}


def current_tree():
    dirty = len([line for line in git("status", "--porcelain", check=False).splitlines() if line.strip()])
    return Tree("current", REPO, "HEAD", git("rev-parse", "HEAD"), dirty)


def baseline_ref():
    ref = os.environ.get("BENCH_BASELINE", "").strip()
    if ref:
        return None if ref.lower() in ("none", "off", "0", "no") else ref
    for line in BASELINE_REF_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise SystemExit("bench: no ref in %s" % BASELINE_REF_FILE)


def baseline_tree(ref, workdir):
    """A detached worktree of `ref` under workdir, reused while it is clean and at the same commit."""
    sha = git("rev-parse", "--verify", "--quiet", "%s^{commit}" % ref, check=False)
    if not sha:
        raise SystemExit("bench: baseline ref %r is not a commit of this repository (a shallow clone? `git fetch "
                         "--unshallow`), or set BENCH_BASELINE=<ref> / BENCH_BASELINE=none" % ref)
    path = workdir / ("baseline-%s" % sha[:12])
    if path.exists():
        # a worktree has a .git file; without it git would answer for the repository around it
        head = git("rev-parse", "HEAD", cwd=path, check=False) if (path / ".git").is_file() else None
        if head == sha and not git("status", "--porcelain", cwd=path, check=False):
            return Tree("baseline", path, ref, sha)
        git("worktree", "remove", "--force", str(path), check=False)
        if path.exists():
            shutil.rmtree(path)
    git("worktree", "prune")  # a worktree folder removed by `make clean` leaves its record behind
    git("worktree", "add", "--detach", str(path), sha)
    return Tree("baseline", path, ref, sha)


def lab_module(tree):
    """The lab code of `tree` (its tests/lab/lab.py), loaded beside ours under another name: a
    tree runs on the lab it was written for (the lab follows production more closely over time:
    PKI roles that pin RSA, an IP SAN on the proxy cert, a fullchain-only site, which an older
    tree cannot rotate)."""
    name = "lab_%s_%s" % (tree.side, tree.sha[:12])
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, str(tree.root / "tests" / "lab" / "lab.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def which_tree(path, trees):
    """The tree whose root is the longest prefix of `path` (the baseline lives inside the current one)."""
    real = os.path.realpath(path)
    best = None
    for tree in trees:
        root = str(tree.root)
        if (real == root or real.startswith(root + os.sep)) and (best is None or len(root) > len(str(best.root))):
            best = tree
    return best.side if best else "other"


def loaded_from(timer, tree, trees):
    """Where the run's collection, task files and plugins came from; ok when all of it is `tree`."""
    loaded = timer.get("loaded") or {}
    coll = loaded.get("collection")
    files = loaded.get("task_files") or []
    plugins = [p for paths in (loaded.get("plugins") or {}).values() for p in paths.values()]
    sides = {}
    for path in files + plugins:
        side = which_tree(path, trees)
        sides[side] = sides.get(side, 0) + 1
    coll_side = which_tree(coll, trees) if coll and not coll.startswith("unresolved") else None
    ok = coll_side == tree.side and bool(files) and set(sides) == {tree.side}
    return {"collection": os.path.realpath(coll) if coll_side else coll, "collection_tree": coll_side,
            "files_by_tree": sides, "task_files": len(files), "plugins": len(plugins), "ok": ok}


# -- controller memory ------------------------------------------------------------

def _proc_stat(pid):
    """(comm, the fields after it) of /proc/<pid>/stat: [1] is the parent pid, [11] and [12] the
    user and system CPU ticks."""
    with open("/proc/%s/stat" % pid) as fh:
        stat = fh.read()
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def _procs(comms):
    """(pid, comm, the stat fields after comm, command line) of every process whose program is in
    ``comms``."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            comm, rest = _proc_stat(d)
            if comm not in comms:
                continue
            with open("/proc/%s/cmdline" % d, "rb") as fh:
                cmdline = fh.read().decode(errors="replace")
        except (OSError, ValueError):
            continue
        yield int(d), comm, rest, cmdline


class MemSampler(threading.Thread):
    """Peak memory of a process and all its descendants, sampled: summed PSS (smaps_rollup) and summed RSS.

    PSS splits a page shared by k processes into k parts, so forked workers are
    not counted k times over as summed RSS does. Lab daemons (bao, nginx) that a
    unit restart starts under the playbook are servers, not controller memory:
    they and their children are left out."""

    SKIP_COMM = ("bao", "nginx")

    def __init__(self, pid, every=0.1):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak_pss_kb = self.peak_rss_kb = self.peak_procs = self.samples = 0
        self.cpu_s = 0.0  # what sampling cost (it shares the cores with the run it measures)
        self.halt = threading.Event()
        me = os.getpid()
        self.has_children_file = os.path.exists("/proc/%d/task/%d/children" % (me, me))

    def _children(self, pid):
        out = []
        try:
            tids = os.listdir("/proc/%d/task" % pid)
        except OSError:
            return out
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/children" % (pid, tid)) as fh:
                    out.extend(int(x) for x in fh.read().split())
            except (OSError, ValueError):
                pass
        return out

    def _children_by_scan(self):
        children = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    ppid = int(_proc_stat(d)[1][1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(ppid, []).append(int(d))
        return lambda pid: children.get(pid, [])

    @staticmethod
    def _comm(pid):
        try:
            with open("/proc/%d/comm" % pid) as fh:
                return fh.read().strip()
        except OSError:
            return ""

    def tree(self):
        children = self._children if self.has_children_file else self._children_by_scan()
        todo, seen = [self.pid], []
        while todo:
            pid = todo.pop()
            if pid != self.pid and self._comm(pid) in self.SKIP_COMM:
                continue
            seen.append(pid)
            todo.extend(children(pid))
        return seen

    @staticmethod
    def _mem_kb(pid):
        pss = rss = 0
        try:
            with open("/proc/%d/smaps_rollup" % pid) as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss = int(line.split()[1])
        except (OSError, ValueError):  # exited between the walk and the read
            pass
        return pss, rss

    def run(self):
        while True:
            t0 = time.thread_time()
            procs = self.tree()
            pss = rss = 0
            for pid in procs:
                p, r = self._mem_kb(pid)
                pss, rss = pss + p, rss + r
            self.samples += 1
            self.peak_pss_kb = max(self.peak_pss_kb, pss)
            self.peak_rss_kb = max(self.peak_rss_kb, rss)
            self.peak_procs = max(self.peak_procs, len(procs))
            self.cpu_s += time.thread_time() - t0
            if self.halt.wait(self.every):
                return


# -- one lab per N and tree ------------------------------------------------------


def add_audit_device(lab, hcl, audit_log, server_path, reload, whose):
    """A file audit device at `server_path` (the path the server sees of `audit_log`) in the
    server config `hcl`: OpenBao 2.x creates audit devices from the config only (the API
    refuses), a reload (SIGHUP) creates it; waits until the first request reaches the file."""
    hcl.write_text(hcl.read_text() + '\naudit "file" "bench" {\n  options {\n    file_path = "%s"\n  }\n}\n'
                   % server_path)
    reload()
    for _ in range(100):
        if audit_log.exists():
            return
        lab.api("GET", "/v1/sys/seal-status")
        time.sleep(0.1)
    raise SystemExit("bench: %s audit device did not come up (%s)" % (whose, audit_log))


class Bench:
    """One private N-app lab (ansible_connection local, the `command` service backend)."""

    target = "lab"

    def __init__(self, n, port_base, workdir, trees, lab_tree=None):
        """`trees`: every tree of the bench (paths are told apart against all). `lab_tree`: the tree
        whose own lab (its tests/lab/lab.py) this lab is and whose runs it takes; None: one lab of
        the current tree's kind that every tree runs against."""
        self.n = n
        self.apps = app_names(n)
        self.work = workdir
        self.trees = trees
        self.lab_tree = lab_tree
        self.labmod = labmod if lab_tree is None or lab_tree.side == "current" else lab_module(lab_tree)
        self.dir = workdir / ("lab-%d" % n if lab_tree is None or lab_tree.side == "current"
                              else "lab-%d-%s" % (n, lab_tree.side))
        self.lab = self.labmod.Lab(dir=str(self.dir), apps=list(self.apps), vault_port=port_base,
                                   proxy_port=port_base + 2, frontend_port_base=port_base + 500)
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV}
        self.env = dict(env, LAB_DIR=str(self.dir), PATH="%s:%s" % (BIN, os.environ["PATH"]),
                        ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED="bench_timer",
                        ANSIBLE_FORCE_COLOR="0")
        self.run_timeout = float(os.environ.get("BENCH_RUN_TIMEOUT", "3600"))

    # -- setup -------------------------------------------------------------
    def up(self):
        if self.dir.exists():
            self.down(purge=True)
        self.lab.up(log=lambda _msg: None)
        self.info = json.loads((self.dir / "lab.json").read_text())
        for tree in ([self.lab_tree] if self.lab_tree else self.trees):
            self._inventory(tree)
        self.audit_log = self.dir / "logs" / "audit.log"
        # OpenBao 2.x creates audit devices from the config only (the API refuses):
        # add a file device to the lab's server config, SIGHUP creates it.
        add_audit_device(self.lab, Path(self.info["paths"]["vault_config"]), self.audit_log, self.audit_log,
                         lambda: self.lab.unit("container-vaultprod", "reload"), "the")

    def down(self, purge=False):
        labctl = getattr(self.labmod, "LABCTL", LABCTL)  # the lab's own labctl
        subprocess.run([PY, str(labctl), "--dir", str(self.dir), "down"] + (["--purge"] if purge else []),
                       check=False, stdout=subprocess.DEVNULL)

    def inv_dir(self, tree):
        return self.work / ("inv-%s-%d" % (tree.side, self.n))

    def _inventory(self, tree):
        """The tree's own lab inventory (hosts.yml, group_vars, the lab.py script) with its example
        apps replaced by the N apps of this lab: whatever groups and variables that version
        expects stay as it wrote them."""
        src = tree.root / "inventories" / "lab"
        inv = self.inv_dir(tree)
        if inv.exists():
            shutil.rmtree(inv)
        inv.mkdir(parents=True)
        doc = yaml.safe_load((src / "hosts.yml").read_text())
        examples = {"lab-%s" % a for a in self.labmod.DEFAULT_APPS}

        def expand(group):
            hosts = group.get("hosts")
            if isinstance(hosts, dict):
                out, done = {}, False
                for name, hvars in hosts.items():
                    if name not in examples:
                        out[name] = hvars
                    elif not done:
                        done = True
                        for app in self.apps:
                            v = dict(hvars) if isinstance(hvars, dict) else hvars
                            if isinstance(v, dict) and "vault_rotate_app" in v:
                                v["vault_rotate_app"] = app
                            out["lab-%s" % app] = v
                group["hosts"] = out
            for child in (group.get("children") or {}).values():
                if isinstance(child, dict):
                    expand(child)

        expand(doc["all"])
        (inv / "hosts.yml").write_text("---\n# made by bench/bench.py from %s/hosts.yml for %d apps\n%s"
                                       % (src, self.n, yaml.safe_dump(doc, sort_keys=False)))
        for entry in src.iterdir():
            if entry.name != "hosts.yml":
                (inv / entry.name).symlink_to(entry)

    def cert_files(self):
        """Every file the lab describes (controller paths); leaf_serials keeps the leaf certificates."""
        files = [v for v in self.info["paths"].values() if isinstance(v, str)]
        for app in self.info["app_paths"].values():
            files += [v for v in app.values() if isinstance(v, str)]
        return files

    def leaf_serials(self):
        """Serials of every leaf certificate file the lab describes (CA files left out)."""
        files = self.cert_files()
        serials = set()
        for f in files:
            if not f.endswith((".crt", ".pem")):
                continue
            try:
                cert = x509.load_pem_x509_certificate(Path(f).read_bytes())
            except (OSError, ValueError):
                continue
            try:
                if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                    continue
            except x509.ExtensionNotFound:
                pass
            serials.add(cert.serial_number)
        return serials

    def ensure_ready(self):
        """A run that failed may leave the server sealed (restart): unseal it so the next run
        measures the rotation, not the previous failure. Returns what was done."""
        try:
            if self.lab.seal_status().get("sealed"):
                self.lab.unseal()
                return ["unsealed the server (the previous run left it sealed)"]
        except (self.labmod.LabError, OSError) as exc:
            return ["lab not answering before the run: %s" % exc]
        return []

    # -- what a run needs from its target ------------------------------------
    def playbook_args(self, tree):
        return ["-i", str(self.inv_dir(tree)), "playbooks/rotate_all.yml", "-l", "lab"]

    def run_env(self, tree):
        return dict(self.env)

    def init_json(self):
        """The server's init output (unseal key) on the controller, in a 0700 folder removed with the lab."""
        return Path(self.info["paths"]["init_json"])

    def probe_targets(self):
        """name -> (address, port) the probers connect to from the controller."""
        return {"listener": ("127.0.0.1", self.info["ports"]["vault"]),
                "proxy": ("127.0.0.1", self.info["ports"]["proxy"])}

    def admin_identity(self):
        """(CA bundle, client cert, client key) of the admin, controller paths read by the probers."""
        paths = self.info["paths"]
        return paths["admin_ca"], paths["admin_crt"], paths["admin_key"]

    def before_run(self):
        """Anything to reset before a run (the fleet closes its SSH masters); returns notes."""
        return []

    # -- probes ------------------------------------------------------------
    def _probe(self, action, name, target, out):
        cmd = [PY, str(PROBE), action, "--pidfile", str(self.work / ("probe-%s.pid" % name))]
        if action == "start":
            ca, crt, key = self.admin_identity()
            cmd += ["--host", target[0], "--port", str(target[1]), "--server-name", self.info["tls_server_name"],
                    "--ca", str(ca), "--cert", str(crt), "--key", str(key),
                    "--interval", str(PROBE_INTERVAL_S), "--http-path", PROBE_PATH,
                    "--max-seconds", str(self.run_timeout + 300),
                    "--out", str(out)]
        else:
            cmd += ["--out", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    # -- one run -----------------------------------------------------------
    def run(self, tree, kind, rep):
        tag = ("" if self.target == "lab" else self.target + "-") + "n%d-%s-%s-%d" % (self.n, kind, tree.side, rep)
        timer_out = self.work / ("timer-%s.json" % tag)
        timer_out.unlink(missing_ok=True)
        log = self.work / ("run-%s.log" % tag)
        args = [str(BIN / "ansible-playbook")] + self.playbook_args(tree)
        if kind in ("forced", "restart"):
            args += ["-e", "vault_rotate_force=true"]
        if kind == "restart":
            keys = json.loads(self.init_json().read_text())
            kf = self.init_json().parent / "bench-unseal.json"  # 0700, purged with the lab
            kf.touch(mode=0o600)
            kf.chmod(0o600)
            kf.write_text(json.dumps({"vault_rotate_unseal_keys": keys.get("keys_base64") or keys.get("unseal_keys_b64"),
                                      "vault_rotate_restart_vault": "always"}))
            args += ["-e", "@%s" % kf]
        fixups = self.ensure_ready() + self.before_run()
        serials_before = self.leaf_serials()
        probes = self.probe_targets() if PROBES else {}
        outs = {name: self.work / ("probe-%s-%s.json" % (tag, name)) for name in probes}
        load0 = os.getloadavg()
        started = []
        try:
            for name, target in probes.items():
                self._probe("start", name, target, outs[name])
                started.append(name)
            audit_from = self.audit_log.stat().st_size if self.audit_log.exists() else 0
            services0 = self.service_ticks()
            t0 = time.time()
            busy0 = machine_busy_s()
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            rc, mem = self._playbook(args, tree, dict(self.run_env(tree), BENCH_TIMER_OUT=str(timer_out)), log)
            wall = time.time() - t0
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy = machine_busy_s() - busy0
            services = services_cpu_s(services0, self.service_ticks(), self.SERVICE_COMMS)
            time.sleep(0.3)
        finally:
            probe = {}
            for name in started:
                self._probe("stop", name, None, outs[name])
                probe[name] = json.loads(outs[name].read_text())
        # CPU seconds of ansible-playbook and every worker/module it waited for:
        # unlike wall time, barely inflated when other jobs share the cores.
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        timer = json.loads(timer_out.read_text()) if timer_out.exists() else {}
        windows = self._windows(timer)
        rotated = len(self.leaf_serials() - serials_before)
        res = {"target": self.target, "n": self.n, "kind": kind, "side": tree.side, "rep": rep, "rc": rc,
               "wall_s": round(wall, 2), "timer": str(timer_out),
               "controller_cpu_s": round(cpu, 2), "machine_busy_cpu_s": round(busy, 2),
               "cpu_split_s": dict(timer.get("rusage") or {}, **(services or {})),
               "loadavg_start": load0, "loadavg_end": os.getloadavg(),
               "log": str(log), "lab_fixups": fixups,
               "peak_pss_mb": round(mem.peak_pss_kb / 1024.0, 1), "peak_rss_mb": round(mem.peak_rss_kb / 1024.0, 1),
               "peak_procs": mem.peak_procs, "mem_samples": mem.samples, "mem_sampler_cpu_s": round(mem.cpu_s, 2),
               "tasks_executed": timer.get("tasks_executed"), "tasks_started": timer.get("tasks_started"),
               "host_results": timer.get("host_results"), "phases_s": self._phases(timer),
               "task_times": task_times(timer),
               "rotated_slots": rotated, "vault": self._audit(audit_from, windows, rotated),
               "loaded": loaded_from(timer, tree, self.trees),
               "probes": {k: self._probe_view(v) for k, v in probe.items()}}
        if kind == "restart":
            res["restart"] = self._restart_view(timer, probe["listener"]) if "listener" in probe else None
        return res

    SERVICE_COMMS = ("bao", "nginx")

    def service_ticks(self):
        """CPU ticks of the lab's services now, pid -> (comm, ticks): the bao and nginx processes started
        with this lab's files (their command line names the lab folder) and their children (nginx's
        workers)."""
        procs = dict((pid, (comm, int(rest[1]), int(rest[11]) + int(rest[12]), str(self.dir) in cmdline))
                     for pid, comm, rest, cmdline in _procs(self.SERVICE_COMMS))
        ours = set(pid for pid, p in procs.items() if p[3])
        ours |= set(pid for pid, p in procs.items() if p[1] in ours)
        return dict((pid, (procs[pid][0], procs[pid][2])) for pid in ours)

    def _playbook(self, args, tree, env, log):
        """ansible-playbook from the tree's root (its ansible.cfg), memory sampled; bounded by BENCH_RUN_TIMEOUT."""
        with open(log, "w") as fh:
            proc = subprocess.Popen(args, cwd=str(tree.root), env=env, stdout=fh, stderr=subprocess.STDOUT)
            mem = MemSampler(proc.pid)
            mem.start()
            try:
                rc = proc.wait(timeout=self.run_timeout or None)
            except subprocess.TimeoutExpired:
                fh.write("\nbench: stopped after BENCH_RUN_TIMEOUT=%ss\n" % self.run_timeout)
                rc = self._stop_tree(proc, mem)
            except BaseException:
                self._stop_tree(proc, mem)
                raise
            finally:
                mem.halt.set()
                mem.join()
        return rc, mem

    @staticmethod
    def _stop_tree(proc, mem):
        """TERM the playbook and its workers (their own sessions), then KILL what is left."""
        pids = mem.tree()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            try:
                return proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                continue
        return proc.wait()

    @staticmethod
    def _windows(timer):
        """[(phase key, start epoch, end epoch)] per play, on the callback's clock (time.time(),
        the same clock the Vault server stamps its audit entries with on this machine)."""
        t0 = timer.get("t0_epoch", 0.0)
        return [(phase_key(p["name"]), t0 + p["start"], t0 + p["end"]) for p in timer.get("plays", [])]

    @staticmethod
    def _phases(timer):
        out = {}
        for play in timer.get("plays", []):
            key = phase_key(play["name"])
            out[key] = round(out.get(key, 0) + play["dur"], 2)
        return out

    def _audit(self, start, windows, rotated):
        """Vault requests of the run from the audit log, in total and per phase (play window)."""
        admin = self.info.get("admin", {})
        admin_names = {admin.get("mapping"), admin.get("cn"), "cert-%s" % admin.get("cn")} - {None}
        zero = {"requests": 0, "issue_sign": 0, "logins": 0, "admin_logins": 0}
        total = dict(zero, other={})
        phases = {}
        if self.audit_log.exists():
            with open(self.audit_log) as fh:
                fh.seek(start)
                for line in fh:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    path = (e.get("request") or {}).get("path", "")
                    kind = e.get("type")
                    if kind not in ("request", "response"):
                        continue
                    login = path.startswith("auth/") and path.endswith("/login")
                    try:
                        ts = iso_epoch(e["time"])
                    except (KeyError, ValueError):
                        ts = None
                    key = next((k for k, a, b in windows if ts is not None and a <= ts < b), OUTSIDE)
                    ph = phases.setdefault(key, dict(zero))
                    if kind == "response":
                        # who logged in is known from the response (the new token's metadata)
                        auth = (e.get("response") or {}).get("auth") or {}
                        who = {auth.get("display_name"), (auth.get("metadata") or {}).get("cert_name"),
                               (auth.get("metadata") or {}).get("common_name")}
                        if login and who & admin_names:
                            ph["admin_logins"] += 1
                            total["admin_logins"] += 1
                        continue
                    ph["requests"] += 1
                    total["requests"] += 1
                    parts = path.split("/")
                    if len(parts) > 2 and parts[1] in ("sign", "issue", "sign-verbatim"):
                        ph["issue_sign"] += 1
                        total["issue_sign"] += 1
                    elif login:
                        ph["logins"] += 1
                        total["logins"] += 1
                    else:
                        other = "/".join(parts[:2])
                        total["other"][other] = total["other"].get(other, 0) + 1
        total["phases"] = phases
        total["issue_per_rotated_slot"] = round(total["issue_sign"] / rotated, 2) if rotated else None
        total["admin_logins_max_per_phase"] = max((p["admin_logins"] for k, p in phases.items() if k != OUTSIDE),
                                                  default=0)
        return total

    @staticmethod
    def _probe_view(s):
        return {"attempts": s.get("attempts"), "failures": s.get("failures"),
                "failure_classes": s.get("failure_classes"), "max_gap_ms": s.get("max_gap_ms"),
                "outage_ms": Bench._outage_ms(s)}

    @staticmethod
    def _outage_ms(s):
        """First failed try (the first sample) to the last one (the summary's
        last_failure; the samples stop at 100), plus one interval."""
        samples = s.get("failure_samples") or []
        if not samples or not s.get("last_failure"):
            return 0.0
        return round((iso_epoch(s["last_failure"]) - iso_epoch(samples[0]["t"]) + PROBE_INTERVAL_S) * 1000.0, 1)

    @staticmethod
    def _restart_view(timer, listener):
        """Readiness lag: when the playbook saw Vault ready minus the server's first good answer
        (the prober's last failed try + one interval).

        "Seen ready" is, in this order: the first `ready_at` (epoch seconds) a task
        of the restart phase reports after the outage began (the restart step's own
        timestamp, no task overhead in it); else the first `ready_at` of any task
        after the outage began; else the end of the last vault_health task of the
        restart phase (the readiness task of versions without ready_at)."""
        view = {"probe_failures": listener.get("failures"), "outage_ms": Bench._outage_ms(listener),
                "failure_classes": listener.get("failure_classes")}
        samples = listener.get("failure_samples") or []
        if not listener.get("last_failure") or not samples:
            view["ready_detect_lag_ms"], view["ready_source"] = None, "no outage seen by the prober"
            return view
        down = iso_epoch(samples[0]["t"])
        good = iso_epoch(listener["last_failure"]) + PROBE_INTERVAL_S
        after = [r for r in timer.get("ready_at", []) if r["ready_at"] >= down]
        in_restart = [r for r in after if phase_key(r["play"]) == "restart"]
        if after:
            pick = min(in_restart or after, key=lambda r: r["ready_at"])
            detected = pick["ready_at"]
            view["ready_source"] = "ready_at of %s task %r" % (phase_key(pick["play"]), pick["task"])
        else:
            tasks = [t for t in timer.get("tasks", []) if t["action"].endswith("vault_health")
                     and phase_key(t.get("play", "")) == "restart"]
            detected = timer["t0_epoch"] + tasks[-1]["end"] if tasks else None
            view["ready_source"] = "end of the vault_health task" if tasks else "none (no ready_at, no vault_health task)"
        view["ready_detect_lag_ms"] = round((detected - good) * 1000.0, 1) if detected else None
        return view


def services_cpu_s(before, after, comms):
    """CPU seconds the processes of two service_ticks() snapshots spent between them, by program
    (``comms``): a process in both counts its difference, one started in between all of it (a
    restarted agent, an SSH master); one that exited in between (the agent it replaced) is not seen
    after its last snapshot."""
    if before is None or after is None:
        return None
    out = dict(("%s_cpu_s" % c, 0.0) for c in comms)
    hz = os.sysconf("SC_CLK_TCK")
    for pid, (comm, ticks) in after.items():
        old = before.get(pid)
        out["%s_cpu_s" % comm] += (ticks - (old[1] if old and old[0] == comm else 0)) / float(hz)
    return dict((k, round(v, 2)) for k, v in out.items())


# -- one fleet per N: the same runs over SSH on hosts of their own ------------------

def machine_busy_s():
    """CPU seconds the whole machine spent busy (every core, /proc/stat): with the run's wall time
    it says how much of the 2 cores the run had (others' jobs share them)."""
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return (sum(vals[:8]) - idle) / float(os.sysconf("SC_CLK_TCK"))


def cgroup_cpu_s(path):
    """usage_usec of a cgroup v2 folder (every process of its subtree), in seconds; None when absent."""
    try:
        with open(Path(path) / "cpu.stat") as fh:
            for line in fh:
                if line.startswith("usage_usec "):
                    return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return None


class CgroupSampler(threading.Thread):
    """Cumulative CPU seconds of groups of cgroup v2 folders (role -> folders), sampled every 100 ms,
    so the hosts' CPU can be cut along the callback's task windows (same clock, time.time())."""

    def __init__(self, groups, every=0.1):
        super().__init__(daemon=True)
        self.groups, self.every = groups, every
        self.samples = []  # [(epoch, {group: cumulative s})]
        self.halt = threading.Event()

    def sample(self):
        self.samples.append((time.time(), {g: sum(cgroup_cpu_s(p) or 0.0 for p in paths)
                                           for g, paths in self.groups.items()}))

    def run(self):
        while True:
            self.sample()
            if self.halt.wait(self.every):
                self.sample()
                return

    def at(self, t):
        """{group: cumulative s} at epoch t, interpolated between the samples around it."""
        xs = self.samples
        if not xs:
            return {}
        if t <= xs[0][0]:
            return dict(xs[0][1])
        if t >= xs[-1][0]:
            return dict(xs[-1][1])
        i = bisect.bisect_right([x[0] for x in xs], t)
        (ta, a), (tb, b) = xs[i - 1], xs[i]
        f = (t - ta) / (tb - ta) if tb > ta else 0.0
        return {g: a[g] + f * (b[g] - a[g]) for g in a}

    def between(self, t0, t1):
        a, b = self.at(t0), self.at(t1)
        return {g: round(b[g] - a[g], 3) for g in a}


class FleetBench(Bench):
    """One fleet of N app hosts (tests/fleet: network namespaces, systemd as PID 1, sshd, user
    units), the current tree's inventories/fleet over SSH, forks >= hosts.

    Each run starts with cold SSH (the ControlPersist masters of the previous run are closed, as
    a fresh AWX job would start); the masters live in a private control folder. Besides what a lab
    run records: the CPU time the fleet's hosts spent (their cgroups: modules, sshd, sudo,
    services), since on this machine every host shares the controller's cores."""

    target = "fleet"

    def __init__(self, n, net, workdir, trees, tree, forks=None):
        self.n, self.net = n, net
        self.apps = app_names(n)
        self.dir = workdir / ("fleet-%d" % n)
        self.work = workdir
        self.trees = trees
        self.tree = tree
        self.hosts = n + 3  # admin, vault, proxy, one per app
        self.forks = forks or max(self.hosts, int(os.environ.get("ANSIBLE_FORKS") or 10))
        self.lab = None
        self.leftovers = []
        self.last_rc = 0
        self.cp_dir = None
        env = {k: v for k, v in os.environ.items() if k not in SCRUB_ENV and k not in ("FLEET_APPS", "FLEET_NET")}
        self.env = dict(env, FLEET_DIR=str(self.dir), PATH="%s:%s" % (BIN, os.environ["PATH"]),
                        ANSIBLE_CALLBACK_PLUGINS=str(CALLBACKS), ANSIBLE_CALLBACKS_ENABLED="bench_timer",
                        ANSIBLE_FORCE_COLOR="0", ANSIBLE_FORKS=str(self.forks))
        self.run_timeout = float(os.environ.get("BENCH_RUN_TIMEOUT", "3600"))

    @staticmethod
    def module():
        if str(REPO / "tests" / "fleet") not in sys.path:
            sys.path.insert(0, str(REPO / "tests" / "fleet"))
        import fleet
        return fleet

    def up(self):
        fleet = self.module()
        if self.dir.exists():  # a fleet an interrupted bench left: its own apps and net
            stored = json.loads((self.dir / "fleet.json").read_text()) if (self.dir / "fleet.json").exists() else {}
            old = fleet.Fleet(dir=self.dir, apps=stored.get("apps") or self.apps, net=stored.get("net") or self.net)
            old.down(purge=True, log=lambda _m: None)
            if self.dir.exists():
                shutil.rmtree(self.dir)
        self.lab = fleet.Fleet(apps=list(self.apps), dir=self.dir, net=self.net)
        t0 = time.monotonic()
        self.lab.up(log=lambda _m: None)
        self.up_s = round(time.monotonic() - t0, 1)
        self.info = self.lab.info
        # a short private folder for ssh's ControlPath (a unix socket path has a length limit)
        import tempfile
        self.cp_dir = Path(tempfile.mkdtemp(prefix="vrbench-cp-"))
        self.env["ANSIBLE_SSH_CONTROL_PATH_DIR"] = str(self.cp_dir)
        # The audit device: a file in the server's own logs folder on its host (written by the
        # service user), read here through the host's folder; same clock (one kernel).
        self.audit_log = self.lab.p["vault_logs"] / "audit.log"
        add_audit_device(self.lab, self.lab.p["vault_config"], self.audit_log, self.lab.hp(self.audit_log),
                         lambda: self.lab.reload_unit("container-vaultprod"), "the fleet's")

    def close_ssh(self):
        """Close the SSH masters (ControlPersist) the runs left: the next run starts cold, and
        nothing of ours holds a connection to the hosts when they go down."""
        closed = 0
        if self.cp_dir and self.cp_dir.exists():
            for sock in self.cp_dir.iterdir():
                out = subprocess.run(["ssh", "-o", "ControlPath=%s" % sock, "-O", "exit", "fleet-host"],
                                     capture_output=True, text=True, timeout=15, check=False)
                closed += out.returncode == 0
                sock.unlink(missing_ok=True)
        return closed

    # The controller's SSH masters (ControlPersist): ansible-playbook does not wait for them, so
    # getrusage misses their CPU (the encryption of every task's traffic). The hosts' CPU is read
    # per host cgroup (hosts_cpu_s).
    SERVICE_COMMS = ("ssh",)

    def service_ticks(self):
        """CPU ticks of this bench's SSH masters now, pid -> (comm, ticks): the ssh processes whose
        command line names this fleet's ControlPath folder. before_run closes the previous run's
        masters, and the playbook's own ssh clients have exited when the run ends, so the snapshot
        after a run holds the masters the run started, with all their CPU."""
        if not self.cp_dir:
            return None
        return dict((pid, (comm, int(rest[11]) + int(rest[12])))
                    for pid, comm, rest, cmdline in _procs(self.SERVICE_COMMS) if str(self.cp_dir) in cmdline)

    def down(self, purge=False):
        """Close SSH, power every host off, remove what the fleet made; self.leftovers = what is left."""
        if self.lab is None:
            return
        self.close_ssh()
        if self.cp_dir:
            shutil.rmtree(self.cp_dir, ignore_errors=True)
        self.lab.down(purge=purge, log=lambda _m: None)
        deadline = time.monotonic() + 10  # a process of a host may need a moment to go
        while True:
            self.leftovers = self.lab.leftovers()
            if not self.leftovers or time.monotonic() > deadline:
                break
            time.sleep(0.5)

    def playbook_args(self, tree):
        return ["-i", str(tree.root / "inventories" / "fleet"), "playbooks/rotate_all.yml", "-l", "fleet"]

    def init_json(self):
        return self.lab.p["init_json"]

    def probe_targets(self):
        hosts, ports = self.info["hosts"], self.info["ports"]
        return {"listener": (hosts["fleet-vaultprod"]["address"], ports["vault"]),
                "proxy": (self.info["endpoints"]["proxy"]["host"], self.info["endpoints"]["proxy"]["port"])}

    def admin_identity(self):
        p = self.lab.p
        return p["admin_ca"], p["admin_crt"], p["admin_key"]

    def cert_files(self):
        p = self.lab.p
        secret = ("root_key", "int_key", "init_json")
        files = [str(v) for k, v in p.items() if isinstance(v, Path) and k not in secret]
        for a in p["apps"].values():
            files += [str(v) for v in a.values() if isinstance(v, Path)]
        return files

    def ensure_ready(self):
        did = Bench.ensure_ready(self)
        if self.last_rc:  # a failed run may leave a unit stopped
            for u in self.lab.units():
                if not self.lab.unit_pid(u["name"]):
                    did.append(self.lab.start_unit(u["name"]))
        return did

    def before_run(self):
        closed = self.close_ssh()
        self._cpu0 = self.host_cpu()
        groups = {}
        for h in self.lab.hosts.values():
            groups.setdefault("apps" if h.role == "app" else h.role, []).append(h.cgroups[1])
        self._sampler = CgroupSampler(groups)
        self._sampler.start()
        return ["closed %d SSH masters of the previous run" % closed] if closed else []

    def host_cpu(self):
        out = {}
        for h in self.lab.hosts.values():
            out[h.name] = cgroup_cpu_s(h.cgroups[1])
        return out

    def run(self, tree, kind, rep):
        self._sampler = None
        try:
            res = Bench.run(self, tree, kind, rep)
        finally:
            if self._sampler:
                self._sampler.halt.set()
                self._sampler.join()
        cpu1 = self.host_cpu()
        per = {h: round(cpu1[h] - self._cpu0[h], 2) for h in cpu1
               if cpu1.get(h) is not None and self._cpu0.get(h) is not None}
        roles = {}
        for h in self.lab.hosts.values():
            if h.name in per:
                key = "apps" if h.role == "app" else h.role
                roles[key] = round(roles.get(key, 0.0) + per[h.name], 2)
        res["fleet"] = {"hosts": self.hosts, "forks": self.forks, "up_s": self.up_s,
                        # per host: from before the probers start to after they stop; the totals
                        # below are cut to the playbook's window when the sampler ran
                        "hosts_cpu_s": round(sum(per.values()), 2) if per else None, "host_cpu_s": per,
                        "hosts_cpu_by_role_s": roles}
        # the hosts' CPU cut along the task windows (a task's window is its wave: from its start
        # to the next task's start), summed per task key like task_times
        timer = json.loads(Path(res["timer"]).read_text()) if Path(res["timer"]).exists() else {}
        t0 = timer.get("t0_epoch")
        if t0 and self._sampler and self._sampler.samples:
            # the playbook's own window (not the probers' start and stop around it)
            roles = {g: round(v, 2) for g, v in self._sampler.between(t0, t0 + (timer.get("wall_s") or 0)).items()}
            res["fleet"]["hosts_cpu_by_role_s"] = roles
            res["fleet"]["hosts_cpu_s"] = round(sum(roles.values()), 2)
            per_task = {}
            for t in timer.get("tasks", []):
                key = task_key(t)
                acc = per_task.setdefault(key, {})
                for g, v in self._sampler.between(t0 + t["start"], t0 + t["end"]).items():
                    acc[g] = round(acc.get(g, 0.0) + v, 3)
            res["task_host_cpu"] = per_task
        self.last_rc = res["rc"]
        return res


def task_key(t):
    return "%s | %s | %s" % (phase_key(t.get("play", "")), t["name"], t["action"])


def task_times(timer):
    """Per task (phase | task name | action): [occurrences, summed seconds, summed host results]."""
    out = {}
    for t in timer.get("tasks", []):
        key = task_key(t)
        acc = out.setdefault(key, [0, 0.0, 0])
        acc[0] += 1
        acc[1] = round(acc[1] + (t.get("dur") or 0.0), 3)
        acc[2] += t.get("hosts", 0)
    return out


def host_cpu_of(rs, key):
    """The hosts' CPU per role during task `key`, averaged over the runs (None without samples)."""
    vals = [r["task_host_cpu"].get(key, {}) for r in rs if r.get("task_host_cpu") is not None]
    if not vals:
        return None
    groups = {g for v in vals for g in v}
    return {g: statistics.mean(v.get(g, 0.0) for v in vals) for g in groups}


def growth(runs, top=12):
    """Where the time grows from the smallest to the largest N (current tree, per target and kind):
    per phase and per task (summed over its occurrences, averaged over the repetitions)."""
    out = []
    groups = {}
    for r in runs:
        if r["side"] == "current" and r.get("task_times"):
            groups.setdefault((r["target"], r["kind"]), {}).setdefault(r["n"], []).append(r)
    for (target, kind), by_n in sorted(groups.items()):
        if len(by_n) < 2:
            continue
        lo, hi = min(by_n), max(by_n)

        def mean(rs, field):
            acc = {}
            for r in rs:
                for k, v in r[field].items():
                    acc.setdefault(k, []).append(v)
            return acc

        tl, th = mean(by_n[lo], "task_times"), mean(by_n[hi], "task_times")
        rows = []
        for k in set(tl) | set(th):
            a = [statistics.mean(x[i] for x in tl[k]) if k in tl else 0 for i in range(3)]
            b = [statistics.mean(x[i] for x in th[k]) if k in th else 0 for i in range(3)]
            row = {"task": k, "count": [a[0], b[0]], "s": [round(a[1], 2), round(b[1], 2)],
                   "host_results": [a[2], b[2]], "delta_s": round(b[1] - a[1], 2)}
            cl, ch = host_cpu_of(by_n[lo], k), host_cpu_of(by_n[hi], k)
            if cl is not None and ch is not None:
                row["hosts_cpu_s"] = [round(sum(cl.values()), 2), round(sum(ch.values()), 2)]
                row["apps_cpu_s"] = [round(cl.get("apps", 0.0), 2), round(ch.get("apps", 0.0), 2)]
            rows.append(row)
        rows.sort(key=lambda x: -x["delta_s"])
        pl, ph = mean(by_n[lo], "phases_s"), mean(by_n[hi], "phases_s")
        phases = {k: [round(statistics.mean(pl.get(k, [0])), 2), round(statistics.mean(ph.get(k, [0])), 2)]
                  for k in dict.fromkeys(list(pl) + list(ph))}
        wl = statistics.median(r["wall_s"] for r in by_n[lo])
        wh = statistics.median(r["wall_s"] for r in by_n[hi])
        out.append({"target": target, "kind": kind, "n_from": lo, "n_to": hi, "wall_s": [wl, wh],
                    "tasks_delta_s": round(sum(x["delta_s"] for x in rows), 2), "phases_s": phases,
                    "top_tasks": rows[:top]})
    return out


# -- summary and table ------------------------------------------------------------

def machine():
    def ver(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    import ansible
    return {"host": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "ansible_core": ansible.__version__,
            "bao": ver([str(BIN / "bao"), "version"]), "nginx": ver([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
            "loadavg_start": os.getloadavg()}


def _probed(runs, name, key, how):
    """sum/max of a prober's figure over runs; None when the runs had no probers (BENCH_PROBES=0)."""
    seen = [r["probes"][name][key] or 0 for r in runs if name in r["probes"]]
    return how(seen) if seen else None


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r.get("target", "lab"), r["n"], r["kind"], r["side"]), []).append(r)
    rows = []
    for (target, n, kind, side), rs in sorted(groups.items(), key=lambda kv: (
            TARGETS.index(kv[0][0]), kv[0][1], kv[0][2], kv[0][3] != "current")):
        walls = [r["wall_s"] for r in rs]
        phase_keys = list(dict.fromkeys(k for r in rs for k in r["phases_s"]))
        vault_keys = list(dict.fromkeys(k for r in rs for k in r["vault"]["phases"]))
        row = {"target": target, "n": n, "kind": kind, "side": side, "reps": len(rs),
               "ok": all(r["rc"] == 0 for r in rs),
               "loaded_ok": all(r["loaded"]["ok"] for r in rs),
               "collection": sorted({r["loaded"]["collection"] or "?" for r in rs}),
               "wall_median_s": round(statistics.median(walls), 2), "wall_min_s": min(walls), "wall_max_s": max(walls),
               "cpu_median_s": _median(r.get("controller_cpu_s") for r in rs),
               "machine_busy_median_s": _median(r.get("machine_busy_cpu_s") for r in rs),
               "cpu_split_median_s": dict((k, _median((r.get("cpu_split_s") or {}).get(k) for r in rs))
                                          for k in CPU_SPLIT),
               "tasks": _median(r["tasks_executed"] for r in rs),
               "vault_requests": _median(r["vault"]["requests"] for r in rs),
               "issue_sign": _median(r["vault"]["issue_sign"] for r in rs),
               "rotated_slots": _median(r["rotated_slots"] for r in rs),
               "issue_per_slot": _median(r["vault"]["issue_per_rotated_slot"] for r in rs),
               "logins": _median(r["vault"]["logins"] for r in rs),
               "admin_logins": _median(r["vault"]["admin_logins"] for r in rs),
               "admin_logins_max_per_phase": max(r["vault"]["admin_logins_max_per_phase"] for r in rs),
               "peak_pss_mb": max(r["peak_pss_mb"] for r in rs), "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
               "listener_fail": _probed(rs, "listener", "failures", sum),
               "listener_max_gap_ms": _probed(rs, "listener", "max_gap_ms", max),
               "proxy_fail": _probed(rs, "proxy", "failures", sum),
               "proxy_max_gap_ms": _probed(rs, "proxy", "max_gap_ms", max),
               "loadavg_1m": [min(r["loadavg_start"][0] for r in rs), max(r["loadavg_end"][0] for r in rs)],
               "phases_median_s": {k: round(statistics.median([r["phases_s"].get(k, 0) for r in rs]), 2)
                                   for k in phase_keys},
               "vault_phases_median": {k: {m: _median(r["vault"]["phases"].get(k, {}).get(m, 0) for r in rs)
                                           for m in ("requests", "issue_sign", "logins", "admin_logins")}
                                       for k in vault_keys}}
        if target == "fleet":
            row["fleet_hosts"] = rs[0]["fleet"]["hosts"]
            row["forks"] = rs[0]["fleet"]["forks"]
            row["fleet_up_s"] = rs[0]["fleet"]["up_s"]
            row["hosts_cpu_median_s"] = _median(r["fleet"]["hosts_cpu_s"] for r in rs)
            row["hosts_cpu_by_role_median_s"] = {
                k: _median(r["fleet"]["hosts_cpu_by_role_s"].get(k) for r in rs)
                for k in ("admin", "vault", "proxy", "apps")}
        if kind == "restart" and all(r.get("restart") for r in rs):
            row["listener_outage_ms"] = max(r["restart"]["outage_ms"] for r in rs)
            row["ready_detect_lag_ms"] = _median(r["restart"].get("ready_detect_lag_ms") for r in rs)
            row["ready_source"] = sorted({r["restart"].get("ready_source") for r in rs})
        if kind == "noop" and any(r["vault"]["issue_sign"] for r in rs):
            row["warning"] = "a no-op run signed or issued certificates: it was not a no-op"
        rows.append(row)
    return rows


# a run's CPU by who spent it: ansible-playbook itself, its workers (and the commands they waited for),
# the lab's services (bao: the server and the agents; nginx), the fleet's SSH masters (ssh)
CPU_SPLIT = ("main_cpu_s", "workers_cpu_s", "bao_cpu_s", "nginx_cpu_s", "ssh_cpu_s")
RATIO_FIELDS = ("wall_median_s", "cpu_median_s", "tasks", "vault_requests", "logins", "peak_pss_mb", "peak_rss_mb")
# issue 12: fleet wall time from 2 to 8 app hosts grows by at most this factor (forks >= hosts)
FLEET_TARGET_RATIO = 1.5


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def compare(rows):
    """current / baseline per (N, kind), for the fields where smaller is better."""
    by = {(r["target"], r["n"], r["kind"], r["side"]): r for r in rows}
    out = []
    for (target, n, kind, side), cur in by.items():
        base = by.get((target, n, kind, "baseline"))
        if side == "current" and base:
            out.append(dict({"target": target, "n": n, "kind": kind},
                            **{f: ratio(cur[f], base[f]) for f in RATIO_FIELDS},
                            phases_s={k: ratio(v, base["phases_median_s"].get(k))
                                      for k, v in cur["phases_median_s"].items()}))
    return out


def slopes(rows):
    """Seconds per extra app and the ratio largest/smallest N (wall, CPU, tasks), per target, side and kind;
    for the fleet the ratio is held against issue 12's target (FLEET_TARGET_RATIO)."""
    out = []
    groups = {}
    for r in rows:
        groups.setdefault((r["target"], r["side"], r["kind"]), []).append(r)
    for (target, side, kind), rs in sorted(groups.items(), key=lambda kv: (TARGETS.index(kv[0][0]), kv[0][1:])):
        rs = sorted(rs, key=lambda r: r["n"])
        if len(rs) >= 2:
            lo, hi = rs[0], rs[-1]
            sl = {"target": target, "side": side, "kind": kind, "n_from": lo["n"], "n_to": hi["n"],
                  "wall_s": [lo["wall_median_s"], hi["wall_median_s"]],
                  "s_per_app": round((hi["wall_median_s"] - lo["wall_median_s"]) / (hi["n"] - lo["n"]), 3),
                  "pss_mb_per_app": round((hi["peak_pss_mb"] - lo["peak_pss_mb"]) / (hi["n"] - lo["n"]), 2),
                  "wall_ratio": ratio(hi["wall_median_s"], lo["wall_median_s"]),
                  "cpu_ratio": ratio(hi["cpu_median_s"], lo["cpu_median_s"]),
                  "tasks_ratio": ratio(hi["tasks"], lo["tasks"])}
            per_app = dict((k, _per_app(lo.get("cpu_split_median_s", {}).get(k), hi.get("cpu_split_median_s", {}).get(k),
                                        hi["n"] - lo["n"])) for k in CPU_SPLIT)
            per_app["machine_busy_cpu_s"] = _per_app(lo.get("machine_busy_median_s"), hi.get("machine_busy_median_s"),
                                                     hi["n"] - lo["n"])
            sl["cpu_s_per_app"] = per_app
            if target == "fleet":
                sl["hosts_cpu_ratio"] = ratio(hi.get("hosts_cpu_median_s"), lo.get("hosts_cpu_median_s"))
                sl["target_ratio"] = FLEET_TARGET_RATIO
                sl["target_met"] = sl["wall_ratio"] is not None and sl["wall_ratio"] <= FLEET_TARGET_RATIO
                # What grows on the controller itself per extra app host (its processes and its SSH
                # masters): the part that stays when the app hosts have cores of their own.
                own = [per_app.get(k) for k in ("main_cpu_s", "workers_cpu_s", "ssh_cpu_s")]
                sl["controller_cpu_s_per_app"] = None if None in own else round(sum(own), 3)
                lo_h, hi_h = lo.get("hosts_cpu_by_role_median_s") or {}, hi.get("hosts_cpu_by_role_median_s") or {}
                sl["hosts_cpu_s_per_app"] = dict((k, _per_app(lo_h.get(k), hi_h.get(k), hi["n"] - lo["n"]))
                                                 for k in sorted(set(lo_h) | set(hi_h)))
            out.append(sl)
    return out


def _per_app(lo, hi, dn):
    return None if lo is None or hi is None or not dn else round((hi - lo) / dn, 3)


def _f(v, fmt, none="-"):
    return none if v is None else fmt % v


def _x(v):
    return "-" if v is None else "%.2fx" % v


def table(result):
    rows, cmp_rows = result["summary"], result["compare"]
    head = ("tgt", "N", "kind", "side", "reps", "wall med", "min..max", "cpu", "tasks", "req", "sign", "slots",
            "iss/slot", "logins", "adm/ph", "PSS MB", "RSS MB", "lsn fail", "lsn gap", "prx fail", "prx gap", "load")
    fmt = "%-5s %-3s %-7s %-8s %4s %9s %13s %6s %5s %5s %4s %5s %8s %6s %6s %6s %6s %8s %8s %8s %8s %9s"
    lines = [fmt % head]
    cmp_by = {(c["target"], c["n"], c["kind"]): c for c in cmp_rows}
    for r in rows:
        lines.append(fmt % (
            r["target"], r["n"], r["kind"], r["side"], r["reps"], "%.1fs" % r["wall_median_s"],
            "%.1f..%.1f" % (r["wall_min_s"], r["wall_max_s"]), _f(r["cpu_median_s"], "%.0fs"), _f(r["tasks"], "%d"),
            _f(r["vault_requests"], "%d"), _f(r["issue_sign"], "%d"), _f(r["rotated_slots"], "%d"),
            _f(r["issue_per_slot"], "%.2f"), _f(r["logins"], "%d"), r["admin_logins_max_per_phase"],
            "%.0f" % r["peak_pss_mb"], "%.0f" % r["peak_rss_mb"], _f(r["listener_fail"], "%d"),
            _f(r["listener_max_gap_ms"], "%.0fms"), _f(r["proxy_fail"], "%d"), _f(r["proxy_max_gap_ms"], "%.0fms"),
            "%.1f-%.1f" % tuple(r["loadavg_1m"])))
        c = cmp_by.get((r["target"], r["n"], r["kind"]))
        if c and r["side"] == "baseline":
            lines.append(fmt % (r["target"], r["n"], r["kind"], "cur/base", "", _x(c["wall_median_s"]), "",
                                _x(c["cpu_median_s"]),
                                _x(c["tasks"]), _x(c["vault_requests"]), "", "", "", _x(c["logins"]), "",
                                _x(c["peak_pss_mb"]), _x(c["peak_rss_mb"]), "", "", "", "", ""))
    for r in rows:
        if r.get("warning"):
            lines.append("WARNING %s N=%d %s %s: %s" % (r["target"], r["n"], r["kind"], r["side"], r["warning"]))
        if not r["ok"]:
            lines.append("WARNING %s N=%d %s %s: a run failed (rc != 0): see its log in the JSON"
                         % (r["target"], r["n"], r["kind"], r["side"]))
    fleet_rows = [r for r in rows if r["target"] == "fleet"]
    if fleet_rows:
        lines.append("")
        lines.append("fleet (hosts of their own over SSH, all on this machine's cores): hosts cpu = CPU the hosts "
                     "spent (modules, sshd, sudo, services, the probers' handshakes on vault and proxy); busy = the "
                     "whole machine's busy CPU during the run, everyone's")
        for r in fleet_rows:
            roles = r["hosts_cpu_by_role_median_s"]
            lines.append("  N=%-3d %-7s hosts %2d forks %2d  wall %6.1fs  controller cpu %5s  hosts cpu %5s "
                         "(apps %s = %s/app, vault %s, proxy %s, admin %s)  busy %s of %.0fs x %d cores  "
                         "(fleet up %.0fs)" % (
                             r["n"], r["kind"], r["fleet_hosts"], r["forks"], r["wall_median_s"],
                             _f(r["cpu_median_s"], "%.1fs"), _f(r["hosts_cpu_median_s"], "%.1fs"),
                             _f(roles["apps"], "%.1f"), _f(roles["apps"] and roles["apps"] / r["n"], "%.1f"),
                             _f(roles["vault"], "%.1f"), _f(roles["proxy"], "%.1f"), _f(roles["admin"], "%.1f"),
                             _f(r["machine_busy_median_s"], "%.0fs"), r["wall_median_s"], os.cpu_count() or 1,
                             r["fleet_up_s"]))
    sl = result["slopes"]
    if sl:
        lines.append("")
        lines.append("scaling (smallest to largest N: wall ratio, s and PSS MB per extra app):")
        for s in sl:
            verdict = ""
            if "target_met" in s:
                verdict = "  target <= %.1fx: %s; hosts cpu %s" % (s["target_ratio"], "met" if s["target_met"]
                                                                   else "MISSED", _x(s["hosts_cpu_ratio"]))
            lines.append("  %-5s %-8s %-7s N=%d..%d  wall %.1f -> %.1f s = %s (cpu %s, tasks %s)  %.2f s/app  "
                         "%.1f MB/app%s" % (s["target"], s["side"], s["kind"], s["n_from"], s["n_to"], s["wall_s"][0],
                                            s["wall_s"][1], _x(s["wall_ratio"]), _x(s["cpu_ratio"]),
                                            _x(s["tasks_ratio"]), s["s_per_app"], s["pss_mb_per_app"], verdict))
            c = s.get("cpu_s_per_app") or {}
            own = s.get("controller_cpu_s_per_app")
            if own is not None:
                h = s.get("hosts_cpu_s_per_app") or {}
                lines.append("  %-5s %-8s %-7s   controller CPU-s per extra app host: ansible-playbook %s, its workers "
                             "%s, ssh masters %s = %.3f, %.2f s on this machine's %d cores; the hosts' CPU-s per "
                             "extra app host: apps %s, vault %s, proxy %s, admin %s" % (
                                 s["target"], s["side"], s["kind"], _f(c.get("main_cpu_s"), "%.3f"),
                                 _f(c.get("workers_cpu_s"), "%.3f"), _f(c.get("ssh_cpu_s"), "%.3f"), own,
                                 own / (os.cpu_count() or 1), os.cpu_count() or 1, _f(h.get("apps"), "%.2f"),
                                 _f(h.get("vault"), "%.2f"), _f(h.get("proxy"), "%.2f"), _f(h.get("admin"), "%.2f")))
            if c.get("bao_cpu_s") is not None:
                lines.append("  %-5s %-8s %-7s   CPU-s per extra app: ansible-playbook %s, its workers %s, bao %s, "
                             "nginx %s; the whole machine %s" % (
                                 s["target"], s["side"], s["kind"], _f(c.get("main_cpu_s"), "%.3f"),
                                 _f(c.get("workers_cpu_s"), "%.3f"), _f(c.get("bao_cpu_s"), "%.3f"),
                                 _f(c.get("nginx_cpu_s"), "%.3f"), _f(c.get("machine_busy_cpu_s"), "%.2f")))
    for g in result.get("growth", []):
        if g["target"] != "fleet":
            continue  # the lab's are in the JSON (growth)
        lines.append("")
        lines.append("fleet %s: where the time grows from N=%d to N=%d (wall %.1f -> %.1f s; task waves %+.1f s in all)"
                     % (g["kind"], g["n_from"], g["n_to"], g["wall_s"][0], g["wall_s"][1], g["tasks_delta_s"]))
        lines.append("  phases: " + "  ".join("%s %.1f->%.1f" % (k, v[0], v[1]) for k, v in g["phases_s"].items()))
        for t in g["top_tasks"][:8]:
            cpu = ""
            if "hosts_cpu_s" in t:
                cpu = "  hosts cpu %4.1f -> %4.1f s (apps %4.1f -> %4.1f)" % (
                    t["hosts_cpu_s"][0], t["hosts_cpu_s"][1], t["apps_cpu_s"][0], t["apps_cpu_s"][1])
            lines.append("  %+6.1fs  %5.1f -> %5.1f s  x%g -> x%g, host results %g -> %g%s  %s" % (
                t["delta_s"], t["s"][0], t["s"][1], t["count"][0], t["count"][1], t["host_results"][0],
                t["host_results"][1], cpu, t["task"].replace(COLLECTION_PREFIX, "")))
    lines.append("")
    lines.append("per phase (median): s = play time, req = Vault requests, sign = sign/issue, login = cert logins, "
                 "adm = admin logins")
    groups = {}
    for r in rows:
        groups.setdefault((r["target"], r["n"], r["kind"]), {})[r["side"]] = r
    for (target, n, kind), sides in groups.items():
        order = [s for s in ("current", "baseline") if s in sides]
        keys = list(dict.fromkeys(k for s in order for k in list(sides[s]["phases_median_s"]) +
                                  list(sides[s]["vault_phases_median"])))
        lines.append("  %s N=%d %s" % (target, n, kind))
        lines.append("    %-16s" % "phase" + "".join("| %-8s %6s %4s %4s %5s %3s " % (s, "s", "req", "sign", "login", "adm")
                                                  for s in order) + ("| cur/base s" if len(order) == 2 else ""))
        for k in keys:
            cells = []
            for s in order:
                v = sides[s]["vault_phases_median"].get(k, {})
                cells.append("| %-8s %6s %4s %4s %5s %3s " % (
                    "", _f(sides[s]["phases_median_s"].get(k), "%.1f"), _f(v.get("requests"), "%d"),
                    _f(v.get("issue_sign"), "%d"), _f(v.get("logins"), "%d"), _f(v.get("admin_logins"), "%d")))
            tail = ""
            if len(order) == 2:
                tail = "| " + _x(ratio(sides["current"]["phases_median_s"].get(k),
                                       sides["baseline"]["phases_median_s"].get(k)))
            lines.append("    %-16s" % k + "".join(cells) + tail)
    for r in rows:
        if r["kind"] == "restart" and "listener_outage_ms" in r:
            lines.append("  %s N=%d restart %s: listener outage %.0f ms, readiness seen %s ms after the first good "
                         "answer (%s)" % (r["target"], r["n"], r["side"], r["listener_outage_ms"],
                                          _f(r["ready_detect_lag_ms"], "%.0f"), ", ".join(r["ready_source"])))
    lines.append("")
    for side, tree in result["trees"].items():
        rs = [r for r in rows if r["side"] == side]
        ok = all(r["loaded_ok"] for r in rs)
        colls = sorted({c for r in rs for c in r["collection"]})
        lines.append("%s: %s @ %s%s; collection loaded from %s: %s" % (
            side, tree["root"], tree["sha"][:7],
            " (+%d uncommitted changes)" % tree["uncommitted_changes"] if tree["uncommitted_changes"] else "",
            ", ".join(colls) or "-", "verified on every run" if ok else "NOT VERIFIED (see loaded in the JSON)"))
    return "\n".join(lines)


def save_copy(out, result):
    """BENCH_SAVE=1: keep the result under bench/results/ (committed by hand when it is notable)."""
    dest_dir = REPO / "bench" / "results"
    dest_dir.mkdir(exist_ok=True)
    stamp = result["started"]  # 20261129T193500Z
    cfg = result["config"]
    parts = []
    if "lab" in cfg.get("targets", ["lab"]):
        parts.append("n%s" % "-".join(str(n) for n in cfg["apps"]))
    if "fleet" in cfg.get("targets", []):
        parts.append("fleet-n%s" % "-".join(str(n) for n in cfg["fleet_apps"]))
    name = "%s-%s-%s-%s" % (stamp[:4], stamp[4:6], stamp[6:8], "-".join(parts))
    if "baseline" in result["trees"]:
        name += "-vs-%s" % result["trees"]["baseline"]["sha"][:7]
    dest = dest_dir / (name + ".json")
    if dest.exists():
        dest = dest_dir / ("%s-%s.json" % (name, stamp[9:15]))
    shutil.copyfile(out, dest)
    return dest


def _sigterm(signum, _frame):
    """A bench stopped from outside still brings its lab or fleet down (the finally blocks)."""
    raise KeyboardInterrupt("signal %d" % signum)


def main():
    targets = env_list("BENCH_TARGETS", "lab")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise SystemExit("bench: BENCH_TARGETS=%r: the targets are %s (default: lab)"
                         % (os.environ.get("BENCH_TARGETS"), " and ".join(TARGETS)))
    if "fleet" in targets and os.geteuid() != 0:
        raise SystemExit("bench: the fleet needs root (network namespaces, mounts, cgroups): run as root, "
                         "or BENCH_TARGETS=lab")
    signal.signal(signal.SIGTERM, _sigterm)
    ns = [int(x) for x in env_list("BENCH_APPS", "2 8 32")] if "lab" in targets else []
    fleet_ns = [int(x) for x in env_list("BENCH_FLEET_APPS", "2 8")] if "fleet" in targets else []
    fleet_net = int(os.environ.get("BENCH_FLEET_NET", "20"))
    fleet_forks = int(os.environ["BENCH_FLEET_FORKS"]) if os.environ.get("BENCH_FLEET_FORKS") else None
    base_ns = [int(x) for x in env_list("BENCH_BASELINE_APPS", "2")]
    reps = int(os.environ.get("BENCH_REPS", "1"))
    kinds = env_list("BENCH_KINDS", "forced noop")
    restart = env_flag("BENCH_RESTART", "1")
    port_base = int(os.environ.get("BENCH_PORT_BASE", "31000"))
    workdir = Path(os.environ.get("BENCH_WORKDIR", str(REPO / ".cache" / "bench"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(os.environ.get("BENCH_OUT", str(workdir / ("bench-%s.json" % stamp))))
    trees = [current_tree()]
    ref = baseline_ref() if ns else None  # the baseline runs on the lab only (df581d1 has no fleet)
    if ref:
        trees.append(baseline_tree(ref, workdir))
    for tree in trees:
        print("bench: %s" % tree.describe(), flush=True)
    result = {"format": FORMAT, "started": stamp, "machine": machine(),
              "config": {"targets": targets, "apps": ns, "fleet_apps": fleet_ns, "fleet_net": fleet_net,
                         "fleet_forks": fleet_forks or "max(hosts, ANSIBLE_FORKS or 10)",
                         "baseline_apps": base_ns if ref else [], "reps": reps, "kinds": kinds,
                         "restart": restart, "port_base": port_base, "baseline_ref": ref,
                         "run_timeout_s": float(os.environ.get("BENCH_RUN_TIMEOUT", "3600"))},
              "trees": {t.side: t.as_json() for t in trees}, "runs": []}

    def save():  # after every run, so an interrupted bench keeps what it measured
        result["summary"] = summarize(result["runs"])
        result["compare"] = compare(result["summary"])
        result["slopes"] = slopes(result["summary"])
        result["growth"] = growth(result["runs"])
        result["machine"]["loadavg_end"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1))
        shutil.copyfile(out, workdir / "latest.json")

    def record(r):
        result["runs"].append(r)
        save()
        v = r["vault"]
        print("bench: %s N=%d %-7s #%d %-8s rc=%d %.1fs cpu=%.0fs%s tasks=%s vault=%d sign=%d/%d slots PSS=%.0fMB "
              "lsn_fail=%s prx_fail=%s load=%.1f %s%s" % (
                  r["target"], r["n"], r["kind"], r["rep"], r["side"], r["rc"], r["wall_s"], r["controller_cpu_s"],
                  " hosts_cpu=%.0fs" % r["fleet"]["hosts_cpu_s"] if (r.get("fleet") or {}).get("hosts_cpu_s")
                  is not None else "",
                  r["tasks_executed"], v["requests"], v["issue_sign"], r["rotated_slots"], r["peak_pss_mb"],
                  (r["probes"].get("listener") or {}).get("failures", "-"),
                  (r["probes"].get("proxy") or {}).get("failures", "-"), r["loadavg_end"][0],
                  "collection " + str(r["loaded"]["collection"]) if r["loaded"]["ok"] else
                  "COLLECTION NOT VERIFIED: %s" % r["loaded"],
                  "".join(" [%s]" % f for f in r["lab_fixups"])), flush=True)

    for i, n in enumerate(ns):
        # baseline first, then current; the next repetition starts with the other one
        sides = [t for t in reversed(trees) if t.side == "current" or n in base_ns]
        # Each tree on a lab of its own kind (lab_module), both up side by side, runs alternated.
        benches = dict((t.side, Bench(n, port_base + (0 if t.side == "current" else 100), workdir, trees, lab_tree=t))
                       for t in sides)
        try:
            for tree in sides:
                print("bench: N=%d: %s lab up (%s)" % (n, tree.side, benches[tree.side].dir), flush=True)
                benches[tree.side].up()
            # No warm-up: on the fresh lab every slot is due, so the first forced
            # run does exactly the work of any other forced run.
            for rep in range(1, reps + 1):
                order = sides if rep % 2 else list(reversed(sides))
                for kind in kinds:
                    for tree in order:
                        record(benches[tree.side].run(tree, kind, rep))
            if restart and i == 0:
                for tree in sides:
                    record(benches[tree.side].run(tree, "restart", 1))
        finally:
            for b in benches.values():
                b.down(purge=os.environ.get("BENCH_KEEP") is None)
    # The fleet: the current tree only (the baseline predates the fleet inventory), forks >= hosts.
    result["fleet_leftovers"] = {}
    for n in fleet_ns:
        b = FleetBench(n, fleet_net, workdir, trees, trees[0], forks=fleet_forks)
        print("bench: fleet N=%d: up (%s, %d hosts, 10.212.%d.0/24, forks %d)" % (n, b.dir, b.hosts, fleet_net,
                                                                                    b.forks), flush=True)
        try:
            b.up()
            print("bench: fleet N=%d: up in %.1f s" % (n, b.up_s), flush=True)
            for rep in range(1, reps + 1):
                for kind in kinds:
                    record(b.run(trees[0], kind, rep))
            if restart:
                record(b.run(trees[0], "restart", 1))
        finally:
            t0 = time.monotonic()
            b.down(purge=os.environ.get("BENCH_KEEP") is None)
            result["fleet_leftovers"][str(n)] = b.leftovers
            print("bench: fleet N=%d: down in %.1f s%s" % (n, time.monotonic() - t0, "; LEFT BEHIND: %s" % b.leftovers
                                                          if b.leftovers else ", nothing left"), flush=True)
            save()
    save()
    print()
    print(table(result))
    print("\nJSON: %s" % out)
    if env_flag("BENCH_SAVE", "0"):
        print("saved: %s" % save_copy(out, result))
    ok = all(r["rc"] == 0 and r["loaded"]["ok"] for r in result["runs"])
    left = {n: v for n, v in result.get("fleet_leftovers", {}).items() if v}
    if left:
        print("bench: the fleet left things behind: %s" % left)
    return 0 if ok and not left else 1


if __name__ == "__main__":
    sys.exit(main())
