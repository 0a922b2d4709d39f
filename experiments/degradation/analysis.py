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


# ----------------------------------------------------------------------------------
# The two findings of Fig. 6, judged against the seed-to-seed spread
# ----------------------------------------------------------------------------------

def seed_spread(cells: Sequence[Cell], metric: str = "train") -> Optional[float]:
  """The study's seed-to-seed spread of `metric`: the largest sample std among the
  cells with two or more seeds (None without any). It stands in for the std of a
  cell that has one seed."""
  stds = [getattr(c, metric)[1] for c in cells if getattr(c, metric)[1] is not None]
  return max(stds) if stds else None


def difference(a: Cell, b: Cell, metric: str, spread: Optional[float]
               ) -> tuple[Optional[float], Optional[float]]:
  """(b - a, noise) of the `metric` means; noise = sqrt(std_a^2 + std_b^2), the spread
  of the difference of two single runs, with `spread` for a cell of one seed."""
  (ma, sa), (mb, sb) = getattr(a, metric), getattr(b, metric)
  if ma is None or mb is None:
    return None, None
  sa, sb = (spread if s is None else s for s in (sa, sb))
  noise = None if sa is None or sb is None else (sa ** 2 + sb ** 2) ** 0.5
  return mb - ma, noise


def judge(diff: float, noise: Optional[float], expected_sign: int) -> str:
  """'holds', 'within noise' or 'does not hold' for a difference expected to have
  `expected_sign` (+1: b above a): within noise when |diff| <= noise."""
  if noise is not None and abs(diff) <= noise:
    return "within noise"
  return "holds" if diff * expected_sign > 0 else "does not hold"


def _cell_of(cells: Sequence[Cell], family: str, depth: int) -> Optional[Cell]:
  return next((c for c in cells if c.family == family and c.depth == depth), None)


def _points(diff: float, noise: Optional[float]) -> str:
  spread = f", noise ±{100 * noise:.2f}" if noise is not None else ", no seed spread"
  return f"{100 * diff:+.2f} points{spread}"


def findings(cells: Sequence[Cell], metric: str = "train") -> dict[str, Any]:
  """The two findings of He et al. Fig. 6 on `metric`, each with a computed verdict.

  1. plain: the deepest plain net has a higher error than the shallowest (with the
     depths between in order, reported separately);
  2. resnet: the deepest ResNet is no worse than the shallowest ("holds" when lower
     beyond noise, "within noise" when the two cannot be told apart: then "no worse"
     holds but "better" is not shown); twins: every ResNet below its plain twin.

  Returns {"plain", "resnet", "twins": {depth: verdict}, "sentences": [...],
  "both": bool (finding 1 holds, finding 2 holds or is within noise, every twin
  holds)}; verdicts are None where a cell is missing.
  """
  what = {"train": "training error", "eval": "evaluation error",
          "test": "test error"}[metric]
  spread = seed_spread(cells, metric)
  out: dict[str, Any] = {"plain": None, "resnet": None, "twins": {}, "sentences": []}
  say = out["sentences"].append
  for family, sign in (("plain", +1), ("resnet", -1)):
    depths = sorted(c.depth for c in cells if c.family == family
                    and getattr(c, metric)[0] is not None)
    if len(depths) < 2:
      continue
    lo, hi = _cell_of(cells, family, depths[0]), _cell_of(cells, family, depths[-1])
    diff, noise = difference(lo, hi, metric, spread)
    v = out[family] = judge(diff, noise, sign)
    name = LABELS[family]
    claim = ("deeper plain nets train worse" if family == "plain" else
             "deeper ResNets train no worse (the paper: better)")
    if family == "resnet" and v == "within noise":
      v_text = "within noise: no worse holds, better is not shown"
    else:
      v_text = v
    say(f"Finding {1 if family == 'plain' else 2}, {claim}: {name}-{hi.depth} "
        f"{_percent(getattr(hi, metric)[0])} vs {name}-{lo.depth} "
        f"{_percent(getattr(lo, metric)[0])} {what}, {_points(diff, noise)}: {v_text}.")
    if len(depths) > 2:
      means = [getattr(_cell_of(cells, family, d), metric)[0] for d in depths]
      ordered = all((b - a) * sign > 0 for a, b in zip(means, means[1:]))
      say(f"{GROUPS[family]} in depth order {', '.join(map(str, depths))}: "
          + ", ".join(_percent(m) for m in means)
          + (" (in order)." if ordered else " (not in order at every step)."))
  for depth in sorted({c.depth for c in cells}):
    plain, res = _cell_of(cells, "plain", depth), _cell_of(cells, "resnet", depth)
    if plain is None or res is None:
      continue
    diff, noise = difference(plain, res, metric, spread)
    if diff is not None:
      out["twins"][depth] = (judge(diff, noise, -1), diff, noise)
  if out["twins"]:
    listed = "; ".join(f"{d}: {_points(diff, noise)} ({v})"
                       for d, (v, diff, noise) in out["twins"].items())
    say(f"Every ResNet below its plain twin (ResNet minus plain {what}, {listed}): "
        + ("holds." if all(t[0] == "holds" for t in out["twins"].values()) else
           "does not hold at every depth."))
  out["both"] = (out["plain"] == "holds" and out["resnet"] in ("holds", "within noise")
                 and bool(out["twins"])
                 and all(t[0] == "holds" for t in out["twins"].values()))
  if spread is not None:
    say(f"Noise: the seed-to-seed std of a cell (the largest of the cells with 2+ seeds, "
        f"{100 * spread:.2f} points, stands in for cells of one seed); a difference is "
        "within noise when it is no larger than sqrt(std_a^2 + std_b^2).")
  return out


# ----------------------------------------------------------------------------------
# The scale a figure or table rests on
# ----------------------------------------------------------------------------------

TRAIN_EXAMPLES = {"cifar10": 50000, "mnist": 60000}   # the sources' training splits


def _one(values: set) -> str:
  return ", ".join(sorted(map(str, values)))


def train_examples(config: dict[str, Any]) -> Optional[int]:
  """The number of training examples a run saw: data.train_size, else the source's
  training split less the validation carve-out (None when unknown)."""
  d = config.get("data", {})
  if d.get("train_size"):
    return int(d["train_size"])
  full = TRAIN_EXAMPLES.get(str(d.get("source")))
  held = d.get("validation_size") or 0
  if full is None or isinstance(held, float):
    return full if full is not None and not held else None
  return full - int(held)


def _schedule(config: dict[str, Any]) -> str:
  s, lr = config.get("schedule", {}), config.get("optim", {}).get("learning_rate")
  text = f"lr {lr:g} {s.get('name', 'constant')}" if lr is not None else s.get("name", "?")
  if s.get("name") == "piecewise" and s.get("boundaries"):
    text += f" /{1 / s.get('decay', 0.1):g} at {', '.join(map(str, s['boundaries']))}"
  if s.get("warmup_steps"):
    text += (f", {s['warmup_steps']}-step warm-up"
             + (f" from {s['warmup_lr']:g}" if s.get("warmup_lr") is not None else ""))
  return text


def scale(runs: Sequence[RunData]) -> str:
  """One line stating what the runs rest on: data, width, batch, iterations, epochs,
  schedule and seeds per model, for the titles and captions of the study."""
  configs = [r.config for r in runs]
  steps = {r.steps for r in runs}
  batch = {c.get("train", {}).get("batch_size") for c in configs}
  examples = {train_examples(c) for c in configs}
  parts = [f"{_one({c.get('data', {}).get('source') for c in configs})}"]
  if None not in examples:
    parts[0] += f", {_one({f'{n:,}' for n in examples})} training images"
  held = {c.get("data", {}).get("validation_size") or 0 for c in configs}
  if held != {0}:
    parts[0] += f" ({_one({f'{h:,}' if isinstance(h, int) else h for h in held})} held out)"
  parts.append(f"width {_one({c.get('model', {}).get('width', 'default') for c in configs})}")
  parts.append(f"batch {_one(batch)}")
  parts.append(f"{_one(steps)} iterations")
  if len(steps) == 1 and len(batch) == 1 and None not in batch and None not in examples:
    epochs = {next(iter(steps)) * next(iter(batch)) / n for n in examples}
    parts.append(f"{_one({f'{e:.1f}' for e in epochs})} epochs")
  parts.append(_one({_schedule(c) for c in configs}))
  if any(c.get("model", {}).get("zero_init_residual") for c in configs):
    parts.append("ResNet blocks start as the identity (zero-init last BN scale)")
  seeds: dict[int, set] = {}
  for r in runs:
    if r.depth is not None:
      seeds.setdefault(len({q.seed for q in runs if q.depth == r.depth
                            and q.family == r.family}), set()).add(r.depth)
  parts.append("seeds: " + "; ".join(f"{n} at depth {', '.join(map(str, sorted(d)))}"
                                     for n, d in sorted(seeds.items(), reverse=True)))
  return "; ".join(parts)
