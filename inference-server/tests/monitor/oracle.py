"""The independent side of tests/monitor.rs.

`oracle.py make TABLE PART` writes one part of a synthetic inference table in the capture
sidecar's layout (Hive `date=` folders, the record columns, MLflow `dataframe_records` requests
of 1-3 instances, `predictions` answers): part 1 holds hours 0-3 of a day, part 2 hours 4-5,
where `amount` shifts from N(50, 10) to N(65, 10) and `merchant` changes its mix.

`oracle.py check TABLE PREFIX` reads the table back with pyarrow, unpacks the instances itself
and recomputes every statistic of the monitor's tables with numpy and scipy, then compares.
It exits non-zero with the first difference.
"""

import glob
import json
import math
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats
from scipy.spatial.distance import jensenshannon

DAY = 1_796_083_200_000  # 2026-12-01T00:00:00Z, ms
HOUR = 3_600_000
MERCHANTS = ["shop", "fuel", "food", "travel"]


def make(table, part):
    rng = np.random.default_rng(7 + int(part))
    hours = range(0, 4) if part == "1" else range(4, 6)
    rows = []
    for hour in hours:
        drifted = hour >= 4
        for i in range(120):
            n = int(rng.integers(1, 4))
            records = []
            for _ in range(n):
                amount = float(rng.normal(65 if drifted else 50, 10))
                if rng.random() < 0.03:
                    amount = None  # a missing value
                weights = [0.1, 0.1, 0.2, 0.6] if drifted else [0.4, 0.3, 0.2, 0.1]
                merchant = str(rng.choice(MERCHANTS, p=weights))
                label = int(rng.random() < 0.5)
                records.append({"amount": amount, "merchant": merchant, "label": label})
            predictions = [int(r["amount"] is not None and r["amount"] > 55) for r in records]
            ts = DAY + hour * HOUR + int(i * HOUR / 120) + int(rng.integers(0, 1000))
            status = 500 if rng.random() < 0.05 else 200
            rows.append({
                "request_id": f"r{hour}-{i}",
                "client_request_id": None,
                "date": (DAY // 86_400_000),
                "timestamp_ms": ts,
                "status_code": status,
                "execution_time_ms": int(rng.integers(1, 40)),
                "request": json.dumps({"dataframe_records": records}),
                "response": json.dumps({"predictions": predictions}) if status == 200 else '{"error_code": "INTERNAL_ERROR"}',
                "endpoint": "fraud",
                "served_entity": "fraud-1" if i % 3 else "fraud-2",
                "model": "fraud",
                "model_version": "1" if i % 3 else "2",
                "requester": None,
                "input_token_count": None,
                "output_token_count": None,
                "sampling_fraction": 1.0,
            })
    schema = pa.schema([
        ("request_id", pa.string()), ("client_request_id", pa.string()), ("date", pa.date32()),
        ("timestamp_ms", pa.int64()), ("status_code", pa.int32()), ("execution_time_ms", pa.int64()),
        ("request", pa.string()), ("response", pa.string()), ("endpoint", pa.string()),
        ("served_entity", pa.string()), ("model", pa.string()), ("model_version", pa.string()),
        ("requester", pa.string()), ("input_token_count", pa.int64()), ("output_token_count", pa.int64()),
        ("sampling_fraction", pa.float64()),
    ])
    table_ = pa.Table.from_pylist(rows, schema=schema)
    import os
    folder = os.path.join(table, "date=2026-12-01")
    os.makedirs(folder, exist_ok=True)
    pq.write_table(table_, os.path.join(folder, f"part-test-{part}.parquet"))


def instances(table):
    """One dict per instance, with its request's columns, as the monitor should see them."""
    out = []
    for path in sorted(glob.glob(f"{table}/*/*.parquet")):
        for row in pq.read_table(path).to_pylist():
            records = json.loads(row["request"])["dataframe_records"]
            response = json.loads(row["response"])
            predictions = response.get("predictions", [])
            for k, record in enumerate(records):
                prediction = predictions[k] if k < len(predictions) else None
                out.append({
                    "window": (row["timestamp_ms"] // HOUR) * HOUR,
                    "first": k == 0,
                    "served_entity": row["served_entity"],
                    "status_code": row["status_code"],
                    "amount": record["amount"],
                    "merchant": record["merchant"],
                    "label": str(record["label"]),
                    "prediction": None if prediction is None else str(prediction),
                })
    return out


def close(ours, theirs, what, rel=1e-9, abs_=1e-12):
    if theirs is None or (isinstance(theirs, float) and math.isnan(theirs)):
        assert ours is None or math.isnan(ours), f"{what}: ours {ours}, expected none"
        return
    assert ours is not None, f"{what}: ours is null, expected {theirs}"
    assert abs(ours - theirs) <= max(abs_, rel * abs(theirs)), f"{what}: ours {ours!r}, expected {theirs!r}"


def rows_of(folder):
    rows = []
    for path in sorted(glob.glob(f"{folder}/**/*.parquet", recursive=True)):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def ms(timestamp):
    return int(timestamp.timestamp() * 1000)


def psi(current, reference, bins=10):
    both = np.concatenate([current, reference])
    lo, hi = both.min(), both.max()
    def counts(values):
        if hi == lo:
            index = np.zeros(len(values), dtype=int)
        else:
            index = np.minimum(np.floor((values - lo) / (hi - lo) * bins).astype(int), bins - 1)
        return np.bincount(index, minlength=bins) / len(values)
    p, q = counts(current), counts(reference)
    p = np.where(p == 0, 1e-4, p)
    q = np.where(q == 0, 1e-4, q)
    return float(np.sum((p - q) * np.log(p / q)))


def categorical(current, reference):
    items = sorted(set(current) | set(reference))
    a = np.array([current.count(i) for i in items], dtype=float)
    b = np.array([reference.count(i) for i in items], dtype=float)
    chi2, pvalue, _, _ = stats.chi2_contingency(np.array([a, b]), correction=False)
    p, q = a / a.sum(), b / b.sum()
    return {
        "chi_squared_test": (chi2, pvalue),
        "tv_distance": 0.5 * float(np.abs(p - q).sum()),
        "l_infinity_distance": float(np.abs(p - q).max()),
        "js_distance": float(jensenshannon(p, q, base=2)),
    }


def numeric(current, reference):
    current, reference = np.array(current), np.array(reference)
    ks = stats.ks_2samp(current, reference)
    n, m = len(current), len(reference)
    return {
        "ks": ks.statistic,
        "ks_pvalue": float(stats.kstwobign.sf(math.sqrt(n * m / (n + m)) * ks.statistic)),
        "wasserstein_distance": float(stats.wasserstein_distance(current, reference)),
        "population_stability_index": psi(current, reference),
    }


def classification(truth, predicted):
    """Precision, recall and F1 per class and averaged, as scikit-learn defines them."""
    truth, predicted = np.array(truth), np.array(predicted)
    classes = sorted(set(truth) | set(predicted))
    support = np.array([np.sum(truth == c) for c in classes], dtype=float)
    out = {}
    per = {"precision": [], "recall": [], "f1_score": []}
    for c in classes:
        tp = float(np.sum((truth == c) & (predicted == c)))
        p = tp / np.sum(predicted == c) if np.sum(predicted == c) else 0.0
        r = tp / np.sum(truth == c) if np.sum(truth == c) else 0.0
        per["precision"].append(p)
        per["recall"].append(r)
        per["f1_score"].append(2 * p * r / (p + r) if p + r else 0.0)
    for name, values in per.items():
        values = np.array(values)
        out[name] = {
            "one_vs_all": dict(zip(classes, values.tolist())),
            "macro": float(values.mean()),
            "weighted": float(np.sum(values * support) / support.sum()),
        }
    return out


def check(table, prefix, baseline_hours):
    data = instances(table)
    profile = [r for r in rows_of(f"{prefix}_profile_metrics") if r["granularity"] == "1 hour"]
    drift = [r for r in rows_of(f"{prefix}_drift_metrics") if r["granularity"] == "1 hour"]
    windows = sorted({d["window"] for d in data})
    checks = 0

    def select(window, slice_value, pred=lambda d: True):
        return [d for d in data if d["window"] == window and (slice_value is None or d["served_entity"] == slice_value) and pred(d)]

    for row in profile:
        window = ms(row["window"]["start"])
        slice_value = row["slice_value"]
        assert row["slice_key"] in (None, "served_entity"), row["slice_key"]
        rows = select(window, slice_value)
        column = row["column_name"]
        if column == ":table":
            requests = [d for d in rows if d["first"]]
            assert row["count"] == len(requests), (window, slice_value, row["count"], len(requests))
            close(row["error_rate"], float(np.mean([d["status_code"] >= 500 for d in rows])), "error_rate")
            labelled = [d for d in rows if d["prediction"] is not None]
            close(row["accuracy_score"], float(np.mean([d["prediction"] == d["label"] for d in labelled])), "accuracy")
            expected = classification([d["label"] for d in labelled], [d["prediction"] for d in labelled])
            for name in ["precision", "recall", "f1_score"]:
                ours = row[name]
                assert dict(ours["one_vs_all"]).keys() == expected[name]["one_vs_all"].keys(), (name, ours)
                for label, value in expected[name]["one_vs_all"].items():
                    close(dict(ours["one_vs_all"])[label], value, f"{name} of {label}")
                close(ours["macro"], expected[name]["macro"], f"{name} macro")
                close(ours["weighted"], expected[name]["weighted"], f"{name} weighted")
            checks += 3 + 3 * 4
        elif column == "amount":
            values = [d["amount"] for d in rows]
            present = np.array([v for v in values if v is not None])
            assert row["count"] == len(values) and row["num_nulls"] == len(values) - len(present), (row, len(values))
            close(row["avg"], float(present.mean()), "avg")
            close(row["stddev"], float(present.std(ddof=1)), "stddev")
            close(row["min"], float(present.min()), "min")
            close(row["max"], float(present.max()), "max")
            close(row["percent_null"], 100.0 * (len(values) - len(present)) / len(values), "percent_null")
            # t-digest quantiles: the value's rank in the data within 2 % of the probability.
            for p, q in zip([0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0], row["quantiles"]):
                rank = float(np.mean(present <= q))
                assert abs(rank - p) <= 0.02 + 1.0 / len(present), f"quantile {p}: {q} has rank {rank}"
            assert abs(row["distinct_count"] - len(set(present))) <= 0.03 * len(set(present)), row["distinct_count"]
            checks += 8
        elif column == "merchant":
            values = [d["merchant"] for d in rows]
            counts = sorted(((values.count(m), m) for m in set(values)), key=lambda c: (-c[0], c[1]))
            assert [(i["item"], i["count"]) for i in row["frequent_items"]] == [(m, c) for c, m in counts], row["frequent_items"]
            assert row["distinct_count"] == len(set(values)), row["distinct_count"]
            checks += 2
        elif column == "execution_time_ms":
            assert row["count"] == len([d for d in rows if d["first"]]), row
            checks += 1
    assert checks > 0

    def drift_check(row, current_rows, reference_rows):
        nonlocal checks
        column = row["column_name"]
        if column == "amount":
            cur = [d["amount"] for d in current_rows if d["amount"] is not None]
            ref = [d["amount"] for d in reference_rows if d["amount"] is not None]
            expected = numeric(cur, ref)
            close(row["ks_test"]["statistic"], expected["ks"], "ks statistic")
            close(row["ks_test"]["pvalue"], expected["ks_pvalue"], "ks pvalue", rel=1e-6, abs_=1e-12)
            close(row["wasserstein_distance"], expected["wasserstein_distance"], "wasserstein")
            close(row["population_stability_index"], expected["population_stability_index"], "psi")
            checks += 4
        elif column == "merchant":
            cur = [d["merchant"] for d in current_rows]
            ref = [d["merchant"] for d in reference_rows]
            expected = categorical(cur, ref)
            close(row["chi_squared_test"]["statistic"], expected["chi_squared_test"][0], "chi2")
            close(row["chi_squared_test"]["pvalue"], expected["chi_squared_test"][1], "chi2 pvalue", rel=1e-6)
            for name in ["tv_distance", "l_infinity_distance", "js_distance"]:
                close(row[name], expected[name], name)
            checks += 5

    consecutive = [r for r in drift if r["drift_type"] == "CONSECUTIVE"]
    baseline = [r for r in drift if r["drift_type"] == "BASELINE"]
    assert {ms(r["window"]["start"]) for r in consecutive} == set(windows[1:]), "a consecutive drift row per window after the first"
    for row in consecutive:
        window, previous = ms(row["window"]["start"]), ms(row["window_cmp"]["start"])
        assert previous == window - HOUR
        drift_check(row, select(window, row["slice_value"]), select(previous, row["slice_value"]))
    base_rows = [d for d in data if d["window"] in [DAY + h * HOUR for h in baseline_hours]]
    for row in baseline:
        window = ms(row["window"]["start"])
        reference = [d for d in base_rows if row["slice_value"] is None or d["served_entity"] == row["slice_value"]]
        drift_check(row, select(window, row["slice_value"]), reference)
    # The drift injected at hour 4 is found there, and not before.
    amount = {ms(r["window"]["start"]): r for r in consecutive if r["column_name"] == "amount" and r["slice_value"] is None}
    flagged = sorted(w for w, r in amount.items() if r["ks_test"]["pvalue"] < 0.001)
    if amount and max(amount) >= DAY + 4 * HOUR:
        assert flagged and flagged[0] == DAY + 4 * HOUR, f"drift flagged at {[(w - DAY) // HOUR for w in flagged]}"
    print(json.dumps({"checks": checks, "profile_rows": len(profile), "drift_rows": len(drift)}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    else:
        check(sys.argv[2], sys.argv[3], [int(h) for h in sys.argv[4].split(",")])
