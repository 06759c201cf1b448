"""Write the README's results block from a run's results.json, so the README cannot drift from a run.

    .venv/bin/python scripts/readme_results.py runs/chat/results.json

copies the results to docs/figures/chat-results.json (what the README was written from) and
rewrites the README between the `results:begin` / `results:end` markers with the same table
`posttrain run` prints. tests/test_docs.py checks that the README block is the rendering of
the recorded file.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from posttrain.reporting.report import _md_table
from posttrain.reporting.summary import banner, table, win_rate_rows
from posttrain.results import RunResults, load_results

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RECORDED = REPO / "docs" / "figures" / "chat-results.json"
BLOCK = re.compile(r"(<!-- results:begin[^>]*-->\n)(.*?)(<!-- results:end -->)", re.S)


def render(results: RunResults) -> str:
    header, rows = table(results)
    lines = _md_table(header, rows) + [""]
    for w in win_rate_rows(results.evaluation):
        lines.append(f"Win rate of `{w.candidate}` against `{w.baseline}`, judged by the reward model: {w.win_rate:.3f} "
                     f"(95% CI {w.ci95[0]:.3f}–{w.ci95[1]:.3f}; {w.wins} wins, {w.ties} ties, {w.losses} losses; "
                     f"{w.mean_words_candidate:.1f} vs {w.mean_words_baseline:.1f} words per answer).")
    state, sentence = banner(results)
    if state != "ungated":
        lines.append(f"Release gates of profile `{results.profile}`: {sentence}")
    return "\n".join(lines) + "\n"


def readme_block(text: str) -> str:
    match = BLOCK.search(text)
    if match is None:
        raise SystemExit(f"{README}: no <!-- results:begin --> ... <!-- results:end --> block")
    return match.group(2)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    source = Path(argv[0])
    results = load_results(source)
    RECORDED.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != RECORDED.resolve():
        shutil.copyfile(source, RECORDED)
    text = README.read_text(encoding="utf-8")
    readme_block(text)  # the markers must exist
    README.write_text(BLOCK.sub(lambda m: m.group(1) + render(results) + m.group(3), text, count=1), encoding="utf-8")
    print(f"README results block written from {source} (recorded as {RECORDED.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
