"""Speed of the rule-based findings labeler: label N reports (default 3,000) on one CPU core.

Report texts (FINDINGS + IMPRESSION) come from a folder of IU ecgen-radiology XMLs, by default the 300 copies
bundled with the tests; they are cycled until N texts are reached (the labeler keeps no cache, so repeats
cost as much as new reports).  The process is pinned to one core where the OS allows it.  The labeler is
imported and its patterns compiled before timing.  Each of ``--rounds`` rounds labels all N texts; the
script prints every round and the best and median, and compares the median with the 2-second target.

Usage:
    python bench/bench_labeler.py [--reports DIR] [-n 3000] [--rounds 5] [--join K]

``--join K`` joins K consecutive reports into one text, to time reports K times as long.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from itertools import cycle, islice
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrgen.metrics.labeler import LABELER_VERSION, label_reports  # noqa: E402

DEFAULT_REPORTS = REPO / "tests" / "data" / "iu_reports"
TARGET_SECONDS = 2.0
TARGET_REPORTS = 3000


def report_text(path: Path) -> str:
    """FINDINGS and IMPRESSION of one report XML, a blank line between them."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise SystemExit(f"{path}: not valid XML: {err}") from None
    sections = {node.get("Label", ""): (node.text or "").strip() for node in root.iter("AbstractText")}
    return "\n\n".join(s for s in (sections.get("FINDINGS", ""), sections.get("IMPRESSION", "")) if s)


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to CPU {core}"
    return "not pinned (no sched_setaffinity on this OS)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS, help="folder of IU report XMLs")
    parser.add_argument("-n", type=int, default=TARGET_REPORTS, help="number of reports to label per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds")
    parser.add_argument("--join", type=int, default=1, help="make each text from this many consecutive reports")
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1 or args.join < 1:
        parser.error("-n, --rounds and --join must be at least 1")
    if not args.reports.is_dir():
        parser.error(f"--reports {args.reports}: not a folder")
    texts = [t for t in (report_text(p) for p in sorted(args.reports.glob("*.xml"))) if t]
    if not texts:
        parser.error(f"--reports {args.reports}: no report XML with FINDINGS or IMPRESSION text")
    if args.join > 1:
        texts = ["\n\n".join(texts[(i + k) % len(texts)] for k in range(args.join)) for i in range(len(texts))]
    batch = list(islice(cycle(texts), args.n))
    where = pin_to_one_core()
    chars = sum(len(t) for t in batch)

    label_reports(batch[:50])  # warm up
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        label_reports(batch)
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"labeler {LABELER_VERSION}; {len(batch)} reports ({len(texts)} distinct, {chars / len(batch):.0f} chars "
          f"on average) from {args.reports}; {where}; Python {sys.version.split()[0]}")
    for i, t in enumerate(times, 1):
        print(f"round {i}: {t:.3f} s  ({len(batch) / t:,.0f} reports/s)")
    print(f"best {min(times):.3f} s, median {median:.3f} s = {len(batch) / median:,.0f} reports/s, "
          f"{1000 * median / len(batch):.3f} ms per report")
    scaled = median * TARGET_REPORTS / len(batch)
    verdict = "meets" if scaled < TARGET_SECONDS else "MISSES"
    print(f"{TARGET_REPORTS:,} reports would take {scaled:.2f} s: {verdict} the {TARGET_SECONDS:.0f} s target")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
