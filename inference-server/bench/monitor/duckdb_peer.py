"""The peer of the monitor benchmark: DuckDB running the same aggregations on the same files.

Per granularity (1 hour, 1 day) and slice (all rows, and per `served_entity`): count, nulls,
mean, sample standard deviation, min, max, 11 approximate quantiles and an approximate distinct
count of `amount`; the 10 most frequent `merchant` values; then the consecutive-window
comparisons: the Kolmogorov-Smirnov statistic and Wasserstein distance of `amount` (empirical
distribution functions over the union of both windows, as the monitor computes them) and the
per-category counts chi-squared and the distances need. JSON is parsed with DuckDB's own
`json_extract`. Prints the wall time.

    python duckdb_peer.py TABLE [MEMORY_LIMIT]
"""

import sys
import time

import duckdb

table, memory = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "512MB")
con = duckdb.connect()
con.execute(f"SET memory_limit = '{memory}'")
con.execute("SET threads = 2")
start = time.time()
con.execute(f"""
CREATE TEMP TABLE staged AS
SELECT timestamp_ms, served_entity,
       CAST(json_extract(request, '$.dataframe_records[0].amount') AS DOUBLE) AS amount,
       json_extract_string(request, '$.dataframe_records[0].merchant') AS merchant,
       CAST(timestamp_ms // 3600000 * 3600000 AS BIGINT) AS w_hour,
       CAST(timestamp_ms // 86400000 * 86400000 AS BIGINT) AS w_day
FROM read_parquet('{table}/*/*.parquet')
""")
quantiles = ", ".join(f"approx_quantile(amount, {q})" for q in [0, .01, .05, .1, .25, .5, .75, .9, .95, .99, 1])
for window, step in [("w_hour", 3_600_000), ("w_day", 86_400_000)]:
    for slice_value in ["NULL", "served_entity"]:
        con.execute(f"""
            SELECT {window}, {slice_value} AS sv, count(*), count(*) - count(amount), avg(amount), stddev_samp(amount),
                   min(amount), max(amount), {quantiles}, approx_count_distinct(amount)
            FROM staged GROUP BY 1, 2""").fetchall()
        con.execute(f"""
            SELECT * FROM (SELECT {window}, {slice_value} AS sv, merchant, count(*) AS n,
                                  row_number() OVER (PARTITION BY {window}, {slice_value} ORDER BY count(*) DESC, merchant) AS r
                           FROM staged GROUP BY 1, 2, 3) WHERE r <= 10""").fetchall()
        con.execute(f"""
            WITH pairs AS (
                SELECT {window} AS cw, {slice_value} AS sv, amount AS x, 1.0 AS a, 0.0 AS b FROM staged WHERE amount IS NOT NULL
                UNION ALL
                SELECT {window} + {step} AS cw, {slice_value} AS sv, amount AS x, 0.0, 1.0 FROM staged WHERE amount IS NOT NULL),
            n AS (SELECT cw, sv, sum(a) AS na, sum(b) AS nb FROM pairs GROUP BY 1, 2),
            cum AS (SELECT DISTINCT cw, sv, x,
                        sum(a) OVER (PARTITION BY cw, sv ORDER BY x RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS ca,
                        sum(b) OVER (PARTITION BY cw, sv ORDER BY x RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS cb
                    FROM pairs),
            f AS (SELECT d.cw, d.sv, d.x, d.ca / n.na AS fa, d.cb / n.nb AS fb,
                         lead(d.x) OVER (PARTITION BY d.cw, d.sv ORDER BY d.x) AS nx
                  FROM cum d JOIN n ON d.cw = n.cw AND d.sv IS NOT DISTINCT FROM n.sv WHERE n.na > 0 AND n.nb > 0)
            SELECT cw, sv, max(abs(fa - fb)), sum(CASE WHEN nx IS NULL THEN 0 ELSE abs(fa - fb) * (nx - x) END)
            FROM f GROUP BY 1, 2""").fetchall()
        con.execute(f"""
            SELECT cw, sv, merchant, sum(a), sum(b) FROM (
                SELECT {window} AS cw, {slice_value} AS sv, merchant, 1 AS a, 0 AS b FROM staged
                UNION ALL SELECT {window} + {step}, {slice_value}, merchant, 0, 1 FROM staged) GROUP BY 1, 2, 3""").fetchall()
print(f"duckdb_seconds {time.time() - start:.2f}")
