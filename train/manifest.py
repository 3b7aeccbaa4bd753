"""A checkpoint's manifest: every file it holds with its size and sha256, written last before the
rename that publishes the checkpoint. A checkpoint whose files match their manifest is complete
and undamaged; one that does not is skipped (``resume=auto``) or refused (``resume=<path>``)
with the file named.

Files added to a checkpoint after it was published (``export/``, DeepSpeed's universal
conversion under ``ds/``) are not in its manifest and not checked by it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

MANIFEST = "manifest.json"
FORMAT = "recurlm-checkpoint-manifest"


def file_sha256(path: str, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: str) -> list[str]:
    """Paths of every file under ``directory``, relative to it, in a stable order."""
    found = []
    for parent, dirs, files in os.walk(directory):
        dirs.sort()
        found += [os.path.relpath(os.path.join(parent, name), directory) for name in sorted(files)]
    return [f for f in found if f != MANIFEST]


def write_manifest(directory: str) -> None:
    """Hash every file under ``directory`` and write ``manifest.json`` (fsynced)."""
    files = {rel: {"size": os.path.getsize(os.path.join(directory, rel)),
                   "sha256": file_sha256(os.path.join(directory, rel))} for rel in _files(directory)}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump({"format": FORMAT, "files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def manifest_problem(directory: str, checksums: bool = True) -> Optional[str]:
    """None if every file the manifest lists is present with its size (and, with ``checksums``,
    its sha256); else what is wrong, naming the file."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.isfile(path):
        return f"{path} is missing (an interrupted save, or a checkpoint of an older recurlm)"
    try:
        with open(path) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} is unreadable ({err})"
    for rel, expected in files.items():
        file = os.path.join(directory, rel)
        if not os.path.isfile(file):
            return f"{file} is missing"
        size = os.path.getsize(file)
        if size != expected["size"]:
            return f"{file} has {size} bytes, its manifest says {expected['size']} (truncated or overwritten)"
    if checksums:
        for rel, expected in files.items():
            if file_sha256(os.path.join(directory, rel)) != expected["sha256"]:
                return f"{os.path.join(directory, rel)} does not match its sha256 in the manifest (damaged)"
    return None
