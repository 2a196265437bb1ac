"""A job the way AWX starts one, for the tests that feed a rotation as AWX does (there is no AWX here).

Reproduced from AWX 24 (awx/main/tasks/jobs.py, awx/main/models/credential/__init__.py,
awx/main/utils/safe_yaml.py) and ansible-runner, without AWX:

- the credential types come from extensions/awx/vars/credential_types.yml (what
  extensions/awx/configure.yml creates in AWX): `credential_types()`;
- `inject()` renders a credential's injectors like AWX: Jinja2's
  ImmutableSandboxedEnvironment over the inputs (an empty input is left out, so it
  renders as ""); each `file` template written to a file of its own in
  <private data dir>/env (mkstemp, 0600), its path published as
  `tower.filename.<name>`; `env` templates become environment variables;
  `extra_vars` templates (every leaf is a template, so every value is a string)
  go to a YAML file of their own, passed as `-e @file`;
- `dump_extra_vars()`: extra vars YAML as AWX writes them (every string tagged
  `!unsafe`: survey answers and credential values are never templated);
- `survey_answers()`: answers checked against the survey of configure.yml;
- `collections_path()` / `roles_path()`: ANSIBLE_COLLECTIONS_PATH /
  ANSIBLE_ROLES_PATH as AWX sets them: <private data dir>/requirements_collections
  (where the project sync installs collections/requirements.yml), then the
  project ansible.cfg's value, then the execution environment's defaults;
- `write_inventory()`: <private data dir>/inventory/hosts, the script AWX writes
  (it prints the inventory AWX imported, as JSON).

Used by tests/fleet/test_fleet_4_awx.py (the rotation as an AWX job runs it) and
tests/integration/test_ansible_versions.py (the oldest ansible-core, fed the same way).
"""
import configparser
import json
import os
import stat
import tempfile
from pathlib import Path
from types import SimpleNamespace

import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

REPO = Path(__file__).resolve().parents[1]
AWX_DIR = REPO / "extensions" / "awx"
ADMIN_TYPE = "Vault admin client certificate"
UNSEAL_TYPE = "Vault unseal keys"
# The execution environment's own defaults, after the project's paths (AWX's build_env).
EE_COLLECTIONS = "~/.ansible/collections:/usr/share/ansible/collections"
EE_ROLES = "~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles"


class _Loader(yaml.SafeLoader):
    """YAML of the playbook side: `!unsafe` is a plain string here."""


_Loader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def load_yaml(path):
    return yaml.load(Path(path).read_text(), Loader=_Loader)


def credential_types():
    """{name: credential type} of extensions/awx/vars/credential_types.yml."""
    types = load_yaml(AWX_DIR / "vars" / "credential_types.yml")["awx_setup_credential_types"]
    return {t["name"]: t for t in types}


def configure_vars():
    """The `vars` of extensions/awx/configure.yml (the survey, the templates)."""
    return load_yaml(AWX_DIR / "configure.yml")[0]["vars"]


class _UnsafeDumper(yaml.SafeDumper):
    """AWX's SafeStringDumper: every string (keys too) as `!unsafe '...'`."""

    def represent_data(self, data):
        if isinstance(data, str):
            return self.represent_scalar("!unsafe", data)
        return super().represent_data(data)


def dump_extra_vars(variables):
    """Extra vars as AWX writes them for a job (safe_dump without a trusted part): one document per key."""
    return "".join(yaml.dump_all([{k: v}], None, Dumper=_UnsafeDumper, default_flow_style=False)
                   for k, v in variables.items())


def _write_private(path, text, mode=0o600):
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(str(path), mode)
    return Path(path)


def inject(ctype, inputs, env_dir):
    """Render credential type `ctype` for `inputs` as AWX does when a job starts.

    Returns SimpleNamespace(env={VAR: value}, extra_vars={...}, extra_vars_file=Path or None,
    files={template name: Path}, args=[...]: the `-e @file` to add to ansible-playbook)."""
    env_dir = Path(env_dir)
    env_dir.mkdir(parents=True, exist_ok=True)
    fields = {f["id"]: f for f in ctype["inputs"].get("fields", [])}
    unknown = sorted(set(inputs) - set(fields))
    assert not unknown, "inputs %s are not fields of %r" % (unknown, ctype["name"])
    missing = [f for f in ctype["inputs"].get("required", []) if not inputs.get(f)]
    assert not missing, "required inputs of %r missing: %s" % (ctype["name"], missing)
    tower = SimpleNamespace()
    namespace = {"tower": tower}
    for name, value in inputs.items():
        if isinstance(value, bool) or len(value):
            namespace[name] = value
    for name, field in fields.items():
        if field.get("type") == "boolean" and name not in inputs:
            namespace[name] = False
    sandbox = ImmutableSandboxedEnvironment()
    files = {}
    for label, template in ctype["injectors"].get("file", {}).items():
        data = sandbox.from_string(template).render(**namespace)
        fd, path = tempfile.mkstemp(dir=str(env_dir))
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        if "." not in label:
            tower.filename = path
            files["template"] = Path(path)
        else:
            if not isinstance(getattr(tower, "filename", None), SimpleNamespace):
                tower.filename = SimpleNamespace()
            setattr(tower.filename, label.split(".", 1)[1], path)
            files[label.split(".", 1)[1]] = Path(path)
    env = {var: sandbox.from_string(t).render(**namespace) for var, t in ctype["injectors"].get("env", {}).items()}

    def build(node):
        if isinstance(node, dict):
            return {build(k): build(v) for k, v in node.items()}
        if isinstance(node, list):
            return [build(x) for x in node]
        return sandbox.from_string(node).render(**namespace)

    extra_vars = build(ctype["injectors"].get("extra_vars", {}))
    extra_file, args = None, []
    if extra_vars:
        fd, path = tempfile.mkstemp(dir=str(env_dir))
        with os.fdopen(fd, "w") as fh:
            fh.write(dump_extra_vars(extra_vars))
        os.chmod(path, stat.S_IRUSR)
        extra_file = Path(path)
        args = ["-e", "@%s" % path]
    return SimpleNamespace(env=env, extra_vars=extra_vars, extra_vars_file=extra_file, files=files, args=args)


def survey_answers(**answers):
    """Survey answers as AWX validates them against configure.yml's survey: known variables, a
    choice of the question; the unanswered questions get their default."""
    spec = {q["variable"]: q for q in configure_vars()["awx_setup_survey"]["spec"]}
    unknown = sorted(set(answers) - set(spec))
    assert not unknown, "no survey question for %s" % unknown
    out = {}
    for var, q in spec.items():
        value = answers.get(var, q.get("default"))
        if q["type"] == "multiplechoice":
            assert value in q["choices"], "%s=%r is not a choice of %s" % (var, value, q["choices"])
        out[var] = value
    return out


def meta_vars(job_id=4711, template="privsec.vault_rotate fleet rotate"):
    """The awx_* / tower_* extra vars AWX adds to every job (the collection's run id uses awx_job_id)."""
    meta = {"job_id": job_id, "job_launch_type": "manual", "job_template_id": 7, "job_template_name": template,
            "project_revision": "0" * 40, "user_id": 1, "user_name": "admin", "execution_node": "awx-task",
            "inventory_id": 3, "inventory_name": "vault-rotate fleet"}
    out = {}
    for prefix in ("awx_", "tower_"):
        out.update({prefix + k: v for k, v in meta.items()})
    return out


def _cfg_paths(project_dir, key):
    cfg = configparser.ConfigParser()
    cfg.read(str(Path(project_dir) / "ansible.cfg"))
    return cfg.get("defaults", key, fallback=None)


def _path_var(project_dir, private_data_dir, keys, folder, default):
    """AWX's build_env: <pdd>/<folder>, then the project ansible.cfg's value (as written, relative
    paths stay relative: ansible resolves them from the job's working folder, the project), then the
    EE defaults."""
    paths = default.split(":")
    for key in keys:
        value = _cfg_paths(project_dir, key)
        if value:
            for path in value.split(":"):
                if path not in paths:
                    paths = [value] + paths
            break
    return os.pathsep.join([str(Path(private_data_dir) / folder)] + paths)


def collections_path(project_dir, private_data_dir):
    return _path_var(project_dir, private_data_dir, ("collections_path", "collections_paths"),
                     "requirements_collections", EE_COLLECTIONS)


def roles_path(project_dir, private_data_dir):
    return _path_var(project_dir, private_data_dir, ("roles_path",), "requirements_roles", EE_ROLES)


def write_inventory(private_data_dir, data):
    """<pdd>/inventory/hosts as AWX writes it: an executable script that prints the inventory JSON."""
    folder = Path(private_data_dir) / "inventory"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hosts"
    path.write_text("#! /usr/bin/env python3\n# -*- coding: utf-8 -*-\nprint(%r)\n" % json.dumps(data))
    os.chmod(str(path), stat.S_IRUSR | stat.S_IXUSR | stat.S_IWUSR)
    return path
