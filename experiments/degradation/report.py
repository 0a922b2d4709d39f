"""The degradation study's table: final errors per model beside He et al.'s Table 6.

    python -m experiments.degradation.report runs/degradation \
        --out docs/degradation/report.md

One row per model (plain-20 ... ResNet-56): final training error, evaluation error
(and test error where the runs evaluated on validation), each mean +- std over seeds
with the number of runs, beside the paper's Table 6 test error; then, in words,
whether the degradation ordering holds (plain: deeper -> higher training error;
residual: deeper -> lower), whatever the numbers show. Definitions in
experiments/degradation/analysis.py; a table of any runs is `python -m scripts.report`.
"""
from __future__ import annotations

import sys
from typing import Optional

from cnn import cli
from cnn.errors import ConfigError, exit_on_user_error
from experiments.degradation import analysis


def _cell(mean: Optional[float], std: Optional[float]) -> str:
  if mean is None:
    return "n/a"
  return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def render(runs, root: str) -> str:
  """The Markdown report of `runs` (analysis.RunData) read from `root`."""
  cells = analysis.summarize(runs)
  on_val = analysis.evaluates_on_validation(runs)
  lines = [f"# Degradation study: plain vs residual nets ({root})", ""]
  lines.append(f"Scale: {analysis.scale(runs)}. {len(runs)} runs, "
               f"{sum(r.done for r in runs)} finished; evaluation split: "
               f"{'held-out validation' if on_val else 'test'}.")
  lines.append("")
  header = ["model", "runs (done)", "last step", "train error %", ]
  header += ["val error %", "test error %"] if on_val else ["test error %"]
  paper_title, paper_values, paper_note = analysis.paper_reference(runs)
  header += [paper_title]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "---|" * len(header))
  for c in cells:
    row = [f"{analysis.LABELS[c.family]}-{c.depth}", f"{c.n} ({c.done})", str(c.steps),
           _cell(*c.train)]
    row += [_cell(*c.eval), _cell(*c.test)] if on_val else [_cell(*c.eval)]
    paper = paper_values.get((c.family, c.depth))
    row.append(f"{paper:.2f}" if paper is not None else
               "(only plotted)" if c.family == "plain" else "n/a")
    lines.append("| " + " | ".join(row) + " |")
  lines.append("")
  lines.append(f"Errors in %, mean ± sample std over seeds (no ± with one run). Training "
               f"error: the logged train-mode error on augmented batches, averaged over "
               f"the logging windows of the last {100 * analysis.FINAL_FRACTION:.0f} % of "
               f"the steps (at least the last {analysis.FINAL_MIN_WINDOWS}). "
               + ("Validation error: the last evaluation on the held-out training "
                  "images; test error: the final checkpoint on the test split. "
                  if on_val else "Test error: the last evaluation on the test split. ")
               + paper_note)
  lines.append("")
  lines.append("## The two findings of He et al. Fig. 6, on training error")
  lines.append("")
  found = analysis.findings(cells, "train")
  for sentence in found["sentences"]:
    lines.append(f"- {sentence}")
  lines.append("")
  lines.append("Both findings " + ("show" if found["both"] else "do not both show")
               + " at this scale (finding 1 holds, finding 2 holds or is within noise, "
               "and every ResNet is below its plain twin beyond noise).")
  lines.append("")
  lines.append("## Ordering by depth")
  lines.append("")
  for sentence in analysis.verdict(cells, "train"):
    lines.append(f"- {sentence}")
  metric = "test" if any(c.test[0] is not None for c in cells) else "eval"
  for sentence in analysis.verdict(cells, metric):
    lines.append(f"- {sentence}")
  unfinished = [r.name for r in runs if not r.done]
  if unfinished:
    lines.append("")
    lines.append(f"Unfinished runs (their last logged values are used): "
                 f"{', '.join(unfinished)}.")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = cli.parser("experiments.degradation.report", __doc__)
  parser.add_argument("root", help="the sweep's root folder (one workdir per run)")
  parser.add_argument("--out", default=None, help="Markdown file (default: print)")
  args, _ = cli.parse(parser, argv, overrides=False)
  with exit_on_user_error():
    runs = [r for r in analysis.load_runs(args.root) if r.family in analysis.FAMILIES]
    if not runs:
      raise ConfigError(f"No plain or ResNet runs under {args.root}; pass the --root of "
                        "a degradation sweep (folders with config.json and metrics.jsonl).")
    text = render(runs, args.root)
    cli.emit(text, args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
