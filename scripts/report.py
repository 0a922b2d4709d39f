"""The degradation study's table: final errors per model beside He et al.'s Table 6.

    python -m scripts.report runs/degradation --out docs/degradation/report.md

One row per model (plain-20 ... ResNet-56): final training error, evaluation error
(and test error where the runs evaluated on validation), each mean +- std over seeds
with the number of runs, beside the paper's Table 6 test error; then, in words,
whether the degradation ordering holds (plain: deeper -> higher training error;
residual: deeper -> lower), whatever the numbers show. Definitions in cnn/report.py.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional

from cnn.errors import ConfigError, exit_on_user_error


def _cell(mean: Optional[float], std: Optional[float]) -> str:
  if mean is None:
    return "n/a"
  return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def render(runs, root: str) -> str:
  """The Markdown report of `runs` (cnn.report.RunData) read from `root`."""
  from cnn import report
  cells = report.summarize(runs)
  on_val = report.evaluates_on_validation(runs)
  steps = sorted({r.steps for r in runs})
  widths = sorted({r.config.get("model", {}).get("width", "default") for r in runs},
                  key=str)
  dataset = sorted({str(r.config.get("data", {}).get("source", "?")) for r in runs})
  lines = [f"# Degradation study: plain vs residual nets ({root})", ""]
  lines.append(f"Data {', '.join(dataset)}; {len(runs)} runs, {sum(r.done for r in runs)} "
               f"finished; configured "
               f"steps {', '.join(map(str, steps))}; model width {', '.join(map(str, widths))}"
               f"; evaluation split: {'held-out validation' if on_val else 'test'}.")
  lines.append("")
  header = ["model", "runs (done)", "last step", "train error %", ]
  header += ["val error %", "test error %"] if on_val else ["test error %"]
  paper_title, paper_values, paper_note = report.paper_reference(runs)
  header += [paper_title]
  lines.append("| " + " | ".join(header) + " |")
  lines.append("|" + "---|" * len(header))
  for c in cells:
    row = [f"{report.LABELS[c.family]}-{c.depth}", f"{c.n} ({c.done})", str(c.steps),
           _cell(*c.train)]
    row += [_cell(*c.eval), _cell(*c.test)] if on_val else [_cell(*c.eval)]
    paper = paper_values.get((c.family, c.depth))
    row.append(f"{paper:.2f}" if paper is not None else
               "(only plotted)" if c.family == "plain" else "n/a")
    lines.append("| " + " | ".join(row) + " |")
  lines.append("")
  lines.append(f"Errors in %, mean ± sample std over seeds (no ± with one run). Training "
               f"error: the logged train-mode error on augmented batches, averaged over "
               f"the logging windows of the last {100 * report.FINAL_FRACTION:.0f} % of "
               f"the steps (at least the last {report.FINAL_MIN_WINDOWS}). "
               + ("Validation error: the last evaluation on the held-out training "
                  "images; test error: the final checkpoint on the test split. "
                  if on_val else "Test error: the last evaluation on the test split. ")
               + paper_note)
  lines.append("")
  lines.append("## Does the degradation ordering hold?")
  lines.append("")
  for sentence in report.verdict(cells, "train"):
    lines.append(f"- {sentence}")
  metric = "test" if any(c.test[0] is not None for c in cells) else "eval"
  for sentence in report.verdict(cells, metric):
    lines.append(f"- {sentence}")
  unfinished = [r.name for r in runs if not r.done]
  if unfinished:
    lines.append("")
    lines.append(f"Unfinished runs (their last logged values are used): "
                 f"{', '.join(unfinished)}.")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m scripts.report", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("root", help="the sweep's root folder (one workdir per run)")
  parser.add_argument("--out", default=None, help="Markdown file (default: print)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  with exit_on_user_error():
    from cnn import report
    runs = [r for r in report.load_runs(args.root) if r.family in report.FAMILIES]
    if not runs:
      raise ConfigError(f"No plain or ResNet runs under {args.root}; pass the --root of "
                        "a degradation sweep (folders with config.json and metrics.jsonl).")
    text = render(runs, args.root)
    if args.out:
      out = pathlib.Path(args.out)
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(text)
      print(out)
    else:
      print(text, end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
