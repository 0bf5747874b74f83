"""Cases for ensembles: the conditions of each case, from a mapping, a DataFrame or a CSV, checked
against a model's conditioning schema; and the noise seed of each generated item (case, member),
which makes an ensemble the same however it is split over batches, ranks or restarts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from sciddpm.checks import parse_number
from sciddpm.data import CondSchema, UnknownConditionError
from sciddpm.data.conditioning import read_condition_table, split_header

log = logging.getLogger("sciddpm")


def item_seed(seed: int, case: int, member: int) -> int:
    """The noise seed of member ``member`` of case ``case`` in an ensemble drawn with ``seed``."""
    words = np.random.SeedSequence([int(seed), int(case), int(member)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])  # fits torch's 64-bit seed


def case_table(cases: Any, schema: CondSchema) -> dict[str, np.ndarray]:
    """Cases as ``{name: values}`` with one value per case, validated against ``schema``.

    ``cases`` is a mapping name -> value or list (single values are shared by every case) or a
    pandas DataFrame with one row per case and one column per condition.
    """
    if hasattr(cases, "to_dict") and hasattr(cases, "columns"):  # a DataFrame, without importing pandas
        cases = {str(name): cases[name].to_numpy() for name in cases.columns}
    if not isinstance(cases, Mapping):
        raise TypeError(f"cases must be a mapping name -> values or a DataFrame, got {type(cases).__name__}")
    columns = {}
    for name, values in cases.items():
        if isinstance(values, torch.Tensor):  # any dtype, on any device, with or without grad
            values = values.detach().to("cpu", torch.float64).numpy()
        try:
            columns[name] = np.atleast_1d(np.asarray(values, dtype=float))
        except (TypeError, ValueError):
            raise ValueError(f"condition {name!r}: values must be numbers in the condition's units, got "
                             f"{values!r}") from None
        if columns[name].ndim != 1 or columns[name].size == 0:
            raise ValueError(f"condition {name!r}: give one value per case (a flat, non-empty list), got "
                             f"shape {columns[name].shape}")
    count = max((len(v) for v in columns.values()), default=1)
    for name, values in columns.items():
        if len(values) not in (1, count):
            raise ValueError(
                f"condition {name!r} has {len(values)} values but others have {count}; give one "
                "value (shared by every case) or one per case")
    if not columns and schema.dim:
        log.info("no conditions given: one case, sampled unconditionally (the null condition)")
    table = schema.validate(columns, batch=count) if columns else {}
    return {name: np.asarray(values, dtype=float) for name, values in table.items()}


def read_cases_csv(path: str | Path, schema: CondSchema) -> dict[str, list[float]]:
    """The cases of a CSV (``sciddpm sample --cases``): a header of condition names (``name`` or
    ``name[units]``, the units then being the model's), one row per case; for ``case_table``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--cases {path}: no such file (a CSV with one column per condition)")
    rows = read_condition_table(path)
    if len(rows) < 2:
        raise ValueError(f"{path}: expected a header of condition names and at least one row of values")
    names = []
    for cell in rows[0][1]:
        try:
            name, units = split_header(cell)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        if name in names:
            raise ValueError(f"{path}: column {name!r} appears twice in the header")
        try:  # a column that is no condition is named before any of its values is read
            schema[name]
        except UnknownConditionError as error:
            raise UnknownConditionError(f"{path}: column {name!r}: {error}") from None
        if units is not None and units != schema[name].units:
            takes = f"in {schema[name].units}" if schema[name].units else "as a pure number (its data gave no units)"
            raise ValueError(f"{path}: column {cell.strip()!r} is in {units} but the model takes {name} {takes}; "
                             f"convert the column and write {name}[{schema[name].units}]")
        names.append(name)
    columns: dict[str, list[float]] = {name: [] for name in names}
    for line, row in rows[1:]:
        if len(row) != len(names):
            raise ValueError(f"{path}, line {line}: {len(row)} values for {len(names)} columns ({', '.join(names)})")
        for name, cell in zip(names, row):
            try:
                columns[name].append(parse_number(cell))
            except ValueError:
                raise ValueError(f"{path}, line {line}: {name}={cell!r} is not a number") from None
    return columns
