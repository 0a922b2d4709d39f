"""He et al. (2016) Fig. 6 from a degradation sweep, and per-stage gradient norms.

    python -m experiments.degradation.plot runs/degradation --out docs/degradation/fig6

Writes <out>.png and <out>.pdf: left panel the plain nets, right panel the ResNets, one
colour per depth, training error dashed (the logged train_top1_error: augmented batches
in train mode, averaged over each logging window) and evaluation error solid
(eval_top1_error: test, or validation for runs with data.validation_size), against
iterations, as in the paper's figure; dotted vertical lines mark the learning-rate
drops. Also <out dir>/grad_norms.png (and .pdf): the gradient norm of each stage
(grad_norm/stage1..3, plus the stem conv1 and the head) of the plain net and the
ResNet of one depth (--grad_depth, default the deepest that both families have), the
"why plain nets degrade" view. The curves of any runs, of any study, are
`python -m scripts.plot`.
"""
from __future__ import annotations

import pathlib
import sys
import textwrap
from typing import Optional

from cnn import cli
from cnn.errors import ConfigError, exit_on_user_error
from cnn.runs import mean_curve
from experiments.degradation import analysis

# One colour per depth, the same in both panels.
DEPTH_COLORS = {20: "tab:orange", 32: "tab:blue", 44: "tab:green", 56: "tab:red",
                110: "tab:purple", 18: "tab:orange", 34: "tab:red"}
GRAD_PANELS = ("stem", "stage1", "stage2", "stage3", "stage4", "head")


def _color(depth: int, i: int) -> str:
  return DEPTH_COLORS.get(depth, f"C{i % 10}")


def _lr_drops(runs) -> list[int]:
  """The piecewise schedule's boundaries, when all `runs` share them (dotted lines)."""
  found = {tuple(r.config.get("schedule", {}).get("boundaries", []) or ())
           for r in runs if r.config.get("schedule", {}).get("name") == "piecewise"}
  last = max((r.steps or 0 for r in runs), default=0)   # drops after the run: not drawn
  return [b for b in found.pop() if b <= last] if len(found) == 1 else []


def plot_fig6(runs, out: pathlib.Path, *, title: str = "") -> list[pathlib.Path]:
  """Fig. 6: plain | ResNet panels; writes <out>.png and <out>.pdf."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.lines import Line2D
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
  top = 0.0
  for ax, family in zip(axes, analysis.FAMILIES):
    members = [r for r in runs if r.family == family]
    depths = sorted({r.depth for r in members})
    for i, depth in enumerate(depths):
      group = [r for r in members if r.depth == depth and r.rows]
      if not group:
        continue
      color = _color(depth, i)
      n = f" ({len(group)} seeds)" if len(group) > 1 else ""
      steps, values = mean_curve(group, "train_top1_error")
      ax.plot(steps, [100 * v for v in values], "--", color=color, linewidth=1.0)
      top = max([top] + [100 * v for v in values])
      steps, values = mean_curve(group, "eval_top1_error")
      ax.plot(steps, [100 * v for v in values], "-", color=color, linewidth=1.8,
              marker="o" if len(steps) < 30 else None, markersize=3,
              label=f"{analysis.LABELS[family]}-{depth}{n}")
      top = max([top] + [100 * v for v in values])
    for boundary in _lr_drops(members):
      ax.axvline(boundary, color="grey", linestyle=":", linewidth=0.8)
    group_title = analysis.GROUPS[family]
    ax.set_title(group_title if members else f"{group_title} (no runs)")
    ax.set_xlabel("iterations")
    ax.grid(alpha=0.3)
  evals = "validation" if analysis.evaluates_on_validation(runs) else "test"
  for ax in axes:
    handles, labels = ax.get_legend_handles_labels()
    if handles:   # the line styles once more, in black, under the depths
      handles += [Line2D([], [], color="black", linestyle="--", linewidth=1.0),
                  Line2D([], [], color="black", linestyle="-", linewidth=1.8)]
      labels += ["training", evals]
      ax.legend(handles, labels, loc="best", fontsize=8)
  axes[0].set_ylabel(f"error (%): dashed training, solid {evals}")
  axes[0].set_ylim(0, min(100, max(20, top * 1.05)))
  fig.suptitle((title or "Plain vs residual nets, as in He et al. 2016 Fig. 6")
               + "\n" + textwrap.fill(analysis.scale(runs), 140), fontsize=9)
  fig.tight_layout()
  return _save(fig, out)


def stage_sizes(config: dict, input_shape=(1, 32, 32, 3), num_classes: int = 10
                ) -> dict[str, int]:
  """Parameters per stage (`cnn.models.stage_of`) of a run's model, counted from
  shapes alone (jax.eval_shape: nothing is computed)."""
  import jax
  import jax.numpy as jnp
  from cnn import models
  m = dict(config.get("model", {}))
  model = models.create(m.pop("name"), num_classes=num_classes, **m)
  x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
  params = jax.eval_shape(lambda v: model.init(jax.random.key(0), v, train=False), x)
  sizes: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params["params"])[0]:
    stage = models.stage_of("/".join(str(getattr(k, "key", k)) for k in path))
    sizes[stage] = sizes.get(stage, 0) + int(leaf.size)
  return sizes


def plot_grad_norms(runs, out: pathlib.Path, depth: int,
                    sizes: Optional[dict[str, dict[str, int]]] = None) -> list[pathlib.Path]:
  """Per-stage gradient norms of plain-`depth` vs ResNet-`depth` (mean over seeds),
  divided by sqrt(parameters in the stage): the root-mean-square gradient of one
  parameter, comparable across stages of different sizes. `sizes` ({family: {stage:
  count}}) defaults to counting the runs' models."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  pair = {f: [r for r in runs if r.family == f and r.depth == depth]
          for f in analysis.FAMILIES}
  logged = {k.split("/", 1)[1] for f in pair for r in pair[f] for row in r.rows
            for k in row if k.startswith("grad_norm/")}
  panels = [p for p in GRAD_PANELS if p in logged]
  if not panels:
    raise ConfigError(f"The depth-{depth} runs logged no per-stage gradient norms; train "
                      "them with --config.train.log_grad_norms=True.")
  if sizes is None:
    sizes = {f: stage_sizes(pair[f][0].config) for f in analysis.FAMILIES if pair[f]}
  fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.4), sharey=True)
  axes = list(axes) if len(panels) > 1 else [axes]
  for ax, panel in zip(axes, panels):
    for family, style in (("plain", "--"), ("resnet", "-")):
      steps, values = mean_curve(pair[family], f"grad_norm/{panel}")
      count = sizes.get(family, {}).get(panel)
      if steps and count:
        ax.plot(steps, [v / count ** 0.5 for v in values], style,
                color="tab:red" if family == "plain" else "tab:blue",
                label=f"{analysis.LABELS[family]}-{depth} ({len(pair[family])} seeds)")
    ax.set_yscale("log")
    ax.set_title(panel)
    ax.set_xlabel("iterations")
    ax.grid(alpha=0.3, which="both")
  axes[0].set_ylabel("RMS gradient per parameter\n(stage L2 norm / sqrt(parameters))")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"Gradient per parameter by stage, plain-{depth} vs ResNet-{depth} "
               "(mean over seeds)\n"
               + textwrap.fill(analysis.scale(pair["plain"] + pair["resnet"]), 160),
               fontsize=9)
  fig.tight_layout()
  return _save(fig, out)


def _save(fig, out: pathlib.Path) -> list[pathlib.Path]:
  import matplotlib.pyplot as plt
  out.parent.mkdir(parents=True, exist_ok=True)
  paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
  fig.savefig(paths[0], dpi=150)
  fig.savefig(paths[1])
  plt.close(fig)
  return paths


def default_grad_depth(runs) -> int:
  both = ({r.depth for r in runs if r.family == "plain"} &
          {r.depth for r in runs if r.family == "resnet"})
  if not both:
    raise ConfigError("No depth has both a plain and a residual run; the gradient-norm "
                      "figure compares the two (pass --no_grad to skip it).")
  return max(both)


def main(argv: list[str] | None = None) -> int:
  parser = cli.parser("experiments.degradation.plot", __doc__)
  parser.add_argument("root", help="the sweep's root folder (one workdir per run)")
  parser.add_argument("--out", default=None,
                      help="output path without extension (default <root>/fig6)")
  parser.add_argument("--grad_depth", type=int, default=None,
                      help="depth of the gradient-norm figure (default: deepest pair)")
  parser.add_argument("--no_grad", action="store_true", help="skip the gradient figure")
  parser.add_argument("--title", default="")
  args, _ = cli.parse(parser, argv, overrides=False)
  with exit_on_user_error():
    runs = [r for r in analysis.load_runs(args.root) if r.family in analysis.FAMILIES]
    if not runs:
      raise ConfigError(f"No plain or ResNet runs under {args.root}; pass the --root of "
                        "a degradation sweep (folders with config.json and metrics.jsonl).")
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.root) / "fig6"
    written = plot_fig6(runs, out, title=args.title)
    if not args.no_grad:
      depth = args.grad_depth or default_grad_depth(runs)
      written += plot_grad_norms(runs, out.parent / "grad_norms", depth)
  for path in written:
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
