"""One row of `results.csv`: a sweep point's settings, its knob and its measurements.

`Row` is the one place that names the columns, their order and their types: `ROW_FIELDS` is its
field order, `write_rows` writes `Row.cells()` and `read_rows` parses with `Row.from_cells`. A
point's measurements become a `Row` in `execute.Sweep` (an unknown column is a bug there, not a
silently dropped value); the tables, plots, bootstrap and differences still take the rows as
dicts (`Row.to_dict`), every column present, None where a method has no value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class Row:
    """One point of a sweep, in `results.csv`'s column order (None: an empty cell)."""

    # what the point is: the model size and world, the experiment, the method and its match
    model: str | None = None
    params: int | None = None
    world_seed: int | None = None
    experiment: str | None = None
    method: str | None = None
    match: str | None = None  # "distance", "utility" or None
    # the fine-tuning run and its EMA
    seed: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    steps: int | None = None
    l2_to_init: float | None = None
    eta: float | None = None
    every: int | None = None
    ema_updates: int | None = None
    c0: float | None = None  # the EMA's weight on θ₀, (1 − η)^K
    # a matched merge: its target and the knob found
    matched_to: str | None = None
    target_distance: float | None = None
    target_utility: float | None = None
    scale: float | None = None
    radius_scale: float | None = None
    tries: int | None = None
    matched: bool | None = None
    utility_gap: float | None = None
    # measurements
    distance: float | None = None  # global L2 distance to θ₀
    asr: float | None = None
    asr_low: float | None = None
    asr_high: float | None = None
    successes: int | None = None
    n: int | None = None
    harmful_rate: float | None = None
    harmful_low: float | None = None
    harmful_high: float | None = None
    judge_refused: int | None = None
    judge_complied: int | None = None
    judge_off_target: int | None = None
    judge_degenerate: int | None = None
    keyword_success_refused: int | None = None
    keyword_success_complied: int | None = None
    keyword_success_off_target: int | None = None
    keyword_success_degenerate: int | None = None
    keyword_refusal_refused: int | None = None
    keyword_refusal_complied: int | None = None
    keyword_refusal_off_target: int | None = None
    keyword_refusal_degenerate: int | None = None
    asr_train_frames: float | None = None
    harmful_rate_train_frames: float | None = None
    degenerate_rate: float | None = None
    asr_excluding_degenerate: float | None = None
    utility: float | None = None
    utility_metric: str | None = None
    # checks of the EMA split (max |difference| to the online EMA) and how θ̃ was built
    offline_online_max_abs_diff: float | None = None
    ema_max_abs_diff: float | None = None
    built_from: str | None = None
    point: str | None = None  # the point's cache key (its folder under work/points)

    @classmethod
    def from_dict(cls, data: dict) -> Row:
        """The row of a point's fields, as the sweep assembles them.

        Raises:
            TypeError: a key that is no column (a measurement with nowhere to go: a bug).
        """
        return cls(**data)

    def to_dict(self) -> dict:
        """Every column, in order (None where the method has no value)."""
        return asdict(self)

    def cells(self) -> dict[str, object]:
        """The CSV cells: floats to 6 significant digits, None as an empty cell."""
        return {k: csv_cell(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_cells(cls, cells: dict[str, str]) -> Row:
        """A row read back from `results.csv`, typed as the sweep produced it (empty: None);
        a column the file lacks is None.

        Raises:
            ValueError: a cell that is not a number where the column holds one.
        """
        return cls(**{k: _parse(_KINDS[k], v) for k, v in cells.items()
                      if k in _KINDS and v is not None})


ROW_FIELDS = tuple(f.name for f in fields(Row))
# "int", "float", "str" or "bool" per column, from the annotations ("int | None")
_KINDS = {f.name: str(f.type).split(" | ")[0] for f in fields(Row)}


def csv_cell(v: object) -> object:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _parse(kind: str, value: str) -> object:
    if value == "":
        return None
    if kind == "str":
        return value
    if kind == "bool":
        return value == "True"
    return int(value) if kind == "int" else float(value)


__all__ = ["ROW_FIELDS", "Row", "csv_cell"]
