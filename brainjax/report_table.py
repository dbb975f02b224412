"""Markdown tables from report.json files (for BUILD_NOTES and papers).

  python -m brainjax.report_table runs/a/report.json [runs/b/report.json ...] [--grid]

One row per (run, split): size, dedup status, clean accuracy and macro F1 with 95%
bootstrap CIs, mean corruption accuracy, mCE (when a reference was given), the seed
protocol's mixed/clean/degraded accuracy; --grid adds accuracy per corruption x severity.
"""

from __future__ import annotations

import argparse
import json


def _ci(metrics: dict, key: str) -> str:
    lo, hi = metrics.get("ci95", {}).get(key, (float("nan"), float("nan")))
    return f"{metrics[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def split_rows(report: dict):
    yield report
    yield from report.get("other_splits", {}).values()


def summary_table(paths: list[str]) -> str:
    lines = ["| run | split | n | dedup | clean acc [95% CI] | clean macro F1 [95% CI] | mean corruption acc | mCE |",
             "|---|---|---|---|---|---|---|---|"]
    for path in paths:
        report = json.load(open(path))
        for s in split_rows(report):
            summ = s["summary"]
            mce = f"{summ['mCE']:.3f}" if summ.get("mCE") is not None else "-"
            mca = f"{summ['mean_degraded_accuracy']:.3f}" if summ.get("mean_degraded_accuracy") is not None else "-"
            lines.append(f"| {path} | {s['split']} | {s['num_examples']} | {'yes' if s.get('deduplicated') else 'no'} | "
                         f"{_ci(s['clean'], 'accuracy')} | {_ci(s['clean'], 'macro_f1')} | {mca} | {mce} |")
    seed = [(p, json.load(open(p)).get("seed_protocol")) for p in paths]
    seed = [(p, sp) for p, sp in seed if sp]
    if seed:
        lines += ["", "| run | seed protocol split | mixed acc [95% CI] | clean-only | degraded-only |", "|---|---|---|---|---|"]
        lines += [f"| {p} | {sp['split']} | {_ci(sp['mixed'], 'accuracy')} | {_ci(sp['clean'], 'accuracy')} | "
                  f"{_ci(sp['degraded'], 'accuracy')} |" for p, sp in seed]
    return "\n".join(lines)


def grid_table(paths: list[str]) -> str:
    lines = []
    for path in paths:
        report = json.load(open(path))
        sev = list(next(iter(report["degraded"].values())))
        lines += ["", f"{path} ({report['split']}, clean {report['clean']['accuracy']:.3f})", "",
                  "| corruption | " + " | ".join(f"s{s}" for s in sev) + " | mean |", "|---|" + "---|" * (len(sev) + 1)]
        for name, by_sev in report["degraded"].items():
            accs = [by_sev[s]["accuracy"] for s in sev]
            lines.append(f"| {name} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {sum(accs) / len(accs):.3f} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+")
    ap.add_argument("--grid", action="store_true")
    args = ap.parse_args(argv)
    print(summary_table(args.reports))
    if args.grid:
        print(grid_table(args.reports))


if __name__ == "__main__":
    main()
