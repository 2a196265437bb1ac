"""labcheck: independent checks of the lab for the molecule scenarios.

It knows nothing of the roles: it reads the lab's own description
(`<lab>/lab.json`), the files on disk, and asks the running services from the
outside (TLS handshakes with SNI, verified chains, cert-auth logins with raw
HTTP, the root token of `<lab>/secrets/init.json` to read mappings and token
metadata). Python stdlib + cryptography + the lab's own helpers (tests/lab).

    labcheck.py snapshot --lab-dir DIR --out SNAP.json
    labcheck.py check    --lab-dir DIR --snapshot SNAP.json --scenario NAME
                         [--probe SUMMARY.json] [--out RESULT.json]

`check` prints one line per check (`ok`/`FAIL`, name, detail), writes the
result as JSON, and exits 1 when any check failed. Never prints a secret.
"""
import argparse
import json
import os
import stat
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests" / "lab"))

from lab import handshake, http_json, tls_context  # noqa: E402

LOOPBACK = "127.0.0.1"
KEY_MODE = 0o600
CERT_MODE = 0o644
CLOCK_SLACK = 120  # s: Vault backdates not_before by 30 s; some room for slow machines

# which slot groups a scenario must rotate; every other group must keep its serial
CHANGES = {
    "admin_cert": ["admin"],
    "server_tls": ["server"],
    "agent_login": ["agent:*"],
    "app_leaf": ["frontend:*"],
    "proxy_trust": ["proxy_agent", "proxy_frontend"],
    "healthcheck": [],
    "restart": [],
    "full": ["*"],
}
# units a scenario must have restarted (new pid); every other unit keeps its pid
RESTARTS = {
    "restart": ["container-vaultprod", "container-proxyprod"],
}


# ---------------------------------------------------------------- helpers

def now():
    return time.time()


def iso(ts):
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def serial_hex(n):
    h = "%x" % n
    if len(h) % 2:
        h = "0" + h
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def load_certs(path):
    return x509.load_pem_x509_certificates(Path(path).read_bytes())


def spki(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def fingerprint(cert):
    return cert.fingerprint(hashes.SHA256()).hex()


def lab_info(lab_dir):
    return json.loads((Path(lab_dir) / "lab.json").read_text())


def root_token(info):
    return json.loads(Path(info["paths"]["init_json"]).read_text())["root_token"]


def slot_groups(info):
    """name -> {cert, key, fullchain?, chain?, cn}: every certificate the rotation owns, from lab.json."""
    p = info["paths"]
    groups = {
        "admin": {"cert": p["admin_crt"], "key": p["admin_key"], "chain": p["admin_issuing_ca"],
                  "cn": info["admin"]["cn"]},
        "server": {"cert": p["server_crt"], "key": p["server_key"], "fullchain": p["fullchain"],
                   "cn": info["tls_server_name"]},
    }
    for app in info["apps"]:
        a = info["app_paths"][app]
        groups["agent:" + app] = {"cert": a["agent_crt"], "key": a["agent_key"], "cn": a["agent_cn"]}
        groups["frontend:" + app] = {"cert": a["frontend_crt"], "key": a["frontend_key"],
                                     "fullchain": a["frontend_fullchain"], "cn": a["sni"]}
    px = info["app_paths"][info["proxy_app"]]
    groups["proxy_agent"] = {"cert": px["agent_crt"], "key": px["agent_key"], "cn": px["agent_cn"]}
    groups["proxy_frontend"] = {"cert": px["proxy_crt"], "key": px["proxy_key"],
                                "fullchain": px["proxy_fullchain"], "cn": info["tls_server_name"]}
    return groups


def expand(patterns, names):
    out = set()
    for pat in patterns:
        if pat == "*":
            out |= set(names)
        elif pat.endswith(":*"):
            out |= {n for n in names if n.startswith(pat[:-1])}
        else:
            out.add(pat)
    return out


def file_state(path):
    st = os.stat(path)
    return {"mode": "%04o" % stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}


def cert_state(path):
    leaf = load_certs(path)[0]
    return {"serial": serial_hex(leaf.serial_number), "fingerprint": fingerprint(leaf),
            "not_before": leaf.not_valid_before_utc.timestamp(), "not_after": leaf.not_valid_after_utc.timestamp()}


def unit_pid(info, name):
    pidfile = Path(info["paths"]["run"]) / ("%s.pid" % name)
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def served_serial(port, sni, cafile, certfile=None, keyfile=None):
    """Handshake with SNI, chain verified against cafile and hostname checked; the served leaf's serial."""
    der, version = handshake(port, sni, tls_context(cafile, certfile, keyfile))
    return serial_hex(x509.load_der_x509_certificate(der).serial_number), version


def admin_ctx(info):
    p = info["paths"]
    return tls_context(p["admin_ca"], p["admin_crt"], p["admin_key"])


def vault(info, method, path, token=None, body=None, ctx=None):
    return http_json(info["ports"]["vault"], method, path, ctx or admin_ctx(info),
                     sni=info["tls_server_name"], token=token, body=body)


def pki_ca_fingerprints(info, token):
    """Every CA of the PKI mount the leaves chain to (ca_chain: issuer..root), as fingerprints."""
    status, data = vault(info, "GET", "/v1/%s/cert/ca_chain" % info["pki"]["mount"], token=token)
    if status != 200:
        raise RuntimeError("GET %s/cert/ca_chain -> HTTP %d" % (info["pki"]["mount"], status))
    pem = data["data"]["ca_chain"] if isinstance(data["data"].get("ca_chain"), str) else \
        "".join(data["data"]["ca_chain"])
    return {fingerprint(c) for c in x509.load_pem_x509_certificates(pem.encode())}


def cert_login(info, mapping, certfile, keyfile, cafile):
    """Cert-auth login on the listener with this identity; returns (policies, token). Caller revokes."""
    ctx = tls_context(cafile, certfile, keyfile)
    status, data = vault(info, "POST", "/v1/auth/%s/login" % info["cert_auth"]["mount"],
                         body={"name": mapping}, ctx=ctx)
    if status != 200:
        errors = (data or {}).get("errors")
        raise RuntimeError("login through %r -> HTTP %d %s" % (mapping, status, errors))
    auth = data["auth"]
    return sorted(auth["policies"]), auth["client_token"]


def revoke_self(info, token, ctx=None):
    vault(info, "POST", "/v1/auth/token/revoke-self", token=token, ctx=ctx)


def serial_of_meta(value):
    """Cert-auth token metadata serial: decimal or hex (with or without colons) -> int."""
    v = str(value).strip().lower()
    if ":" in v:
        return int(v.replace(":", ""), 16)
    try:
        return int(v)
    except ValueError:
        return int(v, 16)


# ---------------------------------------------------------------- snapshot

def snapshot(lab_dir):
    info = lab_info(lab_dir)
    t = now()
    snap = {"time": t, "time_iso": iso(t), "lab_dir": str(lab_dir), "slots": {}, "pids": {}, "served": {},
            "tokens": {}}
    for name, g in slot_groups(info).items():
        snap["slots"][name] = {"cert": cert_state(g["cert"]),
                               "files": {k: file_state(g[k]) for k in ("cert", "key", "fullchain", "chain")
                                         if k in g}}
    for unit in info["units"]:
        snap["pids"][unit] = unit_pid(info, unit)
    p = info["paths"]
    snap["served"]["listener"] = served_serial(info["ports"]["vault"], info["tls_server_name"], p["admin_ca"],
                                               p["admin_crt"], p["admin_key"])[0]
    for app in info["apps"] + [info["proxy_app"]]:
        a = info["app_paths"][app]
        snap["tokens"][app] = json.loads(Path(a["whoami"]).read_text()).get("creation_time")
    return snap


# ---------------------------------------------------------------- checks

class Checks:
    def __init__(self, info, snap, scenario, probe=None):
        self.info, self.snap, self.scenario, self.probe = info, snap, scenario, probe
        self.results = []
        self.groups = slot_groups(info)
        self.changed = expand(CHANGES[scenario], self.groups)
        self.token = root_token(info)
        self.root_pem = Path(info["paths"]["root_crt"]).read_text() if "root_crt" in info["paths"] else None

    def add(self, name, ok, detail=""):
        self.results.append({"check": name, "ok": bool(ok), "detail": detail})

    def guard(self, name, fn):
        try:
            fn()
        except Exception as exc:  # a crash in a check is a failed check, with its reason
            self.add(name, False, "%s: %s" % (type(exc).__name__, exc))

    # -- files
    def files(self):
        for name, g in self.groups.items():
            self.guard("files " + name, lambda n=name, g=g: self._files(n, g))

    def _files(self, name, g):
        before = self.snap["slots"][name]
        state = cert_state(g["cert"])
        leaf = load_certs(g["cert"])[0]
        problems = []
        if name in self.changed:
            if state["serial"] == before["cert"]["serial"]:
                problems.append("serial unchanged (%s), the rotation did not happen" % state["serial"])
            if state["not_before"] < self.snap["time"] - CLOCK_SLACK:
                problems.append("new cert not_before %s is older than the snapshot" % iso(state["not_before"]))
        elif state["serial"] != before["cert"]["serial"]:
            problems.append("serial changed %s -> %s although %s must not touch it"
                            % (before["cert"]["serial"], state["serial"], self.scenario))
        # owner unchanged, modes as wanted
        for kind in ("cert", "key", "fullchain", "chain"):
            if kind not in g:
                continue
            fs = file_state(g[kind])
            want = KEY_MODE if kind == "key" else CERT_MODE
            if fs["mode"] != "%04o" % want:
                problems.append("%s mode %s, want %04o" % (kind, fs["mode"], want))
            old = before["files"][kind]
            if (fs["uid"], fs["gid"]) != (old["uid"], old["gid"]):
                problems.append("%s owner %d:%d, was %d:%d" % (kind, fs["uid"], fs["gid"], old["uid"], old["gid"]))
        # key matches cert
        key = serialization.load_pem_private_key(Path(g["key"]).read_bytes(), password=None)
        if spki(key.public_key()) != spki(leaf.public_key()):
            problems.append("key does not match the cert")
        # CN and expiry
        cn = leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if not cn or cn[0].value != g["cn"]:
            problems.append("CN %r, want %r" % (cn[0].value if cn else None, g["cn"]))
        if state["not_after"] < now() + 3600:
            problems.append("expires %s (less than 1 h left)" % iso(state["not_after"]))
        # fullchain = leaf + its issuer, and the issuer signed the leaf
        if "fullchain" in g:
            chain = load_certs(g["fullchain"])
            if fingerprint(chain[0]) != fingerprint(leaf):
                problems.append("fullchain does not start with the cert")
            elif len(chain) < 2:
                problems.append("fullchain holds no intermediate")
            else:
                leaf.verify_directly_issued_by(chain[1])
        self.add("files " + name, not problems, "; ".join(problems) or "%s serial %s, modes/owner ok"
                 % ("rotated," if name in self.changed else "kept,", state["serial"]))

    # -- the listener and the admin identity
    def listener(self):
        def run():
            p = self.info["paths"]
            serial, version = served_serial(self.info["ports"]["vault"], self.info["tls_server_name"],
                                            p["admin_ca"], p["admin_crt"], p["admin_key"])
            want = cert_state(p["server_crt"])["serial"]
            status, data = vault(self.info, "GET", "/v1/sys/health")
            ok = serial == want and status == 200 and not data.get("sealed")
            self.add("listener serves server.crt for %s (verified, hostname)" % self.info["tls_server_name"], ok,
                     "served %s, file %s, %s, sys/health %d" % (serial, want, version, status))
        self.guard("listener", run)

    def admin_identity(self):
        def run():
            p = self.info["paths"]
            mapping = self.info["admin"]["mapping"]
            policies, tok = cert_login(self.info, mapping, p["admin_crt"], p["admin_key"], p["admin_ca"])
            revoke_self(self.info, tok)
            want = self.info["admin"]["policy"]
            self.add("admin cert logs in through %r" % mapping, want in policies,
                     "policies %s (serial %s)" % (policies, cert_state(p["admin_crt"])["serial"]))
        self.guard("admin identity", run)

    # -- cert-auth mappings as wanted
    def mappings(self):
        def run():
            cas = pki_ca_fingerprints(self.info, self.token)
            for name, want in self.info["cert_auth"]["mappings"].items():
                status, data = vault(self.info, "GET", "/v1/auth/%s/certs/%s" % (self.info["cert_auth"]["mount"], name),
                                     token=self.token)
                if status != 200:
                    self.add("mapping " + name, False, "read -> HTTP %d" % status)
                    continue
                d = data["data"]
                bundle = {fingerprint(c) for c in x509.load_pem_x509_certificates(d["certificate"].encode())}
                problems = []
                if sorted(d.get("allowed_common_names") or []) != sorted(want["allowed_common_names"]):
                    problems.append("allowed_common_names %s" % d.get("allowed_common_names"))
                if sorted(d.get("token_policies") or []) != sorted(want["token_policies"]):
                    problems.append("token_policies %s, want %s" % (d.get("token_policies"), want["token_policies"]))
                if not cas <= bundle:
                    problems.append("CA bundle lacks %d of the mount's CAs" % len(cas - bundle))
                if not d.get("token_ttl"):
                    problems.append("token_ttl unset")
                self.add("mapping " + name, not problems, "; ".join(problems)
                         or "CN %s, policies %s, %d CA(s) incl. the mount's chain"
                         % (d["allowed_common_names"], sorted(d["token_policies"]), len(bundle)))
        self.guard("mappings", run)

    # -- agents: new cert logs in, the running agent's token came from the current cert
    def agents(self):
        for app in self.info["apps"] + [self.info["proxy_app"]]:
            self.guard("agent " + app, lambda app=app: self._agent(app))

    def _agent(self, app):
        a = self.info["app_paths"][app]
        group = "proxy_agent" if app == self.info["proxy_app"] else "agent:" + app
        want = sorted(set(self.info["cert_auth"]["mappings"][a["agent_mapping"]]["token_policies"]) | {"default"})
        policies, tok = cert_login(self.info, a["agent_mapping"], a["agent_crt"], a["agent_key"], a["ca"])
        revoke_self(self.info, tok, ctx=tls_context(a["ca"], a["agent_crt"], a["agent_key"]))
        problems = []
        if policies != want:
            problems.append("login policies %s, want %s" % (policies, want))
        # the agent's own token (its sink), looked up with the root token: which cert made it, and when
        sink = Path(a["token"]).read_text().strip()
        status, data = vault(self.info, "POST", "/v1/auth/token/lookup", token=self.token, body={"token": sink})
        del sink
        if status != 200:
            problems.append("lookup of the agent's token -> HTTP %d" % status)
        else:
            d = data["data"]
            meta = d.get("meta") or {}
            file_serial = load_certs(a["agent_crt"])[0].serial_number
            if "serial_number" not in meta:
                problems.append("agent token has no cert metadata (meta keys %s)" % sorted(meta))
            elif serial_of_meta(meta["serial_number"]) != file_serial:
                problems.append("agent token was made with cert serial %s, the file holds %s"
                                % (serial_hex(serial_of_meta(meta["serial_number"])), serial_hex(file_serial)))
            if group in self.changed and d["creation_time"] < self.snap["time"]:
                problems.append("agent token created %s, before the rotation (%s)"
                                % (iso(d["creation_time"]), self.snap["time_iso"]))
            whoami = json.loads(Path(a["whoami"]).read_text())
            if group in self.changed and whoami.get("creation_time", 0) < self.snap["time"]:
                problems.append("whoami.json still shows a token from %s" % iso(whoami.get("creation_time", 0)))
            if sorted(whoami.get("policies", [])) != want:
                problems.append("whoami.json policies %s" % whoami.get("policies"))
        self.add("agent %s logged in with its current cert" % app, not problems, "; ".join(problems)
                 or "login policies %s; agent token from serial %s%s"
                 % (policies, serial_hex(file_serial), ", created after the rotation" if group in self.changed else ""))

    # -- frontends and the proxy serve and verify
    def frontends(self):
        root = self.info["paths"]["admin_ca"]  # the root CA
        for app in self.info["apps"]:
            def run(app=app):
                a = self.info["app_paths"][app]
                serial, version = served_serial(a["port"], a["sni"], root)
                want = cert_state(a["frontend_crt"])["serial"]
                self.add("frontend %s serves frontend.crt for %s (verified, hostname)" % (app, a["sni"]),
                         serial == want, "served %s, file %s, %s" % (serial, want, version))
            self.guard("frontend " + app, run)

    def proxy(self):
        def run():
            px = self.info["app_paths"][self.info["proxy_app"]]
            root = self.info["paths"]["admin_ca"]
            serial, version = served_serial(px["port"], px["sni"], root)
            want = cert_state(px["proxy_crt"])["serial"]
            status, data = http_json(px["port"], "GET", "/v1/sys/seal-status", tls_context(root), sni=px["sni"])
            ok = serial == want and status == 200 and data and data.get("sealed") is False
            self.add("proxy serves proxy.crt for %s and reaches Vault (verified both ways)" % px["sni"], ok,
                     "served %s, file %s, %s; seal-status through the proxy HTTP %d" % (serial, want, version, status))
            cas = pki_ca_fingerprints(self.info, self.token)
            have = {fingerprint(c) for c in load_certs(px["current_ca_chain"])}
            self.add("proxy upstream trust holds the mount's CA chain", cas <= have,
                     "%d of %d CAs present in %s" % (len(cas & have), len(cas), px["current_ca_chain"]))
        self.guard("proxy", run)

    # -- units: restarted where the scenario must, untouched elsewhere
    def units(self):
        must = set(RESTARTS.get(self.scenario, []))
        for unit, old in sorted(self.snap["pids"].items()):
            pid = unit_pid(self.info, unit)
            if unit in must:
                self.add("unit %s restarted" % unit, pid and pid != old, "pid %s -> %s" % (old, pid))
            elif unit == "container-vaultprod" and self.scenario != "full":
                # the listener takes new certs by SIGHUP: no phase role but restart may restart Vault
                self.add("unit %s not restarted" % unit, pid == old, "pid %s -> %s" % (old, pid))

    # -- the background probe (full scenario)
    def probe_result(self):
        def run():
            s = self.probe
            restarted = restart_happened(self.info, self.snap["time"])
            served = [x["serial"] for x in s["serials_seen"]]
            new_listener = cert_state(self.info["paths"]["server_crt"])["serial"]
            self.add("probe ran through the run", s["attempts"] >= 100 and s["duration_s"] > 5,
                     "%d handshakes in %.1f s (every %.0f ms, longest gap %.0f ms)"
                     % (s["attempts"], s["duration_s"], s["interval_ms"], s["max_gap_ms"]))
            self.add("probe saw the listener switch to the new cert",
                     self.snap["served"]["listener"] in served and new_listener in served
                     and self.snap["served"]["listener"] != new_listener,
                     "served serials in order: %s" % served)
            detail = "%d failed of %d: %s; restart during the run: %s" % (
                s["failures"], s["attempts"], s["failure_classes"] or "none", restarted or "no")
            if s["failure_samples"]:
                detail += "; first: %s" % s["failure_samples"][0]
            self.add("no failed handshake while no restart was required", restarted or s["failures"] == 0, detail)
        self.guard("probe", run)

    # -- the runs' bookkeeping on the controller: every run closed (report written, lock released)
    def runs(self):
        def run():
            locks = sorted(p.name for p in Path(self.info["dir"]).glob("run/vault_rotate-*.lock*"))
            self.add("no run lock left behind", not locks,
                     "lock folder(s) still in %s/run: %s" % (self.info["dir"], locks) if locks else "none in run/")
            reports = run_reports(self.info, self.snap["time"])
            bad = ["%s: %s (%s)" % (name, r.get("status"), r.get("msg")) for name, r in reports
                   if r.get("status") != "success" or (r.get("summary") or {}).get("gates_failed")]
            self.add("every run since the snapshot reported success", not bad,
                     "; ".join(bad) or "%d report(s): %s" % (len(reports), ", ".join(report[0] for report in reports)))
        self.guard("runs", run)

    def run(self):
        self.files()
        self.listener()
        self.admin_identity()
        self.mappings()
        self.agents()
        self.frontends()
        self.proxy()
        self.units()
        self.runs()
        if self.probe is not None:
            self.probe_result()
        return self.results


def run_reports(info, since):
    """[(name, report)] of the run reports (<lab>/reports/<env>-<stamp>.json) written after `since`."""
    rdir = Path(info["dir"]) / "reports"
    return [(path.name, json.loads(path.read_text())) for path in (sorted(rdir.glob("*.json")) if rdir.is_dir() else [])
            if not path.name.startswith("latest") and path.stat().st_mtime >= since]


def restart_happened(info, since):
    """Read the run reports written after `since`: did a restart phase restart anything?"""
    out = []
    for name, report in run_reports(info, since):
        for ph in report.get("phases", []):
            if ph.get("phase") == "restart" and ph.get("gate") not in (None, "skipped"):
                out.append("%s: %s" % (name, ph.get("msg")))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(prog="labcheck.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot")
    s.add_argument("--lab-dir", required=True)
    s.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("--lab-dir", required=True)
    c.add_argument("--snapshot", required=True)
    c.add_argument("--scenario", required=True, choices=sorted(CHANGES))
    c.add_argument("--probe", help="summary JSON of tests/lab/probe.py")
    c.add_argument("--out")
    args = ap.parse_args(argv)
    if args.cmd == "snapshot":
        snap = snapshot(args.lab_dir)
        Path(args.out).write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
        print(json.dumps({"snapshot": args.out, "time": snap["time_iso"],
                          "serials": {k: v["cert"]["serial"] for k, v in snap["slots"].items()}}))
        return 0
    info = lab_info(args.lab_dir)
    snap = json.loads(Path(args.snapshot).read_text())
    probe = json.loads(Path(args.probe).read_text()) if args.probe else None
    results = Checks(info, snap, args.scenario, probe).run()
    failed = [r for r in results if not r["ok"]]
    for r in results:
        print("%-4s %s: %s" % ("ok" if r["ok"] else "FAIL", r["check"], r["detail"]))
    print("%d checks, %d failed" % (len(results), len(failed)))
    if args.out:
        Path(args.out).write_text(json.dumps({"scenario": args.scenario, "results": results,
                                              "failed": len(failed)}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
