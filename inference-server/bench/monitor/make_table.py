"""Writes a synthetic inference table for the monitor benchmark: ROWS requests over DAYS days in
the capture sidecar's layout (`date=YYYY-MM-DD/part-<hour>.parquet`, the record columns), each
request an MLflow `dataframe_records` body of one instance (`amount` N(50, 10) drifting to
N(60, 10) on the last day, `merchant` one of 8), its answer `{"predictions": [0|1]}`.

    python make_table.py TABLE ROWS DAYS
"""

import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

DAY = 1_796_083_200_000  # 2026-12-01T00:00:00Z
HOUR = 3_600_000
MERCHANTS = np.array(["shop", "fuel", "food", "travel", "games", "music", "books", "health"])


def main(table, rows, days):
    rng = np.random.default_rng(11)
    hours = days * 24
    per_hour = rows // hours
    for hour in range(hours):
        n = per_hour + (1 if hour < rows % hours else 0)
        last_day = hour >= (days - 1) * 24
        amount = rng.normal(60 if last_day else 50, 10, n).round(4)
        merchant = MERCHANTS[rng.integers(0, len(MERCHANTS), n)]
        ts = DAY + hour * HOUR + np.sort(rng.integers(0, HOUR, n))
        request = pc.binary_join_element_wise(
            '{"dataframe_records": [{"amount": ', pa.array(amount.astype(str)),
            ', "merchant": "', pa.array(merchant), '"}]}', "")
        prediction = (amount > 55).astype(int).astype(str)
        response = pc.binary_join_element_wise('{"predictions": [', pa.array(prediction), "]}", "")
        day = hour // 24
        folder = os.path.join(table, f"date=2026-12-{1 + day:02d}")
        os.makedirs(folder, exist_ok=True)
        batch = pa.table({
            "request_id": pa.array([f"r{hour}-{i}" for i in range(n)]),
            "date": pa.array(np.full(n, DAY // 86_400_000 + day, dtype="int32"), pa.date32()),
            "timestamp_ms": pa.array(ts, pa.int64()),
            "status_code": pa.array(np.where(rng.random(n) < 0.01, 500, 200), pa.int32()),
            "execution_time_ms": pa.array(rng.integers(1, 40, n), pa.int64()),
            "request": request,
            "response": response,
            "endpoint": pa.array(np.full(n, "fraud")),
            "served_entity": pa.array(np.where(np.arange(n) % 10 == 0, "fraud-2", "fraud-1")),
            "model_version": pa.array(np.where(np.arange(n) % 10 == 0, "2", "1")),
            "input_token_count": pa.nulls(n, pa.int64()),
            "output_token_count": pa.nulls(n, pa.int64()),
            "sampling_fraction": pa.array(np.ones(n)),
        })
        pq.write_table(batch, os.path.join(folder, f"part-{hour:04d}.parquet"))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
