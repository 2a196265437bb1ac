"""Every step the roles call exists where the engine runs as a module.

The lab's hosts are local, so the action plugin runs the engine in-process and
a step missing from the module's choices goes unnoticed until a remote host
(or VAULT_ROTATE_INPROCESS=0) meets it: this reads the real files instead.
ansible-test's validate-modules keeps the argument spec equal to the docs.
"""
import re
from pathlib import Path

import pytest
import yaml
from ansible_collections.privsec.vault_rotate.plugins.module_utils import _engine
from ansible_collections.privsec.vault_rotate.plugins.modules import phase

REPO = Path(__file__).resolve().parents[2]


def _choices():
    return set(yaml.safe_load(phase.DOCUMENTATION)["options"]["step"]["choices"])


def test_every_engine_step_is_a_choice_of_the_module():
    assert set(_engine.STEPS) <= _choices(), sorted(set(_engine.STEPS) - _choices())


def test_every_step_the_roles_call_is_a_choice_of_the_module():
    called = set()
    for path in (REPO / "roles").glob("*/tasks/*.yml"):
        called |= set(re.findall(r"^\s+step:\s*([a-z_]+)\s*$", path.read_text(), re.M))
    assert called, "no privsec.vault_rotate.phase step found in roles/*/tasks"
    assert called <= _choices(), sorted(called - _choices())


def test_engine_arguments_are_plain_before_validation():
    """Templated values carry data tags; the in-process path hands the validator plain types
    (its deep copy of tagged values cost ~20 ms a call), equal in value."""
    tags = pytest.importorskip("ansible._internal._datatag._tags")
    from ansible_collections.privsec.vault_rotate.plugins.plugin_utils._action import _plain
    origin = tags.Origin(path="/inventories/prod/group_vars/prod.yml")
    tagged = origin.tag({"slots": [origin.tag({"name": origin.tag("app_leaf"), "ttl": origin.tag(90)})],
                         "notify": ("nginx-app01", "reload"), "check": True, "timeout": 2.5, "none": None})
    plain = _plain(tagged)
    assert plain == tagged
    assert type(plain) is dict and type(plain["slots"]) is list and type(plain["slots"][0]["name"]) is str
    assert type(plain["slots"][0]["ttl"]) is int and type(plain["notify"]) is tuple
    assert plain["check"] is True and plain["none"] is None
