# -*- coding: utf-8 -*-
# Copyright: privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters over the results of a rotation run: the plan table, the JSON and
Markdown reports, the environment interlock, time conversions. The code lives
in plugins/plugin_utils/_report.py, shared with the action plugins that write
the report themselves."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.privsec.vault_rotate.plugins.plugin_utils._report import (
    env_interlock,
    failure,
    plan_rows,
    plan_table,
    report_build,
    report_markdown,
    to_epoch,
    to_iso8601,
)


class FilterModule(object):
    def filters(self):
        return {
            "env_interlock": env_interlock,
            "failure": failure,
            "to_epoch": to_epoch,
            "to_iso8601": to_iso8601,
            "plan_rows": plan_rows,
            "plan_table": plan_table,
            "report_build": report_build,
            "report_markdown": report_markdown,
        }
