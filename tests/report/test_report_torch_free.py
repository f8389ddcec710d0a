"""Rendering the tables and the HTML report needs no torch: the report modules import and run in
a Python where importing torch fails. (The model that makes the qualitative episodes runs in
``hdmnet.evaluate.examples``, which only the CLI calls.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import importlib.abc
import sys
from pathlib import Path


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "torch":
            raise ImportError(f"import of {name} blocked: the report must render without torch")


sys.meta_path.insert(0, NoTorch())

from hdmnet.report import build, collect, figures, html, tables
from tests.report.fixtures_records import default_params, episode, write_grid

params = default_params(Path(sys.argv[1]), Path(sys.argv[2]), "grid.folds=[0]")
write_grid(params)
written = build.aggregate(params)
page = build.build_report(params, lambda run, n: [episode(run.shot, seed=i) for i in range(2)])
assert not [name for name in sys.modules if name.partition(".")[0] == "torch"]
print(len(written), page)
"""


def test_tables_and_report_render_with_torch_blocked(project_root, tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(project_root), str(tmp_path)],
        cwd=project_root,  # python -c puts the working folder first: tests.report imports
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    count, page = result.stdout.split()
    assert int(count) == 11  # 3 tables x (md, csv, tex), provenance.json and metrics.json
    text = Path(page).read_text(encoding="utf-8")
    assert '<table data-table="main">' in text and '<table data-table="ablation">' in text
    assert text.count('<img src="data:image/jpeg;base64,') == 2  # a grid and a correlation map
