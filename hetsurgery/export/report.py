"""``report.md`` of a model package: what the files are, the model, the merge plan, and the caller's report."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from torch import fx

from hetsurgery.export.codegen import InputSpec, Layout, versions
from hetsurgery.plan.width_plan import WidthPlan


def report_markdown(name: str, gm: fx.GraphModule, layout: Layout, inputs: Sequence[InputSpec],
                    plan: WidthPlan | None, report: object | None) -> str:
    """The Markdown text; ``report`` is Markdown (a ``str``) or any object whose ``str`` is shown verbatim."""
    n_params = sum(t.numel() for t in layout.stored.values() if t.is_floating_point())
    layers = collections.Counter(cls for cls, _ in layout.modules.values())
    lines = [
        f"# {name}", "",
        f"A model package written by {versions()}.", "",
        "| file | what |", "|---|---|",
        "| `model.py` | the generated code; `import model; net = model.load()` needs only torch and safetensors |",
        f"| `model.safetensors` | the weights: {len(layout.stored)} tensors, {n_params:,} values |",
        "| `plan.json` | the width plan that aligned the merged models (`hetsurgery.export.read_package(folder).plan`) |",
        "| `report.md` | this page |", "",
        "## Model", "",
        f"- inputs: {', '.join(f'{tuple(shape)} {dtype}' for shape, dtype in inputs) or 'not recorded'}",
        f"- layers: {', '.join(f'{cls} x{n}' for cls, n in layers.most_common())}",
        f"- graph: {sum(1 for _ in gm.graph.nodes)} fx nodes; the forward is `Model.forward` in model.py",
    ]
    if layout.tied:
        lines.append(f"- tied tensors: {', '.join(f'`{a}` = `{b}`' for a, b in layout.tied.items())}")
    lines += ["", *_plan_section(plan)]
    if report is not None:
        body = report if isinstance(report, str) else f"```\n{report}\n```"
        lines += ["## Report", "", body.strip(), ""]
    return "\n".join(lines)


def _plan_section(plan: WidthPlan | None) -> list[str]:
    if plan is None:
        return ["## Merge plan", "", "No plan was saved with this model.", ""]
    weights = " / ".join(f"{w:.3g}" for w in plan.weights)
    lines = ["## Merge plan", "", f"Method `{plan.method}`, model weights {weights}, anchor model {plan.anchor}.", "",
             "| group | widths in | merged width | how |", "|---:|---|---:|---|"]
    for gid, match in plan.groups.items():
        widths = " / ".join(str(m.shape[1]) for m in match.merge)
        lines.append(f"| {gid} | {widths} | {match.size} | {match.kind or plan.method} |")
    return [*lines, ""]
