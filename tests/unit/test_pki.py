"""Unit tests of plugins/module_utils/_pki.py: sign/issue and issuers with a fake client (no lab).

The fake answers as OpenBao does (the shapes the lab tests of pki_cert and
pki_issuers_info see), only to reach the paths the lab cannot produce on demand.
"""
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _pki
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError, classify_http
from pki_fixtures import PKI, make_cert, new_key, now, pem


def make_csr(cn, key=None, dns=()):
    key = key or new_key()
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


class FakePKIClient:
    """write() answers sign/issue with `answer(path, body)`; read()/request() serve `issuers`."""

    def __init__(self, answer=None, issuers=None):
        self.answer = answer
        self.issuers = issuers or {}
        self.writes = []

    def write(self, path, body):
        self.writes.append((path, body))
        return self.answer(path, body)

    def request(self, method, path, expect=(200,)):
        assert method == "LIST"
        if not self.issuers:
            return 404, {"errors": []}
        return 200, {"data": {"keys": sorted(self.issuers),
                              "key_info": dict((i, {"issuer_name": d["issuer_name"], "is_default": d["is_default"]})
                                               for i, d in self.issuers.items())}}

    def read(self, path):
        return {"data": self.issuers[path.rsplit("/", 1)[1]]}


def signer(pki):
    def answer(path, body):
        cert = pki.sign_csr(body["csr"])
        return {"data": {"certificate": pem(cert), "issuing_ca": pem(pki.intermediate),
                         "ca_chain": [pem(pki.intermediate), pem(pki.root)], "serial_number": "x"}}
    return answer


def refusal(status, errors):
    def answer(path, body):
        raise classify_http(status, errors, path)
    return answer


def test_request_body_sends_only_what_is_set_and_no_key_options_with_a_csr():
    body = _pki.request_body(dict(format="pem", csr="CSR", common_name="a", alt_names=["a", "b"], ip_sans=[],
                                  ttl=None, key_type="ec", key_bits=256, exclude_cn_from_sans=False))
    assert body == {"format": "pem", "csr": "CSR\n", "common_name": "a", "alt_names": "a,b"}
    body = _pki.request_body(dict(format="pem", common_name="a", ttl="1h", key_type="ec", key_bits=256,
                                  exclude_cn_from_sans=True))
    assert body == {"format": "pem", "common_name": "a", "ttl": "1h", "key_type": "ec", "key_bits": 256,
                    "exclude_cn_from_sans": True}


def test_sign_returns_the_described_cert_with_operation_and_path():
    pki = PKI()
    client = FakePKIClient(signer(pki))
    result = _pki.sign_or_issue(client, "/pki-prod/", "agent", csr=make_csr("a.example", dns=["a.example"]),
                                common_name="a.example", alt_names=["a.example"])
    assert result["operation"] == "sign" and result["path"] == "pki-prod/sign/agent"
    assert client.writes[0][0] == "pki-prod/sign/agent" and "key_type" not in client.writes[0][1]
    assert result["common_name"] == "a.example" and result["dns_names"] == ["a.example"]
    assert result["fullchain"] == result["certificate"] + pem(pki.intermediate)  # the root is left out
    assert result["ca_chain"] == [pem(pki.intermediate), pem(pki.root)]
    assert "private_key" not in result


def test_issue_without_csr_is_the_issue_path():
    assert _pki.operation_path("pki-prod", "agent") == ("issue", "pki-prod/issue/agent")
    assert _pki.operation_path("pki-prod/", "/agent", csr="x") == ("sign", "pki-prod/sign/agent")


def test_answer_without_certificate_is_server_error():
    client = FakePKIClient(lambda path, body: {"data": {}})
    with pytest.raises(RotateError) as caught:
        _pki.sign_or_issue(client, "pki-prod", "agent", csr=make_csr("a.example"))
    assert caught.value.failure_class == "server_error"
    assert caught.value.message == "Vault answered pki-prod/sign/agent without a certificate"


def test_certificate_for_another_key_is_key_mismatch():
    pki = PKI()
    other = make_cert("a.example", None, pki.intermediate, pki.int_key, public_key=new_key().public_key())
    client = FakePKIClient(lambda path, body: {"data": {"certificate": pem(other)}})
    with pytest.raises(RotateError) as caught:
        _pki.sign_or_issue(client, "pki-prod", "agent", csr=make_csr("a.example"))
    assert caught.value.failure_class == "key_mismatch"


def test_bad_csr_fails_before_any_request():
    client = FakePKIClient(lambda path, body: pytest.fail("no request expected"))
    with pytest.raises(RotateError) as caught:
        _pki.sign_or_issue(client, "pki-prod", "agent", csr="not a csr")
    assert caught.value.failure_class == "bad_pem"


@pytest.mark.parametrize("status, errors, failure_class, needle", [
    (400, ["unknown role: agent"], "not_found", "PKI role 'agent' does not exist on mount 'pki-prod'"),
    (404, ["no handler for route \"pki-nope/sign/agent\""], "not_found", "PKI mount 'pki-prod' not found"),
    (403, ["permission denied"], "permission_denied", "permission denied to write 'pki-prod/sign/agent'"),
    (400, ["common name x not allowed by this role"], "bad_input", "role 'agent' on mount 'pki-prod' refused"),
    (500, ["boom"], "server_error", "Vault failed on 'pki-prod/sign/agent'"),
])
def test_refusals_are_classified_naming_mount_and_role(status, errors, failure_class, needle):
    client = FakePKIClient(refusal(status, errors))
    with pytest.raises(RotateError) as caught:
        _pki.sign_or_issue(client, "pki-prod", "agent", csr=make_csr("a.example"))
    assert caught.value.failure_class == failure_class
    assert needle in caught.value.message
    assert caught.value.details["path"] == "pki-prod/sign/agent"


def issuer_data(cert, chain, name, default, revoked=False):
    return {"certificate": pem(cert), "ca_chain": [pem(c) for c in chain], "issuer_name": name,
            "is_default": default, "revoked": revoked}


def test_read_issuers_default_first_bundle_of_valid_issuers_and_their_root_once():
    old, new = PKI("old"), PKI("new")
    expired = make_cert("gone", old.root_key, old.root, old.root_key, ca=True,
                        not_before=now() - datetime.timedelta(days=20), days=10)
    client = FakePKIClient(issuers={
        "a": issuer_data(old.intermediate, [old.intermediate, old.root], "old", False),
        "b": issuer_data(new.intermediate, [new.intermediate, new.root], "new", True),
        "c": issuer_data(expired, [expired, old.root], "expired", False),
    })
    result = _pki.read_issuers(client, "pki-prod")
    assert [i["issuer_name"] for i in result["issuers"]] == ["new", "old"]
    assert result["default_issuer_id"] == "b"
    assert result["default_chain"] == pem(new.intermediate) + pem(new.root)
    subjects = [c["subject"] for c in result["ca_bundle_certs"]]
    assert len(subjects) == 4 and len(set(subjects)) == 4  # both intermediates, then both roots, each once
    everything = _pki.read_issuers(client, "pki-prod", valid_only=False)
    assert [i["issuer_name"] for i in everything["issuers"]] == ["new", "expired", "old"]  # default, then by not_after
    assert everything["issuers"][1]["valid"] is False and everything["ca_bundle"] == result["ca_bundle"]


def test_read_issuers_of_a_mount_without_issuers_is_empty():
    result = _pki.read_issuers(FakePKIClient(), "pki-prod")
    assert result == {"issuers": [], "ca_bundle": "", "ca_bundle_certs": [], "default_issuer_id": None,
                      "default_chain": ""}
