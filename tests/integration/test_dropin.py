"""Issue 14: a rotated certificate is a drop-in replacement (key type, names, addresses and file
layout follow what is installed), checked from outside the playbook on a throwaway lab that
looks like production on these points: the PKI roles of the listener and the nginx frontends
pin RSA 2048, the listener and the proxy certs carry the IP SAN 127.0.0.1 (the proxy is the
default server of its port: clients by address send no SNI), the last app's frontend holds only
frontend.fullchain.pem + frontend.key.

A client BY ADDRESS is what hvac/curl/requests do with https://127.0.0.1:<port>: no SNI, the
certificate verified against the root CA for the IP address (Python ssl with
server_hostname="127.0.0.1"). Every check here reads files with `cryptography`, makes real TLS
handshakes and real HTTP requests; nothing is mocked.
"""
import re
import ssl
import threading
import time
from pathlib import Path

import faults
import pytest
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import format_serial
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from lab import SNI, handshake, http_json, tls_context
from test_faults import (QUICK, admin_works, assert_all_green, assert_stopped_at, bundle_files, changed, ev, force,
                         live_files, one_line, phase_files, report, serial)
from test_rotate_playbook import _admin_ctx, _ansible, _cert, _slots, _tail, _wait

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "rotate_all.yml"
ADDRESS = "127.0.0.1"

pytestmark = [pytest.mark.lab, pytest.mark.destructive, pytest.mark.slow]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def names(path):
    """({DNS SANs + CN}, {IP SANs}) of the (first) certificate in path."""
    cert = _cert(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns, ips = set(san.get_values_for_type(x509.DNSName)), {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    except x509.ExtensionNotFound:
        dns, ips = set(), set()
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return dns | {a.value for a in cn}, ips


def key_kind(path):
    """('rsa', 2048) / ('ec', 256) of the private key in path."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), None)
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa", key.key_size
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return "ec", key.curve.key_size
    return type(key).__name__, None


def root_ctx(lab):
    return tls_context(lab.admin_env()["VAULT_CACERT"])


def served_by_address(port, ctx):
    """Serial of the leaf a client by address gets (no SNI, IP verified); raises ssl errors."""
    der, _version = handshake(port, ADDRESS, ctx)
    return x509.load_der_x509_certificate(der).serial_number


def by_address_or_none(port, ctx):
    """served_by_address, None while it fails (an nginx reload takes effect in its new workers)."""
    try:
        return served_by_address(port, ctx)
    except (ssl.SSLError, OSError):
        return None


def plan_text(proc):
    """The plan the preflight printed (one line per slot, then the drop-in lines), on one line."""
    found = re.search(r"TASK \[privsec\.vault_rotate\.preflight : The plan .*?\n(.*?)\nTASK \[", proc.stdout, re.S)
    assert found, "no plan in the output:\n" + _tail(proc)
    return one_line(found.group(1))


class AddressProbe(threading.Thread):
    """Every ~50 ms, as a client that connects BY ADDRESS and verifies: GET /v1/sys/seal-status
    through the proxy (root CA, no client cert) and on the listener (admin client cert read again
    for every try: it rotates during the run). A moment where the admin cert and key on disk do
    not match yet is the client's own problem, counted apart; everything else that is not 200 +
    unsealed is a failure."""

    def __init__(self, lab, interval=0.05):
        super().__init__(daemon=True)
        self.lab, self.interval = lab, interval
        self.stopped = threading.Event()
        self.tries = {"proxy": 0, "listener": 0}
        self.failures = []
        self.client_side = 0

    def _one(self, target, port, ctx):
        self.tries[target] += 1
        try:
            status, body = http_json(port, "GET", "/v1/sys/seal-status", ctx, sni=ADDRESS, timeout=5)
            if status != 200 or (body or {}).get("sealed") is not False:
                self.failures.append("%s: HTTP %s %s" % (target, status, str(body)[:120]))
        except Exception as exc:  # every failure class counts
            self.failures.append("%s: %s: %s" % (target, type(exc).__name__, exc))

    def run(self):
        ca = self.lab.admin_env()["VAULT_CACERT"]
        proxy_ctx = tls_context(ca)
        while not self.stopped.is_set():
            self._one("proxy", self.lab.proxy_port, proxy_ctx)
            try:
                listener_ctx = _admin_ctx(self.lab)
            except (ssl.SSLError, OSError):
                self.client_side += 1
            else:
                self._one("listener", self.lab.vault_port, listener_ctx)
            self.stopped.wait(self.interval)

    def stop(self):
        self.stopped.set()
        self.join(15)


# ---------------------------------------------------------------------------
# 1 + 2 + 3: the first forced run, a client by address throughout, then an explicit drop
# ---------------------------------------------------------------------------

# Settings that would make the first run work by configuration instead of by following what
# is installed: none of them may be in the lab inventory.
DROPIN_SETTINGS = re.compile(r"_(key_type|key_size|dns_names|ip_addresses|drop_names|cert_path|fullchain_path)\b")


def test_first_forced_run_is_a_drop_in_replacement_then_an_explicit_drop(throwaway_lab):
    """1. The first forced run on the production-like lab is green with no key-type, name or
    layout setting; keys stay RSA 2048 where they were, every DNS and IP name survives, the
    fullchain-only site gets no leaf file, the report shows the new lifetime.
    2. A client by address (proxy, listener) never fails during or after it.
    3. Then an explicit drop of the proxy's IP SAN is planned as DROPS, done, and passes; and a
    client by address is now refused (the drop is real, and the probe of 2 could fail)."""
    lab = throwaway_lab()
    info = lab.info
    inventory = "".join(p.read_text() for p in (REPO / "inventories" / "lab").rglob("*") if p.is_file())
    assert not DROPIN_SETTINGS.findall(inventory), DROPIN_SETTINGS.findall(inventory)

    slots = _slots(info)
    proxy = info["proxy_app"]
    pp = info["app_paths"][proxy]
    fullchain_app = [a for a in info["apps"] if info["app_paths"][a]["frontend_layout"] == "fullchain"]
    assert len(fullchain_app) == 1, "the lab has no fullchain-only frontend"
    fullchain_app = fullchain_app[0]
    fc_dir = Path(info["app_paths"][fullchain_app]["frontend_key"]).parent
    rsa_slots = ["listener", "frontend-%s" % proxy] + ["frontend-%s" % a for a in info["apps"]]
    # The lab is what the issue describes (else this test proves nothing).
    before_names = {name: names(crt) for name, (crt, _key) in slots.items()}
    before_keys = {name: key_kind(key) for name, (_crt, key) in slots.items()}
    before_serials = {name: _cert(crt).serial_number for name, (crt, _key) in slots.items()}
    assert all(before_keys[s] == ("rsa", 2048) for s in rsa_slots), before_keys
    assert ADDRESS in before_names["listener"][1] and ADDRESS in before_names["frontend-%s" % proxy][1], before_names
    assert sorted(p.name for p in fc_dir.iterdir()) == ["frontend.fullchain.pem", "frontend.key"]
    ctx = root_ctx(lab)
    assert served_by_address(lab.proxy_port, ctx) == before_serials["frontend-%s" % proxy]
    old_lifetimes = {name: (_cert(crt).not_valid_after_utc - _cert(crt).not_valid_before_utc).total_seconds() / 86400
                     for name, (crt, _key) in slots.items()}

    probe = AddressProbe(lab)
    probe.start()
    started = time.monotonic()
    try:
        first = _ansible(lab, PLAYBOOK, "-e", "vault_rotate_force=true")
        time.sleep(1.0)  # and after it
    finally:
        probe.stop()
    took = time.monotonic() - started
    assert_all_green(lab, first)
    rep = report(lab)
    phases = {p["phase"]: p["gate"] for p in rep["phases"]}
    assert phases["restart"] == "skipped", phases  # no restart: the restart window does not apply
    print("first forced run %.1f s; clients by address: tries %s, failures %d, client-side skips %d"
          % (took, probe.tries, len(probe.failures), probe.client_side))
    assert probe.tries["proxy"] > 50 and probe.tries["listener"] > 50, probe.tries
    assert probe.failures == [], "%d failed: %s" % (len(probe.failures), probe.failures[:5])

    # Every slot rotated; keys as installed; every name and address kept.
    after_serials = {name: _cert(crt).serial_number for name, (crt, _key) in slots.items()}
    assert [n for n in slots if after_serials[n] == before_serials[n]] == [], "not rotated"
    after_keys = {name: key_kind(key) for name, (_crt, key) in slots.items()}
    assert after_keys == before_keys, (before_keys, after_keys)
    for name, (crt, _key) in slots.items():
        dns, ips = names(crt)
        assert dns >= before_names[name][0] and ips >= before_names[name][1], (name, before_names[name], (dns, ips))
    assert names(slots["listener"][0]) == before_names["listener"]
    assert names(slots["frontend-%s" % proxy][0]) == before_names["frontend-%s" % proxy]
    # The fullchain-only site still has no leaf file (the previous generation is kept as .prev).
    assert sorted(p.name for p in fc_dir.iterdir() if not p.name.endswith(".prev")) == [
        "frontend.fullchain.pem", "frontend.key"], sorted(p.name for p in fc_dir.iterdir())
    # What a client by address and by name sees now: the new certs, verified.
    assert served_by_address(lab.proxy_port, ctx) == after_serials["frontend-%s" % proxy]
    assert served_by_address(lab.vault_port, _admin_ctx(lab)) == after_serials["listener"]
    assert handshake(lab.proxy_port, SNI, ctx)
    # The plan said so: the key as installed, the proxy's address kept.
    plan = plan_text(first)
    for slot in ("server_tls", "app_leaf/%s" % info["apps"][0], "app_leaf/%s" % fullchain_app,
                 "proxy_trust/frontend-%s" % proxy):
        assert re.search(r"%s on \S+: key rsa-2048 \(as installed\)" % re.escape(slot), plan), (slot, plan[-3000:])
    assert re.search(r"proxy_trust/frontend-%s on \S+: key rsa-2048 \(as installed\); keeps 127\.0\.0\.1" % proxy,
                     plan), plan[-3000:]
    # The report shows the new lifetime of every rotated certificate (and it is the cert's).
    by_slot = {s["slot"]: s for s in rep["slots"]}
    listener_new = by_slot["server_tls"]["new"] or {}
    cert = _cert(slots["listener"][0])
    real = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400
    assert listener_new.get("lifetime_days") is not None, by_slot["server_tls"]
    assert abs(float(listener_new["lifetime_days"]) - real) < 0.01, (listener_new, real)
    for entry in rep["slots"]:
        assert entry["action"] == "rotated" and float((entry["new"] or {}).get("lifetime_days") or 0) > 1, entry
    print("new lifetimes (days): %s (the replaced ones: %s)" % (
        {s["slot"]: s["new"]["lifetime_days"] for s in rep["slots"]},
        sorted({round(v, 2) for v in old_lifetimes.values()})))

    # 3. An explicit drop: the proxy's IP SAN goes, the plan says DROPS, the run passes. (With a
    # shorter ttl asked for, too: the plan warns that the new cert lives shorter.)
    proxy_front = "proxy_trust/frontend-%s" % proxy
    dropped = _ansible(lab, PLAYBOOK, *QUICK, *force("proxy_trust"),
                       *ev(proxy_trust_frontend_drop_names=[ADDRESS], proxy_trust_frontend_ttl="240h"))
    assert_all_green(lab, dropped)
    plan = plan_text(dropped)
    line = re.search(r"%s on \S+: [^|]*?DROPS 127\.0\.0\.1" % re.escape(proxy_front), plan)
    assert line, plan[-3000:]
    print("plan: %s" % line.group(0))
    warning = re.search(r"WARNING: %s: the new certificate lives 10\.0 days, the one it replaces lived 30\.0 days"
                        r"[^)]*\)" % re.escape(proxy_front), plan)
    assert warning, plan[-3000:]
    print("plan: %s" % warning.group(0))
    short = {s["slot"]: s for s in report(lab)["slots"]}[proxy_front]
    assert short["action"] == "rotated" and short["new"]["lifetime_days"] == 10.0, short
    assert short["old"]["lifetime_days"] == 30.0, short
    dns, ips = names(pp["proxy_crt"])
    assert ips == set() and SNI in dns, (dns, ips)
    new_front = serial(pp["proxy_crt"])
    assert new_front != after_serials["frontend-%s" % proxy]
    der, _v = handshake(lab.proxy_port, SNI, ctx)
    assert x509.load_der_x509_certificate(der).serial_number == new_front
    # A client by address is now refused: what a drop means (and what the probe above would see).
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        served_by_address(lab.proxy_port, ctx)
    assert "IP address mismatch" in str(refused.value), refused.value
    print("client by address after the drop: %s" % refused.value)


# ---------------------------------------------------------------------------
# 4. a lost name fails its gate and rolls back
# ---------------------------------------------------------------------------

@pytest.mark.faults
def test_lost_address_fails_the_proxy_gate_and_rolls_back(throwaway_lab, tmp_path):
    """At the proxy's reload another site becomes the default server of its port (a catch-all
    server block with that site's cert, e.g. deployed by another tool): clients with the SNI
    name still get the proxy's new cert, clients by address (no SNI) get a cert without the IP
    SAN 127.0.0.1 the old cert had. The gate that probes 127.0.0.1 must fail and roll back."""
    lab = throwaway_lab()
    info = lab.info
    proxy = info["proxy_app"]
    pp = info["app_paths"][proxy]
    unit = pp["nginx_unit"]
    conf = Path(pp["nginx_conf"])
    good_conf = conf.read_text()
    # The other site's cert and key (DNS name of app 0 only, chains to the same root).
    other = info["app_paths"][info["apps"][0]]
    tls = Path(pp["proxy_key"]).parent
    (tls / "catchall.fullchain.pem").write_bytes(Path(other["frontend_fullchain"]).read_bytes())
    (tls / "catchall.key").write_bytes(Path(other["frontend_key"]).read_bytes())
    (tls / "catchall.key").chmod(0o600)
    listen = "    listen %s:%d ssl default_server;\n" % (ADDRESS, lab.proxy_port)
    assert listen in good_conf, good_conf
    catchall = (listen + "    server_name _;\n    ssl_certificate     %s;\n    ssl_certificate_key %s;\n"
                "    return 421;\n  }\n  server {\n    listen %s:%d ssl;\n"
                % (tls / "catchall.fullchain.pem", tls / "catchall.key", ADDRESS, lab.proxy_port))
    reload = faults.once_command(tmp_path / "catchall.state", ["replace", conf, listen, catchall],
                                 info["units"][unit]["commands"]["reload"])
    ctx = root_ctx(lab)
    old_front, old_agent = serial(pp["proxy_crt"]), serial(pp["agent_crt"])
    assert served_by_address(lab.proxy_port, ctx) == old_front
    before = live_files(lab)

    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("proxy_trust"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, unit, "reload", reload),
                        proxy_trust_wait_timeout=5))
    assert (tmp_path / "catchall.state").exists(), "the fault did not fire"
    gate, klass, msg, nxt = assert_stopped_at(lab, proc, "proxy_trust", {"hostname_mismatch"})
    assert ADDRESS in msg, msg
    # It names what a client by address got instead, and what to change.
    assert "it served serial %s for %s" % (format_serial(serial(other["frontend_fullchain"])), other["sni"]) in msg, msg
    assert "sends no SNI" in nxt and "default server" in nxt, nxt
    # Rolled back: the old proxy cert (and the proxy's agent cert) on disk and served by name.
    assert serial(pp["proxy_crt"]) == old_front and serial(pp["proxy_fullchain"]) == old_front
    assert serial(pp["agent_crt"]) == old_agent
    der, _v = handshake(lab.proxy_port, SNI, ctx)
    assert x509.load_der_x509_certificate(der).serial_number == old_front
    status, _seal = http_json(lab.proxy_port, "GET", "/v1/sys/seal-status", ctx)
    assert status == 200
    admin_works(lab)
    assert changed(before, live_files(lab)) <= (phase_files(lab)["proxy_trust"] | bundle_files(lab)
                                                 | {conf.relative_to(lab.dir).as_posix()})
    # The catch-all the fault added stays (the run did not write the config): clients by address
    # still get the other site's cert until it is removed.
    with pytest.raises(ssl.SSLCertVerificationError):
        served_by_address(lab.proxy_port, ctx)

    # Fault removed: the proxy is the default server again, the old cert answers by address,
    # and the next run rotates and passes.
    conf.write_text(good_conf)
    assert lab.unit(unit, "reload").returncode == 0
    assert _wait(lambda: by_address_or_none(lab.proxy_port, ctx) == old_front, 10), "nginx did not take the fix"
    again = _ansible(lab, PLAYBOOK, *QUICK, *force("proxy_trust"))
    assert_all_green(lab, again)
    assert served_by_address(lab.proxy_port, ctx) == serial(pp["proxy_crt"]) != old_front
    assert ADDRESS in names(pp["proxy_crt"])[1]


# ---------------------------------------------------------------------------
# 5. key type: what the PKI role requires when no key is installed; a setting it refuses
# ---------------------------------------------------------------------------

def test_key_type_follows_the_pki_role_and_a_refused_setting_stops_preflight(throwaway_lab):
    """An explicit app_leaf_key_type=ec against the RSA-pinned nginx roles stops preflight,
    naming the slot, the setting and the role, with nothing changed. Then a frontend with NO key
    installed gets what its role requires (RSA 2048) through the rekey round; the run is green."""
    lab = throwaway_lab()
    info = lab.info
    app = info["apps"][0]
    ap = info["app_paths"][app]
    assert ap["frontend_layout"] == "leaf+fullchain"
    before = live_files(lab)
    refused = _ansible(lab, PLAYBOOK, *QUICK, *force("app_leaf"), *ev(app_leaf_key_type="ec"))
    gate, klass, msg, nxt = assert_stopped_at(lab, refused, "preflight", {"bad_input"})
    assert re.search(r"slot app_leaf/(%s): app_leaf_key_type asks for ec-256 keys, but PKI role "
                     r"pki-prod/roles/nginx-\1 requires rsa-2048 keys" % "|".join(info["apps"]), msg), msg
    assert "app_leaf_key_type" in nxt, nxt
    assert changed(before, live_files(lab)) == set()
    admin_works(lab)

    # No key (nor cert) installed for app 0's frontend: the new key is what the role requires.
    for key in ("frontend_key", "frontend_crt", "frontend_fullchain"):
        Path(ap[key]).unlink()
    proc = _ansible(lab, PLAYBOOK, *QUICK)
    assert_all_green(lab, proc)
    # The first round made an EC key (nothing installed to follow), sign found that the role
    # refuses it, the rekey round made the key the role requires and signed it.
    # rotate_all runs the rekey round as a play of its own (it ends at once when nothing needs it)
    assert re.search(r"PLAY \[Phase 0 - new keys where a PKI role demands another key type\]", proc.stdout)
    rekey = re.search(r"TASK \[privsec\.vault_rotate\.preflight : New key and CSR where a PKI role demands.*?\n\n",
                      proc.stdout, re.S)
    assert rekey and re.search(r"^changed: \[lab-%s\]" % app, rekey.group(0), re.M), _tail(proc)
    line = re.search(r"app_leaf/%s on \S+: key rsa-2048 \(as the PKI role requires\)[^|]*?(?= [a-z_]+/\S+ on |$)"
                     % app, plan_text(proc))
    assert line, plan_text(proc)[-3000:]
    print("plan: %s" % line.group(0))
    assert key_kind(ap["frontend_key"]) == ("rsa", 2048)
    assert serial(ap["frontend_crt"]) == serial(ap["frontend_fullchain"])
    assert names(ap["frontend_crt"])[0] == {ap["sni"]}
    der, _v = handshake(ap["port"], ap["sni"], root_ctx(lab))
    served = x509.load_der_x509_certificate(der)
    assert served.serial_number == serial(ap["frontend_crt"]) and isinstance(served.public_key(), rsa.RSAPublicKey)
    rotated = [s["slot"] for s in report(lab)["slots"] if s["action"] == "rotated"]
    assert rotated == ["app_leaf/%s" % app], rotated


# ---------------------------------------------------------------------------
# 6. an agent that keeps its old token: the deployment is not whole, no SUCCESS
# ---------------------------------------------------------------------------

@pytest.mark.faults
def test_agent_with_a_token_from_its_old_cert_is_caught(throwaway_lab, tmp_path):
    """a) The agent restart of agent_login becomes a reload (SIGHUP, one-shot): the agent keeps
    the token of its OLD cert; the token gate catches it (stale_token), the phase rolls back.
    b) The healthcheck alone: another tool installs a new agent cert and SIGHUPs the agent
    (nothing is due for the run then); the run's verification of every host finds the token
    from the old cert (stale_token) and the run does not report success; restarting the agent
    (what the message says) makes the next run green."""
    lab = throwaway_lab()
    info = lab.info
    app = info["apps"][0]
    ap = info["app_paths"][app]
    unit = ap["agent_unit"]
    old_agent = serial(ap["agent_crt"])
    restart = faults.once_command(tmp_path / "sighup.state", ["reload", lab.dir, unit],
                                  info["units"][unit]["commands"]["restart"])
    before = live_files(lab)
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("agent_login"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, unit, "restart", restart),
                        agent_login_wait_timeout=8))
    assert (tmp_path / "sighup.state").exists(), "the fault did not fire"
    gate, klass, msg, nxt = assert_stopped_at(lab, proc, "agent_login", {"stale_token"})
    assert report(lab)["status"] != "success"
    assert serial(ap["agent_crt"]) == old_agent
    assert lab.unit(unit, "status").returncode == 0
    admin_works(lab)
    assert changed(before, live_files(lab)) <= phase_files(lab)["agent_login"] | bundle_files(lab)
    # Fault removed: the next run restarts the agent for real and passes.
    again = _ansible(lab, PLAYBOOK, *QUICK, *force("agent_login"))
    assert_all_green(lab, again)
    assert serial(ap["agent_crt"]) != old_agent

    # b) A new agent cert installed out of band, the agent only reloaded. Nothing is due for the
    # run (the cert is new, the CA files are as wanted: no phase restarts the agent).
    status, issued = lab.lab.api("POST", "/v1/pki-prod/issue/agent-mtls-%s" % app, token=lab.root_token(),
                                 body={"common_name": ap["agent_cn"], "ttl": "720h"})
    assert status == 200, (status, issued)
    key = Path(ap["agent_key"])
    key.write_text(issued["data"]["private_key"] + "\n")
    key.chmod(0o600)
    Path(ap["agent_crt"]).write_text(issued["data"]["certificate"] + "\n")
    assert lab.unit(unit, "reload").returncode == 0
    stale = _ansible(lab, PLAYBOOK, *QUICK)
    assert stale.returncode != 0, _tail(stale)
    text = one_line(stale.stdout + stale.stderr)
    line = re.search(r"GATE (healthcheck\S*) FAILED \((\w+)\): (.*?)\. Next: (.*?)(?:\"|$| PLAY RECAP)", text)
    assert line, _tail(stale)
    print("out-of-band cert, agent reloaded: GATE %s FAILED (%s): %s | Next: %s" % line.groups())
    assert line.group(2) == "stale_token" and unit in line.group(3), line.groups()
    assert "restart %s" % unit in line.group(4), line.groups()
    rep = report(lab)
    assert rep["status"] == "failed" and rep["summary"]["failed_phase"] == "healthcheck", rep["summary"]
    assert rep["summary"]["rotated"] == 0, rep["summary"]
    assert not (lab.dir / "run" / "vault_rotate-lab.lock").exists()

    # What the message says: restart the agent; then the deployment is whole again.
    assert lab.unit(unit, "restart").returncode == 0
    again = _ansible(lab, PLAYBOOK, *QUICK)
    assert_all_green(lab, again)
