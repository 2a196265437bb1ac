"""A mapping variable with an entry per app is read one entry at a time.

vault_rotate_frontend_endpoints holds every app's frontend; each app host needs its
own. Templated whole on every app host by every step, it cost O(apps^2) over a run
(about 0.1 s of a worker per host and step at 32 apps, when the entries are rich).
The catalog reads the entry alone when the action can (``get_item``), and falls
back to the whole value for a missing entry or a value that is not a mapping.
"""
import pytest

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _catalog

ENDPOINTS = "vault_rotate_frontend_endpoints"


def host(app, endpoints):
    """(get, get_item, whole): the getters an action gives the catalog, and the names read whole."""
    variables = {"vault_rotate_app": app, "vault_rotate_home_root": "/srv/apps", "vault_rotate_domain": "prod.example",
                 "vault_rotate_pki_mount": "pki_int", ENDPOINTS: endpoints}
    whole = []

    def get(name):
        whole.append(name)
        return variables.get(name, _catalog.MISSING)

    def get_item(name, key):  # as EngineAction.get_item: MISSING for no entry or no mapping
        raw = variables.get(name, _catalog.MISSING)
        if not isinstance(raw, dict) or key not in raw:
            return _catalog.MISSING
        return raw[key]
    return get, get_item, whole


def test_the_apps_entry_is_read_alone():
    get, get_item, whole = host("app01", {"app01": {"host": "10.0.0.1", "port": 443}, "app02": {"port": 8443}})
    assert _catalog.settings("app_leaf", get, get_item)["endpoint"] == {"host": "10.0.0.1", "port": 443}
    assert ENDPOINTS not in whole


def test_without_get_item_the_whole_mapping_is_read():
    get, _, whole = host("app02", {"app01": {"port": 443}, "app02": {"port": 8443}})
    assert _catalog.settings("app_leaf", get)["endpoint"] == {"port": 8443}
    assert ENDPOINTS in whole


def test_an_app_without_an_entry_gets_file_checks_only():
    get, get_item, _ = host("app03", {"app01": {"port": 443}})
    assert _catalog.settings("app_leaf", get, get_item)["endpoint"] == {}


def test_a_value_that_is_not_a_mapping_is_named():
    get, get_item, _ = host("app01", [{"port": 443}])
    with pytest.raises(RotateError) as caught:
        _catalog.settings("app_leaf", get, get_item)
    assert caught.value.failure_class == "bad_input" and ENDPOINTS in caught.value.message
