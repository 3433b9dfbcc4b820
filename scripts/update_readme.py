"""Copy each committed results table into README.md between its markers, so no number is typed.

    python scripts/update_readme.py        (also: make readme)

A block looks like ``<!-- results/default-cpu.md -->`` ... ``<!-- end -->``; its body is replaced
by that file's contents. tests/test_setup.py checks the README is up to date.
"""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"(<!-- (results/[\w.-]+\.md) -->\n)(.*?)(<!-- end -->)", re.S)


def render(readme: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + (ROOT / m.group(2)).read_text() + m.group(4), readme)


if __name__ == "__main__":
    path = ROOT / "README.md"
    new = render(path.read_text())
    if "--check" in sys.argv:
        sys.exit(0 if new == path.read_text() else "README.md is out of date: run `make readme`.")
    path.write_text(new)
