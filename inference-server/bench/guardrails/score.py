"""Scores findings against the corpus's gold spans, per kind: a finding is right when a gold
span of the same kind overlaps it; a gold span is found when a finding of its kind overlaps it.

    python score.py CORPUS.jsonl NAME=FINDINGS.jsonl [NAME=FINDINGS.jsonl ...]

Prints a Markdown table: precision, recall and F1 per kind and tool.
"""

import json
import sys

KINDS = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS"]


def overlaps(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def score(gold_rows, found_rows):
    counts = {k: {"tp": 0, "fp": 0, "found": 0, "gold": 0} for k in KINDS}
    for gold, found in zip(gold_rows, found_rows):
        found = [f for f in found["spans"] if f["kind"] in counts]
        for f in found:
            right = any(g["kind"] == f["kind"] and overlaps(f, g) for g in gold["spans"])
            counts[f["kind"]]["tp" if right else "fp"] += 1
        for g in gold["spans"]:
            counts[g["kind"]]["gold"] += 1
            if any(f["kind"] == g["kind"] and overlaps(f, g) for f in found):
                counts[g["kind"]]["found"] += 1
    return counts


def main(corpus, tools):
    gold = [json.loads(line) for line in open(corpus)]
    results = {}
    for spec in tools:
        name, path = spec.split("=", 1)
        results[name] = score(gold, [json.loads(line) for line in open(path)])
    names = list(results)
    print("| kind | gold | " + " | ".join(f"{n} P | {n} R | {n} F1" for n in names) + " |")
    print("|---|---:|" + "---:|---:|---:|" * len(names))
    for kind in KINDS + ["all"]:
        cells = []
        gold_n = 0
        for name in names:
            c = results[name]
            if kind == "all":
                tp = sum(v["tp"] for v in c.values())
                fp = sum(v["fp"] for v in c.values())
                found = sum(v["found"] for v in c.values())
                gold_n = sum(v["gold"] for v in c.values())
            else:
                tp, fp, found, gold_n = c[kind]["tp"], c[kind]["fp"], c[kind]["found"], c[kind]["gold"]
            p = tp / (tp + fp) if tp + fp else 1.0
            r = found / gold_n if gold_n else 1.0
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            cells.append(f"{p:.3f} | {r:.3f} | {f1:.3f}")
        print(f"| {kind} | {gold_n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
