"""Scale: checkpoints of about 1B parameters streamed block by block, beside mergekit.

Each run is a fresh process under ``/usr/bin/time -v`` (``bench.scale_job``); the table gives its wall time and
peak resident memory (``Maximum resident set size``) against the size of its inputs on disk. mergekit runs from its
own venv (``MERGEKIT``, default ``/tmp/mk/bin/mergekit-yaml``: ``python3 -m venv /tmp/mk``, ``pip install
torch==2.13.0``, then ``pip install mergekit``, which keeps that torch). The checkpoints live under ``SCALE_ROOT``
(default ``/tmp/hetsurgery-scale``), made once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from bench.report import machine, write_section

ROOT = Path(os.environ.get("SCALE_ROOT", "/tmp/hetsurgery-scale"))
MERGEKIT = os.environ.get("MERGEKIT", "/tmp/mk/bin/mergekit-yaml")
HERE = Path(__file__).resolve().parents[1]
MERGEKIT_CONFIG = """merge_method: linear
models:
  - model: {a}
    parameters: {{weight: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5}}
dtype: bfloat16
"""


def timed(command: list[str]) -> dict[str, object]:
    """Wall seconds, peak RSS (MiB) and the ``RESULT`` line of ``command`` run under ``/usr/bin/time -v``."""
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    done = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env, cwd=HERE)
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))  # type: ignore[union-attr]
    if done.returncode:  # the last line says why: time's verdict (a signal: 9 is the kernel's out-of-memory kill)
        why = re.search(r"Command (terminated by signal \d+|exited with non-zero status \d+)", done.stderr)
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}\n"
                           f"{why.group(1) if why else 'failed'} at peak RSS {rss / 1024:.0f} MiB")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr).group(1)  # type: ignore[union-attr]
    seconds = sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":"))))
    result = next((json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")), {})
    return {"seconds": seconds, "peak_mib": rss / 1024, "result": result}


def job(kind: str) -> dict[str, object]:
    return timed([sys.executable, "-m", "bench.scale_job", kind, str(ROOT)])


def mergekit() -> dict[str, object] | None:
    if not Path(MERGEKIT).exists():
        return None
    out = ROOT / "out-mergekit"
    shutil.rmtree(out, ignore_errors=True)
    config = ROOT / "mergekit.yml"
    config.write_text(MERGEKIT_CONFIG.format(a=ROOT / "A", b=ROOT / "B"))
    return timed([MERGEKIT, str(config), str(out), "--quiet"])


def _warm(*folders: Path) -> None:
    """Read every shard of ``folders`` once, so the run that follows finds them in the page cache."""
    for folder in folders:
        for f in sorted(folder.glob("*.safetensors")):
            with f.open("rb") as r:
                while r.read(1 << 26):
                    pass


def measure() -> dict[str, object]:
    ROOT.mkdir(parents=True, exist_ok=True)
    made = json.loads((ROOT / "made.json").read_text()) if (ROOT / "made.json").exists() else None
    if made is None:
        made = job("make")["result"]
        (ROOT / "made.json").write_text(json.dumps(made))
    # SCALE_ONLY=permute,check re-measures those runs and keeps the others from the last measured.json
    only = [k for k in os.environ.get("SCALE_ONLY", "").split(",") if k]
    saved = ROOT / "measured.json"
    runs: dict[str, object] = json.loads(saved.read_text())["runs"] if only and saved.exists() else {}
    for kind in only or ["average", "expand", "permute", "malpad", "mergekit", "check"]:
        if kind not in ("mergekit", "check"):
            shutil.rmtree(ROOT / f"out-{kind}", ignore_errors=True)
        print(f"scale {kind}", flush=True)
        if kind in ("average", "mergekit"):  # both read A and B from the page cache, neither pays the disk
            _warm(ROOT / "A", ROOT / "B")
        try:
            runs[kind] = mergekit() if kind == "mergekit" else job(kind)
        except RuntimeError as exc:  # the report says which run failed, and the others still count
            runs[kind] = {"error": str(exc).splitlines()[-1]}
        if isinstance(runs[kind], dict):
            runs[kind]["commit"] = _commit()
        print(f"  {json.dumps(runs[kind])[:300]}", flush=True)
        (ROOT / "measured.json").write_text(json.dumps({"made": made, "runs": runs}, indent=1))
    return {"made": made, "runs": runs}


def section(m: dict[str, object]) -> str:
    made, runs = m["made"], m["runs"]
    assert isinstance(made, dict) and isinstance(runs, dict)
    size = {k: v / 2**20 for k, v in made["bytes"].items()}
    check = runs["check"].get("result") or {}
    pairs = {"average": ("A", "B"), "mergekit": ("A", "B"), "permute": ("A", "B"), "malpad": ("A", "C"),
             "expand": ("A",)}
    what = {
        "average": "hetsurgery `stream.merge([A, B], None, out, method=\"average\")`",
        "mergekit": "mergekit 0.1.5 `mergekit-yaml` linear, weights 0.5/0.5, bfloat16",
        "expand": f"hetsurgery `stream.apply(A, [InsertZeroResidual(\"stage0\", {tuple(_expand_at())})], out)`",
        "permute": "hetsurgery `stream.merge([A, B], calibration, out, method=\"permute\")` (statistics block by "
                   "block on 8 sequences of 64 tokens)",
        "malpad": "hetsurgery `stream.merge([A, C], None, out, method=\"mal-pad\")` (C: 4096 MLP channels)",
    }
    rows = []
    for kind in ("average", "mergekit", "expand", "permute", "malpad"):
        r = runs.get(kind)
        if r is None:
            rows.append(f"| {what[kind]} | not run ({MERGEKIT} not found) | | | | |")
            continue
        if "error" in r:
            rows.append(f"| {what[kind]} | failed: {r['error']} | | | | |")
            continue
        inputs = sum(size[n] for n in pairs[kind])
        two = size["A"] + size[pairs[kind][-1]] if kind != "expand" else 2 * size["A"]
        share = r["peak_mib"] / two
        stages = r["result"].get("stages", {}) if isinstance(r.get("result"), dict) else {}
        detail = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        rows.append(f"| {what[kind]} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {inputs:.0f} | {share:.1%} "
                    f"{'✓' if share <= 0.25 else '✗ (target 25 %)'} | {detail} |")
    checks = [f"- the check failed: {runs['check']['error']}"] if "error" in runs["check"] else [
              f"- block expansion: {check['expand']['layers']} layers, largest logit difference from A "
              f"{check['expand']['max_abs_error']:.3g} (must be 0: exact);",
              f"- permute merge of A with B (A permuted: every group, heads as whole heads): largest logit "
              f"difference from A {check['permute']['max_abs_error']:.3g} (must be 0: the merge gives A back);",
              f"- mal-pad merge of A with C: largest logit difference from A with the MLP channels only A has halved "
              f"{check['malpad']['max_abs_error']:.3g} (C's zero padding averaged in; must be 0);"]
    if "average_vs_mergekit" in check:
        checks.append(f"- hetsurgery's average and mergekit's linear merge differ by at most "
                      f"{check['average_vs_mergekit']:.3g} in any weight.")
    gpu = ("the permute row's statistics pass ran on the GPU (`device=\"cuda\"`)" if torch.cuda.is_available() else
           "skipped, this machine has none: the permute row's statistics pass ran on the CPU (with a CUDA device, "
           "the bench runs it with `device=\"cuda\"`)")
    return "\n".join([
        "## Scale: checkpoints streamed block by block", "",
        f"A Llama of {made['parameters'] / 1e9:.2f} B parameters (hidden 2048, MLP 5632, 22 layers, 32 heads, 4 "
        f"key/value heads, vocabulary 32000) with random weights, saved in **bfloat16** as safetensors shards of "
        f"500 MB: A ({size['A']:.0f} MiB); B, A with every permutable group permuted at random (a model no "
        f"unaligned merge gives back); C ({size['C']:.0f} MiB), A narrowed to 4096 of its 5632 MLP channels per "
        "layer, a random subset in a random order. Each run is a fresh process under `/usr/bin/time -v`; peak is its "
        "maximum resident set size, against the two inputs' size on disk (for block expansion, twice A's). "
        "Before the `average` and the mergekit run, A's and B's shards are read once, so both find them in the page "
        "cache. "
        "Every output is a Hugging Face folder that `LlamaForCausalLM.from_pretrained` loads.", "",
        "| run | wall (s) | peak RSS (MiB) | inputs (MiB) | peak / two inputs | stages (s) |",
        "|---|---|---|---|---|---|", *rows, "",
        "What each output computes (loaded with `from_pretrained`, float32 logits of 2 sequences of 16 tokens):", "",
        *checks, "",
        "mergekit's linear merge averages A and B position by position: B's channels are in another order, so the "
        "result is neither model; hetsurgery's `permute` aligns them first and gives A back, and `mal-pad` merges "
        "models of different widths, and `InsertZeroResidual` changes the depth, which mergekit cannot do. "
        f"GPU: {gpu}.", "",
        f"Command: `python -m bench scale`. Machine: {machine()}.{_commits(runs)}",
    ])


def _commits(runs: dict[str, object]) -> str:
    """Which commit each run was measured at, when they differ (``SCALE_ONLY`` re-measured some)."""
    at = {k: r.get("commit") for k, r in runs.items() if isinstance(r, dict) and r.get("commit")}
    if len(set(at.values())) <= 1:
        return ""
    return " Runs measured at: " + ", ".join(f"{k} {c}" for k, c in at.items()) + "."


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()


def _expand_at() -> tuple[int, ...]:
    from bench.scale_job import EXPAND_AT

    return EXPAND_AT


def main() -> str:
    print("scale", flush=True)
    m = measure()
    (ROOT / "measured.json").write_text(json.dumps(m, indent=1))
    text = section(m)
    write_section("scale", text)
    return text
