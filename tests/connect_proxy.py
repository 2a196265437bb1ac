"""A small real HTTP CONNECT proxy for the tests (threads, stdlib only).

It does what squid or tinyproxy do for CONNECT: reads the request head, opens a
TCP connection to host:port, answers 200 and relays bytes both ways until one
side closes. It logs every CONNECT (`log`: [(target, status)]), keeps what the
clients sent through the tunnels (`relayed`, to prove the proxy saw no token in
clear), and can refuse: `refuse = (403, "Forbidden")` or `(407, ...)`.

    with ConnectProxy(port) as proxy:
        ...  # proxy.url == "http://127.0.0.1:<port>"
"""
import socket
import threading


class ConnectProxy:
    def __init__(self, port, host="127.0.0.1"):
        self.host, self.port = host, port
        self.url = "http://%s:%d" % (host, port)
        self.log = []  # (target, status answered)
        self.heads = []  # the request heads as received (bytes)
        self.relayed = bytearray()  # client -> server bytes through every tunnel
        self.refuse = None  # (status, reason) to answer instead of 200
        self._lock = threading.Lock()
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(2)
        self._sock.close()

    def targets(self):
        return [t for t, _s in self.log]

    def _serve(self):
        while not self._stop.is_set():
            try:
                client, _addr = self._sock.accept()
            except OSError:
                continue
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client):
        client.settimeout(10)
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < 16384:
                chunk = client.recv(4096)
                if not chunk:
                    client.close()
                    return
                head += chunk
        except OSError:
            client.close()
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        method, _sep, rest = line.partition(" ")
        target = rest.rsplit(" ", 1)[0]
        with self._lock:
            self.heads.append(head)
        if method != "CONNECT":
            self._answer(client, target, 405, "Method Not Allowed")
            return
        if self.refuse:
            self._answer(client, target, *self.refuse)
            return
        host, _sep, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
        except (OSError, ValueError):
            self._answer(client, target, 502, "Bad Gateway")
            return
        with self._lock:
            self.log.append((target, 200))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        upstream.settimeout(None)
        client.settimeout(None)
        t = threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True)
        t.start()
        self._pipe(client, upstream, True)
        t.join(5)

    def _answer(self, client, target, status, reason):
        with self._lock:
            self.log.append((target, status))
        extra = "Proxy-Authenticate: Basic realm=\"test\"\r\n" if status == 407 else ""
        try:
            client.sendall(("HTTP/1.1 %d %s\r\n%sContent-Length: 0\r\nConnection: close\r\n\r\n"
                            % (status, reason, extra)).encode("ascii"))
        finally:
            client.close()

    def _pipe(self, src, dst, record):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if record:
                    with self._lock:
                        self.relayed += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            try:
                dst.close()
            except OSError:
                pass
