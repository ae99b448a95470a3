"""One view of checkpoint/snapshot storage for every process: a local directory, NFS, s3:// or gs://.

pyarrow's filesystems are what Ray Train itself writes through, so reading with them sees exactly what Ray committed.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import pyarrow.fs as pafs


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Local paths become absolute so a job on another process resolves the same directory."""
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *parts: str) -> str:
    """`base/part/...`, refusing any part that would climb out of `base` or restart from the root: ids reach here."""
    for part in parts:
        if not part or part.startswith("/") or ".." in part.split("/"):
            raise ValueError(f"{part!r} cannot be a path under {base!r}")
    return "/".join([base.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_bytes(uri: str, data: bytes) -> None:
    """Write to a sibling temp name, then move: readers never see half a file (atomic on local and NFS)."""
    fs, path = resolve(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=1, sort_keys=True).encode())


def list_names(uri: str) -> list[str]:
    """The names in a directory, sorted; none if it does not exist (yet)."""
    fs, path = resolve(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(os.path.basename(i.path) for i in infos)


def delete_file(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def delete_dir(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
