"""Startup: `import hetsurgery` and the command line leave the heavy optional packages unimported.

ONNX, onnxruntime, onnxscript, matplotlib, graphviz, scikit-learn, POT and transformers (an optional extra)
cost seconds to import; they are imported where they are used, so `import hetsurgery` and `hetsurgery --help`
cost little more than `import torch` (measured by `python -m bench startup`).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("onnx", "onnxruntime", "onnxscript", "matplotlib", "graphviz", "sklearn", "ot", "scipy.optimize", "networkx",
         "transformers")
PROBE = """
import json, sys
import hetsurgery, hetsurgery.cli, hetsurgery.config, hetsurgery.demo, hetsurgery.export, hetsurgery.merging
hetsurgery.cli.parser().format_help()
print(json.dumps(sorted(m for m in {heavy} if m in sys.modules)))
"""


def test_importing_hetsurgery_and_its_command_line_loads_no_heavy_package() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120, check=True)
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"imported at startup: {', '.join(loaded)}; import them inside the functions that use them"
