"""The degradation study's analysis: plain/ResNet families, the paper's numbers, verdicts.

Used by experiments/degradation/plot.py (He et al. Fig. 6 and the gradient-norm
figure) and experiments/degradation/report.py (the Table 6 comparison). Reading the
workdirs, series and means over seeds are the library's (`cnn.runs`); this module adds
what only this study knows: which runs are plain or residual nets of which depth, the
paper's tables, and whether the degradation ordering holds.

Definitions used in the report and the figures:

* training error: ``train_top1_error`` of metrics.jsonl, the top-1 error of the
  augmented training batches in train mode (BN on batch statistics), averaged over
  each logging window. The final training error averages the windows that end in the
  last `FINAL_FRACTION` of the run's steps, and at least the last `FINAL_MIN_WINDOWS`
  windows (`cnn.runs.final_window_mean`), so that it rests on a few thousand images
  rather than one window's.
* evaluation error: ``eval_top1_error``, on the run's evaluation split (the test set,
  or the held-out validation images when ``data.validation_size`` > 0); the final one
  is the last evaluation. test.json, when present, holds the test error of a run that
  evaluated on validation.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, Optional, Sequence

from cnn import runs as runs_lib
from cnn.runs import mean_std

FINAL_FRACTION = 0.05
FINAL_MIN_WINDOWS = 2
FAMILIES = ("plain", "resnet")
LABELS = {"plain": "plain", "resnet": "ResNet"}
GROUPS = {"plain": "Plain nets", "resnet": "ResNets"}
# He et al. 2016 Table 6, CIFAR-10 test error (%) of the ResNets (option A). For
# ResNet-110 the paper gives "6.43 (6.61 +- 0.16)": best of 5 runs (mean +- std).
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}
PAPER_TABLE6_NOTE = ("He et al. 2016 Table 6 gives the ResNets' test error only (ResNet-110: "
                     "best of 5 runs, mean 6.61 +- 0.16); the plain nets appear only as "
                     "curves in Fig. 6 (left), where both training and test error rise "
                     "with depth from plain-20 to plain-56: no number is published for "
                     "them.")
# He et al. 2016 Table 2, ImageNet validation top-1 error (%), 10-crop testing.
PAPER_TABLE2 = {("plain", 18): 27.94, ("plain", 34): 28.54, ("resnet", 18): 27.88,
                ("resnet", 34): 25.03}
PAPER_TABLE2_NOTE = ("He et al. 2016 Table 2 reports 10-crop top-1 error on the ImageNet "
                     "validation set; the evaluation here is one centre crop, which is "
                     "typically 1.5-2 points worse.")
_NAME = re.compile(r"^(plain|resnet)(\d+)$")


@dataclasses.dataclass
class RunData(runs_lib.Run):
  """A run of the study: a `cnn.runs.Run` with its family and depth."""
  family: Optional[str] = None        # "plain" | "resnet" | None (neither)
  depth: Optional[int] = None


def family_depth(config: dict[str, Any]) -> tuple[Optional[str], Optional[int]]:
  """("plain" | "resnet", depth) of a run config: model names plain56 / resnet56, or
  cifar_resnet / imagenet_resnet with model.depth and model.residual."""
  model = config.get("model", {})
  name = str(model.get("name", ""))
  match = _NAME.match(name)
  if match:
    return match.group(1), int(match.group(2))
  if name in ("cifar_resnet", "imagenet_resnet") and "depth" in model:
    return ("resnet" if model.get("residual", True) else "plain"), int(model["depth"])
  return None, None


def _study_run(run: runs_lib.Run) -> RunData:
  family, depth = family_depth(run.config)
  fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(runs_lib.Run)}
  return RunData(**fields, family=family, depth=depth)


def read_run(workdir: pathlib.Path) -> Optional[RunData]:
  """The run in `workdir`, or None if it is no workdir."""
  run = runs_lib.read_run(workdir)
  return None if run is None else _study_run(run)


def load_runs(root: str | pathlib.Path) -> list[RunData]:
  """Every run directly under `root` (sorted by family, depth, seed, name)."""
  found = [_study_run(r) for r in runs_lib.load(root, strict=False)]
  return sorted(found, key=lambda r: (r.family or "~", r.depth or 0, r.seed, r.name))


def final_train_error(run: RunData, fraction: float = FINAL_FRACTION,
                      min_windows: int = FINAL_MIN_WINDOWS) -> Optional[float]:
  """Mean training error of the logging windows that end in the last `fraction` of
  the run's steps, and at least of the last `min_windows`; None without any."""
  return runs_lib.final_window_mean(run, "train_top1_error", fraction=fraction,
                                    min_windows=min_windows)


def final_eval_error(run: RunData) -> Optional[float]:
  """The last logged evaluation error, None without any."""
  return runs_lib.last_value(run, "eval_top1_error")


def final_test_error(run: RunData) -> Optional[float]:
  """The test error: test.json's if the run evaluated on validation, else the last
  evaluation (which was on test); None when neither exists."""
  if run.test is not None and "top1_error" in run.test:
    return float(run.test["top1_error"])
  if not run.get("data.validation_size"):
    return final_eval_error(run)
  return None


def evaluates_on_validation(runs: Sequence[RunData]) -> bool:
  return any(r.config.get("data", {}).get("validation_size") for r in runs)


def is_imagenet(runs: Sequence[RunData]) -> bool:
  return any("imagenet" in str(r.config.get("data", {}).get("source", "")) for r in runs)


def paper_reference(runs: Sequence[RunData]) -> tuple[str, dict[tuple[str, int], float], str]:
  """(column title, {(family, depth): error %}, note) of the paper's numbers that
  match the runs' dataset: Table 2 for ImageNet, else Table 6 (CIFAR-10)."""
  if is_imagenet(runs):
    return "paper top-1 error % (Table 2)", dict(PAPER_TABLE2), PAPER_TABLE2_NOTE
  return ("paper test error % (Table 6)",
          {("resnet", d): v for d, v in PAPER_TABLE6.items()}, PAPER_TABLE6_NOTE)


@dataclasses.dataclass
class Cell:
  """Summary of the runs of one (family, depth): errors as fractions."""
  family: str
  depth: int
  n: int
  done: int
  train: tuple[Optional[float], Optional[float]]      # (mean, std)
  eval: tuple[Optional[float], Optional[float]]
  test: tuple[Optional[float], Optional[float]]
  steps: int                                           # last logged step (max)


def summarize(runs: Sequence[RunData]) -> list[Cell]:
  """One `Cell` per (family, depth) of the plain/ResNet runs, sorted."""
  groups: dict[tuple[str, int], list[RunData]] = {}
  for r in runs:
    if r.family in FAMILIES and r.depth is not None:
      groups.setdefault((r.family, r.depth), []).append(r)
  cells = []
  for (family, depth), members in sorted(groups.items()):
    last_steps = [r.rows[-1]["step"] for r in members if r.rows]
    cells.append(Cell(family, depth, n=len(members), done=sum(r.done for r in members),
                      train=mean_std([final_train_error(r) for r in members]),
                      eval=mean_std([final_eval_error(r) for r in members]),
                      test=mean_std([final_test_error(r) for r in members]),
                      steps=max(last_steps) if last_steps else 0))
  return cells


def ordering(cells: Sequence[Cell], family: str, metric: str = "train") -> dict[str, Any]:
  """How `metric` (train | eval | test mean) moves with depth within `family`.

  Returns {"depths", "values", "rising": all consecutive steps up, "falling": all down,
  "deepest_vs_shallowest": value(deepest) - value(shallowest)}.
  """
  pairs = [(c.depth, getattr(c, metric)[0]) for c in cells
           if c.family == family and getattr(c, metric)[0] is not None]
  pairs.sort()
  depths = [d for d, _ in pairs]
  values = [v for _, v in pairs]
  diffs = [b - a for a, b in zip(values, values[1:])]
  return {"depths": depths, "values": values,
          "rising": bool(diffs) and all(d > 0 for d in diffs),
          "falling": bool(diffs) and all(d < 0 for d in diffs),
          "deepest_vs_shallowest": (values[-1] - values[0]) if len(values) > 1 else None}


def _percent(v: Optional[float]) -> str:
  return "n/a" if v is None else f"{100 * v:.2f} %"


def verdict(cells: Sequence[Cell], metric: str = "train") -> list[str]:
  """Sentences saying whether the degradation ordering holds on `metric`: plain nets
  get worse with depth, ResNets better. Says what the numbers show, either way."""
  what = {"train": "training error", "eval": "evaluation error",
          "test": "test error"}[metric]
  sentences = []
  for family, expected in (("plain", "rising"), ("resnet", "falling")):
    o = ordering(cells, family, metric)
    label = LABELS[family]
    if len(o["depths"]) < 2:
      sentences.append(f"{GROUPS[family]}: fewer than two depths have a {what}; no "
                       "ordering to check.")
      continue
    chain = (" < " if o["rising"] else " > " if o["falling"] else ", ").join(
        f"{label}-{d} {_percent(v)}" for d, v in zip(o["depths"], o["values"]))
    gap = o["deepest_vs_shallowest"]
    deep, shallow = o["depths"][-1], o["depths"][0]
    if expected == "rising":
      if o["rising"]:
        sentences.append(f"Plain nets: the {what} rises with every step in depth "
                         f"({chain}): the degradation problem holds.")
      elif gap > 0:
        sentences.append(f"Plain nets: the deepest ({deep} layers) has a higher {what} "
                         f"than the shallowest ({shallow}) by {100 * gap:.2f} points, but "
                         f"not at every step in depth ({chain}): the degradation holds "
                         "only partly.")
      elif o["falling"]:
        sentences.append(f"Plain nets: the {what} falls with every step in depth "
                         f"({chain}): no degradation is visible here; deeper plain nets "
                         "are better.")
      else:
        sentences.append(f"Plain nets: the deepest ({deep} layers) does not have a higher "
                         f"{what} than the shallowest ({shallow}) ({chain}): no "
                         "degradation is visible here.")
    else:
      if o["falling"]:
        sentences.append(f"ResNets: the {what} falls with every step in depth "
                         f"({chain}): deeper residual nets are better, as in the paper.")
      elif gap < 0:
        sentences.append(f"ResNets: the deepest ({deep} layers) has a lower {what} than "
                         f"the shallowest ({shallow}) by {100 * -gap:.2f} points, but not "
                         f"at every step in depth ({chain}): the paper's ordering holds "
                         "only partly.")
      elif o["rising"]:
        sentences.append(f"ResNets: the {what} rises with every step in depth "
                         f"({chain}): deeper ResNets are worse here, the opposite of the "
                         "paper's 'deeper is better' ordering.")
      else:
        sentences.append(f"ResNets: the deepest ({deep} layers) does not have a lower "
                         f"{what} than the shallowest ({shallow}) ({chain}): the paper's "
                         "'deeper is better' ordering does not show here.")
  pairs = []
  for c in cells:
    if c.family != "plain":
      continue
    twin = next((r for r in cells if r.family == "resnet" and r.depth == c.depth), None)
    a, b = getattr(c, metric)[0], getattr(twin, metric)[0] if twin else None
    if a is not None and b is not None:
      pairs.append((c.depth, a, b))
  if pairs:
    better = [d for d, a, b in pairs if b < a]
    listed = ", ".join(f"{d}: {_percent(b)} vs {_percent(a)}" for d, a, b in pairs)
    if len(better) == len(pairs):
      sentences.append(f"At every depth the ResNet has the lower {what} than its plain "
                       f"twin (ResNet vs plain, {listed}).")
    else:
      sentences.append(f"The ResNet has the lower {what} at {len(better)} of "
                       f"{len(pairs)} depths (ResNet vs plain, {listed}).")
  return sentences
