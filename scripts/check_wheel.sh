#!/usr/bin/env bash
# Packaging check (called by .ci/run): build the wheel, check that it ships every module
# and data file, install it into a fresh virtualenv, and run it from outside the checkout.
#
# The fresh virtualenv borrows its dependencies from .venv (no second torch download): a
# .pth file puts .venv's site-packages directory on its sys.path. A directory added by a
# .pth line is not scanned for .pth files of its own, so the editable install of this
# checkout (a .pth hook in .venv) is not picked up; the script checks that `import
# posttrain` fails before the wheel is installed and resolves into the fresh virtualenv after.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=.venv/bin/python
work=$(mktemp -d "${TMPDIR:-/tmp}/posttrain-wheel.XXXXXX")
trap 'rm -rf "$work"' EXIT
say() { echo "check_wheel: $*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; exit 1; }

# 1. Build from a copy of the files git would commit (tracked and new, not ignored), so a
#    stale build/ directory or a file deleted from the checkout cannot leak into the wheel.
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || fail "run this from a git checkout"
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' file; do
  if [ -e "$file" ]; then printf '%s\0' "$file"; fi
done | tar --null -T - -cf - | tar -xf - -C "$work/src"
"$python" -m pip wheel --no-deps -q -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/posttrain-*.whl)
say "built $(basename "$wheel")"

# 2. What the wheel holds: every module of the source, the task suites, the tokenizer,
#    the console script; nothing outside the posttrain package.
"$python" - "$wheel" "$work/src" <<'PY'
import fnmatch
import sys
import zipfile
from pathlib import Path

wheel, src = sys.argv[1], Path(sys.argv[2])
names = set(zipfile.ZipFile(wheel).namelist())
problems = []
DATA = ("posttrain/eval/tasks/*/*.yaml", "posttrain/eval/tasks/*/*.jsonl", "posttrain/embedded/tokenizer/*",
        "posttrain/feedback/static/*", "posttrain/chat_templates/*")
for pattern in ("posttrain/rl/*.py", *DATA):
    if not fnmatch.filter(names, pattern):
        problems.append(f"nothing matches {pattern}")
shipped = [*src.glob("posttrain/**/*.py"), *(path for pattern in DATA for path in src.glob(pattern))]
problems += [f"missing {path.relative_to(src).as_posix()}" for path in sorted(shipped)
             if path.relative_to(src).as_posix() not in names]
tops = {name.split("/")[0] for name in names}
problems += [f"unexpected top-level entry {top}" for top in sorted(tops) if top != "posttrain" and not top.endswith(".dist-info")]
entry_points = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
text = zipfile.ZipFile(wheel).read(entry_points).decode() if entry_points else ""
if "posttrain = posttrain.cli:console_script" not in text:
    problems.append("no console script posttrain = posttrain.cli:console_script")
if problems:
    sys.exit("check_wheel: FAILED: the wheel is incomplete:\n  " + "\n  ".join(problems))
print(f"check_wheel: the wheel holds all {len(shipped)} modules and data files of the source")
PY

# 3. A fresh virtualenv on the same interpreter, borrowing .venv's dependencies.
base_python=$("$python" -c 'import sys; print(sys._base_executable)')
"$base_python" -m venv "$work/venv"
venv_python="$work/venv/bin/python"
venv_site=$("$venv_python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$python" -c 'import sysconfig; print("\n".join(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])))' \
  > "$venv_site/posttrain-check-deps.pth"
mkdir "$work/outside"
cd "$work/outside"  # nothing of the checkout on sys.path from here on
"$venv_python" -c 'import torch, transformers, trl, typer' || fail "the fresh virtualenv does not see .venv's dependencies"
if "$venv_python" -c 'import posttrain' 2>/dev/null; then
  fail "posttrain is importable in the fresh virtualenv before the wheel is installed: $("$venv_python" -c 'import posttrain; print(posttrain.__file__)')"
fi

# 4. Install the wheel alone, and use it.
"$venv_python" -m pip install -q --no-deps --no-index "$wheel"
location=$("$venv_python" -c 'import posttrain; print(posttrain.__file__)')
case "$location" in
  "$venv_site"/posttrain/*) say "import posttrain -> $location" ;;
  *) fail "import posttrain resolves to $location, not into $venv_site" ;;
esac
expected="posttrain $(basename "$wheel" | cut -d- -f2)"
got=$("$work/venv/bin/posttrain" --version) || fail "posttrain --version failed"
[ "$got" = "$expected" ] || fail "posttrain --version printed '$got', expected '$expected'"
got=$("$venv_python" -m posttrain --version) || fail "python -m posttrain --version failed"
[ "$got" = "$expected" ] || fail "python -m posttrain --version printed '$got', expected '$expected'"
say "posttrain --version and python -m posttrain --version: $expected"
"$work/venv/bin/posttrain" validate "$repo/recipes/chat.yaml" || fail "posttrain validate $repo/recipes/chat.yaml"
say "ok"
