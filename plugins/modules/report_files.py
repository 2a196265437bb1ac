#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: report_files
short_description: Write several text files into one folder in one task (the folder created if missing)
description:
  - Writes every file of O(files) into the folder O(path), creating the folder (and its parents) first when it is
    missing, in one module call. The report role writes C(<env>-<timestamp>.json/.md) and C(latest.json/.md) with it.
  - Each file is replaced atomically (temporary file in the same folder, flushed, renamed) and only when its content
    or mode differs, so a second identical task reports C(changed=false).
  - The folder gets O(folder_mode), also when it exists already.
version_added: 1.0.0
author:
  - privsec platform engineering (@privsec)
extends_documentation_fragment:
  - privsec.vault_rotate.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
options:
  path:
    description:
      - The folder, on the host running the task.
    type: path
    required: true
  files:
    description:
      - File name (no folder part) -> text content (written as UTF-8, as given).
    type: dict
    required: true
  mode:
    description:
      - Mode of every file written.
    type: str
    default: '0640'
  folder_mode:
    description:
      - Mode of the folder.
    type: str
    default: '0750'
notes:
  - A write that fails (disk full, read-only filesystem, permission denied) fails with RV(failure_class)
    V(write_failed) and the path; files already written stay (each file is whole, old or new).
"""

EXAMPLES = r"""
- name: Write the report and its latest copy
  privsec.vault_rotate.report_files:
    path: /var/lib/vault_rotate/reports
    files:
      prod-20261125T175000Z.json: "{{ report | to_nice_json }}\n"
      latest.json: "{{ report | to_nice_json }}\n"
  delegate_to: localhost
"""

RETURN = r"""
files:
  description: Every file of the task, with its folder.
  returned: success
  type: list
  elements: str
written:
  description: The files that were (or, in check mode, would be) written because their content or mode differed.
  returned: success
  type: list
  elements: str
failure_class:
  description: On failure, the class of the error (V(write_failed), V(bad_input)).
  returned: failure
  type: str
"""

import os
import stat

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.privsec.vault_rotate.plugins.module_utils import _files
from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError


def ensure_folder(path, mode, check_mode):
    """Create the folder (and parents) if missing, give it ``mode``; True when something changed."""
    if os.path.isdir(path):
        if stat.S_IMODE(os.stat(path).st_mode) == mode:
            return False
        if not check_mode:
            try:
                os.chmod(path, mode)
            except OSError as exc:
                raise RotateError("write_failed", "cannot set the mode of %s: %s" % (path, exc), details={"path": path})
        return True
    if os.path.lexists(path):
        raise RotateError("bad_input", "%s exists and is not a folder" % path, details={"path": path})
    if not check_mode:
        try:
            os.makedirs(path, mode)
            os.chmod(path, mode)  # makedirs applies the umask
        except OSError as exc:
            raise RotateError("write_failed", "cannot create the folder %s: %s" % (path, exc), details={"path": path})
    return True


def run(module):
    p = module.params
    folder = p["path"]
    mode = _files.parse_mode(p["mode"])
    folder_mode = _files.parse_mode(p["folder_mode"])
    wanted = []
    for name, content in sorted(p["files"].items()):
        if not name or os.path.basename(name) != name or name in (".", ".."):
            raise RotateError("bad_input", "file name %r must be a plain name without a folder" % name)
        data = ("" if content is None else str(content)).encode("utf-8")
        wanted.append((os.path.join(folder, name), data))
    changed = ensure_folder(folder, folder_mode, module.check_mode)
    written = []
    for path, data in wanted:
        current = _files.read_file(path) if os.path.isfile(path) else None
        if current == data and stat.S_IMODE(os.stat(path).st_mode) == mode:
            continue
        written.append(path)
    if written and not module.check_mode:
        _files.install_set([(path, data, None, None, mode) for path, data in wanted if path in written], backup=False)
    return dict(changed=changed or bool(written), path=folder, files=[w[0] for w in wanted], written=written)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            files=dict(type="dict", required=True),
            mode=dict(type="str", default="0640"),
            folder_mode=dict(type="str", default="0750"),
        ),
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except RotateError as err:
        output = err.as_failure()
        output.setdefault("path", module.params["path"])
        module.fail_json(**output)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
