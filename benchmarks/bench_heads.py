"""Time HeadSelector and TopKEnsemble fit/predict on random QK-scores.

Target: a 10,000-item x 28-layer x 12-head x 2-option HeadSelector fit in under one second on a
2-core machine. The 400 x 24 x 14 x 2 case is the size of a real calibration set.

    .venv/bin/python benchmarks/bench_heads.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from qkscore.estimators.base import CalibrationWarning
from qkscore.estimators.ensemble import TopKEnsemble
from qkscore.estimators.heads import HeadSelector


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def data(shape: tuple[int, int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal(shape, dtype=np.float32)
    labels = rng.permutation(np.arange(shape[0]) % shape[3])
    return scores, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    parser.add_argument("--quick", action="store_true", help="skip the 10k-item CV ensemble")
    args = parser.parse_args()
    warnings.simplefilter("ignore", CalibrationWarning)

    estimators: list[tuple[str, Callable[[], Any]]] = [
        ("HeadSelector", HeadSelector),
        ("HeadSelector(threshold=zero)", lambda: HeadSelector(threshold="zero")),
        ("TopKEnsemble(k=5, vote)", lambda: TopKEnsemble(k=5)),
        ("TopKEnsemble(k=5, logistic)", lambda: TopKEnsemble(k=5, method="logistic")),
        ("TopKEnsemble(CV, vote)", TopKEnsemble),
        ("TopKEnsemble(CV, logistic)", lambda: TopKEnsemble(method="logistic")),
    ]
    rows = []
    for shape in [(10_000, 28, 12, 2), (400, 24, 14, 2)]:
        scores, labels = data(shape)
        for name, make in estimators:
            if args.quick and shape[0] > 1000 and "CV" in name:
                continue
            fitted = make().fit(scores, labels)  # warm-up, and the model predict uses

            def fit(make: Callable[[], Any] = make, x: Any = scores, y: Any = labels) -> Any:
                return make().fit(x, y)

            fit_s = median_time(fit, args.repeats)
            pred_s = median_time(lambda f=fitted, x=scores: f.predict(x), args.repeats)
            rows.append(("x".join(map(str, shape)), name, fit_s, pred_s))

    header = ("scores shape", "estimator", "fit (s)", "predict (s)")
    widths = [max(len(header[i]), *(len(str(r[i])) for r in rows)) for i in range(2)]
    print(f"median of {args.repeats} runs, numpy {np.__version__}")
    print(f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:>9}  {header[3]:>11}")
    for shape_s, name, fit_s, pred_s in rows:
        print(f"{shape_s:<{widths[0]}}  {name:<{widths[1]}}  {fit_s:9.4f}  {pred_s:11.5f}")


if __name__ == "__main__":
    main()
