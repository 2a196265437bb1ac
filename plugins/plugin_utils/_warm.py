# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""OpenSSL warmed up in the controller's main process, before Ansible forks its workers.

Ansible runs each task on each host in a worker process forked from ansible-playbook.
The first time a process uses an OpenSSL algorithm, OpenSSL has to fetch its
implementation (provider lookups and method caches), and it pays that again in every
worker: the first ECDSA signature 8-13 ms against ~1 ms after it, the first
certificate verification 1-4 ms against 0.2 ms, a client SSL context with a CA file
~3 ms against ~1 ms. The in-process engine runs in those workers (local hosts), so
every app host pays it in each of its three calls. A worker forked after the main
process has made those calls inherits the warm caches (docs/performance.md, tenth
look). The warm-up costs the main process ~5 ms once per playbook.

It runs once, when an action plugin of this collection is first loaded in the main
process of a playbook run (Ansible's strategies load an action's class there before
they fork workers for its task), and never in a worker, in ansible-doc or in other
tools. VAULT_ROTATE_WARM_OPENSSL=0 turns it off. It uses a throwaway key that never
leaves memory, and it can never fail a run: any error just ends the warm-up.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import ssl
import sys

from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _catalog

STATE = {}


def wanted():
    """True in the main process of a playbook run (not in a worker, not in ansible-doc),
    unless VAULT_ROTATE_WARM_OPENSSL turns it off."""
    if _catalog.env_off("VAULT_ROTATE_WARM_OPENSSL"):
        return False
    if "ansible.executor.task_queue_manager" not in sys.modules:
        return False
    try:
        import multiprocessing
        return multiprocessing.parent_process() is None
    except Exception:  # pragma: no cover - an unusual multiprocessing: do not guess
        return False


def warm():
    """Make the OpenSSL calls the engine makes, once, in this process; True when it did."""
    if STATE or not wanted():
        return False
    STATE["tried"] = True
    try:
        _calls()
    except Exception:  # a warm-up that fails costs nothing but its time
        return False
    STATE["done"] = True
    return True


def _calls():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, u"privsec.vault_rotate warm-up")])
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(minutes=5))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(u"warm-up.invalid")]), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert = x509.load_pem_x509_certificate(pem)
    if hasattr(cert, "verify_directly_issued_by"):
        cert.verify_directly_issued_by(cert)
    cert.public_key()
    x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=pem.decode("ascii"))
