"""Compare two compare.sh output folders (before and after a change): accuracy, predictions, bench rows, tune.

Usage: python diff.py BEFORE AFTER
"""

import csv
import json
import sys
from pathlib import Path


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def rows(path: Path) -> dict:
    with open(path) as handle:
        fields = ("Model", "Fold", "Batch Size", "Backend", "Precision")
        return {tuple(r[f] for f in fields): r for r in csv.DictReader(handle)}


def main(before: Path, after: Path) -> None:
    for name in ("train.json", "eval.json"):
        b, a = load(before / name), load(after / name)
        keys = [k for k in ("top1", "top5", "loss", "images", "epochs", "best_epoch", "fold") if k in b]
        print(name, {k: (b[k], a.get(k)) for k in keys})
    same = (before / "pred/test.csv").read_text() == (after / "pred/test.csv").read_text()
    print("predict CSV identical:", same)
    rb, ra = rows(before / "bench.csv"), rows(after / "bench.csv")
    print("bench configs before/after:", len(rb), len(ra), "same set:", set(rb) == set(ra))
    for key in sorted(rb):
        if key in ra:
            print("  ", key, "img/s", rb[key]["Throughput"], ra[key]["Throughput"])
    tb, ta = load(before / "tune.json"), load(after / "tune.json")
    print("tune accuracy before:", json.dumps(tb.get("accuracy")))
    print("tune accuracy after :", json.dumps(ta.get("accuracy")))
    keys = ("backend", "precision", "fold", "batch_size")
    print("tune recommended:", {k: tb["recommended"].get(k) for k in keys}, {k: ta["recommended"].get(k) for k in keys})
    print("bench notices", load(before / "bench.json")["notices"], load(after / "bench.json")["notices"])


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
