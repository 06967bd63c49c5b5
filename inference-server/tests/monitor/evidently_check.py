"""A second oracle for tests/monitor.rs: Evidently's own drift functions on the same rows.

`evidently_check.py check TABLE PREFIX BASELINE_HOURS` reads the synthetic table and the
monitor's drift table like `oracle.py`, and compares each drift row with what Evidently 0.7's
stattests compute on the same two samples, where Evidently computes the same quantity:

- `js_distance` of a categorical column: Evidently's `jensenshannon` (natural log) divided by
  sqrt(ln 2), the same distance in bits;
- `tv_distance` of a categorical column: Evidently's total variation distance;
- `wasserstein_distance` of a numeric column divided by the reference's standard deviation:
  Evidently's `wasserstein` (normed) drift score.

Evidently's PSI bins numeric columns by Sturges' rule and its KS test reports scipy's
exact-mode p-value, so those two are checked against scipy in `oracle.py` instead.
"""

import json
import math
import sys

import numpy as np
import pandas as pd
from evidently.legacy.calculations.stattests.jensenshannon import _jensenshannon
from evidently.legacy.calculations.stattests.tvd_stattest import _total_variation_distance
from evidently.legacy.calculations.stattests.wasserstein_distance_norm import _wasserstein_distance_norm
from evidently.legacy.core import ColumnType

import oracle


def check(table, prefix, baseline_hours):
    data = oracle.instances(table)
    drift = [r for r in oracle.rows_of(f"{prefix}_drift_metrics") if r["granularity"] == "1 hour"]
    checks = 0

    def select(window, slice_value):
        return [d for d in data if d["window"] == window and (slice_value is None or d["served_entity"] == slice_value)]

    base = [d for d in data if d["window"] in [oracle.DAY + h * oracle.HOUR for h in baseline_hours]]
    for row in drift:
        window = oracle.ms(row["window"]["start"])
        current = select(window, row["slice_value"])
        if row["drift_type"] == "CONSECUTIVE":
            reference = select(oracle.ms(row["window_cmp"]["start"]), row["slice_value"])
        else:
            reference = [d for d in base if row["slice_value"] is None or d["served_entity"] == row["slice_value"]]
        what = f'{row["drift_type"]} {row["column_name"]} at {window} slice {row["slice_value"]}'
        if row["column_name"] == "merchant":
            cur = pd.Series([d["merchant"] for d in current])
            ref = pd.Series([d["merchant"] for d in reference])
            js, _ = _jensenshannon(ref, cur, ColumnType.Categorical, 0.1)
            oracle.close(row["js_distance"], js / math.sqrt(math.log(2)), f"{what}: js vs Evidently")
            oracle.close(row["tv_distance"], float(_total_variation_distance(ref, cur)), f"{what}: tvd vs Evidently")
            checks += 2
        elif row["column_name"] == "amount":
            cur = pd.Series([d["amount"] for d in current if d["amount"] is not None])
            ref = pd.Series([d["amount"] for d in reference if d["amount"] is not None])
            normed, _ = _wasserstein_distance_norm(ref, cur, ColumnType.Numerical, 0.1)
            ours = row["wasserstein_distance"] / max(float(np.std(ref)), 0.001)
            oracle.close(ours, float(normed), f"{what}: normed wasserstein vs Evidently")
            checks += 1
    assert checks > 0, "no drift row to check"
    print(json.dumps({"evidently_checks": checks}))


if __name__ == "__main__":
    check(sys.argv[2], sys.argv[3], [int(h) for h in sys.argv[4].split(",")])
