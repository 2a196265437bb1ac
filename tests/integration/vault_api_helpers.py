"""Helpers of the Vault API module tests (pki_cert, cert_auth_mapping, cert_login, pki_issuers_info).

- `admin_args(lab)`: connection options of the lab's admin identity (cert login through `admin`),
  the way a playbook passes them.
- `root_client(lab)`: a VaultClient with the lab's root token (and the admin client cert, which the
  listener requires on every connection), for setup and assertions only.
- `make_csr`, `make_ca`: real keys, CSRs and CAs made with cryptography.
"""
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ansible_collections.privsec.vault_rotate.plugins.module_utils._vault import VaultClient


def admin_args(lab, **extra):
    env = lab.admin_env()
    args = dict(
        url=env["VAULT_ADDR"], ca_cert=env["VAULT_CACERT"], client_cert=env["VAULT_CLIENT_CERT"],
        client_key=env["VAULT_CLIENT_KEY"], tls_server_name=env["VAULT_TLS_SERVER_NAME"], cert_role="admin",
    )
    args.update(extra)
    return args


def app_identity_args(lab, app, **extra):
    """Connection options with the agent login cert of `app` as the identity (for cert_login)."""
    env = lab.admin_env()
    paths = lab.info["app_paths"][app]
    args = dict(url=env["VAULT_ADDR"], ca_cert=paths["ca"], client_cert=paths["agent_crt"],
                client_key=paths["agent_key"], tls_server_name=env["VAULT_TLS_SERVER_NAME"])
    args.update(extra)
    return args


def root_client(lab):
    env = lab.admin_env()
    return VaultClient(env["VAULT_ADDR"], ca_cert=env["VAULT_CACERT"], client_cert=env["VAULT_CLIENT_CERT"],
                       client_key=env["VAULT_CLIENT_KEY"], tls_server_name=env["VAULT_TLS_SERVER_NAME"],
                       token=lab.root_token())


def token_accessors(client):
    """Accessors of every token in Vault (to prove a module leaves none behind)."""
    status, data = client.request("LIST", "auth/token/accessors", expect=(200, 404))
    return set(((data or {}).get("data") or {}).get("keys") or [])


def make_key(kind="ec"):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(common_name, dns=None, kind="ec"):
    """(private key, CSR PEM text) for `common_name` with DNS SANs."""
    key = make_key(kind)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def make_ca(common_name, days=365, not_before=None):
    """(key, PEM) of a self-signed CA certificate."""
    key = make_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = not_before or (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5))
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def make_leaf(common_name, ca_key, ca_pem, days=1):
    """(key PEM, cert PEM) of a client cert signed by the given CA."""
    ca = x509.load_pem_x509_certificate(ca_pem.encode())
    key = make_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode("ascii")
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def pem_of(path):
    with open(path) as handle:
        return handle.read()
