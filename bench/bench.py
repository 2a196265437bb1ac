#!/usr/bin/env python3
"""make bench: how fast rotate_all is, how it scales with apps, whether clients notice.

For each N in BENCH_APPS (default "2 8"; the full run is "2 8 32") it builds a
private lab with N apps (ports from BENCH_PORT_BASE, default 31000: listener
+0, raft +1, proxy +2, frontends +500+i), an inventory with one host per app,
enables a file audit device (to count every Vault request from the server's
side), then runs `rotate_all.yml -l lab`:

- forced (`-e vault_rotate_force=true`): every slot rotates;
- no-op: nothing due (right after a forced run);
- restart (BENCH_RESTART=1, first N only): forced + `vault_rotate_restart_vault=always`
  with the unseal keys (extra-vars file 0600), so the restart downtime and the
  readiness detection are measured, not guessed;

BENCH_REPS times each (default 1; the issue's full run is 3). During every run
tests/lab/probe.py opens a TLS connection every 20 ms with the admin identity
to the listener and through the proxy. Reported per run: wall time, per-phase
time, tasks executed, Vault requests (audit log: total, issuance per rotated
slot, logins), controller peak RSS (ansible-playbook + workers, sampled), probe
failures and the longest outage, restart readiness lag. Median and spread
(min..max) per (N, kind). Output: a table on stdout and JSON in BENCH_OUT
(default .cache/bench/bench-<stamp>.json, also latest.json), with the machine
and versions. Secrets (root token, unseal key) never leave the lab's files.

    .venv/bin/python bench/bench.py                     # = make bench
    BENCH_APPS="2 8 32" BENCH_REPS=3 make bench          # the full run (~1 h on 2 cores)
"""
import json
import os
import resource
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "lab"))
import lab as labmod  # noqa: E402  (tests/lab/lab.py)

PY = sys.executable
BIN = Path(PY).parent
PROBE = REPO / "tests" / "lab" / "probe.py"
LABCTL = REPO / "tests" / "lab" / "labctl.py"

PHASES = [
    ("Preflight", "preflight"), ("Phase 1", "admin_cert"), ("Phase 2", "server_tls"),
    ("Phase 3", "agent_login"), ("Phase 4", "app_leaf"), ("Phase 5", "proxy_trust"),
    ("Restart", "restart"), ("Healthcheck", "healthcheck"), ("Report", "report"),
]


def env_list(name, default):
    return [x for x in os.environ.get(name, default).replace(",", " ").split() if x]


def app_names(n):
    if n == 2:
        return list(labmod.DEFAULT_APPS)
    return ["app%02d" % i for i in range(1, n + 1)]


class RssSampler(threading.Thread):
    """Peak summed RSS of a process and all its descendants (from /proc)."""

    def __init__(self, pid, every=0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_kb, self.stop_flag = pid, every, 0, False

    def _tree(self):
        children = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
        todo, seen = [self.pid], []
        while todo:
            p = todo.pop()
            seen.append(p)
            todo.extend(children.get(p, []))
        return seen

    def run(self):
        while not self.stop_flag:
            total = 0
            for p in self._tree():
                try:
                    with open("/proc/%d/status" % p) as fh:
                        for line in fh:
                            if line.startswith("VmRSS:"):
                                total += int(line.split()[1])
                except OSError:
                    pass
            self.peak_kb = max(self.peak_kb, total)
            time.sleep(self.every)


class Bench:
    def __init__(self, n, port_base, workdir):
        self.n = n
        self.apps = app_names(n)
        self.dir = workdir / ("lab-%d" % n)
        self.inv = workdir / ("inv-%d" % n)
        self.work = workdir
        self.ports = dict(vault_port=port_base, proxy_port=port_base + 2,
                          frontend_port_base=port_base + 500)
        self.lab = labmod.Lab(dir=str(self.dir), apps=list(self.apps), **self.ports)
        self.env = dict(os.environ, LAB_DIR=str(self.dir), PATH="%s:%s" % (BIN, os.environ["PATH"]),
                        ANSIBLE_CALLBACK_PLUGINS=str(REPO / "bench" / "callback_plugins"),
                        ANSIBLE_CALLBACKS_ENABLED="bench_timer", ANSIBLE_FORCE_COLOR="0")

    # -- setup -------------------------------------------------------------
    def up(self):
        if self.dir.exists():
            self.down(purge=True)
        self.lab.up()
        self.info = json.loads((self.dir / "lab.json").read_text())
        self._inventory()
        self.audit_log = self.dir / "logs" / "audit.log"
        # OpenBao 2.x creates audit devices from the config only (the API refuses):
        # add a file device to the lab's server config, SIGHUP creates it.
        hcl = self.dir / "home" / "vaultprod" / "config" / "vault.hcl"
        hcl.write_text(hcl.read_text() + '\naudit "file" "bench" {\n  options {\n    file_path = "%s"\n  }\n}\n'
                       % self.audit_log)
        self.lab.unit("container-vaultprod", "reload")
        for _ in range(100):
            if self.audit_log.exists():
                break
            self.lab.api("GET", "/v1/sys/seal-status")
            time.sleep(0.1)
        else:
            raise SystemExit("bench: the audit device did not come up (%s)" % self.audit_log)

    def down(self, purge=False):
        subprocess.run([PY, str(LABCTL), "--dir", str(self.dir), "down"] + (["--purge"] if purge else []),
                       check=False, stdout=subprocess.DEVNULL)

    def _inventory(self):
        self.inv.mkdir(parents=True, exist_ok=True)
        proxy = self.info.get("proxy_app", "proxyprod")
        lines = ["all:", "  children:", "    lab:", "      hosts:", "        lab-controller:",
                 "        lab-vaultprod:"]
        for a in self.apps + [proxy]:
            lines += ["        lab-%s:" % a, "          vault_rotate_app: %s" % a]
        lines += ["    vault_admin:", "      hosts:", "        lab-controller:",
                  "    vault_servers:", "      hosts:", "        lab-vaultprod:",
                  "    vault_apps:", "      hosts:"]
        lines += ["        lab-%s:" % a for a in self.apps]
        lines += ["    vault_proxies:", "      hosts:", "        lab-%s:" % proxy]
        (self.inv / "hosts.yml").write_text("---\n" + "\n".join(lines) + "\n")
        # The lab's group_vars and its inventory script (lab.json -> vault_rotate_lab, via LAB_DIR).
        for name in ("group_vars", "lab.py"):
            link = self.inv / name
            if not link.exists():
                link.symlink_to(REPO / "inventories" / "lab" / name)

    # -- probes ------------------------------------------------------------
    def _probe(self, action, name, port, out):
        paths = self.info["paths"]
        cmd = [PY, str(PROBE), action, "--pidfile", str(self.work / ("probe-%s.pid" % name))]
        if action == "start":
            cmd += ["--port", str(port), "--server-name", self.info["tls_server_name"],
                    "--ca", paths["admin_ca"], "--cert", paths["admin_crt"], "--key", paths["admin_key"],
                    "--interval", "0.02", "--out", str(out)]
        else:
            cmd += ["--out", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    # -- one run -----------------------------------------------------------
    def run(self, kind, rep):
        tag = "n%d-%s-%d" % (self.n, kind, rep)
        timer_out = self.work / ("timer-%s.json" % tag)
        log = self.work / ("run-%s.log" % tag)
        args = [str(BIN / "ansible-playbook"), "-i", str(self.inv),
                "playbooks/rotate_all.yml", "-l", "lab"]
        if kind in ("forced", "restart"):
            args += ["-e", "vault_rotate_force=true"]
        if kind == "restart":
            keys = json.loads((self.dir / "secrets" / "init.json").read_text())
            kf = self.work / "unseal.json"
            kf.write_text(json.dumps({"vault_rotate_unseal_keys": keys.get("keys_base64") or keys.get("unseal_keys_b64"),
                                      "vault_rotate_restart_vault": "always"}))
            kf.chmod(0o600)
            args += ["-e", "@%s" % kf]
        probes = {"listener": self.info["ports"]["vault"], "proxy": self.info["ports"]["proxy"]}
        for name, port in probes.items():
            self._probe("start", name, port, self.work / ("probe-%s-%s.json" % (tag, name)))
        audit_from = self.audit_log.stat().st_size if self.audit_log.exists() else 0
        t0 = time.time()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log, "w") as fh:
            proc = subprocess.Popen(args, cwd=str(REPO), env=dict(self.env, BENCH_TIMER_OUT=str(timer_out)),
                                    stdout=fh, stderr=subprocess.STDOUT)
            rss = RssSampler(proc.pid)
            rss.start()
            rc = proc.wait()
            rss.stop_flag = True
        wall = time.time() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU seconds of ansible-playbook and every worker/module it waited for:
        # unlike wall time, barely inflated when other jobs share the cores.
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        time.sleep(0.3)
        probe = {}
        for name in probes:
            out = self.work / ("probe-%s-%s.json" % (tag, name))
            self._probe("stop", name, 0, out)
            probe[name] = json.loads(out.read_text())
        timer = json.loads(timer_out.read_text()) if timer_out.exists() else {}
        res = {"n": self.n, "kind": kind, "rep": rep, "rc": rc, "wall_s": round(wall, 2),
               "controller_cpu_s": round(cpu, 2), "loadavg": os.getloadavg(),
               "log": str(log), "peak_rss_mb": round(rss.peak_kb / 1024.0, 1),
               "tasks_executed": timer.get("tasks_executed"), "tasks_started": timer.get("tasks_started"),
               "host_results": timer.get("host_results"), "phases_s": self._phases(timer),
               "vault": self._audit(audit_from, timer), "probes": {k: self._probe_view(v) for k, v in probe.items()}}
        if kind == "restart":
            res["restart"] = self._restart_view(timer, probe["listener"])
        return res

    @staticmethod
    def _phases(timer):
        out = {}
        for play in timer.get("plays", []):
            for prefix, key in PHASES:
                if play["name"].startswith(prefix):
                    out[key] = round(out.get(key, 0) + play["dur"], 2)
        return out

    def _audit(self, start, timer):
        counts = {"total": 0, "issue_sign": 0, "login": 0, "other": {}}
        if self.audit_log.exists():
            with open(self.audit_log) as fh:
                fh.seek(start)
                for line in fh:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if e.get("type") != "request":
                        continue
                    path = e.get("request", {}).get("path", "")
                    counts["total"] += 1
                    if "/sign/" in path or "/issue/" in path:
                        counts["issue_sign"] += 1
                    elif path.startswith("auth/") and path.endswith("/login"):
                        counts["login"] += 1
                    else:
                        key = "/".join(path.split("/")[:2])
                        counts["other"][key] = counts["other"].get(key, 0) + 1
        pki = (timer.get("vault_requests") or {}).get("privsec.vault_rotate.pki_cert", {})
        counts["rotated_slots"] = pki.get("results", 0)
        counts["pki_cert_requests_per_slot"] = (round(pki["requests"] / pki["results"], 2)
                                               if pki.get("results") else None)
        return counts

    @staticmethod
    def _probe_view(s):
        return {"attempts": s.get("attempts"), "failures": s.get("failures"),
                "failure_classes": s.get("failure_classes"), "max_gap_ms": s.get("max_gap_ms"),
                "outage_ms": Bench._outage_ms(s)}

    @staticmethod
    def _ts(iso):
        return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()

    @staticmethod
    def _outage_ms(s):
        """First failed try (the first sample) to the last one (the summary's
        last_failure; the samples stop at 100), plus one interval."""
        samples = s.get("failure_samples") or []
        if not samples or not s.get("last_failure"):
            return 0.0
        return round((Bench._ts(s["last_failure"]) - Bench._ts(samples[0]["t"])) * 1000.0 + 20.0, 1)

    @staticmethod
    def _restart_view(timer, listener):
        """Readiness lag: the end of the playbook's readiness task (vault_health,
        which also unseals) minus the server's first good answer (the prober's
        last failed try + one 20 ms interval)."""
        view = {"probe_failures": listener.get("failures"), "outage_ms": Bench._outage_ms(listener),
                "failure_classes": listener.get("failure_classes")}
        ready_task = [t for t in timer.get("tasks", []) if t["action"].endswith("vault_health")
                      and t.get("play", "").startswith("Restart")]
        if listener.get("last_failure") and ready_task:
            detected = timer["t0_epoch"] + ready_task[-1]["end"]
            view["ready_detect_lag_ms"] = round((detected - (Bench._ts(listener["last_failure"]) + 0.02)) * 1000.0, 1)
        return view


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


def summarize(runs):
    groups = {}
    for r in runs:
        groups.setdefault((r["n"], r["kind"]), []).append(r)
    rows = []
    for (n, kind), rs in sorted(groups.items()):
        walls = [r["wall_s"] for r in rs]
        def med(f, rs=rs):
            vals = [f(r) for r in rs if f(r) is not None]
            return statistics.median(vals) if vals else None
        row = {"n": n, "kind": kind, "reps": len(rs), "ok": all(r["rc"] == 0 for r in rs),
               "wall_median_s": round(statistics.median(walls), 2),
               "wall_min_s": min(walls), "wall_max_s": max(walls),
               "cpu_median_s": med(lambda r: r.get("controller_cpu_s")),
               "tasks": med(lambda r: r["tasks_executed"]),
               "vault_requests": med(lambda r: r["vault"]["total"]),
               "issue_per_slot": med(lambda r: (r["vault"]["issue_sign"] / r["vault"]["rotated_slots"])
                                     if r["vault"]["rotated_slots"] else None),
               "logins": med(lambda r: r["vault"]["login"]),
               "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
               "listener_fail": sum(r["probes"]["listener"]["failures"] or 0 for r in rs),
               "listener_max_gap_ms": max(r["probes"]["listener"]["max_gap_ms"] or 0 for r in rs),
               "proxy_fail": sum(r["probes"]["proxy"]["failures"] or 0 for r in rs),
               "proxy_max_gap_ms": max(r["probes"]["proxy"]["max_gap_ms"] or 0 for r in rs),
               "phases_median_s": {k: round(statistics.median([r["phases_s"].get(k, 0) for r in rs]), 2)
                                   for k in rs[0]["phases_s"]}}
        if kind == "restart":
            row["listener_outage_ms"] = max(r["restart"]["outage_ms"] for r in rs)
            row["ready_detect_lag_ms"] = med(lambda r: r["restart"].get("ready_detect_lag_ms"))
        rows.append(row)
    return rows


def table(rows):
    head = ("N", "kind", "reps", "wall med", "min..max", "cpu", "tasks", "vault req", "iss/slot", "logins",
            "RSS MB", "lsn fail", "lsn gap", "prx fail", "prx gap")
    lines = ["%-3s %-8s %4s %9s %13s %6s %6s %9s %8s %6s %7s %8s %8s %8s %8s" % head]
    for r in rows:
        lines.append("%-3d %-8s %4d %8.1fs %13s %6s %6s %9s %8s %6s %7.0f %8d %7.0fms %8d %7.0fms" % (
            r["n"], r["kind"], r["reps"], r["wall_median_s"], "%.1f..%.1f" % (r["wall_min_s"], r["wall_max_s"]),
            "-" if r["cpu_median_s"] is None else "%.0fs" % r["cpu_median_s"], r["tasks"], r["vault_requests"],
            "-" if r["issue_per_slot"] is None else "%.2f" % r["issue_per_slot"],
            r["logins"], r["peak_rss_mb"], r["listener_fail"], r["listener_max_gap_ms"], r["proxy_fail"],
            r["proxy_max_gap_ms"]))
    lines.append("")
    lines.append("per phase (median s): " + ", ".join(sorted({k for r in rows for k in r["phases_median_s"]})))
    for r in rows:
        lines.append("  N=%-3d %-8s %s" % (r["n"], r["kind"], "  ".join(
            "%s=%.1f" % (k, v) for k, v in r["phases_median_s"].items())))
        if r["kind"] == "restart":
            lines.append("  N=%-3d restart: listener outage %.0f ms, readiness detected %s ms after ready" % (
                r["n"], r["listener_outage_ms"], r["ready_detect_lag_ms"]))
    return "\n".join(lines)


def main():
    ns = [int(x) for x in env_list("BENCH_APPS", "2 8")]
    reps = int(os.environ.get("BENCH_REPS", "1"))
    kinds = env_list("BENCH_KINDS", "forced noop")
    restart = os.environ.get("BENCH_RESTART", "1") not in ("0", "", "false", "no")
    port_base = int(os.environ.get("BENCH_PORT_BASE", "31000"))
    workdir = Path(os.environ.get("BENCH_WORKDIR", str(REPO / ".cache" / "bench"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out = Path(os.environ.get("BENCH_OUT", str(workdir / ("bench-%s.json" % stamp))))
    result = {"format": "privsec.vault_rotate.bench/v1", "started": stamp, "machine": machine(),
              "config": {"apps": ns, "reps": reps, "kinds": kinds, "restart": restart, "port_base": port_base},
              "runs": []}
    def save():  # after every run, so an interrupted bench keeps what it measured
        result["summary"] = summarize(result["runs"]) if result["runs"] else []
        result["machine"]["loadavg_end"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1))
        shutil.copyfile(out, workdir / "latest.json")

    for i, n in enumerate(ns):
        b = Bench(n, port_base, workdir)
        print("bench: N=%d: lab up (%s)" % (n, b.dir), flush=True)
        b.up()
        try:
            # No warm-up: on the fresh lab every slot is due, so the first forced
            # run does exactly the work of any other forced run.
            for rep in range(1, reps + 1):
                for kind in kinds:
                    r = b.run(kind, rep)
                    result["runs"].append(r)
                    save()
                    print("bench: N=%d %-7s #%d rc=%d %.1fs tasks=%s vault=%s lsn_fail=%s prx_fail=%s" % (
                        n, kind, rep, r["rc"], r["wall_s"], r["tasks_executed"], r["vault"]["total"],
                        r["probes"]["listener"]["failures"], r["probes"]["proxy"]["failures"]), flush=True)
            if restart and i == 0:
                r = b.run("restart", 1)
                result["runs"].append(r)
                save()
                print("bench: N=%d restart rc=%d %.1fs %s" % (n, r["rc"], r["wall_s"], r["restart"]), flush=True)
        finally:
            b.down(purge=os.environ.get("BENCH_KEEP") is None)
    save()
    print()
    print(table(result["summary"]))
    print("\nJSON: %s" % out)
    return 0 if all(r["rc"] == 0 for r in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
