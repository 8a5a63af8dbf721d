#!/usr/bin/env python3
"""Print a results/ CSV as a Markdown table, so README tables are pasted
from the files the experiments wrote, never typed.

    python3 tools/csv_to_markdown.py results/rbm_algorithms.csv [COLUMN ...]

With COLUMN names, only those columns (the first column always) in that order.
"""
import csv
import sys


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    keep = [0] + [header.index(c) for c in sys.argv[2:]] if len(sys.argv) > 2 else list(range(len(header)))
    print("| " + " | ".join(header[i] for i in keep) + " |")
    print("|" + " --- |" * len(keep))
    for r in body:
        print("| " + " | ".join(r[i] for i in keep) + " |")


if __name__ == "__main__":
    main()
