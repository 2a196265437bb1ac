"""extensions/awx: the AWX set-up playbook and the credential types, checked against what they talk to.

- every awx.awx task uses only options (or aliases) the real module documents, literal values
  among its choices (`ansible-doc` of awx.awx 24.6.1, fetched by scripts/awx_collection.sh:
  ansible-lint resolves the modules but does not check their options);
- the credential types' injectors use only their own fields and file templates, inject
  variables the collection has (docs/variables.md, generated from the catalog) and the VAULT_*
  variables the modules read; the secrets are AWX secrets;
- the survey asks for collection variables, with the values the collection accepts;
- the injectors render like AWX renders them (tests/awx_job.py): files, env, extra vars;
- docs/awx.md points at the YAML instead of holding a second copy.
The run fed by the rendered injectors: tests/fleet/test_fleet_4_awx.py.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import awx_job
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment
import yaml
from ansible.module_utils.common.validation import check_type_bool

REPO = Path(__file__).resolve().parents[2]
AWX = REPO / "collections" / "ansible_collections" / "awx" / "awx"
MODULE_ENV = ["VAULT_ADDR", "VAULT_CACERT", "VAULT_CLIENT_CERT", "VAULT_CLIENT_KEY", "VAULT_TLS_SERVER_NAME"]


def _globals():
    table = (REPO / "docs" / "variables.md").read_text()
    return dict(re.findall(r"^\| `(vault_rotate_\w+)` \| ([^|]+) \|", table, re.M))


def _tasks():
    return awx_job.load_yaml(awx_job.AWX_DIR / "configure.yml")[0]["tasks"]


@pytest.fixture(scope="module")
def awx_docs():
    if not (AWX / "MANIFEST.json").is_file():
        pytest.fail("awx.awx is missing in %s: run make bootstrap (scripts/awx_collection.sh)" % AWX, pytrace=False)
    modules = sorted({k for t in _tasks() for k in t if k.startswith("awx.awx.")})
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"))
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-doc"), "-t", "module", "--json"] + modules,
                          cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    assert sorted(docs) == modules, proc.stderr
    return {m: d["doc"]["options"] for m, d in docs.items()}


def test_awx_tasks_use_real_module_options(awx_docs):
    for task in _tasks():
        module = next(k for k in task if k.startswith("awx.awx."))
        options = awx_docs[module]
        names = {}
        for name, opt in options.items():
            for n in [name] + list(opt.get("aliases") or []):
                names[n] = name
        unknown = sorted(set(task[module]) - set(names))
        assert not unknown, "%s (%s): no such option %s" % (task["name"], module, unknown)
        for key, value in task[module].items():
            choices = options[names[key]].get("choices")
            if choices and isinstance(value, str) and "{{" not in value:
                assert value in choices, "%s: %s=%r not in %s" % (task["name"], key, value, choices)


def test_job_templates_are_serialised_and_ask_for_the_limit():
    task = next(t for t in _tasks() if "awx.awx.job_template" in t)["awx.awx.job_template"]
    assert task["allow_simultaneous"] is False
    assert task["ask_limit_on_launch"] is True
    cfg = awx_job.configure_vars()
    for tpl in cfg["awx_setup_templates"]:
        assert (REPO / tpl["playbook"]).is_file(), tpl
        assert tpl["job_type"] in ("run", "check")


def test_credential_types_inject_what_the_collection_reads():
    types = awx_job.credential_types()
    assert sorted(types) == sorted([awx_job.ADMIN_TYPE, awx_job.UNSEAL_TYPE])
    known = _globals()
    sources = "\n".join(p.read_text() for p in (REPO / "plugins").rglob("*.py"))
    for ctype in types.values():
        assert ctype["kind"] == "cloud"
        fields = {f["id"]: f for f in ctype["inputs"]["fields"]}
        assert set(ctype["inputs"]["required"]) <= set(fields)
        # An optional field left empty is not in AWX's template context: a field named like a
        # Jinja global (namespace, range, dict, ...) would then render as that global.
        shadow = set(fields) & set(ImmutableSandboxedEnvironment().globals)
        assert not shadow, "%s: field ids %s are Jinja globals" % (ctype["name"], sorted(shadow))
        files = {label.split(".", 1)[1] for label in ctype["injectors"].get("file", {})}
        text = yaml.safe_dump(ctype["injectors"])
        for ref in re.findall(r"\{\{\s*([\w.]+)\s*\}\}", text):
            if ref.startswith("tower.filename."):
                assert ref.split(".", 2)[2] in files, ref
            else:
                assert ref in fields, "%s: %s is not a field" % (ctype["name"], ref)
        for var in ctype["injectors"].get("extra_vars", {}):
            assert var in known, "%s injects %s, not a variable of the collection" % (ctype["name"], var)
        for var in ctype["injectors"].get("env", {}):
            assert var in MODULE_ENV and var in sources, var
    admin = {f["id"]: f for f in types[awx_job.ADMIN_TYPE]["inputs"]["fields"]}
    assert [f for f, spec in admin.items() if spec.get("secret")] == ["client_key"]
    unseal = types[awx_job.UNSEAL_TYPE]["inputs"]["fields"]
    assert unseal and all(f.get("secret") for f in unseal)
    assert known["vault_rotate_unseal_keys"].startswith("list")


def test_survey_asks_for_collection_variables():
    known = _globals()
    table = (REPO / "docs" / "variables.md").read_text()
    for q in awx_job.configure_vars()["awx_setup_survey"]["spec"]:
        var = q["variable"]
        assert var in known, var
        assert q["default"] in q["choices"]
        if known[var].strip() == "bool":
            assert sorted(check_type_bool(c) for c in q["choices"]) == [False, True], q["choices"]
        else:
            row = next(ln for ln in table.splitlines() if ln.startswith("| `%s`" % var))
            allowed = re.findall(r"`(\w+)`", row.split("|")[4].split("One of", 1)[1])
            assert sorted(q["choices"]) == sorted(allowed), (var, allowed)


def test_injectors_render_like_awx(tmp_path):
    types = awx_job.credential_types()
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    inputs = {"vault_addr": "https://vault.example:8200", "tls_server_name": "vault.example",
              "client_cert": pem, "client_key": "KEY\n", "ca_cert": pem, "issuing_ca": pem}
    admin = awx_job.inject(types[awx_job.ADMIN_TYPE], inputs, tmp_path)
    extra = awx_job.load_yaml(admin.extra_vars_file)
    # the optional fields left empty render empty: the run's default (root namespace, no proxy)
    assert extra["vault_rotate_vault_namespace"] == "" and extra["vault_rotate_vault_proxy"] == ""
    assert sorted(admin.files) == ["ca_cert", "client_cert", "client_key", "issuing_ca"]
    assert admin.files["client_key"].read_text() == "KEY\n"
    assert oct(admin.files["client_key"].stat().st_mode & 0o777) == "0o600"
    assert admin.env["VAULT_CLIENT_KEY"] == str(admin.files["client_key"])
    assert admin.env["VAULT_ADDR"] == inputs["vault_addr"]
    assert admin.args == ["-e", "@%s" % admin.extra_vars_file]
    text = admin.extra_vars_file.read_text()
    assert "!unsafe" in text and "KEY" not in text
    assert awx_job.load_yaml(admin.extra_vars_file)["vault_rotate_admin_key"] == str(admin.files["client_key"])
    keys = awx_job.inject(types[awx_job.UNSEAL_TYPE], {"unseal_key_1": "k1"}, tmp_path)
    assert keys.env == {} and keys.files == {}
    assert awx_job.load_yaml(keys.extra_vars_file) == {"vault_rotate_unseal_keys": ["k1", "", ""]}
    with pytest.raises(AssertionError, match="required"):
        awx_job.inject(types[awx_job.UNSEAL_TYPE], {"unseal_key_2": "k2"}, tmp_path)


def test_docs_point_at_the_yaml():
    doc = (REPO / "docs" / "awx.md").read_text()
    assert "extensions/awx/vars/credential_types.yml" in doc and "extensions/awx/configure.yml" in doc
    assert "template.client_cert" not in doc, "docs/awx.md holds a second copy of the injectors"
