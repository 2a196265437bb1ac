"""The control filters (plugins/filter/report.py): plan table, report building
(allow-list, redaction, status), Markdown, environment interlock, times."""
import datetime
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "collections") not in sys.path:
    sys.path.insert(0, str(REPO / "collections"))

from ansible_collections.privsec.vault_rotate.plugins.filter import report as f  # noqa: E402



def in_six_hours():
    """Six hours from NOW (not from import time: a long pytest session would age it)."""
    return (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=6)).strftime("%Y-%m-%dT%H:%M:%SZ")


def slot(name, phase, host, decision="rotate", action="planned", new=None, **extra):
    record = {
        "slot": name, "phase": phase, "host": host, "cert_path": "/x/%s.crt" % name,
        "decision": decision, "action": action, "reasons": ["due"],
        "reason_text": "expires in 0.2 days", "old": {"serial": "0a:0b", "not_after": in_six_hours(),
                                                     "fingerprint_sha256": "aa:bb"},
        "new": new,
    }
    record.update(extra)
    return record


def test_plan_table_orders_by_phase_and_counts():
    table = f.plan_table([
        slot("app_leaf/ncprd1", "app_leaf", "lab-ncprd1", decision="keep"),
        slot("admin_cert", "admin_cert", "lab-controller"),
    ])
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["PHASE", "SLOT", "HOST", "CURRENT"]
    assert lines[2].startswith("admin_cert") and "ROTATE" in lines[2]
    assert lines[3].startswith("app_leaf") and "KEEP" in lines[3]
    assert lines[-1] == "2 slot(s): 1 to rotate, 1 to keep"
    assert "6.0h" in lines[2] or "5.9h" in lines[2]
    assert f.plan_table([]) == "(no slots inspected)"


def test_report_build_allow_list_redaction_and_status():
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEI\n-----END EC PRIVATE KEY-----"
    future = in_six_hours()
    record = slot("server_tls", "server_tls", "lab-vaultprod", action="rotated",
                  new={"serial": "0c:0d", "not_after": future, "fingerprint_sha256": "cc:dd", "pem": pem},
                  private_key=pem, token="hvs.CAESIJ0123456789abcdefghijklmnop")
    record["reason_text"] = "weird " + pem
    phases = [
        {"phase": "admin_cert", "started": 1764093000, "ended": "2026-11-25T17:50:03Z", "duration_s": "3.0",
         "gate": "passed", "failure_class": None, "msg": "ok"},
        {"phase": "server_tls", "started": "2026-11-25T17:50:03Z", "ended": "2026-11-25T17:50:05Z",
         "duration_s": 2, "gate": "failed", "failure_class": "serial_mismatch",
         "msg": "token s.AAAAAAAAAAAAAAAAAAAAAAAA leaked?"},
    ]
    report = f.report_build([record], phases, {"env": "lab", "run_id": "r1", "status": "auto"})
    text = json.dumps(report)
    assert "BEGIN" not in text and "hvs." not in text and "s.AAAA" not in text
    assert "private_key" not in text and '"token"' not in text and '"pem"' not in text
    assert report["status"] == "failed"
    assert report["summary"]["failed_phase"] == "server_tls" and report["summary"]["rotated"] == 1
    assert report["slots"][0]["new"] == {"serial": "0c:0d", "not_after": future, "fingerprint_sha256": "cc:dd"}
    assert report["phases"][0]["started"] == "2025-11-25T17:50:00Z"
    assert report["phases"][0]["duration_s"] == 3.0
    ok = f.report_build([record], phases[:1], {"env": "lab", "status": "auto"})
    assert ok["status"] == "success"
    md = f.report_markdown(report)
    assert md.startswith("# Vault certificate rotation: lab (FAILED)")
    assert "| server_tls | failed | 2.0 | serial_mismatch |" in md
    assert "BEGIN" not in md


def test_env_interlock():
    groups = {
        "lab": ["lab-controller", "lab-vaultprod"], "prod": ["prod-controller", "prod-vaultprod"],
        "vault_admin": ["lab-controller", "prod-controller"],
    }
    ok = f.env_interlock({"lab-controller": "lab", "lab-vaultprod": "lab"}, groups)
    assert ok == {"env": "lab", "admin_host": "lab-controller", "problems": []}

    both = f.env_interlock({"lab-controller": "lab", "lab-vaultprod": "lab",
                            "prod-controller": "prod", "prod-vaultprod": "prod"}, groups)
    assert both["env"] is None and "span several environments" in both["problems"][0]

    wrong = f.env_interlock({"prod-controller": "lab", "prod-vaultprod": "lab"}, groups, ["prod", "lab"])
    assert wrong["env"] == "lab" and wrong["admin_host"] is None
    assert "host(s) prod-controller, prod-vaultprod are not in inventory group lab (they are in: prod)" in wrong["problems"][0]

    undefined = f.env_interlock({"lab-controller": "lab", "stray": ""}, groups)
    assert any("vault_rotate_env is not set for stray" in p for p in undefined["problems"])

    no_admin = f.env_interlock({"lab-vaultprod": "lab"}, groups)
    assert "exactly one host of group vault_admin in lab must be selected, found 0" in no_admin["problems"][0]


def test_times():
    assert f.to_epoch("1970-01-01T00:01:00Z") == 60.0
    assert f.to_epoch(60) == 60.0
    assert f.to_epoch("60.5") == 60.5
    assert f.to_epoch("__omit_place_holder__x") is None
    assert f.to_iso8601(60) == "1970-01-01T00:01:00Z"
    assert f.to_iso8601(datetime.datetime(2026, 11, 25, 17, 50)) == "2026-11-25T17:50:00Z"


def test_failure_of_a_gate_line_a_module_failure_and_a_success():
    gate = f.failure({"failed": True, "failure_class": "reload_failed",
                      "msg": "GATE app_leaf/ncprd1 FAILED (reload_failed): nginx refused the reload. Next: read its log"})
    assert gate == {"failed": True, "failure_class": "reload_failed", "msg": "nginx refused the reload",
                    "hint": "read its log", "gate": "app_leaf/ncprd1"}
    module = f.failure({"failed": True, "msg": "cannot write x. Next: remount it", "failure_class": "write_failed"})
    assert (module["failure_class"], module["msg"], module["hint"], module["gate"]) == (
        "write_failed", "cannot write x", "remount it", None)
    assert f.failure({"failed": True, "msg": "boom"})["failure_class"] == "unknown"
    assert f.failure({"unreachable": True, "msg": "ssh: no route"})["failure_class"] == "unreachable"
    assert f.failure({"changed": True}) == {"failed": False, "failure_class": None, "msg": None, "hint": None,
                                            "gate": None}
    # never a key in what it returns
    leaked = f.failure({"failed": True, "msg": "bad -----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----"})
    assert "PRIVATE KEY" not in leaked["msg"]
