"""The README's Python runs as written: every ```python block, in order, in one namespace, in a
folder that holds a ``backbone.safetensors`` exported from a tiny trained run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from exported_run import train_and_export

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line number of the block's first code line, code)`` of every ```python block of ``text``."""
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in PYTHON_BLOCK.finditer(text)]


def test_blocks_are_found_with_their_line_numbers():
    text = "intro\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x + 1\nprint(y)\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (9, "y = x + 1\nprint(y)\n")]


def test_the_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text())
    assert blocks, f"{README} has no ```python block"
    train_and_export(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for number, (line, code) in enumerate(blocks, start=1):
        try:
            # padded so that tracebacks give README's own line numbers
            exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)  # noqa: S102 - the README's code
        except Exception as err:  # noqa: BLE001 - any failure of a block fails the test, named
            first = code.strip().splitlines()[0] if code.strip() else "(empty)"
            pytest.fail(f"README python block {number} (line {line}, starting {first!r}) failed: "
                        f"{type(err).__name__}: {err}")


def test_the_results_section_is_generated_from_the_cpu_report():
    """README's results table is ``benchmarks/readme_results.py``'s output for the committed report."""
    script = README.parent / "benchmarks" / "readme_results.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
