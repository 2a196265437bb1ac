#!/usr/bin/env python3
"""probe: a background TLS prober of the Vault listener (stdlib; cryptography optional).

Every INTERVAL (default 20 ms) it opens a new connection, handshakes with the
SNI name, verifies the served chain against the CA bundle and the hostname,
presents the admin client cert, and GETs /v1/sys/seal-status (so the server's
verdict on the client cert, sent after a TLS 1.3 handshake, is seen too). A try
is ok when the answer is HTTP 200 with `sealed: false`; anything else is a
failure with a class (refused, reset, timeout, tls_alert:<name>,
untrusted_server_cert, hostname_mismatch, tls_error, http_<status>, sealed, ...).

The client identity is read from the CURRENT files: when the cert or key file
changes (the admin cert is rotated during a run), the next try loads the new
pair; while the pair does not load (key and cert replaced one after the other),
the last identity that loaded keeps being used and the retry is counted, not
reported as a server failure.

    probe.py run   --port P --server-name S --ca CA --cert C --key K --out SUMMARY.json
    probe.py start --pidfile PID ...same options...    (detached; returns after the first try)
    probe.py stop  --pidfile PID [--out SUMMARY.json]  (SIGTERM, waits, prints the summary)

The summary (JSON, rewritten every 0.5 s and at exit) holds: attempts, ok,
failures, failure_classes, failure_samples (first 100), last_ok, last_failure, serials_seen (served
leaf serials with first/last seen), identity_serials (client certs used),
identity_reload_retries, max_gap_ms (longest time between two tries), latency
percentiles, started/ended. Never a key or a token.
"""
import argparse
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from datetime import datetime, timezone

try:
    from cryptography import x509
except ImportError:  # pragma: no cover - the lab venv has it
    x509 = None

MAX_SAMPLES = 100


def _iso(ts=None):
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)


def _serial_hex(n):
    h = "%x" % n
    if len(h) % 2:
        h = "0" + h
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


def der_serial(der):
    if not der or x509 is None:
        return None
    return _serial_hex(x509.load_der_x509_certificate(der).serial_number)


def pem_serial(path):
    if x509 is None:
        return None
    with open(path, "rb") as fh:
        return _serial_hex(x509.load_pem_x509_certificate(fh.read()).serial_number)


def classify(exc):
    """One failure class per exception, the words of docs/development.md where they exist."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = str(exc).lower()
        if "hostname" in msg or "ip address mismatch" in msg:
            return "hostname_mismatch"
        if "expired" in msg:
            return "expired"
        return "untrusted_server_cert"
    if isinstance(exc, ssl.SSLError):
        reason = (getattr(exc, "reason", None) or "").lower()
        if reason.startswith(("tlsv13_alert_", "sslv3_alert_", "tlsv1_alert_")):
            return "tls_alert:" + reason.split("alert_", 1)[1].replace("_", " ")
        if "eof" in reason or "unexpected eof" in str(exc).lower():
            return "reset"
        return "tls_error:" + (reason or type(exc).__name__)
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "reset"
    if isinstance(exc, http.client.HTTPException):
        return "http_error"
    if isinstance(exc, OSError):
        return "os_error:%s" % (exc.errno,)
    return type(exc).__name__


class Identity:
    """The client cert/key pair, reloaded when the files change; the last good one is kept."""

    def __init__(self, ca, cert, key):
        self.ca, self.cert, self.key = ca, cert, key
        self.stamp = None
        self.context = None
        self.serial = None
        self.reload_retries = 0
        self.serials = []  # [{serial, since}]
        self.refresh()
        if self.context is None:
            raise SystemExit("probe: cannot load the client identity %s / %s" % (cert, key))

    def _files_stamp(self):
        out = []
        for p in (self.ca, self.cert, self.key):
            st = os.stat(p)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def refresh(self):
        try:
            stamp = self._files_stamp()
        except OSError:
            self.reload_retries += 1  # a file is being replaced right now
            return
        if stamp == self.stamp:
            return
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
            ctx.load_cert_chain(self.cert, self.key)
            serial = pem_serial(self.cert)
        except (ssl.SSLError, OSError, ValueError):
            self.reload_retries += 1  # cert and key do not match yet: keep the last good pair
            return
        self.stamp, self.context = stamp, ctx
        if serial != self.serial:
            self.serial = serial
            self.serials.append({"serial": serial, "since": _iso()})


class Prober:
    def __init__(self, args):
        self.args = args
        self.identity = Identity(args.ca, args.cert, args.key)
        self.started = time.time()
        self.attempts = 0
        self.ok = 0
        self.failures = 0
        self.classes = {}
        self.samples = []
        self.serials = {}  # serial -> {first_seen, last_seen, count}
        self.latencies = []
        self.max_gap = 0.0
        self.last_start = None
        self.last_ok = None
        self.last_failure = None
        self.stop = False

    def one(self):
        """One try: connect, handshake, GET, read. Returns (failure class or None, served serial, error)."""
        a = self.args
        sock = None
        served = None
        try:
            sock = socket.create_connection((a.host, a.port), timeout=a.timeout)
            tls = self.identity.context.wrap_socket(sock, server_hostname=a.server_name)
            sock = tls
            served = der_serial(tls.getpeercert(binary_form=True))
            req = ("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (a.http_path, a.server_name))
            tls.sendall(req.encode())
            resp = http.client.HTTPResponse(tls)
            resp.begin()
            body = resp.read()
            if resp.status != 200:
                return "http_%d" % resp.status, served, body[:200].decode(errors="replace")
            try:
                data = json.loads(body)
            except ValueError:
                return "bad_body", served, body[:200].decode(errors="replace")
            if data.get("sealed"):
                return "sealed", served, "seal-status says sealed"
            return None, served, None
        except Exception as exc:  # every failure is data here
            return classify(exc), served, "%s: %s" % (type(exc).__name__, exc)
        finally:
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    def record(self, t0, t1, failure, served, error):
        self.attempts += 1
        self.latencies.append((t1 - t0) * 1000.0)
        if len(self.latencies) > 20000:
            self.latencies = self.latencies[-10000:]
        if served:
            s = self.serials.setdefault(served, {"first_seen": _iso(t0), "count": 0})
            s["last_seen"] = _iso(t0)
            s["count"] += 1
        if failure is None:
            self.ok += 1
            self.last_ok = _iso(t0)
            return
        self.failures += 1
        self.last_failure = _iso(t0)
        self.classes[failure] = self.classes.get(failure, 0) + 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append({"t": _iso(t0), "class": failure, "error": (error or "")[:300],
                                 "client_serial": self.identity.serial})

    def summary(self, final=False):
        lat = sorted(self.latencies)

        def pct(p):
            return round(lat[min(len(lat) - 1, int(len(lat) * p))], 2) if lat else None

        return {
            "target": "%s:%d" % (self.args.host, self.args.port),
            "server_name": self.args.server_name,
            "http_path": self.args.http_path,
            "interval_ms": round(self.args.interval * 1000, 1),
            "pid": os.getpid(),
            "running": not final,
            "started": _iso(self.started),
            "updated": _iso(),
            "duration_s": round(time.time() - self.started, 3),
            "attempts": self.attempts,
            "ok": self.ok,
            "failures": self.failures,
            "failure_classes": self.classes,
            "failure_samples": self.samples,
            "last_ok": self.last_ok,
            "last_failure": self.last_failure,
            "serials_seen": [dict(serial=k, **v) for k, v in
                             sorted(self.serials.items(), key=lambda kv: kv[1]["first_seen"])],
            "identity_serials": self.identity.serials,
            "identity_reload_retries": self.identity.reload_retries,
            "max_gap_ms": round(self.max_gap * 1000.0, 1),
            "latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": round(lat[-1], 2) if lat else None},
        }

    def write(self, final=False):
        if not self.args.out:
            return
        tmp = self.args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(self.summary(final), fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, self.args.out)

    def run(self):
        a = self.args
        deadline = self.started + a.max_seconds
        next_write = 0.0
        next_start = time.monotonic()
        while not self.stop and time.time() < deadline:
            now = time.monotonic()
            if now < next_start:
                time.sleep(next_start - now)
                continue
            if self.last_start is not None:
                self.max_gap = max(self.max_gap, now - self.last_start)
            self.last_start = now
            # the next try starts one interval after this one started (no catch-up bursts)
            next_start = now + a.interval
            self.identity.refresh()
            t0 = time.time()
            failure, served, error = self.one()
            self.record(t0, time.time(), failure, served, error)
            if time.monotonic() >= next_write:
                self.write()
                next_write = time.monotonic() + 0.5
        self.write(final=True)


def add_target_args(ap):
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--server-name", required=True, help="SNI and the name the served cert must carry")
    ap.add_argument("--ca", required=True, help="CA bundle that verifies the listener")
    ap.add_argument("--cert", required=True, help="client cert (read again whenever the file changes)")
    ap.add_argument("--key", required=True, help="client key (read again whenever the file changes)")
    ap.add_argument("--interval", type=float, default=0.02, help="seconds between the starts of two tries")
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--http-path", default="/v1/sys/seal-status")
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="stop by itself after this long")
    ap.add_argument("--out", help="summary JSON file")


def parse(argv):
    ap = argparse.ArgumentParser(prog="probe.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    add_target_args(sub.add_parser("run", help="probe in the foreground until SIGTERM/SIGINT"))
    s = sub.add_parser("start", help="probe in the background")
    add_target_args(s)
    s.add_argument("--pidfile", required=True)
    s.add_argument("--log", help="stderr of the background prober (default: <pidfile>.log)")
    t = sub.add_parser("stop", help="stop a background prober and print its summary")
    t.add_argument("--pidfile", required=True)
    t.add_argument("--out", help="summary JSON file (default: the one the prober was started with)")
    t.add_argument("--timeout", type=float, default=10.0)
    return ap.parse_args(argv)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _is_probe(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return b"probe.py" in fh.read()
    except OSError:
        return False


def cmd_run(args):
    prober = Prober(args)

    def on_signal(signum, frame):
        prober.stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    prober.run()
    if not args.out:
        json.dump(prober.summary(final=True), sys.stdout, indent=1, sort_keys=True)
        print()
    return 0


def cmd_start(args):
    if not args.out:
        raise SystemExit("probe start: --out is required")
    if os.path.exists(args.pidfile):
        with open(args.pidfile) as fh:
            old = json.load(fh)
        if _alive(old["pid"]) and _is_probe(old["pid"]):
            raise SystemExit("probe start: a prober already runs (pid %d, %s)" % (old["pid"], args.pidfile))
    for stale in (args.out, args.out + ".tmp"):
        if os.path.exists(stale):
            os.unlink(stale)
    argv = [sys.executable, os.path.abspath(__file__), "run"]
    for opt in ("host", "port", "server_name", "ca", "cert", "key", "interval", "timeout", "http_path",
                "max_seconds", "out"):
        argv += ["--" + opt.replace("_", "-"), str(getattr(args, opt))]
    log = open(args.log or args.pidfile + ".log", "ab")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True, close_fds=True)
    with open(args.pidfile, "w") as fh:
        json.dump({"pid": proc.pid, "out": os.path.abspath(args.out)}, fh)
    # return once the first try is on record, so the caller's next step is covered
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("probe start: the prober exited at once (rc %s); see %s"
                             % (proc.returncode, args.log or args.pidfile + ".log"))
        if os.path.exists(args.out):
            with open(args.out) as fh:
                first = json.load(fh)
            print(json.dumps({"pid": proc.pid, "out": os.path.abspath(args.out),
                              "first_attempts": first["attempts"], "first_failures": first["failures"]}))
            return 0
        time.sleep(0.02)
    raise SystemExit("probe start: no result after 10 s (pid %d)" % proc.pid)


def cmd_stop(args):
    if not os.path.exists(args.pidfile):
        raise SystemExit("probe stop: no pidfile %s (was a prober started?)" % args.pidfile)
    with open(args.pidfile) as fh:
        info = json.load(fh)
    pid, out = info["pid"], args.out or info["out"]
    if _alive(pid) and _is_probe(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    os.unlink(args.pidfile)
    if not os.path.exists(out):
        raise SystemExit("probe stop: no summary at %s" % out)
    with open(out) as fh:
        summary = json.load(fh)
    json.dump(summary, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    return {"run": cmd_run, "start": cmd_start, "stop": cmd_stop}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
