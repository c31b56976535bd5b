"""A run directory as one transaction: `stages.json` fingerprints, a staging folder per process,
and the commit that swaps staged artifacts in only when the whole run has been accepted."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path

from sid.artifacts import replace_path, write_json_atomic

# which model a ranking head was trained on: eval refuses a head that belongs to another model
RANKER_BINDING = "trained_for.json"
# held (flock) by the train.py writing the run; the OS drops it when that process ends
LOCK_NAME = ".lock"

# --------------------------------------------------------------------------------------------
# Run directory bookkeeping


def fingerprint(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class RunDir:
    """A run directory, its `stages.json` (stage → fingerprint of the inputs it used) and the
    staging folder where this run writes.

    Stages never write into the run directory itself: they write into `staging`
    (`RUN/.staging-rank<R>/`) and `mark` a pending fingerprint. Only `commit`, called once the
    whole run has been accepted, swaps the staged artifacts in. A run that is refused or
    crashes leaves the run directory exactly as it was; its staging folder is removed (or, after
    a crash, at the next start). Reused artifacts are read from `path`, new ones from `staging`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"run directory {self.path} exists and is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self._stages_file = self.path / "stages.json"
        self.stages: dict[str, str] = {}
        self.pending: dict[str, str] = {}
        if self._stages_file.exists():
            try:
                self.stages = json.loads(self._stages_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{self._stages_file} is corrupt ({err}); delete it to rebuild the run"
                ) from err
            if not isinstance(self.stages, dict):
                raise ValueError(f"{self._stages_file} is not a JSON object; delete it")
        self._lock_file = None
        self._lock()
        self.staging = self.path / f".staging-rank{os.environ.get('RANK', '0')}"
        shutil.rmtree(self.staging, ignore_errors=True)  # left by a crashed run
        self.staging.mkdir()

    def _lock(self) -> None:
        """Refuse a second train.py writing the same run directory.

        The main process takes an exclusive `flock` on `RUN/.lock` for the lifetime of the
        run (other ranks of a multi-process run write only their own staging folder). The lock
        belongs to the process, so a crashed run never leaves a stale lock behind.
        """
        if os.environ.get("RANK", "0") != "0":
            return
        try:
            import fcntl
        except ImportError:  # not POSIX: no advisory locks to take
            return
        handle = open(self.path / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 (held open)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise ValueError(
                f"run directory {self.path} is being written by another train.py ({holder}); "
                "wait for it to finish or pass another --run_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._lock_file = handle

    def close(self) -> None:
        """Release the run directory's lock (idempotent)."""
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor drops the flock
            self._lock_file = None

    def fresh(self, stage: str, key: str, artifact: str) -> bool:
        """True when the committed `artifact` was built by inputs with fingerprint `key`."""
        return self.stages.get(stage) == key and (self.path / artifact).exists()

    def mark(self, stage: str, key: str) -> None:
        """Record that `stage` was rebuilt with `key`; written to stages.json by `commit`."""
        self.pending[stage] = key

    def mark_now(self, stage: str, key: str) -> None:
        """Record bookkeeping that must survive a crash (e.g. which options made checkpoints)."""
        self.stages[stage] = key
        on_disk = {}
        if self._stages_file.exists():
            on_disk = json.loads(self._stages_file.read_text(encoding="utf-8"))
        write_json_atomic(self._stages_file, {**on_disk, stage: key})

    def discard(self) -> None:
        """Drop everything this run staged; the run directory is untouched."""
        shutil.rmtree(self.staging, ignore_errors=True)
        self.pending.clear()

    def commit(self, remove: tuple[str, ...] = ()) -> None:
        """Swap every staged artifact into the run directory and record the new fingerprints.

        Order matters for crash safety: the fingerprints of the stages being replaced are
        dropped from stages.json first, then each artifact is renamed into place (a directory
        is moved aside, then replaced), then the new fingerprints are written. A crash in the
        middle therefore makes the next run rebuild those stages, never reuse a mismatch.
        `remove` names committed artifacts that no longer belong to the run (e.g. a PrefixMem
        of an earlier model trained without one).
        """
        staged = sorted(p.name for p in self.staging.iterdir())
        stale = [name for name in remove if (self.path / name).exists() and name not in staged]
        self.stages = {k: v for k, v in self.stages.items() if k not in self.pending}
        write_json_atomic(self._stages_file, self.stages)
        for name in staged:
            replace_path(self.staging / name, self.path / name)
        for name in stale:
            _remove(self.path / name)
        self.stages.update(self.pending)
        write_json_atomic(self._stages_file, self.stages)
        self.discard()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        shutil.rmtree(old, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
