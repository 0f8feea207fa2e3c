"""The catalog digest of a local file or folder, used by the store and by `push`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def folder_digest(file_hashes: Mapping[str, str]) -> str:
    """The folder digest from `{relative posix path: sha256 of the file}`."""
    digest = hashlib.sha256()
    for relative in sorted(file_hashes):
        digest.update(f"{relative}\t{file_hashes[relative]}\n".encode())
    return digest.hexdigest()


def folder_files(root: Path) -> dict[str, Path]:
    """`{relative posix path: path}` of every regular file under `root`, at any depth."""
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def digest(path: Path) -> str:
    """The catalog digest of a local file or folder (see the package docstring)."""
    if path.is_file():
        return file_sha256(path)
    if path.is_dir():
        return folder_digest({rel: file_sha256(p) for rel, p in folder_files(path).items()})
    raise FileNotFoundError(f"no file or folder at {path}")
