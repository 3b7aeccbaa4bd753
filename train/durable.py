"""Files and directories written so that a crash or a full disk never leaves a half-written one
in place: write to a temporary, fsync, rename; fsync the directories that hold the renames."""
from __future__ import annotations

import os
import shutil


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file; the temporary is removed on failure."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_file(tmp)
        raise


def remove_file(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: str) -> None:
    """fsync every file and directory under ``directory`` (data before the rename that publishes it)."""
    for parent, _, files in os.walk(directory, topdown=False):
        for name in files:
            fsync_path(os.path.join(parent, name))
        fsync_path(parent)


def publish(tmp: str, final: str, trash: str) -> None:
    """Rename ``tmp`` to ``final`` (replacing an older ``final``, e.g. a step saved again after a
    rollback, through ``trash``) and make the renames durable."""
    if os.path.exists(final):
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_path(os.path.dirname(final))
    shutil.rmtree(trash, ignore_errors=True)


def tree_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(parent, name)) for parent, _, files in os.walk(directory)
               for name in files)
