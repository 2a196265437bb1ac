# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rotation decision: keep or rotate one certificate, and say why.

Pure logic on the canonical ``cert_info`` dicts of ``_x509`` (plus, when the
caller has them, the parsed certificate and its chain for the issuer check),
so it is unit-tested without any file or server.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import ipaddress

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _timing
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

DEFAULT_RENEW_FRACTION = 2.0 / 3.0

# Every reason a decision can carry, in the order they are reported.
ROTATE_REASONS = (
    "forced",
    "missing",
    "unparsable",
    "key_missing",
    "key_mismatch",
    "expired",
    "due",
    "cn_differs",
    "san_differs",
    "issuer_untrusted",
    "fullchain_mismatch",
)
KEEP_REASONS = ("valid",)

parse_duration = _timing.parse_duration
_parse_time = _timing.parse_time


def _now(now):
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.timezone.utc)
    return now


def _days(seconds):
    return seconds / 86400.0


def _fmt_days(days):
    """Human number of days: '3', '0.5', '-2'."""
    if abs(days) >= 10:
        return "%d" % round(days)
    text = ("%.1f" % days).rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _norm_dns(names):
    return set(str(n).strip().lower().rstrip(".") for n in names or [] if str(n).strip())


def _norm_ips(addresses):
    result = set()
    for address in addresses or []:
        text = str(address).strip()
        if not text:
            continue
        try:
            result.add(str(ipaddress.ip_address(text)))
        except ValueError:
            raise RotateError("bad_input", "not an IP address: %r" % (text,))
    return result


def due_at(info, renew_fraction=None, renew_before=None):
    """When the cert becomes due for renewal (datetime, UTC).

    ``renew_before`` (seconds) wins over ``renew_fraction`` when both are set.
    """
    start = _parse_time(info["not_before"])
    end = _parse_time(info["not_after"])
    if renew_before is not None:
        return end - datetime.timedelta(seconds=float(renew_before))
    fraction = DEFAULT_RENEW_FRACTION if renew_fraction is None else float(renew_fraction)
    return start + datetime.timedelta(seconds=(end - start).total_seconds() * fraction)


def _issuer_trusted(info, ca_bundle_certs, cert, chain_certs):
    """True/False, or None when there is nothing to check against."""
    if not ca_bundle_certs:
        return None
    if cert is not None:
        from ansible_collections.privsec.vault_rotate.plugins.module_utils import _x509

        # Signature path only: expiry of the leaf is its own reason, and a CA
        # bundle given for a rollover may hold CAs that are not valid yet.
        path, _reason = _x509.build_chain(cert, chain_certs or [], ca_bundle_certs)
        return path is not None
    # Info only (no parsed cert): the issuer DN must be the subject of a bundle cert.
    subjects = set(c.subject.rfc4514_string() for c in ca_bundle_certs)
    return info.get("issuer") in subjects


def evaluate(current_info, want_cn=None, want_dns=None, want_ips=None, ca_bundle_certs=None,
             key_matches=None, parse_error=None, renew_fraction=None, renew_before=None,
             force=False, now=None, cert=None, chain_certs=None, fullchain_matches=None):
    """The full decision as a dict: rotate, reasons, reason_text, due_at, days_left.

    current_info: ``_x509.cert_info`` of the installed cert, or None when the
    file is missing or unparsable (then ``parse_error`` says why).
    key_matches: True / False / None (None = no key file).
    want_dns / want_ips: None means "do not compare"; a list (even empty) is
    compared as a set; the CN may appear among the DNS SANs without counting as
    a difference (Vault adds it unless the role excludes it).
    renew_before: seconds (or a duration string) before not_after; wins over
    renew_fraction (fraction of the lifetime elapsed, default 2/3).
    cert / chain_certs: parsed cert and its chain for the issuer check by
    signature; without them the issuer DN is compared with the bundle subjects.
    fullchain_matches: False when a fullchain file exists for the slot but does
    not start with the installed cert (a reader of it serves a stale leaf).
    """
    now = _now(now)
    renew_before = parse_duration(renew_before)
    if renew_fraction is not None and not 0 < float(renew_fraction) <= 1:
        raise RotateError("bad_input", "renew_fraction must be in (0, 1], got %r" % (renew_fraction,))
    reasons = []
    texts = {}
    result = {"rotate": False, "reasons": reasons, "reason_text": [], "due_at": None, "days_left": None}

    if force:
        reasons.append("forced")
        texts["forced"] = "rotation forced"

    if current_info is None:
        if parse_error:
            reasons.append("unparsable")
            texts["unparsable"] = "the certificate file does not parse (%s)" % parse_error
        else:
            reasons.append("missing")
            texts["missing"] = "no certificate installed yet"
        return _finish(result, reasons, texts)

    if key_matches is None:
        reasons.append("key_missing")
        texts["key_missing"] = "the private key file is missing or unreadable"
    elif not key_matches:
        reasons.append("key_mismatch")
        texts["key_mismatch"] = "the private key does not match the certificate"

    end = _parse_time(current_info["not_after"])
    days_left = _days((end - now).total_seconds())
    due = due_at(current_info, renew_fraction, renew_before)
    days_to_due = _days((due - now).total_seconds())
    result["due_at"] = due.strftime("%Y-%m-%dT%H:%M:%SZ")
    result["days_left"] = round(days_left, 4)
    if now >= end:
        reasons.append("expired")
        texts["expired"] = "expired %s days ago (%s)" % (_fmt_days(-days_left), current_info["not_after"])
    elif now >= due:
        reasons.append("due")
        if renew_before is not None:
            texts["due"] = "expires in %s days, within the renew window of %s days" % (
                _fmt_days(days_left), _fmt_days(_days(renew_before)))
        else:
            fraction = DEFAULT_RENEW_FRACTION if renew_fraction is None else float(renew_fraction)
            texts["due"] = "expires in %s days, %d%% of its lifetime has elapsed (renews at %d%%)" % (
                _fmt_days(days_left), _elapsed_percent(current_info, now), round(fraction * 100))

    if want_cn and (current_info.get("common_name") or "") != want_cn:
        reasons.append("cn_differs")
        texts["cn_differs"] = "CN is %r, wanted %r" % (current_info.get("common_name"), want_cn)

    san_text = san_difference(current_info, want_cn, want_dns, want_ips)
    if san_text:
        reasons.append("san_differs")
        texts["san_differs"] = san_text

    trusted = _issuer_trusted(current_info, ca_bundle_certs, cert, chain_certs)
    if trusted is False:
        reasons.append("issuer_untrusted")
        texts["issuer_untrusted"] = "issuer %r is not in the CA bundle" % (
            current_info.get("issuer_common_name") or current_info.get("issuer"),)

    if fullchain_matches is False:
        reasons.append("fullchain_mismatch")
        texts["fullchain_mismatch"] = "the fullchain file does not start with the installed certificate"

    if not reasons:
        reasons.append("valid")
        texts["valid"] = "valid: expires in %s days, due in %s days" % (
            _fmt_days(days_left), _fmt_days(days_to_due))
    return _finish(result, reasons, texts)


def _elapsed_percent(info, now):
    start = _parse_time(info["not_before"])
    end = _parse_time(info["not_after"])
    lifetime = (end - start).total_seconds()
    if lifetime <= 0:
        return 100
    return int(round(100 * (now - start).total_seconds() / lifetime))


def san_difference(info, want_cn, want_dns, want_ips):
    problems = []
    if want_dns is not None:
        have = _norm_dns(info.get("dns_names"))
        want = _norm_dns(want_dns)
        tolerated = _norm_dns([want_cn]) if want_cn else set()
        missing = sorted(want - have)
        extra = sorted(have - want - tolerated)
        if missing:
            problems.append("DNS names missing: %s" % ", ".join(missing))
        if extra:
            problems.append("DNS names not wanted: %s" % ", ".join(extra))
    if want_ips is not None:
        have = _norm_ips(info.get("ip_addresses"))
        want = _norm_ips(want_ips)
        missing = sorted(want - have)
        extra = sorted(have - want)
        if missing:
            problems.append("IP SANs missing: %s" % ", ".join(missing))
        if extra:
            problems.append("IP SANs not wanted: %s" % ", ".join(extra))
    return "; ".join(problems)


def _finish(result, reasons, texts):
    ordered = [r for r in ROTATE_REASONS + KEEP_REASONS if r in reasons]
    reasons[:] = ordered
    result["rotate"] = ordered != ["valid"]
    result["reason_text"] = [texts[r] for r in ordered]
    return result


def decide(current_info, want_cn=None, want_dns=None, want_ips=None, ca_bundle_certs=None,
           key_matches=None, parse_error=None, renew_fraction=None, renew_before=None,
           force=False, now=None, cert=None, chain_certs=None, fullchain_matches=None):
    """(rotate, reasons) -- see evaluate() for the arguments."""
    result = evaluate(current_info, want_cn=want_cn, want_dns=want_dns, want_ips=want_ips,
                      ca_bundle_certs=ca_bundle_certs, key_matches=key_matches,
                      parse_error=parse_error, renew_fraction=renew_fraction,
                      renew_before=renew_before, force=force, now=now, cert=cert,
                      chain_certs=chain_certs, fullchain_matches=fullchain_matches)
    return result["rotate"], result["reasons"]


def summary(result):
    """One line for task names and reports: 'rotate: expired 2 days ago; CN is ...'."""
    verb = "rotate" if result["rotate"] else "keep"
    return "%s: %s" % (verb, "; ".join(result["reason_text"]))
