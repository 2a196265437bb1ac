"""Fault injection helpers for tests/integration/test_faults.py (no mocks: every
fault is a real change to a real lab: a unit command that misbehaves once, a
broken config, a read-only or full filesystem, a forwarder that resets).

Also a tiny CLI, used as a one-shot wrapper around a lab unit command so a
fault fires exactly once (the rollback that follows runs the real command):

    python faults.py once STATE ACTION [ARG...] -- REAL_ARGV...

ACTION (fires on the first call only, STATE records it):
    swap-key KEY   replace KEY by a fresh key that matches no cert, then run REAL
    drop-root PEM  keep only the non-self-signed certs of a CA chain file, then run REAL
    skip           do nothing instead of REAL (the unit stays as it is)
    stop LABDIR UNIT   stop UNIT instead of REAL (it does not come back)
    bounce LABDIR SECONDS  stop Vault, start + unseal it SECONDS later in the background; REAL not run
    restart-bg LABDIR SECONDS STAMP  stop Vault, return at once, start it (sealed) SECONDS later in
                   the background and write the time it listens again to STAMP; REAL not run
    drop-intermediate PEM  keep only the self-signed certs of a CA bundle file, then run REAL
    mapping LABDIR NAME JSON   overwrite cert-auth mapping NAME with JSON (root token), then run REAL
    replace PATH OLD NEW   replace the text OLD by NEW in PATH (a config another tool edits), then run REAL
    reload LABDIR UNIT   reload UNIT (SIGHUP) instead of REAL (a restart that became a reload)
"""
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LABCTL = HERE.parent / "lab" / "labctl.py"
FORWARDER_PORTS = range(30000, 31000)


# --------------------------------------------------------------------------
# one-shot unit commands
# --------------------------------------------------------------------------

def once_command(state, action, real, python=sys.executable):
    """argv that runs ACTION once (recorded in STATE), then the REAL argv (or shell line) on every later call."""
    if isinstance(real, str):
        real = ["/bin/sh", "-c", real]
    return [python, str(Path(__file__).resolve()), "once", str(state)] + [str(a) for a in action] + ["--"] + list(real)


def unit_commands(info, unit, action, argv):
    """Copy of the lab's unit commands with `unit`'s `action` replaced by argv (for vault_rotate_service_commands)."""
    commands = {name: dict(u["commands"]) for name, u in info["units"].items()}
    commands[unit][action] = argv
    return commands


def _labctl(labdir, *args):
    info = json.loads((Path(labdir) / "lab.json").read_text())
    argv = [sys.executable, str(LABCTL), "--dir", str(labdir), "--vault-port", str(info["ports"]["vault"]),
            "--proxy-port", str(info["ports"]["proxy"]), "--frontend-port-base", str(info["ports"]["frontend_base"]),
            "--apps", ",".join(info["apps"])] + list(args)
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def _new_key_pem():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _root_api(labdir, method, path, body=None):
    sys.path.insert(0, str(HERE.parent / "lab"))
    from lab import Lab
    lab = Lab(dir=labdir)
    return lab.api(method, path, token=lab.root_token(), body=body)


def _fire(action, args):
    if action == "swap-key":
        path = Path(args[0])
        fd = os.open(str(path) + ".fault", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(_new_key_pem())
        os.replace(str(path) + ".fault", str(path))
        return True
    if action == "drop-root":
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        path = Path(args[0])
        certs = [c for c in x509.load_pem_x509_certificates(path.read_bytes()) if c.subject != c.issuer]
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
        return True
    if action == "drop-intermediate":
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        path = Path(args[0])
        certs = [c for c in x509.load_pem_x509_certificates(path.read_bytes()) if c.subject == c.issuer]
        path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
        return True
    if action == "skip":
        return False
    if action == "stop":
        _labctl(args[0], "unit", args[1], "stop")
        return False
    if action == "bounce":
        labdir, seconds = args[0], float(args[1])
        _labctl(labdir, "unit", "container-vaultprod", "stop")
        code = ("import time,sys; sys.path.insert(0, %r); import faults; time.sleep(%f); "
                "faults._labctl(%r, 'unit', 'container-vaultprod', 'start'); faults._labctl(%r, 'unseal')"
                % (str(HERE), seconds, labdir, labdir))
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        return False
    if action == "restart-bg":
        labdir, seconds, stamp = args[0], float(args[1]), args[2]
        _labctl(labdir, "unit", "container-vaultprod", "stop")
        code = ("import time,sys; sys.path.insert(0, %r); import faults; time.sleep(%f); "
                "faults._labctl(%r, 'unit', 'container-vaultprod', 'start'); "
                "open(%r, 'w').write('%%f' %% time.time())"
                % (str(HERE), seconds, labdir, stamp))
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        return False
    if action == "mapping":
        labdir, name, body = args[0], args[1], json.loads(args[2])
        status, data = _root_api(labdir, "POST", "/v1/auth/cert/certs/%s" % name, body)
        if status >= 300:
            raise SystemExit("fault mapping: HTTP %s %s" % (status, data))
        return True
    if action == "replace":
        path, old, new = Path(args[0]), args[1], args[2]
        text = path.read_text()
        if old not in text:
            raise SystemExit("fault replace: %r not found in %s" % (old, path))
        path.write_text(text.replace(old, new))
        return True
    if action == "reload":
        _labctl(args[0], "unit", args[1], "reload")
        return False
    raise SystemExit("unknown fault action %r" % action)


def _once_main(argv):
    state = Path(argv[0])
    sep = argv.index("--")
    action, args, real = argv[1], argv[2:sep], argv[sep + 1:]
    if not state.exists():
        state.write_text("%s fired %s\n" % (action, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
        if not _fire(action, args):
            return 0
    return subprocess.run(real, check=False).returncode


# --------------------------------------------------------------------------
# cert-auth mappings, files, filesystems
# --------------------------------------------------------------------------

def read_mapping(lab, name):
    status, data = lab.lab.api("GET", "/v1/auth/cert/certs/%s" % name, token=lab.root_token())
    assert status == 200, (status, data)
    return data["data"]


def write_mapping(lab, name, **fields):
    status, data = lab.lab.api("POST", "/v1/auth/cert/certs/%s" % name, token=lab.root_token(), body=fields)
    assert status < 300, (status, data)


class ReadOnlyDir:
    """Bind-mount a folder read-only on itself (EROFS even for root)."""

    def __init__(self, path):
        self.path = str(path)

    def __enter__(self):
        subprocess.run(["mount", "--bind", self.path, self.path], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", self.path], check=True)
        return self

    def remove(self):
        subprocess.run(["umount", self.path], check=False)

    def __exit__(self, *exc):
        self.remove()


class FullDir:
    """Mount a tiny tmpfs over a folder, copy its files in, then fill it (ENOSPC on the next write)."""

    def __init__(self, path, size="64k"):
        self.path, self.size = Path(path), size
        self.saved = {}

    def __enter__(self):
        self.saved = {p.name: (p.read_bytes(), p.stat().st_mode) for p in self.path.iterdir() if p.is_file()}
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0755" % self.size, "tmpfs", str(self.path)],
                       check=True)
        for name, (data, mode) in self.saved.items():
            (self.path / name).write_bytes(data)
            os.chmod(self.path / name, mode & 0o7777)
        filler = self.path / ".filler"
        with open(filler, "wb") as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
            except OSError:
                pass
        return self

    def remove(self):
        """Copy what is on the tmpfs back to the real folder, unmount."""
        if not os.path.ismount(self.path):
            return
        (self.path / ".filler").unlink(missing_ok=True)
        current = {p.name: (p.read_bytes(), p.stat().st_mode) for p in self.path.iterdir() if p.is_file()}
        subprocess.run(["umount", str(self.path)], check=True)
        for name, (data, mode) in current.items():
            (self.path / name).write_bytes(data)
            os.chmod(self.path / name, mode & 0o7777)

    def __exit__(self, *exc):
        self.remove()


# --------------------------------------------------------------------------
# a forwarder that resets while its backend is down
# --------------------------------------------------------------------------

def free_port():
    """A port for a forwarder, reserved for this process's lifetime (tests/ports.py; imported
    here, as this file also runs as a script, `once`, where tests/ is not on sys.path)."""
    import ports
    return ports.reserve(FORWARDER_PORTS)


class ResettingForwarder(threading.Thread):
    """127.0.0.1:port -> backend. Accepts even when the backend is down and then
    answers with a TCP RST (SO_LINGER 0): what a container port forwarder does
    while the server starts (the seed's `[Errno 104] Connection reset by peer`)."""

    def __init__(self, backend_port, port=None):
        super().__init__(daemon=True)
        self.backend_port = backend_port
        self.port = port or free_port()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)
        self.stopped = threading.Event()
        self.forwarded, self.resets = 0, 0
        self.last_reset = self.first_forward_after_reset = None

    def run(self):
        self.sock.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                client, _addr = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=2)
        except OSError:
            self.resets += 1
            self.last_reset = time.time()
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        self.forwarded += 1
        if self.resets and self.first_forward_after_reset is None:
            self.first_forward_after_reset = time.time()
        pair = {client: backend, backend: client}
        try:
            while not self.stopped.is_set():
                ready, _w, _x = select.select(list(pair), [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    pair[s].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            backend.close()

    def stop(self):
        self.stopped.set()
        self.sock.close()
        self.join(5)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "once":
        sys.exit(_once_main(sys.argv[2:]))
    sys.exit(__doc__)
