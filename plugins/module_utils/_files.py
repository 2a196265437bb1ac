# -*- coding: utf-8 -*-
# Copyright (c) privsec platform engineering
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic installation of a GROUP of files (key + cert + chain) with backups.

Why a group: a reader (Vault on SIGHUP, nginx on reload, an agent at login)
that sees a new cert next to the old key fails. So every new file is fully
prepared first (temp file in the target folder, written, fsynced, owner and
mode set), and only then are the temp files renamed over the targets, back to
back. The previous generation stays as ``<path>.prev`` (a hard link to the old
inode: same owner, mode and content, created atomically), which
``restore_set`` puts back the same grouped way.

Failures never leave a half-written set: temp files are removed, and if a
rename fails half way the targets already replaced are put back.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import grp
import os
import pwd
import stat
import uuid

from ansible_collections.privsec.vault_rotate.plugins.module_utils._errors import RotateError

BACKUP_SUFFIX = ".prev"
# Failure class for "could not write" (disk full, read-only, permission).
WRITE_FAILED = "write_failed"


# ---------------------------------------------------------------- attributes

def resolve_uid(owner):
    """User name or numeric id -> uid; None stays None (keep / do not chown)."""
    if owner is None or owner == "":
        return None
    if isinstance(owner, int) or str(owner).isdigit():
        return int(owner)
    try:
        return pwd.getpwnam(str(owner)).pw_uid
    except KeyError:
        raise RotateError("bad_input", "unknown user %r on this host" % (owner,),
                          hint="create the user first or pass a numeric uid")


def resolve_gid(group):
    if group is None or group == "":
        return None
    if isinstance(group, int) or str(group).isdigit():
        return int(group)
    try:
        return grp.getgrnam(str(group)).gr_gid
    except KeyError:
        raise RotateError("bad_input", "unknown group %r on this host" % (group,),
                          hint="create the group first or pass a numeric gid")


def parse_mode(mode, default=None):
    """'0600', '600', 0o600, 384 -> 0o600; None -> default."""
    if mode is None or mode == "":
        return default
    if isinstance(mode, int):
        return mode & 0o7777
    text = str(mode).strip()
    if text.startswith("0o"):
        text = text[2:]
    try:
        value = int(text, 8)
    except ValueError:
        raise RotateError("bad_input", "file mode %r is not an octal number" % (mode,),
                          hint="quote it in YAML: mode: '0600'")
    if value > 0o7777:
        raise RotateError("bad_input", "file mode %r is out of range" % (mode,))
    return value


def format_mode(value):
    return "%04o" % value if value is not None else None


def file_state(path):
    """{exists, mode ('0644'), uid, gid, owner, group, size} of a path (no content)."""
    try:
        st = os.stat(path)
    except OSError:
        return {"exists": False}
    return {
        "exists": True,
        "mode": format_mode(stat.S_IMODE(st.st_mode)),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "owner": _user_name(st.st_uid),
        "group": _group_name(st.st_gid),
        "size": st.st_size,
    }


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def read_file(path):
    """Bytes of a file, or None when it does not exist. Other errors are classified."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise _classify(exc, path, "read")


def attributes_differ(path, owner=None, group=None, mode=None):
    """True when the existing file's uid/gid/mode differ from what is wanted (None = any)."""
    state = file_state(path)
    if not state["exists"]:
        return False
    uid, gid, want_mode = resolve_uid(owner), resolve_gid(group), parse_mode(mode)
    return ((uid is not None and uid != state["uid"])
            or (gid is not None and gid != state["gid"])
            or (want_mode is not None and format_mode(want_mode) != state["mode"]))


def ensure_attributes(path, owner=None, group=None, mode=None, check_mode=False):
    """Fix owner/group/mode of an existing file in place; True when something changed."""
    if not attributes_differ(path, owner, group, mode):
        return False
    if check_mode:
        return True
    uid, gid, want_mode = resolve_uid(owner), resolve_gid(group), parse_mode(mode)
    try:
        os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        if want_mode is not None:
            os.chmod(path, want_mode)
    except OSError as exc:
        raise _classify(exc, path, "set owner/mode of")
    return True


# ---------------------------------------------------------------- errors

def _classify(exc, path, action):
    folder = os.path.dirname(os.path.abspath(path))
    code = getattr(exc, "errno", None)
    details = {"path": path, "errno": code, "error": str(exc)}
    if code == errno.ENOENT:
        return RotateError("missing_file", "cannot %s %s: %s does not exist" % (action, path, folder),
                           hint="create the folder (owner and mode of the service) before the rotation",
                           details=details)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return RotateError(WRITE_FAILED, "cannot %s %s: no space left on the filesystem of %s" % (
            action, path, folder), hint="free space (df -h %s) or raise the quota; nothing was replaced" % folder,
            details=details)
    if code == errno.EROFS:
        return RotateError(WRITE_FAILED, "cannot %s %s: the filesystem of %s is read-only" % (action, path, folder),
                           hint="remount it read-write or move the files to a writable folder", details=details)
    if code in (errno.EACCES, errno.EPERM):
        return RotateError(WRITE_FAILED, "cannot %s %s: permission denied" % (action, path),
                           hint="the task must run as root or the owner (become: true) and %s must be "
                                "writable; setting another owner needs root" % folder, details=details)
    return RotateError(WRITE_FAILED, "cannot %s %s: %s" % (action, path, exc), details=details)


def _check_folder(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise RotateError("missing_file", "folder %s of %s does not exist" % (folder, path),
                          hint="create the folder (owner and mode of the service) before the rotation",
                          details={"path": path})
    return folder


# ---------------------------------------------------------------- low level

def _write_all(fd, data):
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _temp_name(folder, path, tag="tmp"):
    return os.path.join(folder, ".%s.%s.%s" % (os.path.basename(path), uuid.uuid4().hex[:12], tag))


def _unlink_quiet(path):
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace(src, dst):
    os.replace(src, dst)
    # rename() between two links of the same inode is a no-op that keeps src.
    if os.path.lexists(src):
        _unlink_quiet(src)


def _link_or_copy(src, folder, tag):
    """A new name in ``folder`` for the inode of ``src`` (hard link), or a faithful copy."""
    name = _temp_name(folder, src, tag)
    try:
        os.link(src, name)
        return name
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP):
            raise
    st = os.stat(src)
    with open(src, "rb") as fh:
        data = fh.read()
    _write_new(name, data, st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
    return name


def _write_new(name, data, uid, gid, mode):
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # Owner and mode before the content: a key never sits readable by others.
        if uid is not None or gid is not None:
            os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode)
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- group install

def _normalize(files):
    entries = []
    seen = set()
    for item in files:
        path, content, owner, group, mode = tuple(item) + (None,) * (5 - len(item))
        path = os.path.abspath(path)
        if path in seen:
            raise RotateError("bad_input", "%s appears twice in one install set" % path)
        seen.add(path)
        if isinstance(content, str):
            content = content.encode("utf-8")
        entries.append({"path": path, "content": content, "uid": resolve_uid(owner),
                        "gid": resolve_gid(group), "mode": parse_mode(mode)})
    return entries


def install_set(files, backup=True):
    """Write a group of files atomically, as close together in time as possible.

    files: iterable of (path, content, owner, group, mode); owner/group names
    or ids (None keeps the current file's, or the process's for a new file);
    mode int or octal string (None keeps the current file's, 0600 for a new
    file). With ``backup`` the replaced generation stays as ``<path>.prev``.
    Returns the list of backup paths written.
    """
    entries = _normalize(files)
    for entry in entries:
        entry["folder"] = _check_folder(entry["path"])
        state = file_state(entry["path"])
        entry["existed"] = state["exists"]
        if entry["mode"] is None:
            entry["mode"] = int(state["mode"], 8) if state["exists"] else 0o600
        if state["exists"]:
            if entry["uid"] is None:
                entry["uid"] = state["uid"]
            if entry["gid"] is None:
                entry["gid"] = state["gid"]
        entry["tmp"] = entry["old"] = None

    # 1. Prepare everything; any failure here leaves the targets untouched.
    try:
        for entry in entries:
            entry["tmp"] = _temp_name(entry["folder"], entry["path"])
            _write_new(entry["tmp"], entry["content"], entry["uid"], entry["gid"], entry["mode"])
            if entry["existed"]:
                entry["old"] = _link_or_copy(entry["path"], entry["folder"], "old")
    except (OSError, RotateError) as exc:
        for entry in entries:
            _unlink_quiet(entry["tmp"])
            _unlink_quiet(entry["old"])
        if isinstance(exc, RotateError):
            raise
        raise _classify(exc, entry["path"], "write")

    # 2. Commit: renames back to back; on failure put back what was replaced.
    done = []
    try:
        for entry in entries:
            _replace(entry["tmp"], entry["path"])
            entry["tmp"] = None
            done.append(entry)
    except OSError as exc:
        for entry in reversed(done):
            try:
                if entry["old"]:
                    _replace(entry["old"], entry["path"])
                    entry["old"] = None
                else:
                    os.unlink(entry["path"])
            except OSError:
                pass
        for entry in entries:
            _unlink_quiet(entry["tmp"])
            _unlink_quiet(entry["old"])
        raise _classify(exc, entry["path"], "replace")

    # 3. Keep the previous generation (or drop it), then make it durable.
    backups = []
    for entry in entries:
        if entry["old"] is None:
            continue
        if backup:
            target = entry["path"] + BACKUP_SUFFIX
            try:
                _replace(entry["old"], target)
                backups.append(target)
            except OSError:
                _unlink_quiet(entry["old"])
        else:
            _unlink_quiet(entry["old"])
    for folder in sorted(set(entry["folder"] for entry in entries)):
        _fsync_dir(folder)
    return backups


def backup_path(path):
    return path + BACKUP_SUFFIX


def restorable(paths):
    """(with_backup, without_backup): which paths have a ``.prev`` to put back."""
    have, missing = [], []
    for path in paths:
        (have if os.path.exists(backup_path(path)) else missing).append(path)
    return have, missing


def _same_file(a, b):
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if (sa.st_size, stat.S_IMODE(sa.st_mode), sa.st_uid, sa.st_gid) != \
            (sb.st_size, stat.S_IMODE(sb.st_mode), sb.st_uid, sb.st_gid):
        return False
    return read_file(a) == read_file(b)


def restore_set(paths, check_mode=False):
    """Put every ``<path>.prev`` back over ``<path>``, grouped like install_set.

    The ``.prev`` files stay in place (restore is idempotent). Paths without a
    backup are left alone. Returns the paths that were (or, in check mode,
    would be) replaced.
    """
    todo = []
    for path in [os.path.abspath(p) for p in paths]:
        prev = backup_path(path)
        if not os.path.exists(prev) or _same_file(prev, path):
            continue
        todo.append({"path": path, "prev": prev, "folder": _check_folder(path), "tmp": None})
    if check_mode or not todo:
        return [entry["path"] for entry in todo]
    try:
        for entry in todo:
            entry["tmp"] = _link_or_copy(entry["prev"], entry["folder"], "restore")
    except OSError as exc:
        for entry in todo:
            _unlink_quiet(entry["tmp"])
        raise _classify(exc, entry["path"], "restore")
    try:
        for entry in todo:
            _replace(entry["tmp"], entry["path"])
            entry["tmp"] = None
    except OSError as exc:
        for entry in todo:
            _unlink_quiet(entry["tmp"])
        raise _classify(exc, entry["path"], "restore")
    for folder in sorted(set(entry["folder"] for entry in todo)):
        _fsync_dir(folder)
    return [entry["path"] for entry in todo]


def remove(path, check_mode=False):
    """Delete a file if present; True when it was there."""
    if not os.path.lexists(path):
        return False
    if not check_mode:
        try:
            os.unlink(path)
        except OSError as exc:
            raise _classify(exc, path, "remove")
    return True
