"""Atomic file writes: a reader never sees a half-written file.

Each helper writes to a temporary file in the destination's folder, flushes and fsyncs it, then
``os.replace``s it over the destination (atomic on POSIX and Windows within one file system).
Parent folders are created. On any error the temporary file is removed and the destination is
left as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import yaml

from dgkd_core.errors import ConfigError, DgkdError

__all__ = ["UnreadableFile", "WriteError", "atomic_write_bytes", "atomic_torch_save",
           "atomic_write_json", "atomic_write_text", "load_tensor_file", "load_yaml_file",
           "load_yaml_text"]


class WriteError(DgkdError, OSError):
    """A file could not be written; the message names it, the cause (e.g. ENOSPC) and that the
    previous file, if any, is unchanged."""

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    try:
        return _replace_with(path, write)
    except WriteError:
        raise
    except OSError as err:
        code = errno.errorcode.get(err.errno, "")
        cause = f"{err.strerror or err} ({code})" if code else str(err)
        raise _write_error(err.errno, f"cannot write {path}: {cause}; the previous file, if "
                           "any, is unchanged") from err


class UnreadableFile(DgkdError, ValueError):
    """A torch file could not be loaded safely; `reason` says why in one line, to follow the
    file's name: "holds more than tensors and plain values: code or objects, which are refused
    unread (...)" (nothing in it ran)
    or "is truncated or corrupt (...)"."""

    def __init__(self, path, reason: str, refused: bool):
        super().__init__(f"{path} {reason}")
        self.path, self.reason, self.refused = str(path), reason, refused


def load_tensor_file(path: str | os.PathLike) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain values only, so a
    crafted pickle cannot run code. Raises UnreadableFile with a one-line reason, never torch's
    many-line refusal (which also suggests loading the file unsafely).

    One class more gets through, for this load only: argparse.Namespace, which RepDistiller's
    `*_last.pth` holds under 'opt'. Unpickling it sets attributes on a plain object and calls
    nothing else, so the file still cannot run code."""
    import argparse

    import torch

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or refused data
        text = str(err)
        if text.startswith("Weights only load failed") and not _is_garbage_opcode(text):
            reason = ("holds more than tensors and plain values: code or objects, which are "
                      f"refused unread ({_refused_what(text)})")
            raise UnreadableFile(path, reason, refused=True) from None
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and "weights_only" not in line]  # never echo an unsafe hint
        detail = f"{type(err).__name__}: {lines[0][:200] if lines else ''}"
        raise UnreadableFile(path, f"is truncated or corrupt ({detail})", refused=False) from None


# Pickle opcodes that import or call something (GLOBAL, REDUCE, INST, OBJ, BUILD, NEWOBJ,
# NEWOBJ_EX, STACK_GLOBAL, EXT1/2/4): a refusal of one of these is a refusal of code or objects;
# a refusal of any other byte means the file is no pickle torch wrote (truncated or corrupt).
_CODE_OPCODES = {ord(c) for c in "cRiob"} | {0x81, 0x92, 0x93, 0x82, 0x83, 0x84}


def _is_garbage_opcode(message: str) -> bool:
    """Whether torch's refusal names an "Unsupported operand" that is not a code opcode."""
    found = re.search(r"Unsupported operand (\d+)", message)
    return found is not None and int(found.group(1)) not in _CODE_OPCODES


def _refused_what(message: str) -> str:
    """What torch's refusal says was in the file (an unsupported global or pickle opcode), without
    its advice, which suggests loading the file unsafely."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            what = line.split("WeightsUnpickler error:", 1)[1].strip()
            what = what or (lines[i + 1] if i + 1 < len(lines) else "")
        elif line.startswith("Trying to load unsupported GLOBAL"):
            what = line.split(" whose module")[0].removeprefix("Trying to load ")
        else:
            continue
        what = what.split(". Please")[0].strip()
        if what and "weights_only" not in what:
            return what[:200]
    return "an object torch's safe loader does not allow"


def _write_error(code: int | None, message: str) -> WriteError:
    error = WriteError(message)  # one argument: str(error) is the message alone
    error.errno = code
    return error


def _replace_with(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    if path.parent.exists() and not path.parent.is_dir():
        raise _write_error(errno.ENOTDIR, f"cannot write {path}: {path.parent} is a file, not "
                           "a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; give the usual umask-based mode
            os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            recorder = _WriteRecorder(f)
            try:
                write(recorder)
            except Exception:
                if recorder.error is not None:  # e.g. ENOSPC, which torch.save hides
                    raise recorder.error from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


class _WriteRecorder:
    """A file object that keeps the first OSError its write raised: torch.save turns a full disk
    into "RuntimeError: unexpected pos ...", naming neither the cause nor the file."""

    def __init__(self, file: IO[bytes]):
        self._file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name):
        return getattr(self._file, name)


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort; not every platform can open a folder)."""
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically; returns the path."""
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str | os.PathLike, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (UTF-8, keys in insertion order, trailing newline) atomically."""
    text = json.dumps(obj, indent=indent) + "\n"
    return atomic_write_text(text, path)


def atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


# A config needs no YAML aliases; a few are harmless, hundreds are how an alias bomb (each alias
# re-using a list of aliases) makes a small file expand to gigabytes. Deep nesting is refused
# before PyYAML's recursive composer runs out of stack.
MAX_YAML_ALIASES = 32
MAX_YAML_DEPTH = 64


def load_yaml_text(text: str, source: str) -> Any:
    """`yaml.safe_load(text)`, refusing more than MAX_YAML_ALIASES aliases or nesting deeper than
    MAX_YAML_DEPTH. Every error is a ConfigError: one line naming `source` (a file, `--set k=v`)."""

    loader = _GuardedLoader(text)
    try:
        return loader.get_single_data()
    except _YamlRefused as err:
        raise ConfigError(f"{source} {err}; write the values out in full") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source} is not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | os.PathLike, what: str = "config") -> Any:
    """The YAML file at `path` through load_yaml_text; ConfigError naming it if unreadable."""

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"cannot read {what} {path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror or err}") from None
    return load_yaml_text(text, f"{what} {path}")


class _YamlRefused(Exception):
    pass


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader counting aliases and nesting as it composes the document."""

    def __init__(self, stream):
        super().__init__(stream)
        self.aliases_seen, self.depth = 0, 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases_seen += 1
            if self.aliases_seen > MAX_YAML_ALIASES:
                raise _YamlRefused(f"uses more than {MAX_YAML_ALIASES} YAML aliases (*name), "
                                   "which can expand without bound")
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise _YamlRefused(f"nests more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1
