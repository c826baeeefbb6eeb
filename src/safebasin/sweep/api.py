"""`sweep`: run a config's grid (cached) and write its CSV, tables and plots."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import __version__, provenance
from ..executors import Executor, ProgressCallback
from .config import SweepConfig, load_config
from .differences import differences
from .execute import Progress, run_sweep
from .report import aggregate, write_report

RECORD = "sweep.json"


@dataclass(frozen=True)
class SweepOutcome:
    """The rows (one per point), their groups over seeds, the files written and the wall time."""

    rows: list[dict]
    groups: list[dict]
    files: dict[str, Path]
    wall_s: float


def sweep(config: SweepConfig | str | Path, out_dir: str | Path, *,
          workdir: str | Path | None = None, progress: Progress | None = None,
          show_training: bool = False, executor: Executor | None = None,
          jobs_progress: ProgressCallback | None = None) -> SweepOutcome:
    """Run every point of `config` and write the report into `out_dir`.

    Models, runs and cached points go to `workdir` (default `out_dir/work`); running again
    skips every finished point, so an interrupted or extended sweep costs only what is new.
    `executor` (`safebasin.executors`: Ray, SLURM) runs the fine-tunes and evaluations as
    jobs, independent ones at once; the default runs everything in this process.

    Files in `out_dir`: `results.csv` (one row per point), `summary.csv` and `summary.md`
    (mean ± std over worlds and seeds, the paired differences, the keyword-vs-judge confusion),
    `differences.csv` (each comparison with its paired bootstrap interval), `asr_vs_distance.png`,
    `utility_vs_distance.png`, `asr_vs_utility.png`, and `sweep.json` (the config, versions,
    provenance, wall time).

    Example:
        >>> sweep("study.yaml", "results/study", workdir="/tmp/study-work")  # doctest: +SKIP

    Raises:
        UsageError: an invalid config (naming the key).
        DataNotFoundError, CheckpointNotFoundError, EvaluationError: unusable inputs.
    """
    if not isinstance(config, SweepConfig):
        config = load_config(config)
    out_dir = Path(out_dir)
    workdir = Path(workdir) if workdir is not None else out_dir / "work"
    start = time.perf_counter()
    rows = run_sweep(config, workdir, progress=progress, show_training=show_training,
                     executor=executor, jobs_progress=jobs_progress)
    diffs = differences(rows, workdir)
    files = write_report(rows, out_dir, title=config.name, differences=diffs)
    wall_s = time.perf_counter() - start
    record = {"config": asdict(config), "points": len(rows), "wall_s": round(wall_s, 1),
              "workdir": str(workdir),
              "versions": {"safebasin": __version__, "python": platform.python_version()},
              "provenance": provenance.collect()}
    (out_dir / RECORD).write_text(json.dumps(record, indent=2, default=str) + "\n",
                                  encoding="utf-8")
    return SweepOutcome(rows, aggregate(rows), {**files, RECORD: out_dir / RECORD}, wall_s)
