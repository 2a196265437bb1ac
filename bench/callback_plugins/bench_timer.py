# Aggregate callback for `make bench`: per-task and per-play wall time, task
# counts, written as JSON to $BENCH_TIMER_OUT (nothing printed). Controller only.
from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: bench_timer
type: aggregate
short_description: task and play timings as JSON for make bench
description: Writes per-task and per-play wall time and counts to $BENCH_TIMER_OUT.
requirements: [enabled in callbacks_enabled]
"""


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

    def _close_task(self):
        if self._task:
            self._task["end"] = time.time() - self.t0
            self._task["dur"] = round(self._task["end"] - self._task["start"], 4)
            self.tasks.append(self._task)
            self._task = None

    def _close_play(self):
        self._close_task()
        if self._play:
            self._play["end"] = time.time() - self.t0
            self._play["dur"] = round(self._play["end"] - self._play["start"], 3)
            self.plays.append(self._play)
            self._play = None

    def v2_playbook_on_play_start(self, play):
        self._close_play()
        self._play = {"name": play.get_name(), "start": time.time() - self.t0, "tasks": 0}

    def _start(self, task):
        self._close_task()
        self._task = {"name": task.get_name(), "action": task.action,
                      "play": self._play["name"] if self._play else "",
                      "start": time.time() - self.t0, "hosts": 0}
        if self._play:
            self._play["tasks"] += 1

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
        reqs = result._result.get("vault_requests") if kind != "skipped" else None
        if isinstance(reqs, int) and self._task is not None:
            acc = self.vault_requests.setdefault(self._task["action"], {"results": 0, "requests": 0})
            acc["results"] += 1
            acc["requests"] += reqs
            self._task["vault_requests"] = self._task.get("vault_requests", 0) + reqs

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
            "wall_s": round(time.time() - self.t0, 3),
            "vault_requests": self.vault_requests,
            "tasks_started": len(self.tasks),
            "tasks_executed": len(executed),
            "host_results": self.results,
            "plays": self.plays,
            "tasks": self.tasks,
        }
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
