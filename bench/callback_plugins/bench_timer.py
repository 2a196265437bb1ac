# Aggregate callback for `make bench`: per-task and per-play wall time, task
# counts, where the collection's code was loaded from, the readiness times
# modules report, and the CPU of ansible-playbook and its workers, written as
# JSON to $BENCH_TIMER_OUT (nothing printed).
# Controller only. bench.py enables this one file for the baseline and the
# current tree alike, so both are measured by the same instrument.
from __future__ import annotations

import json
import os
import resource
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_timer
type: aggregate
short_description: task and play timings as JSON for make bench
description:
  - Writes per-task and per-play wall time (seconds since the callback's t0_epoch), task counts, the files the
    collection's tasks and plugins were loaded from, every C(ready_at) a task result reports, and the CPU of
    ansible-playbook and of its workers (getrusage), to $BENCH_TIMER_OUT.
requirements: [enabled in callbacks_enabled]
"""

COLLECTION = "privsec.vault_rotate"
READY_KEY = "ready_at"


def _cpu(who):
    ru = resource.getrusage(who)
    return round(ru.ru_utime + ru.ru_stime, 3)


def _find_ready_at(value, depth=0):
    """Every numeric `ready_at` (epoch seconds) in a result, its loop items and nested dicts (3 levels)."""
    found = []
    if depth > 3:
        return found
    if isinstance(value, dict):
        for key, item in value.items():
            if key == READY_KEY and isinstance(item, (int, float)) and not isinstance(item, bool):
                found.append(float(item))
            elif isinstance(item, (dict, list)):
                found.extend(_find_ready_at(item, depth + 1))
    elif isinstance(value, list):
        for item in value:
            found.extend(_find_ready_at(item, depth + 1))
    return found


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.t0 = time.time()
        self.plays = []
        self.tasks = []
        self._task = None
        self._play = None
        self.results = {"ok": 0, "changed": 0, "skipped": 0, "failed": 0}
        self.vault_requests = {}  # module -> {"results": n, "requests": sum of vault_requests}
        self.ready_at = []  # [{"play", "task", "action", "ready_at"}]
        # Where the code ran from: the collection package, every task file, the
        # collection's plugins the tasks name. bench.py checks they all lie in
        # the tree (baseline worktree or current checkout) the run was meant for.
        self.loaded = {"collection": None, "task_files": set(), "plugins": {}}

    def _now(self):
        return time.time() - self.t0

    def _close_task(self):
        if self._task:
            self._task["end"] = self._now()
            self._task["dur"] = round(self._task["end"] - self._task["start"], 4)
            self.tasks.append(self._task)
            self._task = None

    def _close_play(self):
        self._close_task()
        if self._play:
            self._play["end"] = self._now()
            self._play["dur"] = round(self._play["end"] - self._play["start"], 3)
            self.plays.append(self._play)
            self._play = None

    def _note_collection(self):
        if self.loaded["collection"] is not None:
            return
        try:
            from importlib import import_module
            pkg = import_module("ansible_collections." + COLLECTION)
            self.loaded["collection"] = os.path.dirname(pkg.__file__) if getattr(pkg, "__file__", None) \
                else list(pkg.__path__)[0]
        except Exception as exc:  # recorded, never fatal: bench.py reports it as unverified
            self.loaded["collection"] = "unresolved: %s" % exc

    def _note_plugin(self, action):
        if not action.startswith(COLLECTION + ".") or action in self.loaded["plugins"]:
            return
        from ansible.plugins.loader import action_loader, module_loader
        paths = {}
        for kind, loader in (("module", module_loader), ("action", action_loader)):
            try:
                ctx = loader.find_plugin_with_context(action)
                if ctx.resolved and ctx.plugin_resolved_path:
                    paths[kind] = ctx.plugin_resolved_path
            except Exception:  # an unresolvable name fails the task itself; nothing to record here
                pass
        self.loaded["plugins"][action] = paths

    def v2_playbook_on_play_start(self, play):
        self._close_play()
        self._note_collection()
        self._play = {"name": play.get_name(), "start": self._now(), "tasks": 0}

    def _start(self, task):
        self._close_task()
        self._task = {"name": task.get_name(), "action": task.action,
                      "play": self._play["name"] if self._play else "",
                      "start": self._now(), "hosts": 0}
        if self._play:
            self._play["tasks"] += 1
        src = task.get_path() or ""
        if src:
            self.loaded["task_files"].add(src.rsplit(":", 1)[0])
        if isinstance(task.action, str):
            self._note_plugin(task.action)

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start(task)

    def v2_playbook_on_handler_task_start(self, task):
        self._start(task)

    def _res(self, kind, result):
        if self._task is not None:
            self._task["hosts"] += 1
            self._task.setdefault(kind, 0)
            self._task[kind] += 1
        self.results[kind] = self.results.get(kind, 0) + 1
        if kind == "skipped":
            return
        reqs = result._result.get("vault_requests")
        if isinstance(reqs, int) and self._task is not None:
            acc = self.vault_requests.setdefault(self._task["action"], {"results": 0, "requests": 0})
            acc["results"] += 1
            acc["requests"] += reqs
            self._task["vault_requests"] = self._task.get("vault_requests", 0) + reqs
        for ready in _find_ready_at(result._result):
            self.ready_at.append({"play": self._play["name"] if self._play else "",
                                  "task": self._task["name"] if self._task else "",
                                  "action": self._task["action"] if self._task else "",
                                  "ready_at": ready, "reported": self._now()})

    def v2_runner_on_ok(self, result):
        self._res("changed" if result._result.get("changed") else "ok", result)

    def v2_runner_on_skipped(self, result):
        self._res("skipped", result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._res("failed", result)

    def v2_runner_item_on_ok(self, result):
        pass

    def v2_playbook_on_stats(self, stats):
        self._close_play()
        out = os.environ.get("BENCH_TIMER_OUT")
        if not out:
            return
        executed = [t for t in self.tasks if t["hosts"] - t.get("skipped", 0) > 0]
        data = {
            "t0_epoch": self.t0,
            "wall_s": round(self._now(), 3),
            "vault_requests": self.vault_requests,
            "tasks_started": len(self.tasks),
            "tasks_executed": len(executed),
            "host_results": self.results,
            "ready_at": self.ready_at,
            "loaded": dict(self.loaded, task_files=sorted(self.loaded["task_files"])),
            "plays": self.plays,
            "tasks": self.tasks,
            # CPU of ansible-playbook itself (the strategy, the callbacks) and of everything it waited for
            # (its forked workers and the commands they ran): bench.py splits a run's CPU with it.
            "rusage": {"main_cpu_s": _cpu(resource.RUSAGE_SELF), "workers_cpu_s": _cpu(resource.RUSAGE_CHILDREN)},
        }
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
