"""The collection's metadata agrees with itself and with what the tooling assumes.

These checks read the real files of the checkout (no Vault needed): galaxy.yml,
meta/runtime.yml, the collections/ symlink, ansible.cfg, the module docs and the
requirement pins. Each one guards a mistake that would otherwise show up late
(an FQCN that does not resolve, a module missing from `module_defaults`, a venv
that drifted from the pins).
"""
import ast
import configparser
import os
import re
import sys
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
MODULES = REPO / "plugins" / "modules"
CONNECTION_FRAGMENT = "privsec.vault_rotate.connection"


def load_yaml(rel):
    with open(REPO / rel, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def galaxy():
    return load_yaml("galaxy.yml")


@pytest.fixture(scope="module")
def runtime():
    return load_yaml("meta/runtime.yml")


def module_names():
    return sorted(p.stem for p in MODULES.glob("*.py") if p.stem != "__init__")


def module_documentation(name):
    """DOCUMENTATION of a module as data, read without importing the module."""
    source = (MODULES / (name + ".py")).read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DOCUMENTATION" for t in node.targets):
            try:
                return yaml.safe_load(node.value.value)
            except yaml.YAMLError as exc:
                pytest.fail("plugins/modules/%s.py: DOCUMENTATION is not valid YAML: %s" % (name, exc))
    pytest.fail("plugins/modules/%s.py has no DOCUMENTATION" % name)


def pinned(requirements_file):
    """{name: Requirement} of the requirement lines that apply to this Python."""
    reqs = {}
    for line in (REPO / requirements_file).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate():
            reqs[req.name.lower()] = req
    return reqs


def test_collections_symlink_points_at_the_repo_root(galaxy):
    link = REPO / "collections" / "ansible_collections" / galaxy["namespace"] / galaxy["name"]
    assert link.is_symlink(), "%s must be a symlink (committed), not a copy" % link
    target = os.readlink(link)
    assert not os.path.isabs(target), "the symlink must be relative to work from any checkout: %s" % target
    assert link.resolve() == REPO


def test_galaxy_identity_and_version(galaxy):
    assert (galaxy["namespace"], galaxy["name"]) == ("privsec", "vault_rotate")
    assert re.fullmatch(r"\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?", str(galaxy["version"])), galaxy["version"]
    for key in ("readme", "authors", "description", "license", "repository"):
        assert galaxy.get(key), "galaxy.yml needs %s" % key
    assert (REPO / galaxy["readme"]).is_file()


def test_galaxy_build_ignores_local_state(galaxy):
    ignored = set(galaxy.get("build_ignore", []))
    # What bootstrap, the lab, sanity and pytest leave in the tree must never
    # end up in a built collection (the venv alone is hundreds of MB).
    for path in (".venv", ".lab", ".cache", "collections", "tests/output"):
        assert path in ignored, "galaxy.yml build_ignore lacks %s" % path


def test_ansible_cfg_finds_the_collection_from_a_plain_checkout():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "ansible.cfg")
    paths = [p.strip() for p in cfg.get("defaults", "collections_path").split(os.pathsep)]
    assert "./collections" in paths or str(REPO / "collections") in paths


def test_requires_ansible_covers_every_tested_ansible_core(runtime):
    spec = SpecifierSet(runtime["requires_ansible"])
    # Both pins of requirements-controller.txt (Python >= 3.12 and the 3.11
    # fallback) are versions CI may run: each must satisfy requires_ansible.
    text = (REPO / "requirements-controller.txt").read_text(encoding="utf-8")
    cores = re.findall(r"^ansible-core==([0-9.]+)", text, flags=re.M)
    assert cores, "requirements-controller.txt pins no ansible-core"
    for core in cores:
        assert Version(core) in spec, "ansible-core %s is pinned but requires_ansible is %s" % (core, spec)
    assert Version(dist_version("ansible-core")) in spec


def _core_venv():
    """scripts/core_venv.py (the ansible-core lines and their pins) as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("core_venv", REPO / "scripts" / "core_venv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sanity_runs_every_ansible_core_line_requires_ansible_admits(runtime):
    """scripts/sanity.sh runs a line per entry of core_venv.LINES: the oldest is the floor of
    requires_ansible, the newest the controller pin, none missing in between, each pin admitted."""
    core_venv = _core_venv()
    lines = list(core_venv.LINES)
    spec = SpecifierSet(runtime["requires_ansible"])
    floor = re.fullmatch(r">=(\d+)\.(\d+)\.\d+", runtime["requires_ansible"])
    assert floor, "requires_ansible is not '>=X.Y.Z': %s" % runtime["requires_ansible"]
    newest = max(Version(core_venv.pin(line)) for line in lines)
    wanted = ["%d.%d" % (newest.major, minor) for minor in range(int(floor.group(2)), newest.minor + 1)]
    assert int(floor.group(1)) == newest.major and lines == wanted, (lines, wanted)
    assert runtime["requires_ansible"] == ">=%s" % core_venv.pin(lines[0])
    for line in lines:
        assert Version(core_venv.pin(line)) in spec, "ansible-core %s is not admitted by %s" % (core_venv.pin(line), spec)


def test_sanity_ignore_files_are_per_line_justified_and_ship(galaxy):
    """tests/sanity holds an ignore file only for a line sanity runs; every entry is
    `<path> <test> # <why>` for a file that exists and ships (an importer runs sanity on the tarball)."""
    from fnmatch import fnmatch

    lines = list(_core_venv().LINES)
    ignored = galaxy.get("build_ignore", [])
    for path in sorted((REPO / "tests" / "sanity").iterdir()):
        match = re.fullmatch(r"ignore-(\d+\.\d+)\.txt", path.name)
        assert match and match.group(1) in lines, "tests/sanity/%s: not an ignore file of a line in %s" % (path.name, lines)
        for number, entry in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not entry.strip():
                continue
            where = "tests/sanity/%s:%d" % (path.name, number)
            parsed = re.fullmatch(r"(\S+) (\S+) # (\S.{10,})", entry)
            assert parsed, "%s: not `<path> <test> # <why>`: %s" % (where, entry)
            target = parsed.group(1)
            assert (REPO / target).is_file(), "%s: %s does not exist" % (where, target)
            # ansible-galaxy skips a folder or file whose path from the root matches a pattern
            parts = Path(target).parts
            prefixes = ["/".join(parts[:i + 1]) for i in range(len(parts))]
            hits = [pat for pat in ignored for prefix in prefixes if fnmatch(prefix, pat)]
            assert not hits, "%s: %s does not ship (galaxy.yml build_ignore %s)" % (where, target, hits)


def test_action_group_entries_are_existing_modules(runtime):
    for group, entries in (runtime.get("action_groups") or {}).items():
        for entry in entries:
            if isinstance(entry, dict):  # metadata: extend_group
                continue
            ns, name, module = entry.split(".")
            assert (ns, name) == ("privsec", "vault_rotate"), "%s in group %s is not an FQCN of this collection" % (entry, group)
            assert (MODULES / (module + ".py")).is_file(), "action group %s lists %s, which does not exist" % (group, entry)


def test_every_vault_module_is_in_the_vault_action_group(runtime):
    """module_defaults: group/privsec.vault_rotate.vault must set the connection of every Vault module."""
    group = set((runtime.get("action_groups") or {}).get("vault", []))
    for name in module_names():
        fragments = module_documentation(name).get("extends_documentation_fragment") or []
        if isinstance(fragments, str):
            fragments = [fragments]
        fqcn = "privsec.vault_rotate." + name
        if CONNECTION_FRAGMENT in fragments:
            assert fqcn in group, "%s uses the Vault connection options but is not in action_groups.vault" % fqcn
        else:
            assert fqcn not in group, "%s is in action_groups.vault but does not take the connection options" % fqcn


def test_module_docs_name_the_module():
    for name in module_names():
        doc = module_documentation(name)
        assert doc.get("module") == name, "plugins/modules/%s.py: DOCUMENTATION.module is %r" % (name, doc.get("module"))
        assert doc.get("short_description"), "plugins/modules/%s.py: no short_description" % name


def test_module_utils_are_private_or_documented():
    # docs/development.md: private helpers start with "_"; a public module_util is API.
    for path in (REPO / "plugins" / "module_utils").glob("*.py"):
        if path.name == "__init__.py" or path.name.startswith("_"):
            continue
        assert ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), (
            "public module_utils/%s needs a docstring saying it is API (or rename it _%s)" % (path.name, path.name))


def test_controller_requirements_are_pinned_and_installed():
    """The venv matches the pins (a stale .venv is caught here, not as an odd failure later)."""
    controller = pinned("requirements-controller.txt")
    dev = pinned("requirements-dev.txt")
    assert "-r requirements-controller.txt" in (REPO / "requirements-dev.txt").read_text(encoding="utf-8")
    for name, req in {**controller, **dev}.items():
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", "%s must be pinned with ==: %s" % (name, req)
        assert req.specifier.contains(dist_version(name)), "installed %s %s does not match the pin %s (run scripts/bootstrap.sh)" % (
            name, dist_version(name), req)


def test_managed_host_requirements_are_loose():
    # requirements.txt is for targets / execution environments: ranges, not pins.
    for name, req in pinned("requirements.txt").items():
        assert not any(s.operator == "==" for s in req.specifier), "requirements.txt pins %s: use a range" % name


def test_controller_python_is_supported():
    assert sys.version_info >= (3, 11), "the controller venv must be Python >= 3.11 (bootstrap picks >= 3.12 when it can)"


def test_the_project_cites_only_its_own_docs():
    """Comments and docs point at docs/ (and the code), never at documents outside the repository."""
    outside = ("DESIGN.md", "FIELD_NOTES.md", "STYLE.md", "/work/shared", "seed/rotate-everything")
    skip = {".git", ".venv", ".cache", ".lab", ".fleet", "collections", "tests/output"}
    found = []
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO).as_posix()
        if not path.is_file() or any(rel == s or rel.startswith(s + "/") for s in skip) or rel.startswith("playbooks/collections"):
            continue
        if path.suffix not in (".py", ".yml", ".yaml", ".md", ".sh", ".cfg", ".toml", ".txt", ".j2") and path.name != "Makefile":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += ["%s: %s" % (rel, name) for name in outside if name in text and rel != "tests/unit/test_repo_layout.py"]
    assert found == []


def _markdown_files():
    skip = (".git", ".venv", ".cache", ".lab", ".fleet", "collections", "tests/output", "context")
    for path in sorted(REPO.rglob("*.md")):
        rel = path.relative_to(REPO).as_posix()
        if not any(rel == s or rel.startswith(s + "/") for s in skip) and not rel.startswith("playbooks/collections"):
            yield path


def _anchors(path):
    """GitHub's heading anchors of a Markdown file: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    slugs = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        base, n = slug, 1
        while slug in slugs:
            slug, n = "%s-%d" % (base, n), n + 1
        slugs.add(slug)
    return slugs


def test_markdown_links_inside_the_repository_resolve():
    """Every relative link of the README, SECURITY.md, docs/*.md and the role READMEs names a file
    that exists, and an #anchor names a heading of that file (docs move between files)."""
    broken = []
    for path in _markdown_files():
        text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
        for target, anchor in re.findall(r"\]\(([^)\s#]*)(?:#([^)\s]*))?\)", text):
            if re.match(r"[a-z]+\\?:", target):  # a URL (CHANGELOG.md escapes the colon)
                continue
            dest = (path.parent / target).resolve() if target else path
            rel = path.relative_to(REPO).as_posix()
            if not dest.exists():
                broken.append("%s: %s does not exist" % (rel, target))
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append("%s: %s#%s names no heading" % (rel, target, anchor))
    assert broken == []


def _readme_section(title):
    text = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^(#+) %s\n(.*?)(?=^#{1,%d} |\Z)" % (re.escape(title), 6), text, flags=re.M | re.S)
    assert match, "README.md has no section %r" % title
    level = len(match.group(1))
    return re.split(r"^#{1,%d} " % level, match.group(2), maxsplit=1, flags=re.M)[0]


def test_ci_runs_the_test_command_the_readme_names():
    """.ci/run is what the README's Testing section tells a person to run, with how long it takes."""
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == "exec make test", ".ci/run must end with 'exec make test': %s" % ci[-1]
    testing = _readme_section("Testing")
    assert "make test" in testing and ".ci/run" in testing
    assert re.search(r"\d+ minutes", testing), "README Testing names no duration for make test"


def test_readme_has_the_sections_users_expect():
    """The shape of a certified collection's README; the developer detail lives in docs/development.md."""
    for title in ("Description", "Requirements", "Supported versions", "Installation", "Use cases", "Testing",
                  "Support", "Release notes and roadmap", "Related information", "License information"):
        assert _readme_section(title).strip(), "README section %r is empty" % title
    dev = (REPO / "docs" / "development.md").read_text(encoding="utf-8")
    for title in ("Make targets", "Test suites", "Faults: gate that catches it"):
        assert "\n## %s" % title in dev, "docs/development.md lacks %r" % title


def test_execution_environment_builds_this_release(galaxy):
    """execution-environment.yml installs the tarball `ansible-galaxy collection build` makes of this
    version (galaxy.yml is the one source of the version) and tags the image with it: a version bump
    that forgets the EE fails here."""
    ee = load_yaml("execution-environment.yml")
    version = str(galaxy["version"])
    tarball = "%s-%s-%s.tar.gz" % (galaxy["namespace"], galaxy["name"], version)
    sources = [f["src"] for f in ee.get("additional_build_files") or [] if str(f["src"]).endswith(".tar.gz")]
    assert [os.path.basename(s) for s in sources] == [tarball], "execution-environment.yml builds from %s" % sources
    entries = [c for c in ee["dependencies"]["galaxy"]["collections"] if "vault_rotate" in str(c["name"])]
    assert len(entries) == 1 and entries[0].get("type") == "file", entries
    assert os.path.basename(entries[0]["name"]) == tarball, "the EE installs %s, galaxy.yml says %s" % (
        entries[0]["name"], version)
    assert not [c for c in ee["dependencies"]["galaxy"]["collections"] if c.get("type") == "git"], \
        "the EE installs a git checkout: a release is a tarball (or a Galaxy version)"
    tags = ee.get("options", {}).get("tags") or []
    assert tags and all(t.rsplit(":", 1)[-1] == version for t in tags), "image tags %s, version %s" % (tags, version)


def _third_party_imports(folder):
    """{top-level module: [files]} that plugins/ imports and neither the standard library nor ansible provides."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("__future__", "ansible", "ansible_collections"):
                    continue
                found.setdefault(top, []).append(str(path.relative_to(REPO)))
    return found


def test_requirements_are_the_third_party_imports_of_plugins():
    """requirements.txt (managed hosts, execution environment) lists exactly what plugins/ imports
    beyond the standard library and ansible-core, and the controller pins each of them."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    imported = {}
    for module, files in _third_party_imports(REPO / "plugins").items():
        assert module in dists, "%s imports %s, which no installed distribution provides" % (files[0], module)
        for dist in dists[module]:
            imported.setdefault(dist.lower(), files)
    listed = set(pinned("requirements.txt"))
    assert listed == set(imported), "requirements.txt lists %s; plugins/ imports %s (%s)" % (
        sorted(listed), sorted(imported), dict((d, f[:2]) for d, f in imported.items()))
    controller = pinned("requirements-controller.txt")
    assert set(imported) <= set(controller), "requirements-controller.txt pins %s" % sorted(controller)
    assert set(controller) - set(imported) == {"ansible-core"}, \
        "requirements-controller.txt pins what the collection does not import: %s" % sorted(
            set(controller) - set(imported) - {"ansible-core"})


def test_ansible_cfg_keeps_host_key_checking_on():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "ansible.cfg")
    assert cfg.getboolean("defaults", "host_key_checking", fallback=True), \
        "ansible.cfg turns host key checking off (AWX runs with the project's ansible.cfg)"


def test_example_inventory_pins_the_interpreter_only_on_the_local_controller(tmp_path):
    """inventories/prod as ansible-inventory reads it (group_vars merged): the remote hosts get no
    interpreter pin and no local connection; the one local host is the vault_admin controller."""
    import json
    import subprocess

    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_LOCAL_TEMP=str(tmp_path))
    binary = REPO / ".venv" / "bin" / "ansible-inventory"
    proc = subprocess.run([str(binary) if binary.exists() else "ansible-inventory", "-i",
                           str(REPO / "inventories" / "prod"), "--list"], cwd=str(REPO), env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(proc.stdout)
    hostvars = data["_meta"]["hostvars"]
    local = sorted(h for h, v in hostvars.items() if v.get("ansible_connection") == "local")
    assert local == ["prod-controller"] and local == data["vault_admin"]["hosts"], local
    for host, hv in hostvars.items():
        if host in local:
            assert hv.get("ansible_python_interpreter") == "{{ ansible_playbook_python }}"
            assert hv.get("ansible_become") is False, "the controller entry must not become (no sudo in an EE)"
        else:
            assert "ansible_python_interpreter" not in hv, "%s pins the interpreter" % host
            assert hv.get("ansible_connection", "ssh") == "ssh" and hv.get("ansible_host"), host
