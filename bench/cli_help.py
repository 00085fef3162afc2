"""`dcs --help` start-up time against a bare `python -c pass` (issue: median <= 0.3 s).

Prints JSON lines: {"bench", "value", "unit", "baseline", "baseline_value", "ratio"}.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

RUNS = 15
DCS = [str(Path(sys.executable).with_name("dcs"))]


def median_seconds(command: list[str]) -> float:
    samples = []
    subprocess.run(command, capture_output=True, check=False)  # warm the page cache
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    baseline = median_seconds([sys.executable, "-c", "pass"])
    for name, args in (("dcs_help", ["--help"]), ("dcs_proxy_help", ["proxy", "--help"])):
        try:
            value = median_seconds(DCS + args)
        except subprocess.CalledProcessError:
            continue
        print(json.dumps({
            "bench": name, "value": round(value, 4), "unit": "s", "baseline": "python_c_pass",
            "baseline_value": round(baseline, 4), "ratio": round(value / baseline, 2),
        }))


if __name__ == "__main__":
    main()
