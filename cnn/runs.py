"""Reading finished (or running) runs back from their workdirs, for plots and tables.

A workdir written by `cnn.train.fit` holds config.json, metrics.jsonl (one JSON row
per logging window or evaluation, each with its ``step``), final.json once the run
finished and, for a run that evaluated on a held-out validation split, test.json
(written by `cnn.sweep`). `load` reads one or more paths, each a workdir or a sweep
root (a folder of workdirs), into `Run` records; the rest are small functions over
them that any study builds on:

* `series`: a metric's (steps, values) over the log;
* `final_window_mean`: a metric averaged over the log windows at the end of the run
  (a few thousand images rather than one window's);
* `last_value`, `mean_std` (over seeds), `mean_curve` (over seeds, step by step);
* `group`: runs grouped by a key of each run, by default everything but the seed.

Nothing here knows a paper or a study: the studies under experiments/ build on it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Callable, Hashable, Iterable, Optional, Sequence

from cnn import metrics as metrics_lib
from cnn.errors import ConfigError

# Files that make a folder a workdir (a run, finished or not).
RUN_FILES = ("config.json", "metrics.jsonl")


@dataclasses.dataclass
class Run:
  """One run as read from its workdir."""
  name: str
  workdir: pathlib.Path
  config: dict[str, Any]                 # config.json ({} when missing)
  rows: list[dict[str, Any]]             # metrics.jsonl
  final: Optional[dict[str, Any]]        # final.json, None until the run finished
  test: Optional[dict[str, Any]]         # test.json, when it was evaluated on test

  @property
  def done(self) -> bool:
    return self.final is not None

  @property
  def seed(self) -> int:
    return int(self.config.get("seed", 0))

  @property
  def steps(self) -> int:
    """The configured number of steps (0 when the config is missing)."""
    return int(self.config.get("train", {}).get("steps", 0))

  def get(self, dotted: str, default: Any = None) -> Any:
    """A config value by dotted key (``"model.name"``), `default` when absent."""
    node: Any = self.config
    for part in dotted.split("."):
      if not isinstance(node, dict) or part not in node:
        return default
      node = node[part]
    return node


def is_workdir(path: pathlib.Path) -> bool:
  return any((path / name).is_file() for name in RUN_FILES)


def _optional_json(path: pathlib.Path) -> Optional[dict[str, Any]]:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def read_run(workdir: str | pathlib.Path) -> Optional[Run]:
  """The run in `workdir`, or None if it holds neither config.json nor metrics.jsonl."""
  workdir = pathlib.Path(workdir)
  if not is_workdir(workdir):
    return None
  return Run(name=workdir.name, workdir=workdir,
             config=_optional_json(workdir / "config.json") or {},
             rows=metrics_lib.read_jsonl(workdir / "metrics.jsonl"),
             final=_optional_json(workdir / "final.json"),
             test=_optional_json(workdir / "test.json"))


def load(paths: str | pathlib.Path | Iterable[str | pathlib.Path], *,
         strict: bool = True) -> list[Run]:
  """The runs of `paths`: each a workdir, or a sweep root whose subfolders are.

  Runs keep the order of `paths`, and a root's runs are sorted by name. With
  `strict`, a path that is neither is a ConfigError (one sentence), so a typo does
  not draw an empty figure.
  """
  if isinstance(paths, (str, pathlib.Path)):
    paths = [paths]
  runs = []
  for path in map(pathlib.Path, paths):
    if is_workdir(path):
      runs.append(read_run(path))
      continue
    found = [read_run(d) for d in sorted(path.iterdir()) if d.is_dir()] \
        if path.is_dir() else []
    found = [r for r in found if r is not None]
    if not found and strict:
      raise ConfigError(f"{path} is neither a run's workdir nor a folder of them (no "
                        "config.json or metrics.jsonl there); pass a workdir or a "
                        "sweep root.")
    runs.extend(found)
  return runs


def _finite(value: Any) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def keys(runs: Sequence[Run]) -> list[str]:
  """Every numeric metric logged by any of `runs`, sorted."""
  return sorted({k for r in runs for row in r.rows for k, v in row.items()
                 if k != "step" and _finite(v)})


def series(run: Run, key: str) -> tuple[list[int], list[float]]:
  """(steps, values) of a metric over the run's log, skipping rows without it."""
  steps, values = [], []
  for row in run.rows:
    value = row.get(key)
    if _finite(value) and "step" in row:
      steps.append(int(row["step"]))
      values.append(float(value))
  return steps, values


def last_value(run: Run, key: str) -> Optional[float]:
  """The metric's last logged value, None when never logged."""
  _, values = series(run, key)
  return values[-1] if values else None


def final_window_mean(run: Run, key: str, *, fraction: float = 0.05,
                      min_windows: int = 2) -> Optional[float]:
  """Mean of `key` over the log windows that end in the last `fraction` of the
  run's configured steps, and over at least the last `min_windows`; None without any.

  One window's training metric rests on a few batches; the end-of-run mean is what
  a table should quote.
  """
  steps, values = series(run, key)
  if not steps:
    return None
  last = steps[-1]
  cutoff = last - fraction * max(run.steps or last, 1)
  count = max(sum(s > cutoff for s in steps), min_windows)
  recent = values[-count:]
  return sum(recent) / len(recent)


def mean_std(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
  """Mean and sample standard deviation (ddof 1) of the values that are not None;
  the std is None with fewer than two."""
  values = [v for v in values if v is not None]
  if not values:
    return None, None
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None
  var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
  return mean, math.sqrt(var)


def mean_curve(runs: Sequence[Run], key: str) -> tuple[list[int], list[float]]:
  """(steps, mean over runs) of a metric at the steps every run logged it."""
  per_run = [dict(zip(*series(r, key))) for r in runs]
  per_run = [p for p in per_run if p]
  if not per_run:
    return [], []
  steps = sorted(set.intersection(*(set(p) for p in per_run)))
  return steps, [sum(p[s] for p in per_run) / len(per_run) for s in steps]


def without_seed(run: Run) -> str:
  """The run's config without its seed: runs that share it are one setting's seeds."""
  rest = {k: v for k, v in run.config.items() if k != "seed"}
  return json.dumps(rest, sort_keys=True, default=str)


def group(runs: Sequence[Run], by: Callable[[Run], Hashable] = without_seed
          ) -> list[list[Run]]:
  """`runs` grouped by `by(run)` (default: everything but the seed), in first-seen
  order."""
  groups: dict[Hashable, list[Run]] = {}
  for run in runs:
    groups.setdefault(by(run), []).append(run)
  return list(groups.values())


def labels(runs: Sequence[Run]) -> list[str]:
  """A short, distinct label per run: its folder name, with as many parent folders
  as it takes to tell runs of different sweeps apart (``a/plain20_s0``)."""
  depth = 1
  while True:
    found = ["/".join(r.workdir.resolve().parts[-depth:]) for r in runs]
    longest = max((len(r.workdir.resolve().parts) for r in runs), default=0)
    if len(set(found)) == len(found) or depth >= longest:
      return found
    depth += 1


def final_metrics(run: Run) -> dict[str, float]:
  """The run's last value of every numeric metric it logged (final.json's where it
  finished), and the test scores of test.json as ``test_<name>``."""
  out = {k: last_value(run, k) for k in keys([run])}
  if run.final:
    out.update({k: float(v) for k, v in run.final.items() if k != "step" and _finite(v)})
  if run.test:
    out.update({f"test_{k}": float(v) for k, v in run.test.items()
                if k != "step" and _finite(v)})
  return out


def table(runs: Sequence[Run], columns: Sequence[str], *, mean_seeds: bool = False,
          percent: bool = False) -> str:
  """A Markdown table: one row per run (or per setting, mean ± std over its seeds,
  with `mean_seeds`), its status, last step and the `columns` of `final_metrics`."""
  names = dict(zip(map(id, runs), labels(runs)))
  scale = 100.0 if percent else 1.0
  head = ["run", "runs (done)" if mean_seeds else "status", "last step", *columns]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for members in (group(runs) if mean_seeds else [[r] for r in runs]):
    finals = [final_metrics(r) for r in members]
    last = max((r.rows[-1].get("step", 0) for r in members if r.rows), default=0)
    status = (f"{len(members)} ({sum(r.done for r in members)})" if mean_seeds else
              "done" if members[0].done else "partial")
    cells = [names[id(members[0])], status, str(last)]
    for column in columns:
      mean, std = mean_std([f.get(column) for f in finals])
      cells.append("n/a" if mean is None else f"{scale * mean:.4g}" +
                   (f" ± {scale * std:.2g}" if std is not None else ""))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"
