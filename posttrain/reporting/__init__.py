"""Reporting: what a finished run (or a comparison of runs) tells people and release tooling.

It reads the typed results (posttrain.results) and never the pipeline or the stages;
nothing in the core imports it: `posttrain run` and `posttrain compare` (posttrain.cli) call it.

    summary      metric rows, deltas, verdicts, table rows and sentences (every renderer shows these)
    release      release gates judged on an evaluation: the verdict
    plots        PNG plots (matplotlib, imported lazily)
    html_report  report.html
    report       report.md, and the files of a run: write_run, write_results, write_reports
    compare      `posttrain compare`: runs merged into one RunResults, and its report

Imports go one way: summary <- release, plots, html_report <- report <- compare.
"""

from __future__ import annotations

from posttrain.reporting.report import write_reports, write_results, write_run

__all__ = ["write_reports", "write_results", "write_run"]
