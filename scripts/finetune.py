"""Transfer learning, worked example: digits 5-9 from a few examples, with and without
a network trained on digits 0-4.

    python -m scripts.finetune                     # MNIST, 10 and 50 images per class
    python -m scripts.finetune --shots 10 --data digits   # sklearn's digits, offline

1. Pre-train LeNet-5 on the digits 0-4 (experiments/finetune_mnist.py:pretrain).
2. For N images of each digit 5-9 (drawn --seeds times: with so few examples the
   accuracy depends on which ones), train and test on all test images of 5-9:
   - scratch:   LeNet-5 from random weights;
   - features:  the pre-trained network as a fixed feature extractor (fc4's 84
                activations) and a logistic regression on top;
   - head:      the pre-trained network with a new fc5, everything else frozen;
   - head+all:  then every layer fine-tuned at a 10x lower learning rate.
3. Print the mean and standard deviation of the test accuracies over the draws as
   a table (also written to <root>/results.md and .json).

Every run is an ordinary workdir under --root (default runs/transfer_mnist), so
`scripts.evaluate`, `scripts.visualize` and `scripts.extract_features` work on them.
A few CPU minutes for MNIST.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Optional, Sequence

import numpy as np

from cnn.errors import ConfigError, exit_on_user_error

EXPERIMENT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "finetune_mnist.py"
OLD, NEW = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
METHODS = ("scratch", "features", "head", "head+all")


def write_shards(root: pathlib.Path, data: str, shots: Sequence[int],
                 seeds: Sequence[int], data_dir: Optional[str]) -> dict[str, int]:
  """The npz shards of the example (see experiments/finetune_mnist.py); returns counts."""
  from cnn import data as data_lib  # pylint: disable=import-outside-toplevel
  ds = data_lib.load(data, data_dir=data_dir)
  folder = root / "data"
  folder.mkdir(parents=True, exist_ok=True)
  train_x, train_y = ds.train.x, np.asarray(ds.train.y)
  test_x, test_y = ds.test.x, np.asarray(ds.test.y)

  def save(name, x, y):
    np.savez(folder / f"{name}.npz", x=x, y=y.astype(np.uint8))
    return len(y)

  counts = {}
  old_train, old_test = np.isin(train_y, OLD), np.isin(test_y, OLD)
  counts["pretrain-train"] = save("pretrain-train", train_x[old_train], train_y[old_train])
  counts["pretrain-test"] = save("pretrain-test", test_x[old_test], test_y[old_test])
  new_test = np.isin(test_y, NEW)
  counts["new-test"] = save("new-test", test_x[new_test], test_y[new_test] - NEW[0])
  for seed in seeds:
    rng = np.random.default_rng(seed)
    for n in shots:
      picked = []
      for digit in NEW:
        members = np.flatnonzero(train_y == digit)
        if len(members) < n:
          raise ConfigError(f"--shots {n} asks for more images of digit {digit} than "
                            f"the {len(members)} in {data}'s training split; use fewer.")
        picked.append(np.sort(rng.choice(members, n, replace=False)))
      index = np.concatenate(picked)
      name = f"few{n}-seed{seed}-train"
      counts[name] = save(name, train_x[index], train_y[index] - NEW[0])
  return counts


def configure(preset: str, root: pathlib.Path, shots: int, *, seed: int,
              steps: Optional[int], pretrain_steps: Optional[int]):
  """The experiment's preset pointed at this example's shards and workdirs."""
  from cnn import config as config_lib  # pylint: disable=import-outside-toplevel
  module = config_lib.experiment_module(str(EXPERIMENT))
  c = config_lib.load(f"{EXPERIMENT}:{preset}")
  c.seed = seed
  c.train.quiet = True
  if preset == "pretrain":
    c.data.source = module.pretrain_source(str(root))
    if pretrain_steps:
      c.train.steps = c.train.eval_every = pretrain_steps
    return c
  c.data.source = module.few_shot_source(str(root), shots, seed)
  c.train.batch_size = min(c.train.batch_size, 5 * shots)
  if steps:
    c.train.steps = c.train.eval_every = steps * (2 if preset == "scratch" else 1)
  if preset == "head":
    c.transfer.init_from = str(root / "pretrain")
  elif preset == "all":
    c.transfer.init_from = str(root / f"head-{shots}-seed{seed}")
  return c


def train_and_test(config, workdir: pathlib.Path) -> float:
  """Trains (afresh) and returns the test accuracy of the final checkpoint."""
  from cnn import evaluation, train  # pylint: disable=import-outside-toplevel
  train.fit(config, workdir, overwrite=True)
  return 1.0 - evaluation.evaluate_workdir(workdir)["top1_error"]


def feature_accuracy(pretrain: pathlib.Path, source: str, seed: int) -> float:
  """Logistic regression on the pre-trained network's penultimate features."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  from sklearn.pipeline import make_pipeline  # pylint: disable=import-outside-toplevel
  from sklearn.preprocessing import StandardScaler  # pylint: disable=import-outside-toplevel
  from cnn import data as data_lib, evaluation, transfer  # pylint: disable=import-outside-toplevel
  run, state, _ = evaluation.restore_state(pretrain)
  ds = data_lib.load(source)
  fit_on = transfer.split_features(run, state, ds.train)
  test_on = transfer.split_features(run, state, ds.test)
  clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000,
                                                           random_state=seed))
  clf.fit(fit_on["features"], fit_on["labels"])
  return float(clf.score(test_on["features"], test_on["labels"]))


def table(results: dict, shots: Sequence[int], seeds: Sequence[int], counts) -> str:
  """Markdown: mean +- standard deviation (over the draws) of each method's accuracy."""
  head = "| method | " + " | ".join(f"{n} per class" for n in shots) + " |"
  rule = "|---|" + "---:|" * len(shots)
  lines = [head, rule]
  for method in METHODS:
    cells = []
    for n in shots:
      acc = 100 * np.asarray([results[method][n][s] for s in seeds])
      cells.append(f"{acc.mean():.1f} ± {acc.std():.1f} %" if len(acc) > 1
                   else f"{acc[0]:.2f} %")
    lines.append(f"| {method} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"Test accuracy on the {counts['new-test']} test images of the digits 5-9, "
               f"mean ± std over {len(seeds)} draws of the training images; the "
               f"pre-trained LeNet-5 scores {100 * results['pretrain']:.2f} % on the "
               f"{counts['pretrain-test']} test images of 0-4.")
  return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m scripts.finetune", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--root", default="runs/transfer_mnist",
                      help="folder for the shards and the runs (default %(default)s)")
  parser.add_argument("--data", default="mnist", help="mnist (default) or digits")
  parser.add_argument("--data-dir", default=None, help="where mnist/ lives")
  parser.add_argument("--shots", default="10,50",
                      help="training images per class, comma-separated (default 10,50)")
  parser.add_argument("--seeds", type=int, default=3,
                      help="draws of the few training images (seeds 0..k-1; default 3)")
  parser.add_argument("--steps", type=int, default=None,
                      help="steps of each few-shot run (default: the experiment's)")
  parser.add_argument("--pretrain-steps", type=int, default=None)
  parser.add_argument("--reuse-pretrain", action="store_true",
                      help="keep a finished pretrain run under --root")
  args = parser.parse_args(argv)
  root = pathlib.Path(args.root)
  with exit_on_user_error():
    from cnn import compilation_cache
    compilation_cache.enable()   # a resumed or repeated run skips recompiling
    try:
      shots = sorted({int(s) for s in args.shots.split(",") if s.strip()})
    except ValueError:
      raise ConfigError(f"--shots {args.shots!r} must be positive integers such as "
                        "10,50.") from None
    if not shots or min(shots) <= 0:
      raise ConfigError(f"--shots {args.shots!r} must be positive integers such as 10,50.")
    if args.seeds <= 0:
      raise ConfigError(f"--seeds must be positive, got {args.seeds}.")
    seeds = list(range(args.seeds))
    if args.data not in ("mnist", "digits"):
      raise ConfigError(f"--data must be mnist or digits, got {args.data!r}.")
    start = time.time()
    counts = write_shards(root, args.data, shots, seeds, args.data_dir)
    options = dict(steps=args.steps, pretrain_steps=args.pretrain_steps)
    pretrain = root / "pretrain"
    results: dict = {m: {n: {} for n in shots} for m in METHODS}
    if not (args.reuse_pretrain and (pretrain / "final.json").exists()):
      results["pretrain"] = train_and_test(
          configure("pretrain", root, 0, seed=0, **options), pretrain)
    else:
      from cnn import evaluation  # pylint: disable=import-outside-toplevel
      results["pretrain"] = 1.0 - evaluation.evaluate_workdir(pretrain)["top1_error"]
    print(f"pretrained on digits 0-4: {100 * results['pretrain']:.2f} % "
          f"({time.time() - start:.0f} s)", file=sys.stderr)
    for seed in seeds:
      for n in shots:
        tag = f"{n}-seed{seed}"
        r = {"scratch": train_and_test(configure("scratch", root, n, seed=seed, **options),
                                       root / f"scratch-{tag}")}
        c = configure("head", root, n, seed=seed, **options)
        r["features"] = feature_accuracy(pretrain, c.data.source, seed)
        r["head"] = train_and_test(c, root / f"head-{tag}")
        r["head+all"] = train_and_test(configure("all", root, n, seed=seed, **options),
                                       root / f"all-{tag}")
        for method, acc in r.items():
          results[method][n][seed] = acc
        print(f"{n} per class, draw {seed}: " + ", ".join(
            f"{m} {100 * a:.2f} %" for m, a in r.items()) +
              f" ({time.time() - start:.0f} s)", file=sys.stderr)
  text = table(results, shots, seeds, counts)
  (root / "results.md").write_text(text)
  (root / "results.json").write_text(json.dumps(
      {"data": args.data, "counts": counts, "seconds": round(time.time() - start, 1),
       **{k: v for k, v in results.items()}}, indent=2) + "\n")
  sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
