"""Do repeated ``alma-bench perf`` measurements agree? The check issue 28 asks of five
consecutive ``perf --quick`` runs: per ratio, every median within +-3% of the others (the
largest over the smallest, at most 1.03 / 0.97), and every run's 95% interval covering the
other runs' medians.

    python -m alma_bench.perf.agree reports/perf-quick-*.json

Pure Python (reads the JSON files ``--json`` wrote); exit status 0 when every ratio agrees.
"""

from __future__ import annotations

import json
import sys


def agreement(results: list[dict], tolerance: float = 0.03) -> dict:
    """Ratio name -> medians, intervals, whether the medians lie within +-``tolerance`` of
    each other (max / min <= (1 + tol) / (1 - tol)) and whether each interval covers every
    other run's median."""
    names = sorted(set.intersection(*(set(r["interleaved"]["ratios"]) for r in results)))
    out = {}
    for name in names:
        ss = [r["interleaved"]["ratios"][name] for r in results]
        meds = [s["median"] for s in ss]
        if any(m is None for m in meds):
            out[name] = {"medians": meds, "within": False, "covered": False, "precise": False}
            continue
        within = max(meds) / min(meds) <= (1 + tolerance) / (1 - tolerance)
        covered = all(s["ci"][0] is not None and s["ci"][0] <= m <= s["ci"][1]
                      for s in ss for m in meds)
        out[name] = {"medians": meds, "intervals": [s["ci"] for s in ss], "within": within,
                     "covered": covered, "precise": all(s["precise"] for s in ss)}
    return out


def main(argv: list[str]) -> int:
    results = [json.loads(open(p).read()) for p in argv]
    if len(results) < 2:
        print("usage: python -m alma_bench.perf.agree RUN1.json RUN2.json ...", file=sys.stderr)
        return 2
    rows = agreement(results)
    ok = True
    for name, a in rows.items():
        good = a["within"] and a["covered"]
        ok &= good
        meds = ", ".join("-" if m is None else f"{m:.3f}" for m in a["medians"])
        ivs = "; ".join("-" if not iv or iv[0] is None else f"[{iv[0]:.3f}, {iv[1]:.3f}]"
                        for iv in a.get("intervals", []))
        print(f"{'ok  ' if good else 'FAIL'} {name}: medians {meds} (within +-3%: "
              f"{'yes' if a['within'] else 'no'}; every interval covers every median: "
              f"{'yes' if a['covered'] else 'no'}; all precise: "
              f"{'yes' if a['precise'] else 'no'}); intervals {ivs}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
