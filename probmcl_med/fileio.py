"""Atomic file output: nothing half-written, ever, and never a file deleted that probmcl-med did not write.

Every file the package writes (configs, checkpoints, CSVs, reports) goes to a temporary name in the target folder
and is renamed into place, so a crash or a full disk leaves either the old file or the new one, never a torn one.

Output folders (``evaluate --report``, ``predict --out``, ``explain --out``) are built under a temporary name by
:func:`atomic_directory` and hold a manifest (the folder's marker file: JSON listing every file and folder the
command wrote). The next write to the same path replaces the folder whole when it holds nothing but what its
manifest lists; a folder holding anything else (a user's notes, a subfolder) is refused unless the command was given
``--overwrite``, and then only the command's own files are replaced, each atomically, and everything else is kept.

Temporaries (``.NAME.XXXXXXXX.tmp`` files and folders, ``.NAME.XXXXXXXX.old`` while a folder is swapped) are held
under an ``flock`` while their writer lives; the kernel drops it when the writer dies, ``kill -9`` included. The next
write to ``NAME`` removes those whose lock it can take (:func:`clean_stale_temporaries`) and restores an earlier
output folder that a killed swap left under its ``.old`` name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from probmcl_med.errors import DataError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock, so no temporary is ever judged stale
    fcntl = None  # type: ignore[assignment]

PARTIAL = ".probmcl-med-partial"
"""The file inside an output folder that is still being built (identifies it as ours if its writer is killed)."""

OVERWRITE_HELP = "Write among files probmcl-med did not write: replace only its own, keep the rest."
"""``--overwrite``'s help (three lines at most at 80 columns). Without it, an output folder holding other files, or an
output file that is not an earlier output, is refused; with it, only the command's own files are replaced (each
atomically) and every other file is kept."""
"""The help text of every command's ``--overwrite``."""


# --------------------------------------------------------------------------------------------------------------- Files


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary binary file beside ``path``, fsync it, then rename it to ``path``.

    The temporary file is locked while it is written; stale ones of ``path`` (their writer killed) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise_naming(exc, path, path.parent / f".{path.name}.tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            _lock(handle.fileno())
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)  # while still locked: a cleaner never takes a temporary between write and rename
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


def _lock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting; False when another process holds it."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


# --------------------------------------------------------------------------------------------------- Stale temporaries


def temporary_pattern(name: str) -> re.Pattern[str]:
    """The names :mod:`tempfile` gives this module's temporaries of ``name``: ``.NAME.`` + 8 characters + ``.tmp`` or
    ``.old``."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.(tmp|old)")


def clean_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` that a killed writer left beside it; returns what was removed or restored.

    A temporary is removed only when (1) its name is one this module makes for ``path`` (:func:`temporary_pattern`),
    (2) no live process holds its lock (taking the lock proves it), and (3) it is ours by content: a file, or a folder
    that is empty, holds :data:`PARTIAL`, or holds a manifest listing everything in it. A ``.old`` folder (an earlier
    output, moved aside while a swap ran) whose ``path`` is missing is renamed back to ``path`` instead.
    """
    path = Path(path)
    if fcntl is None or not path.parent.is_dir():
        return []
    pattern = temporary_pattern(path.name)
    done: list[Path] = []
    try:
        entries = [e for e in os.scandir(path.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return []
    for entry in entries:
        candidate = Path(entry.path)
        try:
            if entry.is_symlink():
                continue
            fd = os.open(candidate, os.O_RDONLY | (os.O_DIRECTORY if entry.is_dir() else 0))
        except OSError:
            continue
        try:
            if not _lock(fd):
                continue  # a live writer
            if entry.is_file():
                candidate.unlink()
            elif _restorable(candidate, path):
                os.replace(candidate, path)
            elif _ours_by_content(candidate):
                remove_tree(candidate)
            else:
                continue
            done.append(candidate)
        except OSError:
            continue
        finally:
            os.close(fd)
    return done


def remove_tree(folder: Path) -> None:
    """Remove a temporary folder of ours so that, killed at any moment, what is left still reads as ours to
    :func:`clean_stale_temporaries`: :data:`PARTIAL` is written first and removed last."""
    with contextlib.suppress(OSError):
        (folder / PARTIAL).touch()
    for child in folder.iterdir() if folder.is_dir() else []:
        if child.name == PARTIAL:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    (folder / PARTIAL).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def _restorable(candidate: Path, path: Path) -> bool:
    return candidate.name.endswith(".old") and not os.path.lexists(path) and _manifest_file(candidate) is not None


def _manifest_file(folder: Path) -> Path | None:
    """The marker file of an output folder: the one top-level file holding a manifest, or None."""
    for child in folder.iterdir():
        ours = child.is_file() and not child.is_symlink() and child.name.startswith(".probmcl-med-")
        if ours and read_manifest(folder, child.name) is not None:
            return child
    return None


def _ours_by_content(folder: Path) -> bool:
    """Empty, still being built (:data:`PARTIAL`), or complete with a manifest that lists all it holds."""
    if not any(folder.iterdir()) or (folder / PARTIAL).is_file():
        return True
    marker = _manifest_file(folder)
    return marker is not None and not foreign_entries(folder, marker.name)


# ------------------------------------------------------------------------------------------------------ Output folders


def read_manifest(folder: Path, marker: str) -> set[str] | None:
    """The entries an output folder's marker lists (files as ``a/b.png``, folders as ``a/``), or None when the
    marker is missing or holds no manifest (an earlier probmcl-med wrote one line of text)."""
    try:
        document = json.loads((folder / marker).read_text(encoding="utf-8"))
        entries = document["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {str(e) for e in entries} if isinstance(entries, list) else None


def folder_entries(folder: Path) -> set[str]:
    """Every file (``a/b.png``) and folder (``a/``) under ``folder``, symbolic links not followed (a link counts as
    a file)."""
    found: set[str] = set()
    for top, dirs, files in os.walk(folder):
        rel = Path(top).relative_to(folder)
        for name in dirs:
            entry = (rel / name).as_posix()
            found.add(entry if os.path.islink(os.path.join(top, name)) else entry + "/")
        found.update((rel / name).as_posix() for name in files)
    return found


def foreign_entries(folder: Path, marker: str) -> list[str]:
    """What ``folder`` holds that its manifest does not list (sorted; inside a foreign folder only the folder)."""
    ours = read_manifest(folder, marker) or set()
    ours.add(marker)
    foreign = sorted(e for e in folder_entries(folder) if e not in ours or _is_link(folder, e))
    return [e for e in foreign if not any(e != f and e.startswith(f) for f in foreign if f.endswith("/"))]


def _is_link(folder: Path, entry: str) -> bool:
    return os.path.islink(folder / entry.rstrip("/"))


def check_replaceable_folder(out_dir: Path, marker: str, what: str, option: str, overwrite: bool = False) -> None:
    """Refuse, before any work, a path :func:`atomic_directory` would refuse at the end.

    Args:
        out_dir: the folder about to be written.
        marker: the manifest's file name in every folder of this kind.
        what: what the folder is, for the message ("report", "output").
        option: the command-line option that named it ("--report", "--out").
        overwrite: the command's ``--overwrite``: a folder holding other files is written into (only the command's
            own files replaced).

    Raises:
        DataError: ``out_dir`` is a file, or (without ``overwrite``) a folder holding files its manifest does not list.
    """
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        raise DataError(f"{what} path {out_dir} is a file; give a folder path for {option}")
    if overwrite or not out_dir.is_dir():
        return
    foreign = foreign_entries(out_dir, marker)
    if not foreign:
        return
    if (out_dir / marker).is_file() and read_manifest(out_dir, marker) is None:
        held = f"an earlier probmcl-med {what} that kept no list of its files"
    else:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        held = f"files probmcl-med did not write there ({shown})"
    raise DataError(
        f"{what} folder {out_dir} holds {held}; pass --overwrite to replace only the {what}'s own files and keep the "
        f"others, or give a new or empty folder for {option}"
    )


@contextlib.contextmanager
def atomic_directory(
    path: str | Path,
    marker: str,
    *,
    overwrite: bool = False,
    what: str = "output",
    option: str = "--out",
    written_by: str = "probmcl-med",
) -> Iterator[Path]:
    """Build an output folder under a temporary name, list it in ``marker``, flush it, then put it at ``path``.

    Yields the temporary folder to write into. Afterwards ``path`` is: created by a rename (it did not exist or was
    empty); replaced whole by two renames (it held nothing but the files its manifest lists); or, with
    ``overwrite``, updated file by file (it held other files: those are kept, the files of the earlier manifest not
    written again are removed, each new file is renamed into place, and the manifest, a superset of what is there
    at every moment, is rewritten last). On error the temporary folder is removed and ``path`` is left as it was.

    Args:
        path: the output folder.
        marker: the manifest's file name (``.probmcl-med-report``, ``.probmcl-med-output``).
        overwrite, what, option: see :func:`check_replaceable_folder`.
        written_by: the writer, recorded in the manifest.

    Raises:
        DataError: see :func:`check_replaceable_folder` (checked again here: the folder may have changed meanwhile).
    """
    path = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)  # write where a link leads
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    check_replaceable_folder(path, marker, what, option, overwrite)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise_naming(exc, path, path.parent / f".{path.name}.tmp")
    fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _lock(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; an output folder should be as readable as any other
        (tmp / PARTIAL).touch()
        try:
            yield tmp
            (tmp / PARTIAL).unlink()
            entries = folder_entries(tmp) | {marker}
            document = {"written_by": written_by, "entries": sorted(entries)}
            (tmp / marker).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
            fsync_tree(tmp)
            _install(tmp, path, marker, overwrite, what, option)
        except BaseException as exc:
            remove_tree(tmp)
            raise_naming(exc, path, tmp)
    finally:
        os.close(fd)


def _install(tmp: Path, path: Path, marker: str, overwrite: bool, what: str, option: str) -> None:
    """Put the complete folder ``tmp`` at ``path`` (see :func:`atomic_directory`)."""
    if not os.path.lexists(path) or (path.is_dir() and not any(path.iterdir())):
        os.replace(tmp, path)
        return
    check_replaceable_folder(path, marker, what, option, overwrite)
    if not foreign_entries(path, marker):
        _swap(tmp, path)
    else:
        _merge(tmp, path, marker)


def _swap(tmp: Path, path: Path) -> None:
    """Replace the folder ``path`` (only our files) by ``tmp``: ``path`` -> ``.NAME.X.old`` (locked), ``tmp`` ->
    ``path``, then the old one removed. A kill between the renames leaves ``.old`` for the next run to restore."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _lock(fd)
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)  # put the previous folder back
            raise
        remove_tree(old)
    finally:
        os.close(fd)


def _merge(tmp: Path, path: Path, marker: str) -> None:
    """Move ``tmp``'s files into ``path`` one by one, keeping every entry of ``path`` its manifest does not list."""
    old = read_manifest(path, marker) or set()
    new = read_manifest(tmp, marker) or set()
    new_files = sorted(e for e in new if not e.endswith("/") and e != marker)
    for entry in new_files:  # refuse before moving anything: a user's folder, file or link in the way
        for part in [*reversed(Path(entry).parents[:-1]), Path(entry)]:
            target = path / part
            clash = target.is_dir() if part == Path(entry) else os.path.lexists(target) and not target.is_dir()
            if target.is_symlink() or clash:
                raise DataError(
                    f"{path / part}: in the way of the output {entry} and not written by probmcl-med; move it, or "
                    "give another folder"
                )
    atomic_write_text(path / marker, json.dumps({"entries": sorted(old | new)}, indent=1) + "\n")
    for entry in new_files:
        (path / entry).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / entry, path / entry)
    for entry in sorted(old - new, reverse=True):  # files first, then (deepest first) the folders they leave empty
        target = path / entry.rstrip("/")
        with contextlib.suppress(OSError):
            if entry.endswith("/"):
                target.rmdir()  # only when empty: a folder holding a user's file stays
            elif target.is_file() and not target.is_symlink():
                target.unlink()
    os.replace(tmp / marker, path / marker)
    remove_tree(tmp)


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to the disk (a full disk often shows only here, with delayed allocation)."""
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        with file.open("rb") as handle:
            try:
                os.fsync(handle.fileno())
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(file)) from exc


# ------------------------------------------------------------------------------------------------------------- Reading


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
