"""Shared plumbing of the replication scripts: where results and figures go, a scratch
folder for run logs, and the figure style (readable labels at the size the docs show)."""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="the seconds-long version the test suite runs (no figure written)")
    p.add_argument("--figure", type=Path, default=None,
                   help="where to write the PNG (default: docs/replicate-<name>.png)")
    p.add_argument("--replot", action="store_true",
                   help="draw the figure again from the saved results, without running")
    return p.parse_args()


def load_results(name: str) -> dict:
    """The saved results, with JSON's string keys turned back into the integers they were."""
    def keys(x):
        if isinstance(x, dict):
            return {int(k) if k.lstrip("-").isdigit() else k: keys(v) for k, v in x.items()}
        if isinstance(x, list):
            return [keys(v) for v in x]
        return x

    return keys(json.loads((RESULTS / f"{name}.json").read_text()))


def scratch() -> tempfile.TemporaryDirectory:
    """A folder for the run logs of one replication, removed afterwards."""
    return tempfile.TemporaryDirectory(prefix="gradscope-replicate-")


def save_results(name: str, res: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"

    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if hasattr(x, "tolist"):
            return clean(x.tolist())
        return x

    path.write_text(json.dumps(clean(res), indent=1) + "\n")
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11,
                         "legend.fontsize": 9.5, "figure.dpi": 100})
    return plt
