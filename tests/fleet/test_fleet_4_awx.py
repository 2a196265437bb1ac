"""`playbooks/rotate_all.yml` on the fleet the way an AWX job runs it (docs/awx.md), checked from outside.

There is no AWX here; what AWX 24 and ansible-runner do when a job starts is reproduced
(tests/awx_job.py) and the rest is real:

- a private data folder as AWX lays it out: `project/` (a copy of the checkout's tracked
  files, owned by root, mounted read-only), `inventory/hosts` (the script AWX writes with
  the inventory it imported: `ansible-inventory --list --export` of inventories/fleet, with
  what an AWX admin changes: no controller key, no controller folders, the admin host in
  the execution environment), `env/` (extra vars, credential files), `requirements_collections/`
  (the tarball of `ansible-galaxy collection build`, installed as a project sync installs
  collections/requirements.yml), `cp/` (ssh ControlPath);
- run by a system user that is not root (created when missing), with HOME a fresh folder,
  in a mount namespace of its own where the checkout copy is read-only and the Python
  toolchain is visible (the venv's interpreter lives under root's 0700 home here: a tmpfs
  with only that interpreter replaces that home, nothing else of it is visible);
- ANSIBLE_COLLECTIONS_PATH and ANSIBLE_ROLES_PATH as AWX sets them; the project's ansible.cfg
  read from the working folder, as AWX runs it;
- the two credential types of extensions/awx/vars/credential_types.yml rendered like AWX
  renders them (files in env/, VAULT_* env, extra vars files), from the fleet's admin
  identity and unseal key as an admin pastes them into AWX; the survey answers (force,
  restart always) and AWX's awx_* vars as AWX writes extra vars (`!unsafe` strings);
- the Machine credential: the fleet's SSH key added to an ssh-agent (ansible-runner's
  wrapper) and removed from disk, its user as `-u`; host keys checked against the
  fleet's known_hosts (StrictHostKeyChecking=yes);
- the run lock and the reports in a folder that outlives the job (set as inventory
  variables, docs/awx.md section 7).

Checked from outside: exit 0; the report where the inventory put it, `success`, every gate
passed; every certificate has a new serial (the admin's in the credential's file, the admin
host's own file untouched: way B of docs/awx.md); Vault restarted and unsealed with the
credential's key; the project's copy of the collection ran (the playbook-adjacent
playbooks/collections wins over requirements_collections), with the project's ansible.cfg;
host keys checked; no private key, unseal key or token in the job's output (-vvv).
"""
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fleetcheck as fc
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
import awx_job  # noqa: E402

pytestmark = [pytest.mark.fleet, pytest.mark.slow]

RUN_USER = os.environ.get("FLEET_AWX_USER", "vr-awx")
VENV = REPO / ".venv"


def ensure_user(name):
    """A system user without a home, like an execution environment's default user."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


def copy_checkout(dest):
    """The files a clone of the working tree holds (tracked and new, not ignored), symlinks kept."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=str(REPO),
                         capture_output=True, check=True).stdout.decode()
    for rel in sorted(set(filter(None, out.split("\0")))):
        src, dst = REPO / rel, dest / rel
        if not os.path.lexists(src):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    for dirpath, _dirs, names in os.walk(dest):
        os.chmod(dirpath, 0o755)
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.stat(p).st_mode & stat.S_IXUSR else 0o644)


def tree_state(root):
    return sorted((os.path.relpath(os.path.join(d, n), root), os.lstat(os.path.join(d, n)).st_mtime_ns)
                  for d, dirs, names in os.walk(root) for n in names + dirs)


def hidden_ancestor(path):
    """The topmost folder above `path` that others cannot traverse (root's 0700 home), or None."""
    for parent in reversed(Path(path).parents):
        if str(parent) != "/" and not os.stat(parent).st_mode & stat.S_IXOTH:
            return parent
    return None


def job_inventory(fleet, base, persist):
    """What AWX's inventory import holds for the fleet, edited as an AWX admin would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VAULT_", "BAO_"))}
    env.update(FLEET_DIR=str(fleet.dir), ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    proc = subprocess.run([str(VENV / "bin" / "ansible-inventory"), "-i", str(REPO / "inventories" / "fleet"),
                           "--list", "--export"], cwd=str(REPO), env=env, capture_output=True, text=True, check=True)
    inv = json.loads(proc.stdout)
    gvars = inv["fleet"]["vars"]
    # The controller's key and folders are not in AWX: the Machine credential brings the key and user,
    # the host keys come with the inventory, reports and lock go to storage that outlives the job.
    for var in ("ansible_user", "ansible_ssh_private_key_file"):
        gvars.pop(var, None)
    shutil.copyfile(fleet.p["known_hosts"], base / "known_hosts")
    os.chmod(base / "known_hosts", 0o644)
    gvars["ansible_ssh_common_args"] = "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes" % (base / "known_hosts")
    gvars["vault_rotate_report_dir"] = str(persist / "reports")
    gvars["vault_rotate_lock_dir"] = str(persist / "run")
    # Way B: the vault_admin host is the execution environment (its identity from the credential).
    admin = inv["_meta"]["hostvars"].setdefault("fleet-admin", {})
    admin.update({"ansible_connection": "local", "ansible_become": False,
                  "ansible_python_interpreter": "{{ ansible_playbook_python }}"})
    return inv


def test_rotation_as_an_awx_job(healthy_fleet):
    fleet = healthy_fleet
    user = ensure_user(RUN_USER)
    uid, gid = user.pw_uid, user.pw_gid
    base = Path(tempfile.mkdtemp(prefix="vault-rotate-awx-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        _run_and_check(fleet, base, uid, gid)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_and_check(fleet, base, uid, gid):
    pdd, home, persist = base / "job", base / "home", base / "persist"
    project, reqs = pdd / "project", pdd / "requirements_collections"
    for d in (pdd, pdd / "env", pdd / "cp", home, persist):
        d.mkdir(mode=0o700)
    copy_checkout(project)
    # the project sync: the collection as `ansible-galaxy collection build` packs it, installed
    # where AWX installs collections/requirements.yml
    tool_env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    build = base / "build"
    build.mkdir()
    subprocess.run([str(VENV / "bin" / "ansible-galaxy"), "collection", "build", "--output-path", str(build),
                    str(project)], cwd=str(build), env=tool_env, check=True, capture_output=True)
    tarball = next(build.glob("privsec-vault_rotate-*.tar.gz"))
    # (AWX's project_update.yml sets the collections path to the destination only)
    subprocess.run([str(VENV / "bin" / "ansible-galaxy"), "collection", "install", "-p", str(reqs), str(tarball)],
                   cwd=str(build), env=dict(tool_env, ANSIBLE_COLLECTIONS_PATH=str(reqs)), check=True,
                   capture_output=True)
    installed = reqs / "ansible_collections" / "privsec" / "vault_rotate"
    assert (installed / "MANIFEST.json").is_file()

    awx_job.write_inventory(pdd, job_inventory(fleet, base, persist))
    types = awx_job.credential_types()
    paths = fleet.p
    unseal = json.loads(paths["init_json"].read_text())["keys_base64"]
    admin = awx_job.inject(types[awx_job.ADMIN_TYPE], {
        "vault_addr": fleet.info["url"], "tls_server_name": fleet.info["tls_server_name"],
        "client_cert": paths["admin_crt"].read_text(), "client_key": paths["admin_key"].read_text(),
        "ca_cert": paths["admin_ca"].read_text(), "issuing_ca": paths["admin_issuing_ca"].read_text()}, pdd / "env")
    keys = awx_job.inject(types[awx_job.UNSEAL_TYPE], {"unseal_key_1": unseal[0]}, pdd / "env")
    assert keys.extra_vars == {"vault_rotate_unseal_keys": [unseal[0], "", ""]}
    extravars = pdd / "env" / "extravars"
    extravars.write_text(awx_job.dump_extra_vars(dict(
        awx_job.meta_vars(), **awx_job.survey_answers(vault_rotate_force="true", vault_rotate_restart_vault="always"))))
    # the Machine credential's key: ansible-runner hands it to ssh-agent from this file
    ssh_key = pdd / "env" / "ssh_key"
    shutil.copyfile(fleet.p["ssh_key"], ssh_key)
    os.chmod(ssh_key, 0o600)
    for dirpath, _dirs, names in os.walk(pdd):
        if Path(dirpath) == project or project in Path(dirpath).parents or reqs in Path(dirpath).parents:
            continue
        for p in [dirpath] + [os.path.join(dirpath, n) for n in names]:
            os.chown(p, uid, gid)
    for p in (home, persist):
        os.chown(p, uid, gid)

    env = {
        "PATH": "%s:/usr/local/bin:/usr/bin:/bin" % (VENV / "bin"), "HOME": str(home), "LANG": "C.UTF-8",
        "ANSIBLE_COLLECTIONS_PATH": awx_job.collections_path(project, pdd),
        "ANSIBLE_ROLES_PATH": awx_job.roles_path(project, pdd),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(pdd / "cp"), "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1", "JOB_ID": "4711", "INVENTORY_ID": "3", "PROJECT_REVISION": "0" * 40,
        "AWX_PRIVATE_DATA_DIR": str(pdd),
    }
    env.update(admin.env)
    argv = ["ansible-playbook", "-i", str(pdd / "inventory" / "hosts"), "-e", "@%s" % extravars,
            "-u", fleet.info["ssh"]["user"], "-l", "fleet", "-vvv"] + admin.args + keys.args + ["playbooks/rotate_all.yml"]
    # ansible-runner with a Machine credential: ssh-agent around the command, the key file removed once added
    agent = 'ssh-add -q "$1" && rm -f "$1" && shift && cd "$0" && exec "$@"'
    job = ["ssh-agent", "sh", "-c", agent, str(project), str(ssh_key)] + argv

    # The execution environment: a mount namespace of its own, the project read-only, the interpreter
    # of the venv visible (under root's 0700 home here), then the job as the run user.
    py_base = Path(subprocess.run([str(VENV / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    hide = hidden_ancestor(py_base)
    keep = [p for p in (py_base, VENV) if hide and hide in p.parents]
    lines = ["set -e"]
    for i, p in enumerate(keep):
        stash = base / ("stash%d" % i)
        stash.mkdir()
        lines.append('mount --bind "%s" "%s"' % (p, stash))
    if hide:
        lines.append('mount -t tmpfs -o mode=0755,size=1m vrawx "%s"' % hide)
    for i, p in enumerate(keep):
        lines += ['mkdir -p "%s"' % p, 'mount --bind "%s" "%s"' % (base / ("stash%d" % i), p)]
    lines += ['mount --bind "%s" "%s"' % (project, project), 'mount -o remount,bind,ro "%s"' % project,
              'exec setpriv --reuid=%d --regid=%d --init-groups -- "$@"' % (uid, gid)]
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(lines), "ee",
           "env", "-i"] + ["%s=%s" % kv for kv in env.items()] + job

    project_before = tree_state(project)
    before = fc.serials(fleet)
    admin_serial = fc.cert(fleet, "fleet-admin", fleet.info["paths"]["admin_crt"]).serial_number
    vault_pid = fleet.unit_pid("container-vaultprod")
    started = time.time()
    proc = subprocess.run(cmd, cwd="/", capture_output=True, text=True, timeout=900, check=False)
    seconds = time.time() - started
    output = proc.stdout + proc.stderr
    log = fleet.dir / "logs" / ("awx-job-%s.log" % time.strftime("%H%M%S"))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("# rc=%s, %.1f s\n%s\n---- stderr\n%s" % (proc.returncode, seconds, proc.stdout, proc.stderr))
    print("rotate_all as an AWX job on the fleet: %.1f s (log %s)" % (seconds, log))
    assert proc.returncode == 0, "%s\n(full output: %s)" % (output[-6000:], log)

    # ran as the run user, from the read-only copy, with the project's ansible.cfg
    assert "config file = %s" % (project / "ansible.cfg") in output
    # AWX's order: requirements_collections, the project ansible.cfg's ./collections (from the job's
    # working folder, the project), the EE's defaults under the job's HOME
    assert "ansible collection location = %s:%s/collections:%s/.ansible/collections:" % (reqs, project, home) in output
    assert tree_state(project) == project_before, "the job wrote into the project"
    assert not ssh_key.exists(), "the Machine credential's key file was left on disk"
    # the project's copy ran (playbooks/collections is searched before every configured path), not the
    # tarball in requirements_collections: every module shipped to a host came from the project
    shipped = set(re.findall(r"Using module file (\S+/plugins/modules/\S+\.py)", output))
    ours = {m for m in shipped if "/privsec/vault_rotate/" in m}
    assert ours, "no module of the collection was shipped (-vvv): %s" % sorted(shipped)[:5]
    assert all(m.startswith(str(project) + "/") for m in ours), sorted(ours)
    assert not [m for m in shipped if m.startswith(str(reqs))], "the requirements_collections copy ran"
    # host keys checked against the fleet's known_hosts
    assert "StrictHostKeyChecking=yes" in output and "StrictHostKeyChecking=no" not in output

    # the report where the inventory put it (storage that outlives the job), owned by the run user
    reports = persist / "reports"
    rep = json.loads((reports / "latest.json").read_text())
    assert rep["status"] == "success", rep["summary"]
    assert rep["run_id"] == "awx-4711", rep["run_id"]
    gates = {p["phase"]: p["gate"] for p in rep["phases"]}
    assert all(g in ("passed", "skipped") for g in gates.values()) and set(fc.PHASES) <= set(gates), gates
    assert all(os.stat(p).st_uid == uid for p in reports.iterdir())
    assert not list((persist / "run").glob("*.lock")), "the run kept its lock"

    # every certificate new; the admin's in the credential's file (way B), the admin host's own untouched
    after = fc.serials(fleet)
    assert [s for s in after if s != "admin" and after[s] == before[s]] == [], rep["summary"]
    from cryptography import x509
    cred_cert = x509.load_pem_x509_certificate(admin.files["client_cert"].read_bytes())
    assert cred_cert.serial_number != admin_serial, "the admin cert in the credential's file was not rotated"
    assert after["admin"] == admin_serial, "the admin host's own cert changed (way B keeps it)"
    # Vault restarted (survey: always) and unsealed with the credential's key
    assert fleet.unit_pid("container-vaultprod") not in (None, vault_pid)
    st = fleet.status()
    assert st["seal"]["sealed"] is False and st["healthy"], st["seal"]

    # no private key, unseal key or token in the job's output: the hosts' keys, the offline CA's,
    # the credential's old and new admin keys
    secrets = dict(fc.private_keys(fleet), **fc.controller_keys(fleet))
    for path in (paths["admin_key"], admin.files["client_key"]):
        secrets.update({fp: pem for fp, pem in fc.keys_in(Path(path).read_bytes())})
    needles = fc.secret_needles(fleet, secrets)
    assert fc.leaks(output, needles) == [], "secrets in the job's output: %s" % fc.leaks(output, needles)
