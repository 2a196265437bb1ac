# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # Owner, group and backups of the files written by cert_material and
    # trust_bundle (see plugins/module_utils/_files.py).
    DOCUMENTATION = r"""
options:
  owner:
    description:
      - User (name or numeric id) that owns every file written, usually the service user (V(vaultprod), the app user).
      - When not set, a replaced file keeps its owner and a new file belongs to the user running the task.
      - Setting an owner other than yourself needs root (C(become=true)).
    type: str
  group:
    description:
      - Group (name or numeric id) of every file written.
      - When not set, a replaced file keeps its group and a new file gets the group of the user running the task.
    type: str
  backup:
    description:
      - Keep the replaced generation of each file as C(<path>.prev), with its owner and mode (a hard link to the
        old file, made atomically). Only one previous generation is kept.
      - The restore step of the module puts the C(.prev) files back, as one group.
    type: bool
    default: true
notes:
  - Files are written atomically. A temporary file in the same folder is written, flushed to disk, given its owner and
    mode, then renamed over the target; the folder is flushed too. Readers see the old or the new file, never a part.
  - A write that fails (folder missing, disk full, read-only filesystem, permission denied) leaves every target and
    backup as it was and fails with RV(failure_class) (V(missing_file), V(write_failed)) and the path.
"""
