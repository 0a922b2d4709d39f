"""Bad inputs through the real CLI, one process each: how many end cleanly.

    python -m benchmarks.bad_input_battery [--only SUBSTRING] [--jobs 2]

Each case runs ``python -m scripts.train`` on LeNet-5/digits with one mistake (a
config value, a broken experiment file or preset, a bad npz shard, a busy workdir)
and counts as clean when it exits 2 with exactly one ``error:`` line on stderr, no
traceback, and an untouched workdir (not created). Prints one line per case and the
totals. Independent of the test suite: the cases are spelled out here.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Optional

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "experiments/lenet_digits.py"
TINY = ["--config.train.steps=2", "--config.train.batch_size=32",
        "--config.train.quiet=True", "--config.train.tensorboard=False"]


def _files(root: pathlib.Path) -> dict[str, str]:
  """Broken experiment files and npz shards under `root`; name -> path."""
  out = {}
  experiments = {
      "exp_raises": "raise RuntimeError('boom')\n",
      "exp_bad_import": "import no_such_module_xyz\n",
      "exp_syntax": "def get_config(:\n",
      "exp_returns_none": "def get_config(preset=''):\n  return None\n",
      "exp_get_config_raises": "def get_config(preset=''):\n  return 1 / 0\n",
      "exp_returns_dict": "def get_config(preset=''):\n  return {'seed': 0}\n",
  }
  for name, text in experiments.items():
    out[name] = str(root / f"{name}.py")
    pathlib.Path(out[name]).write_text(text)
  x = np.zeros((64, 32, 32, 1), np.uint8)
  y = np.arange(64) % 10
  good = root / "good.npz"
  np.savez(good, x=x, y=y)
  raw = good.read_bytes()
  shards = {"npz_not_zip": b"hello\n", "npz_truncated": raw[:len(raw) // 2],
            "npz_empty": b"", "npz_truncated_head": raw[:64]}
  for name, data in shards.items():
    out[name] = str(root / f"{name}.npz")
    pathlib.Path(out[name]).write_bytes(data)
  out["npz_objects"] = str(root / "npz_objects.npz")
  np.savez(out["npz_objects"], x=np.array([x[0], None], dtype=object), y=y[:2])
  out["npz_bare_npy"] = str(root / "npz_bare_npy.npz")
  with open(out["npz_bare_npy"], "wb") as f:
    np.save(f, x)
  return out


def cases(files: dict[str, str]) -> list[tuple[str, list[str]]]:
  """(name, extra CLI arguments); a row's own --config replaces the default."""
  c = "--config."
  rows = [
      ("image_size_string", [c + "data.image_size='big'"]),
      ("image_size_triple", [c + "data.image_size=(32, 32, 3)"]),
      ("image_size_zero", [c + "data.image_size=0"]),
      ("num_classes_string", [c + "data.num_classes='ten'"]),
      ("num_classes_zero", [c + "data.num_classes=0"]),
      ("num_classes_float", [c + "data.num_classes=10.0"]),
      ("eps_string", [c + "optim.eps='x'"]),
      ("eps_negative", [c + "optim.eps=-1.0"]),
      ("data_dir_int", [c + "data.data_dir=3"]),
      ("data_dir_list", [c + "data.data_dir=['a']"]),
      ("boundaries_strings", [c + "schedule.boundaries=['a']"]),
      ("boundaries_floats", [c + "schedule.boundaries=[1.5]"]),
      ("boundaries_scalar", [c + "schedule.boundaries=100"]),
      ("warmup_lr_string", [c + "schedule.warmup_lr='x'"]),
      ("decay_steps_float", [c + "schedule.decay_steps=2.5"]),
      ("keep_checkpoints_zero", [c + "train.keep_checkpoints=0"]),
      ("keep_checkpoints_negative", [c + "train.keep_checkpoints=-1"]),
      ("eval_batch_size_string", [c + "train.eval_batch_size='x'"]),
      ("task_unknown", [c + "task=foo"]),
      ("canvas_size_zero", [c + "data.canvas.size=0"]),
      ("canvas_min_above_max", [c + "data.canvas.min_digits=4"]),
      ("momentum_two", [c + "optim.momentum=2.0"]),
      ("label_smoothing_one", [c + "train.label_smoothing=1.0"]),
      ("seed_negative", [c + "seed=-1"]),
      ("validation_size_1_5", [c + "data.validation_size=1.5"]),
      ("model_parallel_zero", [c + "train.model_parallel=0"]),
      ("channels_string", [c + "data.channels='3'"]),
      ("b2_one", [c + "optim.b2=1.0"]),
      ("nesterov_string", [c + "optim.nesterov='yes'"]),
      ("section_replaced_by_int", [c + "train=3"]),
      ("preset_resnett20", ["--config", "experiments/resnet_cifar.py:resnett20"]),
      ("preset_lenet_fast", ["--config", "experiments/lenet_digits.py:fast"]),
      ("preset_lenet_mnist_classik", ["--config", "experiments/lenet_mnist.py:classik"]),
      ("preset_imagenet_resnet51", ["--config", "experiments/imagenet.py:resnet51"]),
      ("preset_segmentation_fcn9s", ["--config", "experiments/segmentation_digits.py:fcn9s"]),
  ]
  rows += [(name, ["--config", path]) for name, path in files.items()
           if name.startswith("exp_")]
  rows += [(name, [c + f"data.source='npz:{path}'", c + "data.validation_size=16"])
           for name, path in files.items() if name.startswith("npz_")]
  return rows


def run_case(name: str, extra: list[str], workdir: pathlib.Path,
             env: dict[str, str]) -> dict:
  argv = ["--config", CONFIG, "--workdir", str(workdir), *TINY]
  if "--config" in extra:
    i = extra.index("--config")
    argv[1] = extra[i + 1]
    extra = extra[:i] + extra[i + 2:]
  done = subprocess.run([sys.executable, "-m", "scripts.train", *argv, *extra], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600, check=False)
  err = done.stderr.strip()
  clean = (done.returncode == 2 and err.count("\n") == 0 and err.startswith("error: ")
           and "Traceback" not in err and not workdir.exists())
  return {"case": name, "rc": done.returncode, "clean": clean,
          "lines": err.count("\n") + 1 if err else 0, "stderr": err[-300:]}


def busy_case(workdir: pathlib.Path, env: dict[str, str]) -> dict:
  """A run on a workdir another process holds: refused at once, the holder's lock
  left in place."""
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from cnn import workdir\n"
       "with workdir.lock(sys.argv[1]):\n  print('locked', flush=True); time.sleep(120)",
       str(workdir)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
  try:
    holder.stdout.readline()
    before = sorted(p.name for p in workdir.iterdir())
    result = run_case("busy_workdir", [], workdir, env)
    result["clean"] = (result["rc"] == 2 and result["lines"] == 1 and "in use by PID"
                       in result["stderr"] and sorted(p.name for p in workdir.iterdir())
                       == before)
  finally:
    holder.kill()
    holder.wait()
  return result


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.bad_input_battery",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--only", default="", help="run the cases whose name holds this")
  parser.add_argument("--jobs", type=int, default=2, help="processes at a time")
  args = parser.parse_args(argv)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO / ".jax_cache"))
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    rows = [r for r in cases(_files(root)) if args.only in r[0]]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      results = list(pool.map(lambda r: run_case(r[0], r[1], root / "w" / r[0], env), rows))
    if args.only in "busy_workdir":
      results.append(busy_case(root / "busy", env))
  for r in results:
    print(json.dumps(r))
  clean = sum(r["clean"] for r in results)
  print(f"{clean} of {len(results)} bad inputs rejected cleanly "
        "(exit 2, one error line, workdir untouched)")
  return 0 if clean == len(results) else 1


if __name__ == "__main__":
  sys.exit(main())
