"""cert_material run for real (its own Python process, real files, real keys) on temp folders.

Flow of one slot: inspect -> csr -> sign the CSR with a test CA -> install ->
inspect says keep -> same install again is changed=false -> restore puts the
old serial back. No Vault needed: the CA is built with cryptography.
"""
import datetime
import grp
import os
import pwd
import stat

import pytest
from ansible_collections.privsec.vault_rotate.plugins.module_utils._x509 import format_serial
from helpers import run_module
from pki_fixtures import PKI, key_pem, new_key, pem

UTC = datetime.timezone.utc
CN = "agent-ncprd1.prod.privsec.ch"


@pytest.fixture(scope="module")
def pki():
    return PKI()


@pytest.fixture
def slot(tmp_path):
    folder = tmp_path / "mtls"
    folder.mkdir()
    return {
        "cert_path": str(folder / "agent.crt"),
        "key_path": str(folder / "agent.key"),
        "fullchain_path": str(folder / "agent.fullchain.pem"),
        "chain_path": str(folder / "ca.pem"),
        "common_name": CN,
        "dns_names": [CN],
    }


def ok(result):
    assert not result["failed"], result.get("msg")
    return result


def cm(args, **kw):
    return run_module("cert_material", args, **kw)


def snapshot(folder):
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        st = os.stat(path)
        with open(path, "rb") as fh:
            out[name] = (fh.read(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_ino)
    return out


def install_initial(pki, slot, days=30, not_before=None):
    """An existing generation on disk, installed by the module itself (pki/issue-like flow)."""
    key, cert = pki.leaf(CN, dns=[CN], days=days, not_before=not_before)
    ok(cm(dict(slot, step="install", certificate=pem(cert), chain=[pem(pki.intermediate), pem(pki.root)],
               private_key=key_pem(key))))
    return key, cert


def test_full_slot_flow(pki, slot):
    bundle = pki.chain_pem
    nobody = pwd.getpwnam("nobody")
    group = grp.getgrgid(nobody.pw_gid).gr_name
    files = dict(slot, owner="nobody", group=group)

    # 1. nothing there: rotate because missing, and that is data, not a failure
    first = ok(cm(dict(files, step="inspect", ca_bundle=bundle)))
    assert first["changed"] is False
    assert first["rotate"] is True and first["reasons"] == ["missing"]
    assert first["exists"] is False and first["current"] is None

    # an old generation that is due (backdated: 25 of 30 days elapsed)
    old_start = datetime.datetime.now(UTC) - datetime.timedelta(days=25)
    _old_key, old_cert = install_initial(pki, files, days=30, not_before=old_start)
    old_serial = format_serial(old_cert.serial_number)
    due = ok(cm(dict(files, step="inspect", ca_bundle=bundle)))
    assert due["rotate"] is True and due["reasons"] == ["due"]
    assert due["current"]["key_matches"] is True
    assert due["reason_text"][0].startswith("expires in 5 days")
    assert due["chain_verified"] is True

    # 2. csr: a staged key next to the key, 0600, owned by the slot owner
    csr = ok(cm(dict(files, step="csr")))
    assert csr["changed"] is True and "BEGIN CERTIFICATE REQUEST" in csr["csr"]
    staged = slot["key_path"] + ".next"
    st = os.stat(staged)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == nobody.pw_uid
    assert "PRIVATE" not in repr({k: v for k, v in csr.items() if k != "_stderr"})
    # idempotent: the staged key is reused, the CSR carries the same public key
    again = ok(cm(dict(files, step="csr")))
    assert again["changed"] is False and again["reused"] is True
    from cryptography import x509
    assert x509.load_pem_x509_csr(again["csr"].encode()).public_key() == \
        x509.load_pem_x509_csr(csr["csr"].encode()).public_key()

    # 3. sign the CSR (what pki_cert does against Vault), install
    new_cert = pki.sign_csr(csr["csr"], days=30)
    args = dict(files, step="install", certificate=pem(new_cert), chain=[pem(pki.intermediate), pem(pki.root)],
                ca_bundle=bundle)
    check = ok(cm(args, check=True, diff=True))
    assert check["changed"] is True and check["backup_files"] == []
    assert check["diff"]["before"]["serial"] != check["diff"]["after"]["serial"]
    assert os.path.exists(staged)
    installed = ok(cm(args, diff=True))
    assert installed["changed"] is True
    assert installed["key_source"] == "staged"
    assert installed["after"]["serial"] == format_serial(new_cert.serial_number)
    assert sorted(installed["backup_files"]) == sorted(p + ".prev" for p in (
        slot["cert_path"], slot["key_path"], slot["fullchain_path"], slot["chain_path"]))
    assert "BEGIN" not in repr(installed["diff"])
    assert not os.path.exists(staged)
    for path, mode in ((slot["key_path"], 0o600), (slot["cert_path"], 0o644), (slot["fullchain_path"], 0o644),
                       (slot["chain_path"], 0o644), (slot["key_path"] + ".prev", 0o600)):
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == mode, path
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), path
    with open(slot["fullchain_path"]) as fh:
        fullchain = fh.read()
    assert fullchain == pem(new_cert) + pem(pki.intermediate)  # root left out
    with open(slot["chain_path"]) as fh:
        assert fh.read() == pki.chain_pem

    # 4. inspect says keep
    keep = ok(cm(dict(files, step="inspect", ca_bundle=bundle)))
    assert keep["rotate"] is False and keep["reasons"] == ["valid"]
    assert keep["summary"].startswith("keep: valid: expires in")

    # 5. the same install again changes nothing
    same = ok(cm(args, diff=True))
    assert same["changed"] is False
    assert same["diff"]["before"] == same["diff"]["after"]

    # 6. restore puts the old serial back (check mode first)
    restore_args = dict(files, step="restore")
    dry = ok(cm(restore_args, check=True))
    assert dry["changed"] is True
    assert ok(cm(dict(files, step="inspect")))["current"]["serial"] == installed["after"]["serial"]
    restored = ok(cm(restore_args, diff=True))
    assert restored["changed"] is True
    assert restored["restored_serial"] == old_serial
    back = ok(cm(dict(files, step="inspect")))
    assert back["current"]["serial"] == restored["restored_serial"]
    assert back["current"]["key_matches"] is True
    assert ok(cm(restore_args))["changed"] is False


def test_key_mismatch_leaves_every_file_identical(pki, slot):
    install_initial(pki, slot)
    ok(cm(dict(slot, step="csr")))
    folder = os.path.dirname(slot["cert_path"])
    before = snapshot(folder)
    _other_key, foreign = pki.leaf(CN, dns=[CN])  # signed for another key
    result = cm(dict(slot, step="install", certificate=pem(foreign), chain=pki.chain_pem))
    assert result["failed"] is True
    assert result["failure_class"] == "key_mismatch"
    assert "staged key" in result["msg"]
    assert snapshot(folder) == before


def test_bad_pem_certificate_fails_and_touches_nothing(pki, slot):
    install_initial(pki, slot)
    folder = os.path.dirname(slot["cert_path"])
    before = snapshot(folder)
    for bad in ("garbage", key_pem(new_key())):
        result = cm(dict(slot, step="install", certificate=bad))
        assert result["failed"] and result["failure_class"] == "bad_pem"
    assert snapshot(folder) == before


def test_install_refuses_wrong_cn_untrusted_and_expired(pki, slot):
    ok(cm(dict(slot, step="csr")))
    csr = ok(cm(dict(slot, step="csr")))["csr"]
    folder = os.path.dirname(slot["cert_path"])
    before = snapshot(folder)
    other = PKI("other")
    untrusted = other.sign_csr(csr)
    result = cm(dict(slot, step="install", certificate=pem(untrusted), chain=other.chain_pem, ca_bundle=pki.chain_pem))
    assert result["failed"] and result["failure_class"] == "bad_input" and "ca_bundle" in result["msg"]
    wrong_cn = cm(dict(slot, step="install", certificate=pem(pki.sign_csr(csr)), common_name="other.example"))
    assert wrong_cn["failed"] and "CN" in wrong_cn["msg"]
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=40)
    expired = pki.sign_csr(csr, days=30, not_before=past)
    result = cm(dict(slot, step="install", certificate=pem(expired)))
    assert result["failed"] and result["failure_class"] == "expired"
    assert snapshot(folder) == before


def test_inspect_reasons_from_disk(pki, slot):
    key, cert = install_initial(pki, slot)
    # key mismatch on disk
    with open(slot["key_path"], "w") as fh:
        fh.write(key_pem(new_key()))
    res = ok(cm(dict(slot, step="inspect")))
    assert res["reasons"] == ["key_mismatch"] and res["current"]["key_matches"] is False
    os.unlink(slot["key_path"])
    assert ok(cm(dict(slot, step="inspect")))["reasons"] == ["key_missing"]
    with open(slot["key_path"], "w") as fh:
        fh.write(key_pem(key))
    # names differ, issuer untrusted, forced
    res = ok(cm(dict(slot, step="inspect", common_name="agent-other.prod.privsec.ch",
                     dns_names=["agent-other.prod.privsec.ch"], ca_bundle=PKI("new").chain_pem, force=True)))
    assert res["reasons"] == ["forced", "cn_differs", "san_differs", "issuer_untrusted"]
    assert res["chain_verified"] is False and res["chain_problem"]
    # a stale fullchain
    with open(slot["fullchain_path"], "w") as fh:
        fh.write(pem(pki.leaf(CN)[1]))
    assert ok(cm(dict(slot, step="inspect")))["reasons"] == ["fullchain_mismatch"]
    # an unparsable cert file is data
    with open(slot["cert_path"], "w") as fh:
        fh.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    res = ok(cm(dict(slot, step="inspect")))
    assert res["rotate"] is True and res["reasons"] == ["unparsable"] and res["parse_error"]


def test_expired_cert_on_disk_and_renew_before(pki, slot):
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=31)
    key, cert = pki.leaf(CN, dns=[CN], days=30, not_before=past)
    with open(slot["key_path"], "w") as fh:
        fh.write(key_pem(key))
    with open(slot["cert_path"], "w") as fh:
        fh.write(pem(cert))
    res = ok(cm(dict(slot, step="inspect")))
    assert res["reasons"] == ["expired"]
    install_initial(pki, slot, days=10)
    assert ok(cm(dict(slot, step="inspect", renew_before="3d")))["reasons"] == ["valid"]
    assert ok(cm(dict(slot, step="inspect", renew_before="11d")))["reasons"] == ["due"]


def test_csr_check_mode_writes_nothing_and_rsa(slot):
    res = ok(cm(dict(slot, step="csr"), check=True))
    assert res["changed"] is True and res["csr"] is None
    assert not os.path.exists(slot["key_path"] + ".next")
    res = ok(cm(dict(slot, step="csr", key_type="rsa", key_size=3072, ip_addresses=["127.0.0.1"])))
    assert res["key_type"] == "rsa-3072"
    from cryptography import x509
    csr = x509.load_pem_x509_csr(res["csr"].encode())
    assert csr.public_key().key_size == 3072
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # asking for EC replaces a staged RSA key
    res = ok(cm(dict(slot, step="csr")))
    assert res["changed"] is True and res["key_type"] == "ec-256"


def test_restore_without_backup_and_expect_serial(pki, slot):
    result = cm(dict(slot, step="restore"))
    assert result["failed"] and result["failure_class"] == "missing_file"
    install_initial(pki, slot)
    _k2, second = install_initial(pki, slot)
    current = ok(cm(dict(slot, step="inspect")))["current"]["serial"]
    # the run's install never happened (another serial expected): nothing restored
    res = ok(cm(dict(slot, step="restore", expect_serial="01:02:03")))
    assert res["changed"] is False and ok(cm(dict(slot, step="inspect")))["current"]["serial"] == current
    res = ok(cm(dict(slot, step="restore", expect_serial=current.replace(":", "").upper())))
    assert res["changed"] is True and res["restored_serial"] != current


def test_missing_folder_is_classified(pki, tmp_path):
    key, cert = pki.leaf(CN)
    res = cm({"step": "install", "cert_path": str(tmp_path / "nope" / "a.crt"),
              "key_path": str(tmp_path / "nope" / "a.key"), "certificate": pem(cert), "private_key": key_pem(key)})
    assert res["failed"] and res["failure_class"] == "missing_file"
    assert str(tmp_path / "nope") in res["msg"]


def test_private_key_never_in_output(pki, slot):
    key, cert = pki.leaf(CN, dns=[CN])
    secret = key_pem(key)
    res = ok(cm(dict(slot, step="install", certificate=pem(cert), private_key=secret), diff=True))
    body = secret.splitlines()[1]
    assert body not in repr(res)


def test_prepare_keeps_a_valid_slot_and_writes_nothing(pki, slot):
    install_initial(pki, slot)
    folder = os.path.dirname(slot["cert_path"])
    before = snapshot(folder)
    res = ok(cm(dict(slot, step="prepare", ca_bundle=pki.chain_pem)))
    assert res["changed"] is False and res["rotate"] is False and res["reasons"] == ["valid"]
    assert res["csr"] is None and "staged_key_path" not in res
    assert res["current"]["key_matches"] is True and res["chain_verified"] is True
    assert snapshot(folder) == before


def test_prepare_due_slot_stages_key_and_csr_in_one_call(pki, slot):
    old_start = datetime.datetime.now(UTC) - datetime.timedelta(days=25)
    install_initial(pki, slot, days=30, not_before=old_start)
    folder = os.path.dirname(slot["cert_path"])
    staged = slot["key_path"] + ".next"

    # check mode: the same decision, no key written, no CSR
    before = snapshot(folder)
    dry = ok(cm(dict(slot, step="prepare", ca_bundle=pki.chain_pem), check=True))
    assert dry["rotate"] is True and dry["reasons"] == ["due"]
    assert dry["changed"] is True and dry["csr"] is None and dry["staged_key"] is False
    assert snapshot(folder) == before

    # for real: inspect result + a CSR of a new staged key (0600), the key itself nowhere in the output
    res = ok(cm(dict(slot, step="prepare", ca_bundle=pki.chain_pem)))
    assert res["rotate"] is True and res["reasons"] == ["due"] and res["reason_text"][0].startswith("expires in 5 days")
    assert res["current"]["serial"] == before_serial(pki, before, slot)
    assert res["changed"] is True and res["reused"] is False and res["staged_key"] is True
    assert res["staged_key_path"] == staged and res["key_type"] == "ec-256"
    assert stat.S_IMODE(os.stat(staged).st_mode) == 0o600
    with open(staged) as fh:
        staged_pem = fh.read()
    assert staged_pem.splitlines()[1] not in repr(res)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    csr = x509.load_pem_x509_csr(res["csr"].encode())
    staged_key = serialization.load_pem_private_key(staged_pem.encode(), None)
    assert csr.public_key() == staged_key.public_key()
    assert csr.subject.rfc4514_string() == "CN=" + CN
    # the installed files are untouched until install
    after = snapshot(folder)
    assert {k: v for k, v in after.items() if k != "agent.key.next"} == before

    # forced: the decision is forced, the valid staged key is reused (not replaced)
    again = ok(cm(dict(slot, step="prepare", force=True)))
    assert again["reasons"] == ["forced", "due"] and again["reused"] is True and again["changed"] is False
    assert x509.load_pem_x509_csr(again["csr"].encode()).public_key() == staged_key.public_key()

    # the CSR signed and installed with step=install: the slot is kept afterwards
    new_cert = pki.sign_csr(res["csr"], days=30)
    installed = ok(cm(dict(slot, step="install", certificate=pem(new_cert), chain=[pem(pki.intermediate), pem(pki.root)],
                           ca_bundle=pki.chain_pem)))
    assert installed["key_source"] == "staged" and not os.path.exists(staged)
    keep = ok(cm(dict(slot, step="prepare", ca_bundle=pki.chain_pem)))
    assert keep["rotate"] is False and keep["changed"] is False and keep["csr"] is None


def before_serial(pki, snap, slot):
    from cryptography import x509
    return format_serial(x509.load_pem_x509_certificate(snap[os.path.basename(slot["cert_path"])][0]).serial_number)


def test_prepare_missing_cert_and_bad_input(slot):
    res = ok(cm(dict(slot, step="prepare")))
    assert res["reasons"] == ["missing"] and res["csr"].startswith("-----BEGIN CERTIFICATE REQUEST")
    nocn = {k: v for k, v in slot.items() if k != "common_name"}
    failed = cm(dict(nocn, step="prepare"))
    assert failed["failed"] and "common_name" in failed["msg"]


def test_inspect_slots_one_call_for_several_slots(pki, slot, tmp_path):
    install_initial(pki, slot)
    other = tmp_path / "other"
    other.mkdir()
    due_start = datetime.datetime.now(UTC) - datetime.timedelta(days=25)
    other_slot = dict(slot, cert_path=str(other / "a.crt"), key_path=str(other / "a.key"),
                      fullchain_path=str(other / "a.fullchain.pem"), chain_path=str(other / "ca.pem"))
    install_initial(pki, other_slot, days=30, not_before=due_start)
    missing = {"name": "c", "cert_path": str(tmp_path / "none.crt"), "key_path": str(tmp_path / "none.key"),
               "common_name": CN}
    folders = [os.path.dirname(slot["cert_path"]), str(other)]
    before = [snapshot(f) for f in folders]
    slots = [dict(slot, name="a"), dict(other_slot, name="b", dns_names=[CN, "extra.example"]), missing]
    res = ok(cm({"step": "inspect", "slots": slots, "ca_bundle": pki.chain_pem}))
    assert res["changed"] is False and res["rotate"] is True
    assert [r["name"] for r in res["slots"]] == ["a", "b", "c"]
    a, b, c = res["slots"]
    # each result is what step=inspect returns for that slot alone
    single = ok(cm(dict(slot, step="inspect", ca_bundle=pki.chain_pem)))
    for key in ("rotate", "reasons", "reason_text", "current", "chain_verified", "staged_key", "files", "exists"):
        assert a[key] == single[key], key
    assert a["reasons"] == ["valid"] and a["chain_verified"] is True
    assert b["reasons"] == ["due", "san_differs"] and "extra.example" in b["reason_text"][1]
    assert c["reasons"] == ["missing"] and c["current"] is None
    # a slot's own ca_bundle wins over the top-level one
    foreign = PKI("foreign")
    res = ok(cm({"step": "inspect", "ca_bundle": pki.chain_pem,
                 "slots": [dict(slot, name="a", ca_bundle=foreign.chain_pem), dict(slot, name="a2")]}))
    assert res["slots"][0]["reasons"] == ["issuer_untrusted"] and res["slots"][1]["reasons"] == ["valid"]
    # check mode: same results; nothing written either way
    dry = ok(cm({"step": "inspect", "slots": slots, "ca_bundle": pki.chain_pem}, check=True))
    assert [r["reasons"] for r in dry["slots"]] == [r["reasons"] for r in (a, b, c)]
    assert [snapshot(f) for f in folders] == before
    assert not os.path.exists(missing["cert_path"])


def test_inspect_slots_refuses_wrong_use(slot):
    both = cm(dict(slot, step="inspect", slots=[dict(slot, name="a")]))
    assert both["failed"] and "mutually exclusive" in both["msg"]
    res = cm({"step": "prepare", "common_name": CN, "slots": [dict(slot, name="a")]})
    assert res["failed"] and res["failure_class"] == "bad_input" and "only for step=inspect" in res["msg"]
    res = cm({"step": "inspect", "slots": [{"name": "a", "cert_path": slot["cert_path"]}]})
    assert res["failed"] and "key_path" in res["msg"]
    res = cm({"step": "inspect", "slots": [dict(slot, name="bad", renew_before="soon")]})
    assert res["failed"] and res["slot"] == "bad" and res["msg"].startswith("slot bad: ")
    assert cm({"step": "inspect"})["failed"]


def test_python39_compatible_syntax():
    import ast
    from helpers import REPO
    for rel in ("plugins/modules/cert_material.py", "plugins/module_utils/_x509.py",
                "plugins/module_utils/_files.py", "plugins/module_utils/_rotation.py"):
        ast.parse((REPO / rel).read_text(), feature_version=(3, 9))


# ---------------------------------------------------------------- with the real lab (read-only on its files)

def _read(path):
    with open(path) as fh:
        return fh.read()


@pytest.mark.lab
def test_inspect_real_lab_listener_files(lab):
    """The lab's listener files, read-only: parse, key matches, chain verifies against root."""
    paths = lab.info["paths"]
    before = {p: os.stat(paths[p]).st_mtime_ns for p in ("server_crt", "server_key", "fullchain", "ca_chain")}
    res = ok(cm({"step": "inspect", "cert_path": paths["server_crt"], "key_path": paths["server_key"],
                 "fullchain_path": paths["fullchain"], "chain_path": paths["ca_chain"],
                 "common_name": "vault.prod.privsec.ch", "ca_bundle": _read(paths["root_ca"])}))
    assert res["changed"] is False
    assert res["current"]["key_matches"] is True
    assert res["chain_verified"] is True, res["chain_problem"]
    assert "issuer_untrusted" not in res["reasons"] and "fullchain_mismatch" not in res["reasons"]
    assert len(res["chain"]) == 2
    assert {p: os.stat(paths[p]).st_mtime_ns for p in before} == before


@pytest.mark.lab
def test_csr_signed_by_real_vault_installs_and_verifies(lab, slot):
    """cert_material csr -> pki_cert sign (real OpenBao, admin identity) -> install -> keep."""
    from vault_api_helpers import admin_args
    paths = lab.info["paths"]
    bundle = _read(paths["ca_chain"])
    csr = ok(cm(dict(slot, step="csr")))
    signed = run_module("pki_cert", admin_args(lab, mount="pki-prod", role="agent-mtls-ncprd1", csr=csr["csr"],
                                               common_name=CN, ttl="24h"))
    assert not signed["failed"], signed.get("msg")
    args = dict(slot, step="install", certificate=signed["certificate"], chain=signed["ca_chain"], ca_bundle=bundle)
    installed = ok(cm(args))
    assert installed["changed"] is True and installed["after"]["serial"] == signed["serial"]
    with open(slot["fullchain_path"]) as fh:
        assert fh.read() == signed["fullchain"]
    keep = ok(cm(dict(slot, step="inspect", ca_bundle=bundle)))
    assert keep["reasons"] == ["valid"] and keep["chain_verified"] is True
    assert ok(cm(args))["changed"] is False


def test_check_mode_chain_without_certificate(slot):
    """csr -> pki_cert -> install in check mode: pki_cert returns no certificate; install must not fail."""
    res = ok(cm(dict(slot, step="install"), check=True))
    assert res["changed"] is True and res["after"] is None
    assert os.listdir(os.path.dirname(slot["cert_path"])) == []
    res = cm(dict(slot, step="install"))
    assert res["failed"] and res["failure_class"] == "bad_input"


OLD_HOST_PYTHON = "/usr/bin/python3.11"


def test_runs_on_a_host_with_an_older_cryptography(pki, slot, tmp_path):
    """A managed host with its distribution's Python and cryptography (here Debian's 3.11 + 38.x:
    no x509.verification, no *_utc dates): the whole slot flow still works, via the fallbacks."""
    import subprocess
    probe = subprocess.run([OLD_HOST_PYTHON, "-c", "import cryptography; print(cryptography.__version__)"],
                           capture_output=True, text=True, check=False) if os.path.exists(OLD_HOST_PYTHON) else None
    if probe is None or probe.returncode != 0:
        pytest.skip("no %s with cryptography on this machine" % OLD_HOST_PYTHON)
    import ansible
    shim = tmp_path / "site"
    shim.mkdir()
    (shim / "ansible").symlink_to(os.path.dirname(ansible.__file__))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
    env["PYTHONPATH"] = str(shim)

    def old(args):
        return ok(run_module("cert_material", args, env=env, python=OLD_HOST_PYTHON))

    assert old(dict(slot, step="inspect"))["reasons"] == ["missing"]
    csr = old(dict(slot, step="csr"))["csr"]
    args = dict(slot, step="install", certificate=pem(pki.sign_csr(csr)), chain=pki.chain_pem, ca_bundle=pki.chain_pem)
    assert old(args)["changed"] is True
    keep = old(dict(slot, step="inspect", ca_bundle=pem(pki.root)))
    assert keep["reasons"] == ["valid"] and keep["chain_verified"] is True
    other = old(dict(slot, step="inspect", ca_bundle=PKI("other").chain_pem))
    assert other["reasons"] == ["issuer_untrusted"] and "is not in the CA bundle" in other["chain_problem"]
    assert old(args)["changed"] is False
    assert ok(run_module("trust_bundle", {"path": str(tmp_path / "ca.pem"), "certificates": pki.chain_pem},
                         env=env, python=OLD_HOST_PYTHON))["changed"] is True


def test_fullchain_only_layout_follows_what_is_installed(pki, slot):
    """An nginx site that reads only <name>.fullchain.pem and <name>.key: the leaf file is
    configured but absent. Inspect reads the leaf from the fullchain; install and restore
    write only the key and the fullchain, never a leaf file nobody reads."""
    folder = os.path.dirname(slot["cert_path"])
    first = dict(slot, chain_path=None, cert_path=None)  # fullchain-only from the start
    key, cert = pki.leaf(CN, dns=[CN], days=30, not_before=datetime.datetime.now(UTC) - datetime.timedelta(days=25))
    ok(cm(dict(first, step="install", certificate=pem(cert), chain=[pem(pki.intermediate), pem(pki.root)],
               private_key=key_pem(key))))
    assert sorted(os.listdir(folder)) == ["agent.fullchain.pem", "agent.key"]

    # The inventory still names a leaf file (the role's default): it does not exist, the fullchain does.
    seen = ok(cm(dict(slot, chain_path=None, step="inspect", ca_bundle=pki.chain_pem)))
    assert seen["current"]["serial"] == format_serial(cert.serial_number)
    assert seen["reasons"] == ["due"] and seen["layout"] == "fullchain"
    assert seen["chain_verified"] is True

    made = ok(cm(dict(slot, chain_path=None, step="csr")))
    new_key = made["staged_key_path"]
    new_cert = pki.sign_csr(made["csr"])
    done = ok(cm(dict(slot, chain_path=None, step="install", certificate=pem(new_cert),
                      chain=[pem(pki.intermediate), pem(pki.root)])))
    assert done["changed"] is True and not os.path.exists(new_key)
    assert sorted(p for p in os.listdir(folder) if not p.endswith(".prev")) == ["agent.fullchain.pem", "agent.key"]
    assert not os.path.exists(slot["cert_path"]), "a leaf file nobody reads was written"

    back = ok(cm(dict(slot, chain_path=None, step="restore", expect_serial=done["serial"])))
    assert back["changed"] is True and back["serial"] == format_serial(cert.serial_number)
