"""Every generated table in docs/benchmarks.md is what its results store says."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "docs_tables.py"


def test_generated_tables_match_their_results_stores():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_number_edited_by_hand_is_rewritten():
    spec = importlib.util.spec_from_file_location("docs_tables", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    document = module.DOC.read_text()
    block = re.search(r"<!-- generated: state_scaling -->\n(.*?)\n<!-- end", document, re.DOTALL)
    doctored = document.replace(block.group(1), block.group(1) + "\n| invented | 1 |")
    assert module.render(doctored) == document
