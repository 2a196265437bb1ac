"""The install paths a user takes, for real: build, install, run from the installed copy.

- `ansible-galaxy collection build` of this working tree gives a clean tarball
  (no test output, lab state, venvs, caches, symlinks, `collections/` link) that
  holds the collection and nothing else: no checkout tooling or config, no
  pytest suite, lab, fleet, bench or molecule file, of tests/ only the
  ansible-test ignore files, no `changelogs/.plugin-cache.yaml`;
- install from the tarball and from git (`git+file://` of a clean clone) into
  fresh folders;
- `privsec.vault_rotate.rotate_all` (FQCN playbook) runs from the INSTALLED copy
  against a throwaway lab, with ANSIBLE_COLLECTIONS_PATH = the install folder
  only, outside the checkout (no ansible.cfg, no `collections/` link in reach);
- the checkout's own playbooks still find the collection when
  ANSIBLE_COLLECTIONS_PATH is overridden (as AWX/AAP does): every playbook
  parses, and rotate_all's plan (--check) runs the action plugins and the engine;
- `ansible-builder create` writes a build context from execution-environment.yml with the
  release tarball, which installs from the context's requirements.yml.
"""
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())
FQCN = "%s.%s" % (GALAXY["namespace"], GALAXY["name"])
TARBALL_NAME = "%s-%s-%s.tar.gz" % (GALAXY["namespace"], GALAXY["name"], GALAXY["version"])

# Path components that must never ship: test output, lab state, venvs, caches,
# the collections/ self-link (and its playbook-adjacent twin), build output.
FORBIDDEN_PARTS = {".venv", ".lab", ".cache", ".git", ".pytest_cache", ".ruff_cache", "__pycache__",
                   "collections", "reports", "output", ".molecule", "context"}
# The collection, top level (+ any *.md at the root: README, SECURITY, CODE_OF_CONDUCT...);
# everything else at the root is the checkout's (tools, config, labs, bench, molecule).
COLLECTION_TOP = {"MANIFEST.json", "FILES.json", "LICENSE", "bindep.txt", "requirements.txt",
                  "requirements-controller.txt", "execution-environment.yml", "meta", "plugins", "roles",
                  "playbooks", "docs", "inventories", "changelogs", "tests", "extensions"}
# Python outside plugins/ that ships: the example lab inventory's script (docs/install.md).
SHIPPED_SCRIPTS = {"inventories/lab/lab.py"}
# What a user of the installed collection needs.
REQUIRED = ["MANIFEST.json", "FILES.json", "README.md", "meta/runtime.yml", "meta/execution-environment.yml",
            "requirements.txt", "bindep.txt", "playbooks/rotate_all.yml", "inventories/prod/hosts.yml",
            "inventories/lab/hosts.yml", "docs/awx.md", "extensions/awx/configure.yml", "CHANGELOG.md", "LICENSE", "SECURITY.md",
            "CODE_OF_CONDUCT.md"]


def _tool(name):
    path = BIN / name
    return str(path) if path.exists() else name


def _env(**extra):
    """A clean environment: nothing of ANSIBLE_*/VAULT_*/BAO_* leaks in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VAULT_", "BAO_"))}
    env.update({"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run(argv, cwd, env=None, timeout=300):
    proc = subprocess.run([str(a) for a in argv], cwd=str(cwd), env=env or _env(), capture_output=True,
                          text=True, timeout=timeout, check=False)
    return proc


def _ok(proc, what):
    assert proc.returncode == 0, "%s failed (rc=%s):\n%s" % (what, proc.returncode,
                                                            (proc.stdout + proc.stderr)[-6000:])
    return proc


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    """`ansible-galaxy collection build` of the working tree (its lab state, venv and caches in place)."""
    out = tmp_path_factory.mktemp("build")
    _ok(_run([_tool("ansible-galaxy"), "collection", "build", "--output-path", out, REPO], cwd=out),
        "ansible-galaxy collection build")
    path = out / TARBALL_NAME
    assert path.is_file(), "no %s in %s" % (TARBALL_NAME, sorted(p.name for p in out.iterdir()))
    return path


@pytest.fixture(scope="module")
def installed_from_tarball(tarball, tmp_path_factory):
    dest = tmp_path_factory.mktemp("install-tarball")
    _ok(_run([_tool("ansible-galaxy"), "collection", "install", "-p", dest, tarball], cwd=dest),
        "ansible-galaxy collection install <tarball>")
    return dest


def _collection_dir(install_root):
    return install_root / "ansible_collections" / GALAXY["namespace"] / GALAXY["name"]


def _assert_clean_tree(names, what):
    problems = []
    for name in names:
        parts = Path(name).parts
        if name.startswith("/") or ".." in parts:
            problems.append("%s: escapes the collection" % name)
        bad = FORBIDDEN_PARTS.intersection(parts)
        if bad:
            problems.append("%s: %s must not ship" % (name, sorted(bad)))
        if name.endswith((".pyc", ".pyo", ".tar.gz", ".log")) or re.search(r"(^|/)\.?lab\.json$", name):
            problems.append("%s: build or lab artefact" % name)
    assert not problems, "%s is not clean:\n%s" % (what, "\n".join(problems))


def _assert_only_the_collection(names, what):
    """Nothing but the collection: see COLLECTION_TOP, SHIPPED_SCRIPTS; tests/ = tests/sanity/ignore-X.Y.txt."""
    problems = []
    for name in names:
        parts = Path(name).parts
        if parts[0] not in COLLECTION_TOP and not (len(parts) == 1 and name.endswith(".md")):
            problems.append("%s: not the collection (galaxy.yml build_ignore)" % name)
        elif parts[0] == "tests" and not (parts in (("tests",), ("tests", "sanity")) or len(parts) == 3 and parts[1] == "sanity"
                                          and re.fullmatch(r"ignore-\d+\.\d+\.txt", parts[2])):
            problems.append("%s: of tests/ only tests/sanity/ignore-X.Y.txt ships" % name)
        elif name == "changelogs/.plugin-cache.yaml":
            problems.append("%s: antsibull-changelog's cache" % name)
        elif parts[0] == "extensions" and len(parts) > 1 and parts[1] != "awx":
            problems.append("%s: of extensions/ only the AWX set-up (extensions/awx) ships" % name)
        elif parts[:2] == ("inventories", "fleet"):
            problems.append("%s: the fleet inventory needs the fleet lab of a checkout" % name)
        elif name.endswith(".py") and parts[0] != "plugins" and name not in SHIPPED_SCRIPTS:
            problems.append("%s: Python outside plugins/ (a checkout tool or test helper?)" % name)
    assert not problems, "%s holds more than the collection:\n%s" % (what, "\n".join(problems))


def test_tarball_is_clean(tarball):
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    names = [m.name.rstrip("/") for m in members]
    links = [m.name for m in members if m.issym() or m.islnk()]
    assert not links, "links in the tarball (a symlink loop waiting to happen): %s" % links
    _assert_clean_tree(names, tarball.name)
    _assert_only_the_collection(names, tarball.name)
    missing = [r for r in REQUIRED if r not in names]
    assert not missing, "missing from the tarball: %s" % missing
    # the ansible-test ignore files go with the content an importer runs sanity on
    ignores = sorted("tests/sanity/" + p.name for p in (REPO / "tests" / "sanity").iterdir())
    assert ignores and [n for n in ignores if n in names] == ignores, (ignores, names)
    # every plugin file: modules, action plugins, module_utils and plugin_utils of the engine, filters, docs
    plugins = sorted(str(p.relative_to(REPO)) for p in (REPO / "plugins").rglob("*")
                     if p.is_file() and p.suffix in (".py", ".yml") and "__pycache__" not in p.parts)
    shipped = sorted(n for n in names if n.startswith("plugins/") and n.endswith((".py", ".yml")))
    assert shipped == plugins
    for needed in ("plugins/modules/phase.py", "plugins/modules/run.py", "plugins/action/phase.py",
                   "plugins/action/run.py", "plugins/module_utils/_engine.py", "plugins/plugin_utils/_catalog.py",
                   "plugins/plugin_utils/_run.py", "plugins/plugin_utils/_action.py"):
        assert needed in names, "%s is not in the tarball" % needed
    for role in sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir()):
        assert "roles/%s/meta/argument_specs.yml" % role in names, "role %s ships without argument_specs" % role
    assert tarball.stat().st_size < 2 * 1024 * 1024, "tarball is %d bytes: something big slipped in" % (
        tarball.stat().st_size)


def test_install_from_tarball_gives_a_clean_collection(installed_from_tarball):
    coll = _collection_dir(installed_from_tarball)
    manifest = json.loads((coll / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["version"] == GALAXY["version"]
    files = [str(p.relative_to(coll)) for p in coll.rglob("*")]
    assert not [f for f in files if (coll / f).is_symlink()], "symlinks in the installed copy"
    _assert_clean_tree(files, "the installed copy")
    _assert_only_the_collection(files, "the installed copy")


def test_install_from_git_of_a_clean_clone(tmp_path, installed_from_tarball):
    clone = tmp_path / "clone"
    _ok(_run(["git", "clone", "-q", REPO, clone], cwd=tmp_path), "git clone")
    dest = tmp_path / "install-git"
    _ok(_run([_tool("ansible-galaxy"), "collection", "install", "-p", dest, "git+file://%s" % clone],
             cwd=tmp_path), "ansible-galaxy collection install git+file://")
    coll = _collection_dir(dest)
    files = sorted(str(p.relative_to(coll)) for p in coll.rglob("*") if p.is_file())
    assert not [f for f in files if (coll / f).is_symlink()], "symlinks in the git install"
    _assert_clean_tree(files, "the git install")
    _assert_only_the_collection(files, "the git install")
    # Same content as the tarball install, for every file git knows (the working
    # tree may hold newer uncommitted files; the clone cannot).
    tracked = set(_ok(_run(["git", "ls-files"], cwd=clone), "git ls-files").stdout.split())
    from_tarball = _collection_dir(installed_from_tarball)
    differ = [f for f in files if f in tracked and (from_tarball / f).is_file()
              and (from_tarball / f).read_bytes() != (coll / f).read_bytes()
              and not _dirty(f)]
    assert not differ, "git install and tarball install differ in committed files: %s" % differ
    missing = [f for f in files if f in tracked and not (from_tarball / f).exists() and not _dirty(f)]
    assert not missing, "in the git install but not in the tarball: %s" % missing
    # the module docs load from the git install alone
    env = _env(ANSIBLE_COLLECTIONS_PATH=dest)
    _ok(_run([_tool("ansible-doc"), "-t", "module", "%s.pki_cert" % FQCN], cwd=tmp_path, env=env),
        "ansible-doc from the git install")


def _dirty(path):
    """True when the working tree's copy of `path` differs from HEAD (another change in progress)."""
    proc = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path], cwd=str(REPO), check=False)
    return proc.returncode != 0


@pytest.mark.lab
@pytest.mark.destructive
@pytest.mark.slow
@pytest.mark.parametrize("engine", ["in-process", "module"])
def test_rotate_all_from_the_installed_copy(engine, installed_from_tarball, throwaway_lab, tmp_path):
    """The engine runs in the controller's worker for local hosts (in-process) and as the module
    privsec.vault_rotate.phase on any other host (module, forced here with VAULT_ROTATE_INPROCESS=0):
    both from the installed copy."""
    lab = throwaway_lab()
    coll = _collection_dir(installed_from_tarball)
    work = tmp_path / "operator"
    work.mkdir()
    # The newcomer's path: copy the example inventory out of the installed copy.
    shutil.copytree(coll / "inventories" / "lab", work / "inventory")
    env = _env(ANSIBLE_COLLECTIONS_PATH=installed_from_tarball, LAB_DIR=lab.dir,
               LAB_VAULT_PORT=lab.vault_port, LAB_PROXY_PORT=lab.proxy_port,
               LAB_FRONTEND_PORT_BASE=lab.frontend_port_base)
    # Only the installed copy is reachable: no ansible.cfg, no collections/ link.
    listing = _ok(_run([_tool("ansible-galaxy"), "collection", "list", FQCN, "--format", "json"], cwd=work,
                       env=env), "ansible-galaxy collection list")
    paths = list(json.loads(listing.stdout))
    assert paths == [str(installed_from_tarball / "ansible_collections")], paths

    argv = [_tool("ansible-playbook"), "-i", "inventory", "%s.rotate_all" % FQCN, "-l", "lab"]
    if engine == "module":
        env["VAULT_ROTATE_INPROCESS"] = "0"
        argv.append("-vvv")
    proc = _run(argv, cwd=work, env=env, timeout=900)
    _ok(proc, "ansible-playbook %s.rotate_all from the installed copy (engine %s)" % (FQCN, engine))
    shipped = re.findall(r"Using module file (\S*/plugins/modules/phase\.py)", proc.stdout)
    if engine == "module":
        assert len(shipped) >= 10, "the module privsec.vault_rotate.phase ran %d times" % len(shipped)
        assert set(shipped) == {str(_collection_dir(installed_from_tarball) / "plugins" / "modules" / "phase.py")}, \
            sorted(set(shipped))
    report = json.loads((lab.dir / "reports" / "latest.json").read_text())
    assert report["status"] == "success", report.get("msg")
    assert report["env"] == "lab"
    assert report["summary"]["gates_failed"] == 0
    assert report["summary"]["failed_phase"] in (None, "")
    assert report["summary"]["gates_passed"] >= 5, report["summary"]
    healthy = lab.labctl("status")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr


def test_checkout_playbooks_find_the_collection_under_an_overridden_collections_path(tmp_path):
    """AWX/AAP sets ANSIBLE_COLLECTIONS_PATH, which replaces ansible.cfg's collections_path:
    playbooks/collections (playbook-adjacent) must still resolve the collection."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _env(ANSIBLE_COLLECTIONS_PATH=empty, ANSIBLE_CONFIG=REPO / "ansible.cfg")
    for playbook in sorted((REPO / "playbooks").glob("*.yml")):
        proc = _run([_tool("ansible-playbook"), "-i", REPO / "inventories" / "prod", str(playbook),
                     "--syntax-check"], cwd=REPO, env=env, timeout=120)
        _ok(proc, "%s --syntax-check with ANSIBLE_COLLECTIONS_PATH=%s" % (playbook.name, empty))


@pytest.mark.lab
@pytest.mark.destructive
def test_checkout_rotate_all_runs_under_an_overridden_collections_path(throwaway_lab, tmp_path):
    """Beyond the syntax check: the plan of rotate_all (--check) from the checkout with
    ANSIBLE_COLLECTIONS_PATH pointing elsewhere loads the action plugins, plugin_utils and the engine
    through playbooks/collections, and runs them (interlocks, Vault check, every host inspected)."""
    lab = throwaway_lab()
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _env(ANSIBLE_COLLECTIONS_PATH=empty, ANSIBLE_CONFIG=REPO / "ansible.cfg", LAB_DIR=lab.dir)
    before = {p: p.read_bytes() for p in lab.dir.glob("home/*/nginx/tls/*.crt")}
    proc = _run([_tool("ansible-playbook"), "-i", REPO / "inventories" / "lab", REPO / "playbooks" / "rotate_all.yml",
                 "-l", "lab", "--check"], cwd=REPO, env=env, timeout=300)
    _ok(proc, "rotate_all.yml --check with ANSIBLE_COLLECTIONS_PATH=%s" % empty)
    assert "ROTATE" in proc.stdout and "(check mode: no report written)" in proc.stdout, proc.stdout[-3000:]
    assert before and {p: p.read_bytes() for p in before} == before, "check mode changed a certificate"


def test_ansible_builder_create(tarball, tmp_path):
    """The EE installs the release tarball that `ansible-galaxy collection build` makes: beside a copy
    of execution-environment.yml, the tarball of this tree at the place the file names; `create`
    puts it in the build context, and its requirements.yml installs the collection from it."""
    ee = yaml.safe_load((REPO / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    (source,) = [f["src"] for f in ee["additional_build_files"] if f["src"].endswith(".tar.gz")]
    assert Path(source).name == TARBALL_NAME, "execution-environment.yml builds from %s, galaxy.yml makes %s" % (
        source, TARBALL_NAME)
    work = tmp_path / "ee"
    (work / Path(source).parent).mkdir(parents=True)
    shutil.copy(tarball, work / source)
    shutil.copy(REPO / "execution-environment.yml", work)
    ctx = tmp_path / "context"
    _ok(_run([_tool("ansible-builder"), "create", "-f", work / "execution-environment.yml", "-c", ctx],
             cwd=work), "ansible-builder create")
    containerfile = next(p for p in (ctx / "Containerfile", ctx / "Dockerfile") if p.exists())
    text = containerfile.read_text()
    assert ee["dependencies"]["ansible_core"]["package_pip"] in text
    # The galaxy stage copies _build to /build and installs requirements.yml there: do the same.
    assert "COPY _build /build" in text
    galaxy_reqs = yaml.safe_load((ctx / "_build" / "requirements.yml").read_text())
    (entry,) = galaxy_reqs["collections"]
    assert entry["type"] == "file" and entry["name"].startswith("/build/"), entry
    assert (ctx / "_build" / entry["name"][len("/build/"):]).read_bytes() == tarball.read_bytes()
    reqs = tmp_path / "requirements.yml"
    reqs.write_text(yaml.safe_dump({"collections": [dict(entry, name=str(ctx / "_build") + entry["name"][len("/build"):])]}))
    dest = tmp_path / "ee-collections"
    _ok(_run([_tool("ansible-galaxy"), "collection", "install", "-r", reqs, "-p", dest], cwd=tmp_path),
        "ansible-galaxy collection install -r <the EE's requirements.yml>")
    manifest = json.loads((_collection_dir(dest) / "MANIFEST.json").read_text())
    assert manifest["collection_info"]["version"] == GALAXY["version"]
    # The EE's ansible-core is the newest tested one (requirements-controller.txt).
    pins = re.findall(r"^ansible-core==(\S+)", (REPO / "requirements-controller.txt").read_text(), re.M)
    assert ee["dependencies"]["ansible_core"]["package_pip"] == "ansible-core==%s" % max(
        pins, key=lambda v: tuple(int(x) for x in v.split(".")))
    meta_ee = yaml.safe_load((REPO / "meta" / "execution-environment.yml").read_text())
    assert (REPO / meta_ee["dependencies"]["python"]).is_file()
    assert (REPO / meta_ee["dependencies"]["system"]).is_file()
