"""Supported ansible-core versions: the oldest claimed one is tested, not assumed.

The newest line is what `.venv` runs (every other suite). The oldest,
`requires_ansible` in meta/runtime.yml, gets its own venv `.cache/venv-oldest`
(scripts/core_venv.py, shared with scripts/sanity.sh: Python 3.11, else 3.12,
found by full path; pins in tests/requirements-oldest.txt; rebuilt only when the
pins or the interpreter change) and runs:

- `ansible-doc` of every module, filter and role of the collection;
- a full `playbooks/rotate_all.yml -l lab` on a throwaway lab (every phase, its
  gate, a forced restart with unseal, the report), fed by the AWX credential
  types of extensions/awx rendered as AWX renders them (tests/awx_job.py),
  checked from the outside: report, serials, pid, lab health;
  then the healthcheck role on its own (entry point main, argument spec
  validated, a run of its own opened and closed);
- on the oldest AND the newest: the same rotation with the engine as a real
  module on the target (`VAULT_ROTATE_INPROCESS=0`: the action plugins run
  `privsec.vault_rotate.phase` through `_execute_module`, as for any host that is
  not the controller itself), every slot rotated, restart + unseal.

The README's "Supported versions" table must name exactly these versions.
"""
import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import awx_job
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
REQS = REPO / "tests" / "requirements-oldest.txt"
_spec = importlib.util.spec_from_file_location("core_venv", REPO / "scripts" / "core_venv.py")
core_venv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(core_venv)
OLDEST = next(iter(core_venv.LINES))
VENV = core_venv.LINES[OLDEST]["venv"]  # .cache/venv-oldest (OLDEST_VENV)
NAMESPACE, NAME = "privsec", "vault_rotate"
FQCN = NAMESPACE + "." + NAME


def _version(text):
    return tuple(int(x) for x in text.split("."))


def _pinned(path, package):
    return re.findall(r"^%s==(\S+)" % re.escape(package), path.read_text(), re.M)


def _oldest_pin():
    pins = _pinned(REQS, "ansible-core")
    assert len(pins) == 1, "exactly one ansible-core pin in %s" % REQS
    return pins[0]


def _newest_pin():
    return max(_pinned(REPO / "requirements-controller.txt", "ansible-core"), key=_version)


def _clean_env(venv=VENV, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANSIBLE_", "VAULT_", "BAO_", "VIRTUAL_ENV", "PYTHONHOME"))}
    # the venv under test first on PATH: ansible-* shell out to their siblings
    env["PATH"] = str(venv / "bin") + os.pathsep + env.get("PATH", "")
    env.update({"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(argv, timeout=300, venv=VENV, **env):
    return subprocess.run([str(a) for a in argv], cwd=str(REPO), env=_clean_env(venv, **env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def _ok(proc, what):
    assert proc.returncode == 0, "%s failed (rc=%s):\n%s" % (what, proc.returncode,
                                                            (proc.stdout + proc.stderr)[-6000:])
    return proc


@pytest.fixture(scope="session")
def oldest_venv():
    """.cache/venv-oldest with the pinned oldest ansible-core (scripts/core_venv.py: built once, under a lock)."""
    assert core_venv.LINES[OLDEST]["reqs"] == REQS
    try:
        venv = core_venv.ensure(OLDEST)
    except core_venv.Error as exc:
        pytest.fail(str(exc), pytrace=False)
    proc = _ok(_run([venv / "bin" / "ansible", "--version"], venv=venv), "ansible --version (oldest)")
    assert "core %s]" % _oldest_pin() in proc.stdout.splitlines()[0], proc.stdout
    return venv


def test_claims_match_what_is_tested():
    """requires_ansible = the oldest tested pin; the README table names both tested versions."""
    runtime = yaml.safe_load((REPO / "meta" / "runtime.yml").read_text())
    assert runtime["requires_ansible"] == ">=%s" % _oldest_pin()
    readme = (REPO / "README.md").read_text()
    # the README section "Supported versions" (a subsection of Requirements), up to the next heading
    table = re.split(r"^#+ ", readme.split("\n### Supported versions\n", 1)[1], maxsplit=1, flags=re.M)[0]
    for pin in (_oldest_pin(), _newest_pin()):
        assert "| %s |" % pin in table or "`%s`" % pin in table, "README support table lacks %s" % pin
    newest = _ok(_run([REPO / ".venv" / "bin" / "ansible", "--version"]), "ansible --version (.venv)")
    assert "core %s]" % _newest_pin() in newest.stdout.splitlines()[0], newest.stdout


def _names(folder, pattern):
    return sorted(p.stem for p in (REPO / folder).glob(pattern) if not p.name.startswith("_"))


def test_ansible_doc_of_every_plugin_and_role_on_the_oldest(oldest_venv):
    doc = oldest_venv / "bin" / "ansible-doc"
    filters = _names("plugins/filter", "*.yml")
    kinds = {
        "module": _names("plugins/modules", "*.py"),
        "filter": filters,
        "role": sorted(p.name for p in (REPO / "roles").iterdir() if (p / "meta" / "argument_specs.yml").is_file()),
    }
    for kind, names in kinds.items():
        assert names, "no %s found" % kind
        proc = _ok(_run([doc, "-t", kind, "--json"] + ["%s.%s" % (FQCN, n) for n in names]),
                   "ansible-doc -t %s (oldest)" % kind)
        docs = json.loads(proc.stdout)
        missing = [n for n in names if "%s.%s" % (FQCN, n) not in docs]
        assert not missing, "ansible-doc -t %s gave no docs for %s\n%s" % (kind, missing, proc.stderr[-3000:])
        assert "does not support Ansible version" not in proc.stderr, proc.stderr


def _serial(path):
    from cryptography import x509
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).serial_number


@pytest.mark.lab
@pytest.mark.destructive
@pytest.mark.slow
def test_rotate_all_on_the_oldest_with_awx_style_credentials(oldest_venv, throwaway_lab, tmp_path):
    """The full rotation on the oldest ansible-core, fed the way extensions/awx's credential
    types feed a job (rendered as AWX renders them): the admin identity as separate files +
    VAULT_* env + extra vars pointing at them, the unseal keys as an extra-vars LIST with
    empty fields, the survey's force and restart answers as AWX's !unsafe strings; a forced
    restart so the unseal path runs."""
    lab = throwaway_lab()
    paths = lab.info["paths"]
    cred = tmp_path / "awx-credential"
    cred.mkdir(mode=0o700)
    # the credential types of extensions/awx rendered as AWX renders them (tests/awx_job.py, shared
    # with tests/fleet/test_fleet_4_awx.py); survey answers written as AWX writes extra vars
    types = awx_job.credential_types()
    admin = awx_job.inject(types[awx_job.ADMIN_TYPE], {
        "vault_addr": lab.info["url"], "tls_server_name": lab.tls_server_name,
        "client_cert": Path(paths["admin_crt"]).read_text(), "client_key": Path(paths["admin_key"]).read_text(),
        "ca_cert": Path(paths["admin_ca"]).read_text(),
        "issuing_ca": Path(paths["admin_issuing_ca"]).read_text()}, cred)
    keys = json.loads((lab.dir / "secrets" / "init.json").read_text())["keys_base64"]
    unseal = awx_job.inject(types[awx_job.UNSEAL_TYPE], {"unseal_key_1": keys[0]}, cred)
    extra = cred / "extravars"
    extra.write_text(awx_job.dump_extra_vars(dict(awx_job.meta_vars(), **awx_job.survey_answers(
        vault_rotate_force="true", vault_rotate_restart_vault="always"))))
    creds = admin.args + unseal.args
    lab_admin_serial = _serial(paths["admin_crt"])
    cred_serial = _serial(admin.files["client_cert"])
    vault_pid = lab.lab.unit_pid("container-vaultprod")

    proc = _run([oldest_venv / "bin" / "ansible-playbook", REPO / "playbooks" / "rotate_all.yml", "-l", "lab",
                 "-i", REPO / "inventories" / "lab", "-e", "@%s" % extra] + creds, timeout=900,
                LAB_DIR=lab.dir, LAB_VAULT_PORT=lab.vault_port, LAB_PROXY_PORT=lab.proxy_port,
                LAB_FRONTEND_PORT_BASE=lab.frontend_port_base, **admin.env)
    _ok(proc, "rotate_all.yml with ansible-core %s" % _oldest_pin())
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert not [k for k in keys if k in output], "an unseal key is in the output"
    report = json.loads((lab.dir / "reports" / "latest.json").read_text())
    assert report["status"] == "success", report.get("msg")
    assert report["summary"]["gates_failed"] == 0
    assert report["summary"]["gates_passed"] >= 5, report["summary"]
    # the admin cert was rotated where the credential put it, the lab's own file untouched
    assert _serial(admin.files["client_cert"]) != cred_serial
    assert _serial(paths["admin_crt"]) == lab_admin_serial
    # restarted (new pid), unsealed with the list, healthy
    assert lab.lab.unit_pid("container-vaultprod") not in (None, vault_pid)
    status = lab.labctl("status")
    assert status.returncode == 0, status.stdout + status.stderr

    # A role on its own, as a user's playbook uses it (entry point main: its argument spec validated, a run
    # of its own opened and closed): playbooks/healthcheck.yml with the same credentials.
    alone = _run([oldest_venv / "bin" / "ansible-playbook", REPO / "playbooks" / "healthcheck.yml", "-l", "lab",
                  "-i", REPO / "inventories" / "lab", "-e", "@%s" % extra] + creds, timeout=300,
                 LAB_DIR=lab.dir, **admin.env)
    _ok(alone, "playbooks/healthcheck.yml with ansible-core %s" % _oldest_pin())
    assert "Validating arguments against arg spec" in alone.stdout
    assert not list((lab.dir / "run").glob("vault_rotate-*.lock")), "the role left its run lock behind"
    report = json.loads((lab.dir / "reports" / "latest.json").read_text())
    assert report["status"] == "success", report.get("msg")
    assert [p["phase"] for p in report["phases"] if p.get("gate") == "passed"] == ["healthcheck"], report["phases"]


@pytest.mark.lab
@pytest.mark.destructive
@pytest.mark.slow
@pytest.mark.parametrize("line", ["oldest", "newest"])
def test_rotate_all_with_the_engine_as_a_module(line, request, throwaway_lab, tmp_path):
    """VAULT_ROTATE_INPROCESS=0: every engine step runs as the module privsec.vault_rotate.phase on its
    host (what a remote host always gets), not in the controller's worker; forced, restart + unseal, so
    every step kind (plan, sign, apply, gate, ready with unseal_keys) goes through the module."""
    venv = request.getfixturevalue("oldest_venv") if line == "oldest" else REPO / ".venv"
    pin = _oldest_pin() if line == "oldest" else _newest_pin()
    _ok(_run([venv / "bin" / "ansible", "--version"], venv=venv), "ansible --version")
    lab = throwaway_lab()
    paths = lab.info["paths"]
    keys = json.loads((lab.dir / "secrets" / "init.json").read_text())["keys_base64"]
    extra = tmp_path / "unseal.json"
    extra.touch(mode=0o600)
    extra.write_text(json.dumps({"vault_rotate_unseal_keys": keys}))
    slots = {"admin": paths["admin_crt"], "listener": paths["server_crt"]}
    for app, app_paths in lab.info["app_paths"].items():
        for kind in ("agent_crt", "frontend_crt", "proxy_crt"):
            if app_paths.get(kind):
                slots["%s/%s" % (app, kind)] = app_paths[kind]
    before = dict((name, _serial(path)) for name, path in slots.items())
    vault_pid = lab.lab.unit_pid("container-vaultprod")

    proc = _run([venv / "bin" / "ansible-playbook", REPO / "playbooks" / "rotate_all.yml", "-l", "lab",
                 "-i", REPO / "inventories" / "lab", "-vvv", "-e", "@%s" % extra, "-e", "vault_rotate_force=true",
                 "-e", "vault_rotate_restart_vault=always"], timeout=900, venv=venv,
                VAULT_ROTATE_INPROCESS=0, LAB_DIR=lab.dir)
    _ok(proc, "rotate_all.yml with VAULT_ROTATE_INPROCESS=0 on ansible-core %s" % pin)
    output = proc.stdout + proc.stderr
    assert "core %s]" % pin in _run([venv / "bin" / "ansible", "--version"], venv=venv).stdout
    assert "Traceback" not in output
    assert not [k for k in keys if k in output], "an unseal key is in the output"
    # the engine ran as a module, once per engine step and host (-vvv names the module file it ships)
    shipped = re.findall(r"Using module file \S*/plugins/modules/phase\.py", output)
    assert len(shipped) >= 15, "the module privsec.vault_rotate.phase ran %d times" % len(shipped)
    report = json.loads((lab.dir / "reports" / "latest.json").read_text())
    assert report["status"] == "success", report.get("msg")
    assert report["summary"]["gates_failed"] == 0
    assert report["summary"]["rotated"] == len(slots), report["summary"]
    assert report["extra"].get("restart_unsealed_by_run") == "True", report["extra"]  # extra values are text
    unchanged = [name for name, path in slots.items() if _serial(path) == before[name]]
    assert not unchanged, "not rotated: %s" % unchanged
    assert lab.lab.unit_pid("container-vaultprod") not in (None, vault_pid)
    status = lab.labctl("status")
    assert status.returncode == 0, status.stdout + status.stderr
