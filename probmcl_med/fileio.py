"""Atomic file output: nothing half-written, ever.

Every file the package writes (configs, checkpoints, CSVs, reports) goes to a temporary name in the target folder
and is renamed into place, so a crash or a full disk leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from probmcl_med.errors import DataError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise_naming(exc, path, path.parent / f".{path.name}.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        raise_naming(exc, path, Path(tmp))
    return path


def raise_naming(exc: BaseException, path: Path, tmp: Path) -> None:
    """Re-raise ``exc``; an OSError that names no file, or only the temporary ``tmp`` (or a file inside it), is
    re-raised naming the destination ``path`` instead, so the one-line message names what the user asked for."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = Path(exc.filename) if exc.filename is not None else None
        if name is None or name == tmp or tmp in name.parents or name.name.startswith(f".{path.name}."):
            target = path / name.relative_to(tmp) if name is not None and tmp in name.parents else path
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
    raise exc


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode(encoding))


def check_replaceable_folder(out_dir: Path, marker: str, what: str, option: str) -> None:
    """Refuse to replace anything but an earlier output of ours (it holds ``marker``) or an empty folder.

    Args:
        out_dir: the folder about to be written with :func:`atomic_directory`.
        marker: a file name that every folder of this kind holds.
        what: what the folder is, for the message ("report", "output").
        option: the command-line option that named it ("--report", "--out").

    Raises:
        DataError: ``out_dir`` is a file, or a folder with other files in it.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{what} path {out_dir} is a file; give a folder path for {option}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / marker).is_file():
        raise DataError(
            f"{what} folder {out_dir} already holds files that are not a probmcl-med {what}; give a new or empty "
            f"folder (an earlier {what} there would be replaced)"
        )


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to the disk (a full disk often shows only here, with delayed allocation)."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        with file.open("rb") as handle:
            try:
                os.fsync(handle.fileno())
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(file)) from exc


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Build a folder under a temporary name, flush its files, and move it to ``path`` only when all that succeeds.

    An existing folder at ``path`` is replaced only after the new one is complete; on error the temporary folder is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise_naming(exc, path, path.parent / f".{path.name}.tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a report folder should be as readable as any other
    try:
        yield tmp
        fsync_tree(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_naming(exc, path, tmp)
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)  # put the previous folder back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json(path: str | Path, missing: str, hint: str = "") -> Any:
    """The JSON document in ``path``.

    Raises:
        DataError: ``missing`` (a one-line message) when the file does not exist; ``PATH: not valid JSON (line N:
            why)`` and ``hint`` when it does not parse.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(missing)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg}){hint}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not valid JSON (not UTF-8 text){hint}") from None


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (``metrics.jsonl``), in order; [] when the file does not exist.

    A line that is not a JSON object (torn by a run killed mid-write, or not JSON at all) is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (a model's identity in thresholds.json, a plugin file's in
    run.json)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
