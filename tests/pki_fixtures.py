"""Test PKI built with cryptography: root, intermediate, leaf certs, keys (no Vault needed)."""
import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = datetime.timezone.utc


def now():
    return datetime.datetime.now(UTC).replace(microsecond=0)


def new_key(kind="ec", size=2048):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "privsec test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(cn, key, issuer_cert=None, issuer_key=None, ca=False, dns=None, ips=None,
              not_before=None, not_after=None, days=30, serial=None, public_key=None):
    start = not_before or (now() - datetime.timedelta(minutes=5))
    end = not_after or (start + datetime.timedelta(days=days))
    subject = _name(cn)
    pub = public_key or key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else subject)
        .public_key(pub)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    signer_key = issuer_key if issuer_key is not None else key
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key()), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
    sans = [x509.DNSName(d) for d in (dns or [])] + [x509.IPAddress(ipaddress.ip_address(i)) for i in (ips or [])]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(signer_key, hashes.SHA256())


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class PKI:
    """Root -> intermediate -> leaves, like the lab (offline root + pki-prod)."""

    def __init__(self, name="test"):
        self.root_key = new_key()
        self.root = make_cert("%s root" % name, self.root_key, ca=True, days=3650)
        self.int_key = new_key()
        self.intermediate = make_cert("%s pki-prod" % name, self.int_key, self.root, self.root_key,
                                      ca=True, days=1000)

    def leaf(self, cn, key=None, **kw):
        key = key or new_key()
        return key, make_cert(cn, key, self.intermediate, self.int_key, **kw)

    def sign_csr(self, csr_pem, days=30, **kw):
        csr = x509.load_pem_x509_csr(csr_pem.encode() if isinstance(csr_pem, str) else csr_pem)
        cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns = san.get_values_for_type(x509.DNSName)
            ips = [str(i) for i in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            dns, ips = [], []
        return make_cert(cn, None, self.intermediate, self.int_key, dns=dns, ips=ips,
                         public_key=csr.public_key(), days=days, **kw)

    @property
    def chain_pem(self):
        return pem(self.intermediate) + pem(self.root)
