"""Builds a multi-source config's dataset and prints its cross-source provenance table.

  python benchmarks/provenance.py [--config=configs/multisite.py] [--data_dir=DIR]

(provenance.json / provenance.md stay in the build's folder of the tfds data_dir.)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/multisite.py")
    ap.add_argument("--data_dir", default=None)
    args = ap.parse_args()
    os.chdir(ROOT)  # the configs' manual_dir paths are relative to the repository
    module = importlib.import_module(args.config.replace("/", ".").removesuffix(".py"))
    config = module.get_config()
    if args.data_dir:
        config.data_dir = args.data_dir
    from brainjax.data import pipeline

    t0 = time.perf_counter()
    builder = pipeline.builder_for(config)
    print(open(os.path.join(builder.report_dir(), "provenance.md")).read())
    print(open(os.path.join(builder.report_dir(), "build_report.md")).read())
    print(f"built in {time.perf_counter() - t0:.0f} s; reports in {builder.report_dir()}")


if __name__ == "__main__":
    main()
