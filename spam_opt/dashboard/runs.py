"""The runs of a comparison: found under folders, named, grouped, read, and given their colours."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spam_opt import run_files as rf
from spam_opt.dashboard.run_config import read_config
from spam_opt.dashboard.run_data import RunData, load_run
from spam_opt.dashboard.summary import RunSummary, summarize

DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


@dataclass(frozen=True)
class RunRef:
    """A run directory in a comparison, with how to show it.

    ``name`` labels its table row and curves (default: the shortest end of its path that tells it apart
    from the other runs). Runs with the same ``group`` (the seeds of one optimizer, say) share a colour,
    sit next to each other and are toggled together in the legend.

    Example::

        RunRef("grid/clean/spam/seed1", name="spam seed 1", group="spam")
    """

    path: Path
    name: str | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))  # a str is welcome too


def _natural(path: Path) -> list[object]:
    # seed2 before seed10
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.as_posix())]


def find_runs(folder: Path) -> list[Path]:
    """``folder`` if it is a run directory, else every run directory under it (hidden folders skipped),
    in natural order; [] when there is none or ``folder`` does not exist."""
    if rf.is_run_dir(folder):
        return [folder]
    if not folder.is_dir():
        return []
    found = {p.parent for p in folder.rglob(rf.METRICS)
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}
    return sorted(found, key=_natural)


def unique_names(paths: list[Path]) -> list[str]:
    """For each path, its shortest trailing part (``seed0``, then ``spam/seed0``, ...) that no other path
    in ``paths`` ends with; the whole path for duplicates."""
    parts = [p.resolve().parts for p in paths]
    names = []
    for i, own in enumerate(parts):
        others = [q for j, q in enumerate(parts) if j != i]
        for length in range(1, len(own)):
            if all(q[-length:] != own[-length:] for q in others):
                names.append("/".join(own[-length:]))
                break
        else:
            names.append(str(paths[i]))
    return names


@dataclass
class ComparedRun:
    """A run as the page shows it: where, under which name and colour, what its logs hold and its settings.

    Example::

        runs = load_runs([RunRef("runs/adamw"), RunRef("runs/spam")])
        data = section_json(runs)  # what the page draws
    """

    ref: RunRef
    name: str
    group: str
    data: RunData
    summary: RunSummary
    colour: str = ""
    dash: str = "solid"
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml, {} when unreadable


def load_runs(refs: list[RunRef]) -> list[ComparedRun]:
    """Read the runs, a group's runs next to each other, each with its group's colour and its own dash."""
    names = unique_names([r.path for r in refs])
    runs = []
    for ref, name in zip(refs, names):
        data = load_run(ref.path)
        config, warnings = read_config(ref.path)
        label = ref.name or name
        summary = summarize(ref.path, data, config, warnings)
        runs.append(ComparedRun(ref, label, ref.group or label, data, summary, config=config))
    groups = list(dict.fromkeys(r.group for r in runs))
    runs.sort(key=lambda r: groups.index(r.group))
    style_runs(runs, groups)
    return runs


def style_runs(runs: list[ComparedRun], groups: list[str]) -> None:
    """Colour each run by its group's place in ``groups`` (the same colour in every section of a page);
    the runs of a group get one dash each."""
    from plotly.colors import qualitative

    palette = qualitative.Plotly if len(groups) <= len(qualitative.Plotly) else qualitative.Dark24
    for g, group in enumerate(groups):
        for i, run in enumerate(r for r in runs if r.group == group):
            run.colour, run.dash = palette[g % len(palette)], DASHES[i % len(DASHES)]
