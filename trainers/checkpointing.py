"""Atomic checkpoints: keep the last K, resume from the latest good one.

What a checkpoint holds is written by a store: ``AccelerateState`` (``Accelerator.save_state``) or, under
``--fsdp``, ``trainers.sharded_checkpoint.ShardedState`` (torch.distributed.checkpoint, a file per process).
Either way a checkpoint is written into ``checkpoints/.tmp-step_N/``, gets a manifest of its files, their
sizes and the store's format, and only then is renamed to ``checkpoints/step_N/`` (a rename is atomic): a
run killed mid-save leaves a temporary folder that is never taken for a checkpoint. On resume a checkpoint
whose files do not match its manifest, or that fails to load, is skipped with a warning in favour of the
previous one.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

from spam_opt import run_files as rf

logger = logging.getLogger(__name__)

MANIFEST = "checkpoint.json"
_NAME = re.compile(r"step_(\d+)")


class TrainState:
    """The loop's own position, saved with every checkpoint (``register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.step = 0  # optimizer steps done; the data position is a function of it

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])


class CheckpointStore(Protocol):
    """Writes and reads the training state in a checkpoint folder; every process calls both."""

    format: str  # recorded in the manifest: a checkpoint loads only with a store of its format

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...


class AccelerateState:
    """``Accelerator.save_state``/``load_state``: model, optimizer, registered objects, each process's RNG."""

    format = "accelerate"

    def __init__(self, accelerator: Any) -> None:
        self.accelerator = accelerator

    def save(self, folder: Path) -> None:
        self.accelerator.save_state(str(folder))

    def load(self, folder: Path) -> None:
        self.accelerator.load_state(str(folder))


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, newest first (temporary folders of unfinished saves excluded)."""
    root = run_dir / rf.CHECKPOINTS
    found = [p for p in root.iterdir() if _NAME.fullmatch(p.name)] if root.is_dir() else []
    return sorted(found, key=lambda p: int(_NAME.fullmatch(p.name).group(1)), reverse=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


class DiskFullError(OSError):
    """The disk filled up while a checkpoint was written; the previous checkpoints are intact."""


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` is, or wraps (DCP gathers each rank's failure), a "no space left on device"."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    failures = getattr(err, "failures", None)  # torch.distributed.checkpoint's CheckpointException
    if isinstance(failures, dict):
        return any(_disk_full(exc) for exc, _ in failures.values())
    return any(_disk_full(e) for e in (err.__cause__, err.__context__) if e is not None and e is not err)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def save_checkpoint(accelerator: Any, store: CheckpointStore, run_dir: Path, step: int, keep: int) -> Path:
    """Save the full training state as ``checkpoints/step_{step}`` atomically; delete all but ``keep``.

    A full disk raises ``DiskFullError`` naming the folder and the space needed, after removing the partial
    save: the checkpoints already there are untouched.
    """
    root = run_dir / rf.CHECKPOINTS
    tmp, final = root / f".tmp-step_{step}", root / f"step_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        store.save(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _fsync_tree(tmp)
            files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
            manifest = {"step": step, "format": store.format, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    except BaseException as err:
        if not _disk_full(err):
            raise
        written = _folder_bytes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        previous = checkpoints(run_dir)
        # A checkpoint's size hardly changes from one step to the next: the last one says what is needed.
        needed = f"about {_folder_bytes(previous[0])} bytes (the size of {previous[0].name})" if previous \
            else f"more than the {written} bytes written before the disk filled up"
        free = shutil.disk_usage(root).free if root.is_dir() else 0
        raise DiskFullError(errno.ENOSPC, f"no space left on the device of {root} while saving step {step}: "
                            f"a checkpoint needs {needed}, {free} bytes are free; free space there or "
                            "choose another --output-dir, then --resume auto (the earlier checkpoints are "
                            "intact)") from err
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(run_dir)[keep:] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def verify(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` is unusable, or None when its files match its manifest."""
    try:
        manifest = json.loads((checkpoint / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    for name, size in manifest["files"].items():
        path = checkpoint / name
        if not path.is_file() or path.stat().st_size != size:
            return f"{name} is missing or truncated"
    return None


def checkpoint_format(checkpoint: Path) -> str:
    """The format its manifest records ("accelerate" for manifests older than the field)."""
    return json.loads((checkpoint / MANIFEST).read_text()).get("format", AccelerateState.format)


def resume_from(store: CheckpointStore, run_dir: Path, resume: str) -> Path | None:
    """Load the checkpoint ``resume`` asks for; returns it, or None when there is nothing to resume.

    ``"auto"``: the newest good checkpoint of ``run_dir``, falling back (with a warning) past corrupt ones.
    Otherwise ``resume`` is a checkpoint directory that must load.
    """
    if resume == "none":
        return None
    candidates = checkpoints(run_dir) if resume == "auto" else [Path(resume)]
    if resume != "auto" and not candidates[0].is_dir():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint directory")
    problems = []
    for ckpt in candidates:
        problem = verify(ckpt)
        if problem is None and checkpoint_format(ckpt) != store.format:
            raise ValueError(f"checkpoint {ckpt} was written in the {checkpoint_format(ckpt)!r} format but "
                             f"this run reads {store.format!r} ones: resume with the --fsdp setting it was "
                             "saved with (--fsdp writes 'dcp')")
        if problem is None:
            try:
                store.load(ckpt)
                return ckpt
            except Exception as err:  # a corrupt file fails in many ways (pickle, safetensors, torch)
                problem = f"failed to load: {type(err).__name__}: {err}"
        problems.append(f"{ckpt}: {problem}")
        logger.warning("skipping checkpoint %s: %s", ckpt, problem)
    if problems:
        raise RuntimeError("no usable checkpoint to resume from:\n  " + "\n  ".join(problems))
    return None
