"""Safety under faults (issue 5): every fault injected into a real throwaway lab,
`playbooks/rotate_all.yml -l lab` run against it, and checked from outside.

For each fault: the run stops at the gate that exists for it (report: every
earlier phase passed, this one failed, no later phase ran), the message names
the gate, the failure class and what to check next; the failing phase's old
material is back on disk and served again; phases that passed keep their new
material; the admin identity still does seal-status and a login; nothing outside
the failing phase changed; with the fault removed a second run passes every gate.

Speed: earlier phases are made "not due" with `vault_rotate_renew_fraction=0.99`
(the lab's leaves are 75 % through their life) and only the phases under test
are forced (`<phase>_force=true`): the run is still the whole rotate_all.yml.
Helpers that inject faults live in faults.py (one-shot unit commands, read-only
and full folders, a resetting forwarder on 30000-30999).
"""
import hashlib
import json
import os
import re
import shlex
import threading
import time
from pathlib import Path

import faults
import pytest
from lab import SNI, http_json, tls_context
from test_rotate_playbook import _admin_ctx, _ansible, _cert, _served_serial, _slots, _tail

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "rotate_all.yml"
PHASES = ["preflight", "admin_cert", "server_tls", "agent_login", "app_leaf", "proxy_trust", "restart", "healthcheck"]
# Nothing is due unless forced; the lab's kept leaves have 6 h left, below app_leaf's 1-day floor.
QUICK = ["-e", "vault_rotate_renew_fraction=0.99", "-e", "app_leaf_min_days_left=0"]

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.destructive, pytest.mark.slow]


def ev(**kw):
    return ["-e", json.dumps(kw)]


def force(*phases):
    return ev(**{"%s_force" % p: True for p in phases})


def one_line(text):
    return re.sub(r"\s+", " ", text)


def report(lab):
    return json.loads((lab.dir / "reports" / "latest.json").read_text())


def live_files(lab):
    """sha256 of every live key/cert/chain/config file (no .prev/.next, tokens, renders, data, logs)."""
    out = {}
    for top in ("home", "root"):
        for path in sorted((lab.dir / top).rglob("*")):
            rel = path.relative_to(lab.dir).as_posix()
            if (not path.is_file() or path.suffix in (".prev", ".next", ".fault") or "/rendered/" in rel
                    or rel.endswith("/vault/token") or "/data/" in rel or "/logs/" in rel or "/tmp/" in rel
                    or path.name.endswith((".pid", ".log"))):
                continue
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def phase_files(lab):
    """phase -> the live files it may write (relative to the lab dir)."""
    info = lab.info
    p, a, proxy = info["paths"], info["app_paths"], info["proxy_app"]
    rel = lambda *xs: {Path(x).relative_to(lab.dir).as_posix() for x in xs}  # noqa: E731
    files = {
        "admin_cert": rel(p["admin_crt"], p["admin_key"], p["admin_issuing_ca"]),
        "server_tls": rel(p["server_crt"], p["server_key"], p["fullchain"], p["ca_chain"]),
        "agent_login": set(), "app_leaf": set(),
        "proxy_trust": rel(a[proxy]["agent_crt"], a[proxy]["agent_key"], a[proxy]["ca"], a[proxy]["proxy_crt"],
                           a[proxy]["proxy_key"], a[proxy]["proxy_fullchain"], a[proxy]["current_ca_chain"]),
    }
    for app in info["apps"]:
        files["agent_login"] |= rel(a[app]["agent_crt"], a[app]["agent_key"], a[app]["ca"])
        files["app_leaf"] |= rel(a[app]["frontend_crt"], a[app]["frontend_key"], a[app]["frontend_fullchain"])
    return files


def bundle_files(lab):
    """Trust bundles the earlier phases rewrite in their own canonical form on the first run over
    a fresh lab (same CAs, no restart needed): not a rotation."""
    info = lab.info
    p, a = info["paths"], info["app_paths"]
    paths = [p["admin_issuing_ca"], p["ca_chain"], a[info["proxy_app"]]["current_ca_chain"]]
    paths += [a[app]["ca"] for app in info["apps"] + [info["proxy_app"]]]
    return {Path(x).relative_to(lab.dir).as_posix() for x in paths}


def changed(before, after):
    return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def admin_works(lab):
    """seal-status (200, unsealed) and a cert login through the admin mapping, with the files on disk now."""
    status, seal = http_json(lab.vault_port, "GET", "/v1/sys/seal-status", _admin_ctx(lab))
    assert status == 200 and seal["sealed"] is False, (status, seal)
    status, login = http_json(lab.vault_port, "POST", "/v1/auth/cert/login", _admin_ctx(lab),
                              body={"name": lab.info["admin"]["mapping"]})
    assert status == 200, login
    assert lab.info["admin"]["policy"] in login["auth"]["token_policies"]


def agent_login(lab, app, mapping=None):
    info = lab.info
    ctx = tls_context(lab.admin_env()["VAULT_CACERT"], info["app_paths"][app]["agent_crt"],
                      info["app_paths"][app]["agent_key"])
    return http_json(lab.vault_port, "POST", "/v1/auth/cert/login", ctx, body={"name": mapping or "agent-%s" % app})


def gate_message(proc):
    """(gate, failure class, message, next) of the run's GATE ... FAILED line."""
    text = one_line(proc.stdout + proc.stderr)
    m = re.search(r"GATE (\S+) FAILED \((\w+)\): (.*?)\. Next: (.*?)(?:\"|$| PLAY RECAP)", text)
    assert m, "no GATE ... FAILED message:\n" + _tail(proc)
    return m.groups()


def assert_stopped_at(lab, proc, phase, classes=None):
    """The run failed at `phase`: message names gate/class/next, report has every earlier phase
    passed, this one failed, none later. Returns (gate, class, msg, next)."""
    assert proc.returncode != 0, _tail(proc)
    gate, klass, msg, nxt = gate_message(proc)
    if isinstance(phase, tuple):  # either of these phases may catch it (the first write that fails)
        phase = gate.split("/")[0] if gate.split("/")[0] in phase else phase[0]
    assert gate.split("/")[0] == phase, (gate, klass, msg)
    if classes:
        assert klass in classes, (gate, klass, msg)
    assert nxt.strip(), "no next step"
    rep = report(lab)
    assert rep["status"] == "failed" and rep["summary"]["failed_phase"] == phase, rep["summary"]
    seen = [p["phase"] for p in rep["phases"]]
    idx = PHASES.index(phase)
    assert seen == PHASES[:idx + 1], "ran %s, expected to stop at %s" % (seen, phase)
    assert all(p["gate"] == "passed" for p in rep["phases"][:-1]), rep["phases"]
    assert rep["phases"][-1]["gate"] == "failed"
    assert not (lab.dir / "run" / "vault_rotate-lab.lock").exists(), "the failed run kept the lock"
    print("FAULT at %s: GATE %s FAILED (%s): %s | Next: %s" % (phase, gate, klass, msg[:300], nxt[:300]))
    return gate, klass, msg, nxt


def assert_all_green(lab, proc):
    assert proc.returncode == 0, _tail(proc)
    rep = report(lab)
    assert rep["status"] == "success", rep["summary"]
    gates = {p["phase"]: p["gate"] for p in rep["phases"]}
    assert all(g in ("passed", "skipped") for g in gates.values()), gates
    assert [p for p in PHASES if p not in gates] == [], gates


def serial(path):
    return _cert(path).serial_number


# ---------------------------------------------------------------------------
# 1. admin_cert: the admin mapping does not accept the new admin cert
# ---------------------------------------------------------------------------

def test_admin_mapping_refuses_new_admin_cert(throwaway_lab):
    """The mapping pins the current admin leaf (managed out of band: the run may not
    rewrite it); the new cert cannot log in -> admin gate fails, old cert back."""
    lab = throwaway_lab()
    info = lab.info
    original = faults.read_mapping(lab, "admin")
    old = serial(info["paths"]["admin_crt"])
    faults.write_mapping(lab, "admin", certificate=Path(info["paths"]["admin_crt"]).read_text())
    before = live_files(lab)
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("admin_cert"), *ev(vault_rotate_admin_mapping_policies=[]))
    assert_stopped_at(lab, proc, "admin_cert")
    assert serial(info["paths"]["admin_crt"]) == old
    admin_works(lab)  # the old admin cert, through the pinned mapping
    assert changed(before, live_files(lab)) == set()

    # Fault removed (the mapping trusts the PKI again): the next run rotates and passes.
    faults.write_mapping(lab, "admin", certificate=original["certificate"])
    again = _ansible(lab, PLAYBOOK, *QUICK, *force("admin_cert"))
    assert_all_green(lab, again)
    assert serial(info["paths"]["admin_crt"]) != old
    admin_works(lab)


# ---------------------------------------------------------------------------
# 2 + 3. server_tls: cert/key mismatch (reload keeps the old cert), wrong name
# ---------------------------------------------------------------------------

def test_listener_key_mismatch_then_wrong_name(throwaway_lab, tmp_path):
    lab = throwaway_lab()
    info = lab.info
    files = phase_files(lab)
    old_admin, old_listener = serial(info["paths"]["admin_crt"]), serial(info["paths"]["server_crt"])

    # 2. The reload happens with a key that matches no cert: Vault keeps serving the old one.
    reload = faults.once_command(tmp_path / "swap.state", ["swap-key", info["paths"]["server_key"]],
                                 info["units"]["container-vaultprod"]["commands"]["reload"])
    before = live_files(lab)
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("admin_cert", "server_tls"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, "container-vaultprod", "reload",
                                                                           reload),
                        server_tls_wait_timeout=5))
    assert (tmp_path / "swap.state").exists(), "the fault did not fire"
    assert_stopped_at(lab, proc, "server_tls", {"serial_mismatch"})
    assert serial(info["paths"]["server_crt"]) == old_listener
    assert _served_serial(lab.vault_port, SNI, _admin_ctx(lab)) == old_listener
    new_admin = serial(info["paths"]["admin_crt"])
    assert new_admin != old_admin, "admin_cert passed: its new cert stays"
    admin_works(lab)
    assert changed(before, live_files(lab)) <= files["admin_cert"]

    # 3. An inventory that asks for the wrong name (another PKI role, another CN). A new cert
    # keeps every name of the one it replaces, which that role refuses: preflight stops, naming
    # the slot, before anything changed.
    before = live_files(lab)
    wrong = "ncprd1.prod.privsec.ch"
    wrong_name = ev(server_tls_pki_role="nginx-ncprd1", server_tls_common_name=wrong, server_tls_dns_names=[wrong],
                    server_tls_ip_addresses=[], server_tls_wait_timeout=5)
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("server_tls"), *wrong_name)
    gate, klass, msg, nxt = assert_stopped_at(lab, proc, "preflight", {"bad_input"})
    assert "slot server_tls" in msg and "vault.prod.privsec.ch not allowed by this role" in msg, msg
    assert changed(before, live_files(lab)) == set()
    # The same with the old names dropped on purpose: the cert is issued and served, the
    # SNI/hostname check refuses it.
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("server_tls"), *wrong_name,
                    *ev(server_tls_drop_names=["vault.prod.privsec.ch", "127.0.0.1"]))
    assert_stopped_at(lab, proc, "server_tls", {"hostname_mismatch"})
    assert serial(info["paths"]["server_crt"]) == old_listener
    assert _served_serial(lab.vault_port, SNI, _admin_ctx(lab)) == old_listener
    admin_works(lab)
    assert changed(before, live_files(lab)) == set()

    again = _ansible(lab, PLAYBOOK, *QUICK, *force("server_tls"))
    assert_all_green(lab, again)
    assert _served_serial(lab.vault_port, SNI, _admin_ctx(lab)) == serial(info["paths"]["server_crt"]) != old_listener
    assert serial(info["paths"]["admin_crt"]) == new_admin


# ---------------------------------------------------------------------------
# 4 + 5. agent_login: CA bundle without the intermediate, mapping changed under the run
# ---------------------------------------------------------------------------

def test_client_ca_bundle_lacks_intermediate(throwaway_lab, tmp_path):
    """4. The CA bundle the run hands to the listener for its clients (server_tls's client CA
    file, ca_chain.pem) loses the intermediate under the run (one-shot at the listener reload:
    another tool rewrites it root-only). Every client cert is a bare leaf signed by the
    intermediate: with that bundle no client can complete mTLS once Vault reloads its client CA
    (the restart). The run must stop before handing Vault that bundle, and leave Vault usable."""
    lab = throwaway_lab()
    info = lab.info
    keys = json.loads((lab.dir / "secrets" / "init.json").read_text())["keys_base64"]
    unseal = tmp_path / "unseal.json"
    fd = os.open(str(unseal), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"vault_rotate_unseal_keys": keys}, fh)
    chain = info["paths"]["ca_chain"]
    chain_before = Path(chain).read_bytes()
    old_listener = serial(info["paths"]["server_crt"])
    reload = faults.once_command(tmp_path / "ca.state", ["drop-intermediate", chain],
                                 info["units"]["container-vaultprod"]["commands"]["reload"])
    before = live_files(lab)
    proc = _ansible(lab, PLAYBOOK, *QUICK, "-e", "@%s" % unseal, *force("server_tls"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, "container-vaultprod", "reload",
                                                                           reload),
                        vault_rotate_restart_vault="always", restart_wait_timeout=15))
    assert (tmp_path / "ca.state").exists(), "the fault did not fire"
    print("client CA bundle after the run: %d cert(s), before: %d"
          % (Path(chain).read_bytes().count(b"BEGIN CERTIFICATE"), chain_before.count(b"BEGIN CERTIFICATE")))
    gate, klass, msg, nxt = assert_stopped_at(lab, proc, "server_tls", {"client_ca_incomplete"})
    assert "client CA file" in msg and "does not verify the admin client cert" in msg, msg
    assert serial(info["paths"]["server_crt"]) == old_listener
    from cryptography import x509
    certs = lambda data: {c.fingerprint(c.signature_hash_algorithm) for c in x509.load_pem_x509_certificates(data)}  # noqa: E731
    assert certs(Path(chain).read_bytes()) == certs(chain_before), "the client CA bundle was not restored"
    assert _served_serial(lab.vault_port, SNI, _admin_ctx(lab)) == old_listener
    admin_works(lab)
    status, _ = agent_login(lab, info["apps"][0])
    assert status == 200
    assert changed(before, live_files(lab)) <= phase_files(lab)["server_tls"]

    again = _ansible(lab, PLAYBOOK, *QUICK, "-e", "@%s" % unseal, *force("server_tls"),
                     *ev(vault_rotate_restart_vault="always"))
    assert_all_green(lab, again)
    # Vault was restarted after the phases: the healthcheck proved every host's gates again
    extra = report(lab)["extra"]
    assert int(extra["host_gates_proven_earlier"]) == 0 and int(extra["host_gates_checked"]) > 0, extra
    assert int(extra["hosts_not_visited"]) == 0, extra
    assert _served_serial(lab.vault_port, SNI, _admin_ctx(lab)) == serial(info["paths"]["server_crt"]) != old_listener
    admin_works(lab)


def test_agent_mapping_wrong_policies_and_cn(throwaway_lab, tmp_path):
    """5. Between the run writing the agent mapping and the agent's restart, the mapping of
    ncprd1 gets other policies (another tool rewrites it): the exact-policy login gate fails."""
    lab = throwaway_lab()
    info = lab.info
    files = phase_files(lab)
    app = info["apps"][0]
    unit = info["app_paths"][app]["agent_unit"]
    good = faults.read_mapping(lab, "agent-%s" % app)
    old_agent = serial(info["app_paths"][app]["agent_crt"])
    old_listener = serial(info["paths"]["server_crt"])
    bad = {"token_policies": ["default"], "allowed_common_names": good["allowed_common_names"],
           "certificate": good["certificate"]}
    restart = faults.once_command(tmp_path / "policies.state",
                                  ["mapping", str(lab.dir), "agent-%s" % app, json.dumps(bad)],
                                  info["units"][unit]["commands"]["restart"])
    before = live_files(lab)
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("server_tls", "agent_login"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, unit, "restart", restart)))
    assert (tmp_path / "policies.state").exists(), "the fault did not fire"
    gate, klass, msg, nxt = assert_stopped_at(lab, proc, "agent_login")
    assert serial(info["app_paths"][app]["agent_crt"]) == old_agent
    assert serial(info["paths"]["server_crt"]) != old_listener, "server_tls passed: keeps its new cert"
    admin_works(lab)
    assert changed(before, live_files(lab)) <= files["server_tls"] | files["agent_login"]
    # the other app's agent was not rolled back if it passed; its login works either way
    other = info["apps"][1]
    status, _ = agent_login(lab, other)
    assert status == 200

    # Fault removed: the run writes the mapping in full again, every gate passes.
    again = _ansible(lab, PLAYBOOK, *QUICK, *force("agent_login"))
    assert_all_green(lab, again)
    status, login = agent_login(lab, app)
    assert status == 200 and set(login["auth"]["token_policies"]) - {"default"} == set(good["token_policies"])

    # CN variant: the mapping allows another CN only.
    bad_cn = dict(bad, token_policies=good["token_policies"], allowed_common_names=["agent-other.prod.privsec.ch"])
    restart = faults.once_command(tmp_path / "cn.state", ["mapping", str(lab.dir), "agent-%s" % app,
                                                          json.dumps(bad_cn)],
                                  info["units"][unit]["commands"]["restart"])
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("agent_login"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, unit, "restart", restart)))
    assert_stopped_at(lab, proc, "agent_login")
    admin_works(lab)


def test_agent_that_does_not_come_back(throwaway_lab, tmp_path):
    """6. The agent's restart only stops it: unit gate fails, old cert back, agent restarted."""
    lab = throwaway_lab()
    info = lab.info
    app = info["apps"][0]
    unit = info["app_paths"][app]["agent_unit"]
    old_agent = serial(info["app_paths"][app]["agent_crt"])
    restart = faults.once_command(tmp_path / "stop.state", ["stop", str(lab.dir), unit],
                                  info["units"][unit]["commands"]["restart"])
    before = live_files(lab)
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("agent_login"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, unit, "restart", restart),
                        agent_login_wait_timeout=10))
    assert (tmp_path / "stop.state").exists()
    assert_stopped_at(lab, proc, "agent_login")
    assert serial(info["app_paths"][app]["agent_crt"]) == old_agent
    assert lab.unit(unit, "status").returncode == 0, "the rollback did not bring the agent back"
    status, _ = agent_login(lab, app)
    assert status == 200
    admin_works(lab)
    assert changed(before, live_files(lab)) <= phase_files(lab)["agent_login"] | bundle_files(lab)

    again = _ansible(lab, PLAYBOOK, *QUICK, *force("agent_login"))
    assert_all_green(lab, again)
    assert serial(info["app_paths"][app]["agent_crt"]) != old_agent


# ---------------------------------------------------------------------------
# 7. app_leaf: nginx refuses the reload (config test fails)
# ---------------------------------------------------------------------------

def test_nginx_refuses_reload(throwaway_lab):
    lab = throwaway_lab()
    info = lab.info
    app = info["apps"][0]
    conf = Path(info["app_paths"][app]["nginx_conf"])
    good = conf.read_text()
    old = serial(info["app_paths"][app]["frontend_crt"])
    port = info["app_paths"][app]["port"]
    root_ctx = tls_context(lab.admin_env()["VAULT_CACERT"])
    conf.write_text(good + "\nthis_is_not_a_directive on;\n")
    before = live_files(lab)
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("agent_login", "app_leaf"))
    assert_stopped_at(lab, proc, "app_leaf")
    assert serial(info["app_paths"][app]["frontend_crt"]) == old
    assert _served_serial(port, info["app_paths"][app]["sni"], root_ctx) == old
    admin_works(lab)
    assert changed(before, live_files(lab)) <= phase_files(lab)["agent_login"] | phase_files(lab)["app_leaf"] | bundle_files(lab)

    conf.write_text(good)
    again = _ansible(lab, PLAYBOOK, *QUICK, *force("app_leaf"))
    assert_all_green(lab, again)
    assert _served_serial(port, info["app_paths"][app]["sni"], root_ctx) == serial(info["app_paths"][app]["frontend_crt"])
    assert serial(info["app_paths"][app]["frontend_crt"]) != old


# ---------------------------------------------------------------------------
# 8. proxy_trust: the proxy's upstream chain lacks the root the served chain needs
# ---------------------------------------------------------------------------

def test_proxy_chain_lacks_a_ca(throwaway_lab, tmp_path):
    """At the proxy's reload its upstream CA chain holds the intermediate only (no root):
    nginx cannot verify the listener, the gate through the proxy fails."""
    lab = throwaway_lab()
    info = lab.info
    proxy = info["proxy_app"]
    pp = info["app_paths"][proxy]
    unit = info["units"][pp["nginx_unit"]]
    reload = faults.once_command(tmp_path / "chain.state", ["drop-root", pp["current_ca_chain"]],
                                 unit["commands"]["reload"])
    old_agent, old_front = serial(pp["agent_crt"]), serial(pp["proxy_crt"])
    chain_before = Path(pp["current_ca_chain"]).read_bytes()
    before = live_files(lab)
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("app_leaf", "proxy_trust"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, pp["nginx_unit"], "reload", reload),
                        proxy_trust_wait_timeout=5))
    assert (tmp_path / "chain.state").exists(), "the fault did not fire"
    assert_stopped_at(lab, proc, "proxy_trust")
    assert serial(pp["agent_crt"]) == old_agent and serial(pp["proxy_crt"]) == old_front
    root_ctx = tls_context(lab.admin_env()["VAULT_CACERT"])
    assert _served_serial(lab.proxy_port, SNI, root_ctx) == old_front
    status, seal = http_json(lab.proxy_port, "GET", "/v1/sys/seal-status", root_ctx)
    print("through the proxy after the rollback: HTTP %s" % status)
    admin_works(lab)
    app = info["apps"][0]
    assert _served_serial(info["app_paths"][app]["port"], info["app_paths"][app]["sni"], root_ctx) == serial(
        info["app_paths"][app]["frontend_crt"]), "app_leaf passed: its new cert is served"
    assert changed(before, live_files(lab)) <= phase_files(lab)["app_leaf"] | phase_files(lab)["proxy_trust"] | bundle_files(lab)
    # The rollback restores what the RUN changed; the chain was broken under it (the run had
    # written it unchanged), so it stays broken and the proxy answers 502 until the fault is
    # removed. What the operator sees is the gate message above.
    if Path(pp["current_ca_chain"]).read_bytes() != chain_before:
        assert status == 502, status
        Path(pp["current_ca_chain"]).write_bytes(chain_before)  # remove the fault
        assert lab.unit(pp["nginx_unit"], "reload").returncode == 0
    else:
        assert status == 200, "the proxy does not reach Vault after the rollback"

    again = _ansible(lab, PLAYBOOK, *QUICK, *force("app_leaf"))
    assert_all_green(lab, again)


# ---------------------------------------------------------------------------
# 9 + 11. restart: sealed without unseal keys; then a forwarder that resets while Vault starts
# ---------------------------------------------------------------------------

def test_restart_sealed_then_resetting_forwarder(throwaway_lab, tmp_path):
    lab = throwaway_lab()
    keys = json.loads((lab.dir / "secrets" / "init.json").read_text())["keys_base64"]
    before = live_files(lab)
    # 9. A restart is required (forced here) and no unseal keys are given: Vault comes back sealed.
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("admin_cert"),
                    *ev(vault_rotate_restart_vault="always", vault_rotate_unseal_keys=[], restart_sealed_grace=2))
    assert_stopped_at(lab, proc, "restart", {"sealed"})
    status, seal = http_json(lab.vault_port, "GET", "/v1/sys/seal-status", _admin_ctx(lab))
    assert status == 200 and seal["sealed"] is True  # the admin identity still gets its answer
    assert changed(before, live_files(lab)) <= phase_files(lab)["admin_cert"] | bundle_files(lab)
    assert lab.labctl("unseal").returncode == 0  # what the operator does next (or reruns with keys)
    admin_works(lab)

    # 11. Vault behind a forwarder that accepts and RESETS while Vault is down (errno 104). The
    # restart returns at once (stop; start in the background 4 s later, like a container
    # runtime that returns before the server listens), so the readiness wait meets the resets:
    # it must take them as "not ready yet", unseal, and the run passes.
    unseal = tmp_path / "unseal.json"
    fd = os.open(str(unseal), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"vault_rotate_unseal_keys": keys}, fh)
    delay = 4.0
    again, fwd, listening = _restart_behind_forwarder(lab, tmp_path, "rst", delay, "-e", "@%s" % unseal)
    print("forwarder: %d forwarded, %d reset while the backend was down" % (fwd.forwarded, fwd.resets))
    assert_all_green(lab, again)
    assert fwd.resets > 0, "Vault never was down behind the forwarder: the fault did not happen"
    extra = report(lab)["extra"]
    print("restart readiness: %s s after the restart began (Vault listened again after ~%.0f s), "
          "unsealed by the run: %s" % (extra["restart_readiness_s"], delay, extra["restart_unsealed_by_run"]))
    # ready was not declared before Vault was: the wait outlived the down time, the run itself
    # unsealed the Vault that came back sealed, and no request went through before it listened
    assert float(extra["restart_readiness_s"]) >= delay, extra
    assert extra["restart_unsealed_by_run"] in (True, "True", "true"), extra
    assert listening is not None and fwd.last_reset <= listening + 0.5, (fwd.last_reset, listening)
    assert fwd.first_forward_after_reset is not None and fwd.first_forward_after_reset >= fwd.last_reset
    admin_works(lab)

    # 11b. The resets never stop within the wait (Vault needs 25 s, the wait is 6 s): the
    # restart gate fails with the reset class and says what to check.
    before = live_files(lab)
    proc, fwd, listening = _restart_behind_forwarder(lab, tmp_path, "rst-long", 25.0, "-e", "@%s" % unseal,
                                                     *ev(restart_wait_timeout=6))
    gate, klass, msg, nxt = assert_stopped_at(lab, proc, "restart", {"reset"})
    assert fwd.resets > 0
    assert "no TLS session after 6 s" in msg and "reset" in msg, msg
    assert "did not start listening" in nxt, nxt
    deadline = time.monotonic() + 60
    while not (tmp_path / "rst-long.listening").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert lab.labctl("unseal").returncode == 0  # what the operator does once Vault is up
    admin_works(lab)
    assert changed(before, live_files(lab)) == set()


def _restart_behind_forwarder(lab, tmp_path, name, delay, *extra):
    """rotate_all with a forced restart whose command returns at once (Vault starts `delay` s
    later), Vault's URL through a ResettingForwarder. Returns (proc, forwarder, listening epoch)."""
    info = lab.info
    unit = "container-vaultprod"
    stamp = tmp_path / ("%s.listening" % name)
    restart = faults.once_command(tmp_path / ("%s.state" % name), ["restart-bg", str(lab.dir), delay, stamp],
                                  info["units"][unit]["commands"]["restart"])
    fwd = faults.ResettingForwarder(lab.vault_port)
    fwd.start()
    try:
        proc = _ansible(lab, PLAYBOOK, *QUICK, *extra,
                        *ev(vault_rotate_restart_vault="always",
                            vault_rotate_vault_url="https://127.0.0.1:%d" % fwd.port,
                            vault_rotate_service_commands=faults.unit_commands(info, unit, "restart", restart)))
        deadline = time.monotonic() + delay + 30
        while not stamp.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        fwd.stop()
    assert (tmp_path / ("%s.state" % name)).exists(), "the restart fault did not fire"
    listening = float(stamp.read_text()) if stamp.exists() else None
    return proc, fwd, listening


# ---------------------------------------------------------------------------
# 10. Vault stops in the middle of a phase (connection refused) and comes back
# ---------------------------------------------------------------------------

def test_vault_stops_mid_phase_and_comes_back(throwaway_lab, tmp_path):
    """At the agent restart of agent_login Vault goes away for ~4 s (refused) and comes
    back (started + unsealed by someone else): the gates wait, or stop with the class."""
    lab = throwaway_lab()
    info = lab.info
    app = info["apps"][0]
    unit = info["app_paths"][app]["agent_unit"]
    restart = faults.once_command(tmp_path / "bounce.state", ["bounce", str(lab.dir), "4"],
                                  info["units"][unit]["commands"]["restart"])
    proc = _ansible(lab, PLAYBOOK, *QUICK, *force("agent_login"),
                    *ev(vault_rotate_service_commands=faults.unit_commands(info, unit, "restart", restart)))
    assert (tmp_path / "bounce.state").exists()
    deadline = time.monotonic() + 30
    while lab.lab.seal_status() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    if proc.returncode == 0:
        print("Vault bounce mid agent_login: the run rode it out, every gate passed")
        assert_all_green(lab, proc)
    else:
        assert_stopped_at(lab, proc, "agent_login")
    admin_works(lab)
    status, _ = agent_login(lab, app)
    assert status == 200
    again = _ansible(lab, PLAYBOOK, *QUICK)
    assert_all_green(lab, again)


# ---------------------------------------------------------------------------
# 12. install into a read-only folder, or a full disk
# ---------------------------------------------------------------------------

def test_install_target_read_only_then_full(throwaway_lab):
    lab = throwaway_lab()
    info = lab.info
    app = info["apps"][0]
    tls = Path(info["app_paths"][app]["frontend_crt"]).parent
    old = serial(info["app_paths"][app]["frontend_crt"])
    port, sni = info["app_paths"][app]["port"], info["app_paths"][app]["sni"]
    root_ctx = tls_context(lab.admin_env()["VAULT_CACERT"])
    before = live_files(lab)
    # The new key is staged in the same folder in preflight: a read-only folder stops the run
    # there, before any phase changes a file; a full one may still take the small key and
    # fail at the install.
    with faults.ReadOnlyDir(tls):
        proc = _ansible(lab, PLAYBOOK, *QUICK, *force("app_leaf"))
    assert_stopped_at(lab, proc, ("preflight", "app_leaf"), {"write_failed"})
    assert serial(info["app_paths"][app]["frontend_crt"]) == old
    assert _served_serial(port, sni, root_ctx) == old
    admin_works(lab)
    after_ro = live_files(lab)

    with faults.FullDir(tls):
        proc = _ansible(lab, PLAYBOOK, *QUICK, *force("app_leaf"))
    assert_stopped_at(lab, proc, ("preflight", "app_leaf"), {"write_failed"})
    assert serial(info["app_paths"][app]["frontend_crt"]) == old
    assert _served_serial(port, sni, root_ctx) == old
    admin_works(lab)
    other = info["apps"][1]
    print("changed by the two failed runs: %s" % sorted(changed(before, live_files(lab))))
    assert changed(before, after_ro) <= phase_files(lab)["app_leaf"] - {
        Path(p).relative_to(lab.dir).as_posix() for k, p in info["app_paths"][app].items()
        if k.startswith("frontend_") and k != "frontend_layout"} | bundle_files(lab), "the failing app's files must be as before"
    assert other

    again = _ansible(lab, PLAYBOOK, *QUICK, *force("app_leaf"))
    assert_all_green(lab, again)
    assert _served_serial(port, sni, root_ctx) == serial(info["app_paths"][app]["frontend_crt"]) != old


# ---------------------------------------------------------------------------
# 13. bad variables; 14. a second rotation while one runs
# ---------------------------------------------------------------------------

# Every certificate of a run is signed in preflight, before any phase changes a file: a PKI
# role that refuses (or does not exist) stops the run there, naming the slot.
BAD_VARIABLES = [
    ("an app with no PKI role", {"app_leaf_pki_role": "nginx-nosuchapp"}, "preflight"),
    ("a malformed SAN", {"app_leaf_dns_names": ["bad..name.prod.privsec.ch"]}, "preflight"),
    ("an unknown PKI mount", {"vault_rotate_pki_mount": "pki-nosuch"}, "preflight"),
]


def test_bad_variables_and_wrong_environment(throwaway_lab):
    lab = throwaway_lab()
    info = lab.info
    before = live_files(lab)
    serials = {a: serial(info["app_paths"][a]["frontend_crt"]) for a in info["apps"]}
    for what, bad, phase in BAD_VARIABLES:
        proc = _ansible(lab, PLAYBOOK, *QUICK, *force("app_leaf"), *ev(**bad))
        print("bad variable, %s:" % what)
        assert_stopped_at(lab, proc, phase)
        assert {a: serial(info["app_paths"][a]["frontend_crt"]) for a in info["apps"]} == serials
        assert changed(before, live_files(lab)) <= bundle_files(lab), what
    # -l with the wrong environment: prod hosts with the lab's values -> refused before any host.
    proc = _ansible(lab, PLAYBOOK, "-e", "vault_rotate_env=prod", timeout=300)
    text = one_line(proc.stdout + proc.stderr)
    assert proc.returncode != 0 and "REFUSED (environment interlock)" in text, _tail(proc)
    print("wrong environment: %s" % re.search(r"REFUSED \(environment interlock\)[^\"]{0,200}", text).group(0))
    assert changed(before, live_files(lab)) <= bundle_files(lab)
    admin_works(lab)


def test_second_rotation_while_one_runs(throwaway_lab):
    lab = throwaway_lab()
    info = lab.info
    lock = lab.dir / "run" / "vault_rotate-lab.lock"
    # The first run's nginx reload waits until the second run has ended (at most 60 s), so the
    # first holds the lock for the whole second run however fast either is.
    second_done = lab.dir / "second-run-done"
    unit = info["app_paths"][info["apps"][0]]["nginx_unit"]
    real = info["units"][unit]["commands"]["reload"]
    real = real if isinstance(real, str) else " ".join(shlex.quote(str(a)) for a in real)
    reload = "i=0; while [ ! -e %s ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; %s" % (
        shlex.quote(str(second_done)), real)
    box = {}
    first = threading.Thread(target=lambda: box.setdefault("first", _ansible(
        lab, PLAYBOOK, *QUICK, *force("app_leaf"),
        *ev(vault_rotate_service_commands=faults.unit_commands(info, unit, "reload", reload)))))
    first.start()
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lock.exists(), "the first run never took the lock"
    second = _ansible(lab, PLAYBOOK, *QUICK)
    held_during = lock.exists()
    second_done.touch()
    first.join(900)
    text = one_line(second.stdout + second.stderr)
    assert second.returncode != 0
    assert "Another rotation of lab holds the lock" in text, _tail(second)
    print("second run: %s" % re.search(r"Another rotation of lab holds the lock[^\"]{0,200}", text).group(0))
    assert held_during, "the refused run released the running one's lock"
    assert_all_green(lab, box["first"])
    assert not lock.exists()


# ---------------------------------------------------------------------------
# CA rollover without lockout: probes from every client identity during the runs
# ---------------------------------------------------------------------------

LOCKOUT = re.compile(r"unknown.ca|certificate.required|bad.certificate|CERTIFICATE_VERIFY_FAILED|"
                     r"HOSTNAME|HTTP 4\d\d|HTTP 5\d\d", re.I)


class IdentityProbe(threading.Thread):
    """Every ~100 ms: admin seal-status + login, each agent's cert login, seal-status through
    the proxy. Files are read again each time (they rotate). A failure is a LOCKOUT when the
    server answered and refused (TLS alert, verify failure, HTTP 4xx/5xx); refused/reset while
    Vault restarts, and sealed answers, are counted as the restart window."""

    def __init__(self, lab, interval=0.1):
        super().__init__(daemon=True)
        self.lab, self.interval = lab, interval
        self.stopped = threading.Event()
        self.ok = {}
        self.window = {}
        self.lockouts = []

    def _checks(self):
        info = self.lab.info
        ca = self.lab.admin_env()["VAULT_CACERT"]
        yield "admin", lambda: http_json(self.lab.vault_port, "POST", "/v1/auth/cert/login", _admin_ctx(self.lab),
                                         body={"name": info["admin"]["mapping"]}, timeout=5)
        for app in info["apps"] + [info["proxy_app"]]:
            ap = info["app_paths"][app]
            yield "agent-%s" % app, lambda ap=ap, app=app: http_json(
                self.lab.vault_port, "POST", "/v1/auth/cert/login",
                tls_context(ap["ca"], ap["agent_crt"], ap["agent_key"]), body={"name": "agent-%s" % app}, timeout=5)
        yield "proxy", lambda: http_json(self.lab.proxy_port, "GET", "/v1/sys/seal-status", tls_context(ca), timeout=5)

    def run(self):
        while not self.stopped.is_set():
            for name, check in self._checks():
                try:
                    status, body = check()
                    err = None if status == 200 else "HTTP %s %s" % (status, str(body)[:120])
                except Exception as exc:  # classified below
                    err = "%s: %s" % (type(exc).__name__, exc)
                if err is None:
                    self.ok[name] = self.ok.get(name, 0) + 1
                elif ("sealed" in err or "Refused" in err or "reset" in err.lower() or "503" in err
                      or "502" in err or "EOF" in err or "timed out" in err
                      or "RemoteDisconnected" in err  # Vault shutting down mid-request
                      or "HTTP 307" in err or "HTTP 429" in err  # unsealed, not active yet (standby)
                      or "not active" in err  # HTTP 500 "local node not active but active cluster node not found"
                      or "Broken pipe" in err):  # Vault closed the connection while stopping
                    self.window[name] = self.window.get(name, 0) + 1
                elif isinstance(err, str) and "PEM" in err or "key values mismatch" in err:
                    self.window[name] = self.window.get(name, 0) + 1  # files half replaced: client side
                else:
                    self.lockouts.append("%s: %s" % (name, err[:200]))
            self.stopped.wait(self.interval)

    def stop(self):
        self.stopped.set()
        self.join(15)


def test_ca_rollover_without_lockout(throwaway_lab, tmp_path):
    """pki-prod gets a new issuer G2 while G1 stays valid: run 1 trusts both everywhere
    (bundles, mappings, client CA file -> restart + unseal), G2 becomes default, run 2
    rotates every leaf to G2; then G1 is removed from Vault (the explicit step) and run 3
    drops it from every bundle. Probes from every identity run throughout."""
    from test_rotate_playbook import _add_issuer, _set_default_issuer, _unseal_vars

    lab = throwaway_lab()
    info = lab.info
    unseal = _unseal_vars(lab, tmp_path)
    status, data = lab.lab.api("GET", "/v1/pki-prod/config/issuers", token=lab.root_token())
    g1_id = data["data"]["default"]
    status, data = lab.lab.api("GET", "/v1/pki-prod/issuer/%s" % g1_id, token=lab.root_token())
    assert status == 200, (status, data)
    from cryptography import x509
    g1 = x509.load_pem_x509_certificate(data["data"]["certificate"].encode())
    g2_id, g2 = _add_issuer(lab)
    probe = IdentityProbe(lab)
    probe.start()
    try:
        trust = _ansible(lab, PLAYBOOK, "-e", unseal, *QUICK)
        assert_all_green(lab, trust)
        _set_default_issuer(lab, g2_id)
        rotate = _ansible(lab, PLAYBOOK, "-e", unseal, "-e", "vault_rotate_force=true")
        assert_all_green(lab, rotate)
        for name, (crt, _key) in _slots(info).items():
            assert _cert(crt).issuer == g2.subject, "%s is not signed by G2" % name
        # The explicit step: the old issuer leaves Vault, the next run drops it from trust.
        status, data = lab.lab.api("DELETE", "/v1/pki-prod/issuer/%s" % g1_id, token=lab.root_token())
        assert status < 300, (status, data)
        drop = _ansible(lab, PLAYBOOK, "-e", unseal, *QUICK)
        assert_all_green(lab, drop)
    finally:
        probe.stop()
    print("rollover probes: ok %s, restart window %s, lockouts %d"
          % (probe.ok, probe.window, len(probe.lockouts)))
    assert all(probe.ok.get(n, 0) > 5 for n in ["admin", "proxy"] + ["agent-%s" % a for a in
                                                                        info["apps"] + [info["proxy_app"]]]), probe.ok
    assert probe.lockouts == [], probe.lockouts[:10]
    from cryptography import x509
    bundles = [info["paths"]["admin_issuing_ca"], info["paths"]["ca_chain"],
               info["app_paths"][info["proxy_app"]]["current_ca_chain"]]
    bundles += [info["app_paths"][a]["ca"] for a in info["apps"] + [info["proxy_app"]]]
    for path in bundles:
        subjects = {c.subject for c in x509.load_pem_x509_certificates(Path(path).read_bytes())}
        print("%s: %s" % (Path(path).relative_to(lab.dir), sorted(s.rfc4514_string() for s in subjects)))
        assert g1.subject not in subjects, "%s still trusts G1 after G1 left Vault" % path
        assert g2.subject in subjects, "%s does not trust G2" % path
    assert g1.subject != g2.subject
    admin_works(lab)
