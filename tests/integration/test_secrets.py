"""No secret leaves the run (issue 5): a passing full rotation and a failing one,
both with -vvv and an Ansible log file, against a real throwaway lab. Every
byte of output, of the log and of the report files is searched for the lab's
real secrets: every private key on disk after the run (current and previous
generation, so the keys this run generated too), the root token, the agents'
tokens, the unseal keys (handed to the run as an AWX credential would).

Both ways the engine runs: in the controller's worker (the lab's hosts are
local: the default) and as the module privsec.vault_rotate.phase
(VAULT_ROTATE_INPROCESS=0, what every remote host gets), where the unseal keys
travel as the no_log module argument `unseal_keys` and the agents' token sinks
are read on the host by the token gate."""
import json
import os
import re
import subprocess
from pathlib import Path

import faults
import pytest

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "playbooks" / "rotate_all.yml"

pytestmark = [pytest.mark.faults, pytest.mark.lab, pytest.mark.destructive, pytest.mark.slow]

TOKEN_RE = re.compile(r"\b(?:hvs|hvb|s|b|r)\.[A-Za-z0-9]{20,}\b")


def _run(lab, log, engine, *extra, timeout=1200):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_", "ANSIBLE_", "LAB_"))}
    env.update({"LAB_DIR": str(lab.dir), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
                "ANSIBLE_LOG_PATH": str(log), "VAULT_ROTATE_INPROCESS": "0" if engine == "module" else "1"})
    argv = [str(REPO / ".venv" / "bin" / "ansible-playbook"), str(PLAYBOOK), "-l", "lab", "-vvv"] + list(extra)
    return subprocess.run(argv, cwd=str(REPO), env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _secrets(lab, extra_keys=()):
    """name -> list of needles (strings that must not appear anywhere)."""
    needles = {}
    for path in sorted(lab.dir.rglob("*")):
        if not path.is_file() or path.stat().st_size > 20000:
            continue
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        for i, block in enumerate(re.findall(r"-----BEGIN [A-Z ]*PRIVATE KEY-----(.*?)-----END", text, re.S)):
            lines = [ln.strip() for ln in block.strip().splitlines() if len(ln.strip()) >= 24]
            needles["%s#%d" % (path.relative_to(lab.dir), i)] = lines + ["".join(lines)]
    init = json.loads((lab.dir / "secrets" / "init.json").read_text())
    needles["root token"] = [init["root_token"]]
    for i, key in enumerate(init.get("keys_base64", []) + init.get("keys", []) + list(extra_keys)):
        needles["unseal key %d" % i] = [key]
    for path in lab.dir.glob("home/*/vault/token"):
        tok = path.read_text().strip()
        if tok:
            needles[str(path.relative_to(lab.dir))] = [tok]
    return needles


def _haystack(proc, log, lab):
    parts = [proc.stdout, proc.stderr, log.read_text() if log.exists() else ""]
    for path in sorted((lab.dir / "reports").glob("*")):
        parts.append(path.read_text())
    return "\n".join(parts)


def _assert_clean(name, hay, needles):
    leaks = sorted(label for label, ns in needles.items() for n in ns if n and n in hay)
    assert not leaks, "%s: secret material in output/log/report: %s" % (name, sorted(set(leaks)))
    tokens = sorted(set(TOKEN_RE.findall(hay)))
    assert not tokens, "%s: something shaped like a Vault token reached the output: %d" % (name, len(tokens))
    assert not re.search(r"BEGIN [A-Z ]*PRIVATE KEY-----(\\n|\s)*[A-Za-z0-9+/]{20}", hay), name


def _assert_engine(name, engine, proc):
    """The run took the engine path under test: -vvv names the module file each time it ships it."""
    shipped = len(re.findall(r"Using module file \S*/plugins/modules/phase\.py", proc.stdout))
    if engine == "module":
        assert shipped >= 10, "%s: the module privsec.vault_rotate.phase ran %d times" % (name, shipped)
    else:
        assert shipped == 0, "%s: the module privsec.vault_rotate.phase ran %d times in-process" % (name, shipped)


@pytest.mark.parametrize("engine", ["in-process", "module"])
def test_no_secret_in_verbose_output_logs_or_reports(engine, throwaway_lab, tmp_path):
    lab = throwaway_lab()
    init = json.loads((lab.dir / "secrets" / "init.json").read_text())
    unseal = tmp_path / "unseal.json"
    fd = os.open(str(unseal), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"vault_rotate_unseal_keys": init["keys_base64"]}, fh)

    # A passing full rotation (everything due on a fresh lab) with a forced restart + unseal; the agents'
    # token gates read the token sinks (whoami paths empty) and look the tokens up with them.
    log_ok = tmp_path / "ok.log"
    ok = _run(lab, log_ok, engine, "-e", "@%s" % unseal, "-e", "vault_rotate_restart_vault=always",
              "-e", json.dumps({"agent_login_whoami_path": "", "proxy_trust_agent_whoami_path": ""}))
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-4000:]
    _assert_engine("passing run", engine, ok)
    hay_ok = _haystack(ok, log_ok, lab)
    needles = _secrets(lab)
    print("%s, passing run: %d bytes searched for %d secrets (%d private keys)"
          % (engine, len(hay_ok), len(needles), len([n for n in needles if "#" in n])))
    assert len([n for n in needles if "#" in n]) >= 16  # 8 slots x (current + previous)
    _assert_clean("passing run", hay_ok, needles)

    # A failing run: the listener reload keeps the old cert (gate server_tls fails, rollback).
    info = lab.info
    reload = faults.once_command(tmp_path / "skip.state", ["skip"],
                                 info["units"]["container-vaultprod"]["commands"]["reload"])
    log_bad = tmp_path / "bad.log"
    bad = _run(lab, log_bad, engine, "-e", "@%s" % unseal, "-e", "vault_rotate_renew_fraction=0.99",
               "-e", json.dumps({"server_tls_force": True, "server_tls_wait_timeout": 3,
                                 "vault_rotate_service_commands": faults.unit_commands(
                                     info, "container-vaultprod", "reload", reload)}))
    assert bad.returncode != 0
    assert "GATE server_tls FAILED" in bad.stdout + bad.stderr
    _assert_engine("failing run", engine, bad)
    hay_bad = _haystack(bad, log_bad, lab)
    needles = _secrets(lab)
    print("%s, failing run: %d bytes searched for %d secrets" % (engine, len(hay_bad), len(needles)))
    _assert_clean("failing run", hay_bad, needles)
