# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the action plugins of this collection share: reading the task's
variables, attaching to the run, and running one engine step on the task's
host, either through the module ``privsec.vault_rotate.phase`` or, when that
host is the controller itself (local connection, no become), right here in
the worker: the same code, without a module start-up (about 0.3 s a call).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from collections.abc import Mapping

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _engine
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _catalog
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils import _warm
from ansible_collections.privsec.vault_rotate.plugins.plugin_utils._run import Run

# Loaded in ansible-playbook's main process before the first task's workers are forked: they
# inherit OpenSSL's warm caches (plugin_utils/_warm.py).
_warm.warm()

ENGINE_MODULE = "privsec.vault_rotate.phase"
# params["service"] = SERVICE: the service settings, with the commands of the units the step names.
SERVICE = object()
LOCAL_CONNECTIONS = ("local", "ansible.builtin.local")


def _strings(value, found=None):
    """Every string in a structure of dicts and lists (the unit names a step refers to among them)."""
    found = set() if found is None else found
    if isinstance(value, str):
        found.add(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _strings(item, found)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _strings(item, found)
    return found


def _plain(value):
    """``value`` in plain Python types. Templated values carry Ansible's data tags (2.19+), and
    argument validation deep-copies its input: tagged strings and containers take the slow
    copy path, ~20 ms per engine call on a host with two slots; plain ones are nearly free."""
    if isinstance(value, Mapping):
        return dict((_plain(k), _plain(v)) for k, v in value.items())
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (list, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str.__str__(value)  # a plain str as it is, a tagged one as a plain copy
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


class EngineAction(ActionBase):
    """Base of the ``phase`` and ``run`` actions."""

    TRANSFERS_FILES = False

    def _setup(self, task_vars):
        self._vars = task_vars or {}
        self._cache = {}

    def get(self, name):
        """A variable of the task, templated; _catalog.MISSING when undefined."""
        if name in self._cache:
            return self._cache[name]
        if name not in self._vars:
            value = _catalog.MISSING
        else:
            value = self._templar.template(self._vars[name])
        self._cache[name] = value
        return value

    def get_item(self, name, key):
        """One entry of a mapping variable, templated alone; _catalog.MISSING when there is none.
        A variable that is not a mapping as written (a template) is templated whole, once."""
        raw = self._vars.get(name, _catalog.MISSING)
        if raw is _catalog.MISSING or raw is None:
            return _catalog.MISSING
        if not isinstance(raw, Mapping):
            raw = self.get(name)
            if not isinstance(raw, Mapping):
                return _catalog.MISSING  # the catalog names the wrong type when it reads the whole value
        if key not in raw:
            return _catalog.MISSING
        return self._templar.template(raw[key])

    def var(self, name, default=None):
        value = self.get(name)
        return default if value is _catalog.MISSING else value

    @property
    def host(self):
        return self._vars.get("inventory_hostname")

    @property
    def groups(self):
        return self._vars.get("groups") or {}

    @property
    def check_mode(self):
        return bool(self._play_context.check_mode)

    def run_state(self, required=True):
        """The run this task belongs to: the registered result of privsec.vault_rotate.run (state=open),
        ``vault_rotate_run``."""
        meta = self.var("vault_rotate_run")
        if not isinstance(meta, dict) or not meta.get("dir") or meta.get("closed") or meta.get("failed"):
            if required:
                raise RotateError("bad_input", "no rotation run is open (vault_rotate_run is not set)",
                                  hint="run the preflight role (playbooks/preflight.yml) first, or use the phase "
                                       "role, which opens a run of its own")
            return None
        return Run(meta)

    # ------------------------------------------------------------ engine

    def inprocess(self):
        """True when the task's (possibly delegated) host is this controller: local, no become."""
        if _catalog.env_off("VAULT_ROTATE_INPROCESS"):
            return False
        if not _catalog.Values("vault_rotate", self.get).glob("inprocess"):
            return False
        name = getattr(self._connection, "_load_name", None) or getattr(self._connection, "transport", "")
        return name in LOCAL_CONNECTIONS and not self._play_context.become

    def engine(self, params):
        """Run one engine step on the task's host; the step's result (never the arguments)."""
        params = dict((k, v) for k, v in params.items() if v is not None)
        if params.get("service") is SERVICE:
            params["service"] = _catalog.service(self.get, units=_strings(params), get_item=self.get_item)
        if self.inprocess():
            checked = ArgumentSpecValidator(_engine.ARGUMENT_SPEC).validate(_plain(params))
            if checked.error_messages:
                raise RotateError("bad_input", "invalid engine arguments: %s" % "; ".join(checked.error_messages))
            try:
                result = _engine.run_step(checked.validated_parameters, check_mode=self.check_mode)
            except RotateError:
                raise
            except Exception as exc:  # a bug: name it, do not lose the run
                raise RotateError("unknown", "%s/%s failed unexpectedly: %s: %s" % (
                    params["phase"], params["step"], type(exc).__name__, exc),
                    hint="rerun with -vvv and VAULT_ROTATE_INPROCESS=0 to see the module's traceback")
            result["engine"] = "in-process"
            return result
        work = dict((k, v) for k, v in params.items() if k not in ("phase", "step", "unseal_keys"))
        args = {"phase": params["phase"], "step": params["step"], "work": work,
                "unseal_keys": params.get("unseal_keys") or []}
        result = self._execute_module(module_name=ENGINE_MODULE, module_args=args, task_vars=self._vars)
        result.pop("invocation", None)
        if result.get("unreachable"):
            raise AnsibleConnectionFailure(result.get("msg") or "unreachable")
        if result.get("failed") and not result.get("step"):
            # The module itself failed (bad arguments, missing library): not a gate's verdict.
            raise RotateError(result.get("failure_class") or "bad_input",
                              result.get("msg") or "module %s failed" % ENGINE_MODULE,
                              hint=result.get("hint") or "see the module output with -vvv")
        result["engine"] = "module"
        return result

    @staticmethod
    def failed(result, error, **extra):
        """Mark the task failed with a RotateError's message and class."""
        out = error.as_failure(**extra)
        result.update(out)
        result["failed"] = True
        return result
