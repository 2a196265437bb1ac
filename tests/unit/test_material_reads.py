"""How often an install reads keys: the staged key that matches the new certificate is taken
without reading the key it replaces (on cryptography < 39 every RSA key read is OpenSSL's key
check, ~50 ms for RSA-2048). Real files, real keys, real certificates; the parse is counted."""
import hashlib

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _engine
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509 as X

from pki_fixtures import PKI, key_pem, new_key, pem


def test_install_reads_only_the_staged_key(tmp_path, monkeypatch):
    pki = PKI("reads")
    old_key, old_cert = pki.leaf("app.example", key=new_key("rsa"), dns=["app.example"])
    new_k, new_cert = pki.leaf("app.example", key=new_key("rsa"), dns=["app.example"])
    key_path, cert_path = tmp_path / "app.key", tmp_path / "app.crt"
    key_path.write_text(key_pem(old_key))
    cert_path.write_text(pem(old_cert))
    (tmp_path / "app.key.next").write_text(key_pem(new_k))
    parsed = []
    real = X._load_pem_key
    monkeypatch.setattr(X, "_load_pem_key", lambda raw: parsed.append(raw) or real(raw))
    monkeypatch.setattr(X, "_KEYS", {}, raising=False)
    slot = {"name": "app_leaf/app", "key_path": str(key_path), "cert_path": str(cert_path),
            "common_name": "app.example", "dns_names": ["app.example"], "certificate": pem(new_cert),
            "chain": pem(pki.intermediate)}
    done = _engine.install_slot(slot, pem(pki.root), check_mode=False)
    assert done["changed"] and done["serial"] == X.format_serial(new_cert.serial_number)
    assert key_path.read_text() == key_pem(new_k)
    assert (tmp_path / "app.key.prev").read_text() == key_pem(old_key)  # the old pair kept as backup
    digest = lambda pem_bytes: hashlib.sha256(pem_bytes.strip()).hexdigest()  # noqa: E731 (no key text in a failure)
    assert [digest(raw) for raw in parsed] == [digest(key_pem(new_k).encode())]  # the old key never read
