"""Malformed input through the CLI: one sentence on stderr, exit 2, nothing written.

Every row below is a mistake a researcher can make on the command line or in the data.
Each one must end `scripts.train.main` with exit status 2 and a single line on stderr
that names what is wrong and says what to do, and it must not write to the workdir: a
new workdir is not created, an existing one is left byte for byte as it was. Most
rows fail while the config is checked, before anything is compiled.
"""
from __future__ import annotations

import hashlib
import pathlib

import numpy as np
import pytest

from scripts import train as train_cli

CONFIG = "experiments/lenet_digits.py"
# A tiny run: two steps of batch 32; none of the failing rows gets that far.
TINY = ["--config.train.steps=2", "--config.train.log_every=1",
        "--config.train.eval_every=2", "--config.train.batch_size=32",
        "--config.train.quiet=True", "--config.train.tensorboard=False"]


# ----------------------------------------------------------------------------------
# Fixtures: npz shards with faults, and one finished run to refuse changes to
# ----------------------------------------------------------------------------------

def _write_shard(path: pathlib.Path, x: np.ndarray, y: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez(path, x=x, y=y)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> pathlib.Path:
  """Shards: good 32x32 digits-like images, labels out of range, float images, a
  folder without files and a regular file to put a workdir under."""
  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 32, 32, 1), dtype=np.uint8)
  labels = np.arange(64, dtype=np.int64) % 10
  _write_shard(root / "good" / "train-0.npz", images, labels)
  _write_shard(root / "good" / "test-0.npz", images[:32], labels[:32])
  # mnist has 10 classes (0..9); a label 10 cannot be a digit.
  _write_shard(root / "bad_labels" / "mnist" / "train-0.npz", images[..., 0],
               np.where(labels == 3, 10, labels))
  _write_shard(root / "bad_labels" / "mnist" / "test-0.npz", images[:32, ..., 0],
               labels[:32])
  _write_shard(root / "negative" / "train-0.npz", images, labels - 1)
  _write_shard(root / "float" / "train-0.npz", images.astype(np.float32), labels)
  np.savez(root / "no_y.npz", x=images)
  (root / "empty").mkdir()
  (root / "a_file").write_text("not a directory\n")
  (root / "no_get_config.py").write_text("X = 1\n")
  return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> pathlib.Path:
  """A LeNet-5 run of two steps, to try incompatible continuations on."""
  workdir = tmp_path_factory.mktemp("runs") / "lenet"
  assert train_cli.main(["--config", CONFIG, "--workdir", str(workdir), *TINY]) == 0
  return workdir


def _snapshot(root: pathlib.Path) -> dict[str, str]:
  """Every file under `root` with a hash of its bytes (empty when absent)."""
  if not root.exists():
    return {}
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------
# The table: (id, extra arguments, words the message must contain)
# ----------------------------------------------------------------------------------
# Arguments may hold {data} (the shard folder) and {run} (the finished run). The
# config is the LeNet-5 digits experiment and the workdir a fresh path unless a row
# names its own --config or --workdir.

CASES = [
    # Names that no registry knows, each answered with the valid choices.
    ("unknown_model", ["--config.model.name=lenet6"], ["lenet6", "lenet5"]),
    ("unknown_dataset", ["--config.data.source=imagenette"], ["imagenette", "digits"]),
    ("unknown_optimizer", ["--config.optim.name=sgdd"], ["sgdd", "sgd"]),
    ("unknown_schedule", ["--config.schedule.name=cosin"], ["cosin", "cosine"]),
    ("unknown_augmentation", ["--config.data.augment=flipp"], ["flipp", "flip"]),
    ("unknown_nonfinite_mode", ["--config.train.nonfinite=ignore"], ["ignore", "skip"]),
    ("unknown_precision", ["--config.train.precision=float8"], ["float8", "bfloat16"]),
    # Numbers out of range.
    ("negative_learning_rate", ["--config.optim.learning_rate=-0.1"],
     ["learning_rate", "positive"]),
    ("zero_learning_rate", ["--config.optim.learning_rate=0.0"],
     ["learning_rate", "positive"]),
    ("infinite_learning_rate", ["--config.optim.learning_rate=1e999"],
     ["learning_rate", "inf"]),
    ("zero_batch_size", ["--config.train.batch_size=0"], ["batch_size", "positive"]),
    ("negative_batch_size", ["--config.train.batch_size=-32"], ["batch_size", "positive"]),
    ("negative_steps", ["--config.train.steps=-5"], ["train.steps", "positive"]),
    ("negative_weight_decay", ["--config.optim.weight_decay=-1e-4"],
     ["weight_decay", ">= 0"]),
    # 12 images cannot be split over the 8 simulated devices (tests/conftest.py).
    ("batch_not_divisible_by_devices", ["--config.train.batch_size=12"],
     ["batch_size=12", "multiple of 8"]),
    ("eval_batch_not_divisible_by_devices", ["--config.train.eval_batch_size=20"],
     ["eval_batch_size=20", "multiple of 8"]),
    ("batch_larger_than_dataset", ["--config.train.batch_size=4096"],
     ["4096", "at most"]),
    ("model_parallel_not_dividing_devices", ["--config.train.model_parallel=3"],
     ["model_parallel=3", "divide"]),
    # Architectures that cannot exist.
    ("resnet_depth_not_6n_plus_2",
     ["--config.model.name=cifar_resnet", "--config.model.depth=21"], ["6n+2", "21"]),
    ("resnet_preset_depth_overridden",
     ["--config.model.name=resnet20", "--config.model.depth=12"], ["6n+2", "12"]),
    # LeNet-5 on 33x33: conv1 (5x5, stride 1) gives 29x29, and a 2x2 stride-2 pool
    # of 29 rows gives (29 - 2) / 2 + 1 = 14.5 rows.
    ("fractional_output_size", ["--config.data.image_size=(33, 33)"], ["fractional"]),
    # 4x4 images leave nothing for LeNet-5's first 5x5 convolution: 4 - 5 + 1 = 0.
    ("image_smaller_than_lenet", ["--config.data.image_size=(4, 4)"], ["conv1"]),
    # AlexNet's conv1 (11x11, stride 4) and three 3x3/2 pools need far more than
    # 32x32: (32 - 11) / 4 + 1 = 6.25 is already fractional.
    ("image_too_small_for_alexnet", ["--config.model.name=alexnet"], ["conv1"]),
    ("image_size_not_positive", ["--config.data.image_size=(0, 32)"], ["image_size"]),
    ("channels_not_1_or_3", ["--config.data.channels=2"], ["channels", "1 or 3"]),
    # Data that is not there, or not what it must be.
    ("npz_glob_matches_nothing",
     ["--config.data.source=npz:{data}/nowhere/train-*.npz|{data}/nowhere/test-*.npz"],
     ["No files match", "check the path"]),
    ("data_dir_without_the_files",
     ["--config.data.source=mnist", "--config.data.data_dir={data}/empty"],
     ["No mnist data", "data_dir"]),
    ("labels_out_of_range",
     ["--config.data.source=mnist", "--config.data.data_dir={data}/bad_labels"],
     ["labels span [0, 10]", "[0, 10)"]),
    ("negative_labels",
     ["--config.data.source=npz:{data}/negative/train-*.npz",
      "--config.data.validation_size=16"], ["[-1, 8]", "fix the labels"]),
    ("float_images", ["--config.data.source=npz:{data}/float/train-*.npz",
                      "--config.data.validation_size=16"], ["float32", "uint8"]),
    ("shard_without_labels", ["--config.data.source=npz:{data}/no_y.npz",
                              "--config.data.validation_size=16"], ["'y'", "must hold"]),
    ("no_test_split", ["--config.data.source=npz:{data}/good/train-*.npz"],
     ["no test shards", "validation_size"]),
    ("validation_takes_everything", ["--config.data.validation_size=5000"],
     ["validation_size=5000", "between 1 and"]),
    # The command line and the config file.
    ("unknown_config_key", ["--config.train.stepz=3"], ["train.stepz", "train.steps"]),
    ("unknown_config_section", ["--config.trian.steps=3"], ["trian", "train"]),
    ("wrong_type_string_for_int", ["--config.train.steps=ten"], ["train.steps", "int"]),
    ("wrong_type_float_for_int", ["--config.train.batch_size=32.5"],
     ["train.batch_size", "int"]),
    ("wrong_type_list_for_float", ["--config.optim.learning_rate=[0.1]"],
     ["learning_rate", "float"]),
    ("override_without_value", ["--config.train.steps"], ["--config.train.steps=VALUE"]),
    ("unknown_model_argument", ["--config.model.kernal_size=3"], ["kernal_size", "lenet5"]),
    ("missing_config_file", ["--config", "experiments/nope.py"], ["nope.py", "does not exist"]),
    ("config_file_without_get_config", ["--config", "{data}/no_get_config.py"],
     ["get_config"]),
    # Where the run would go.
    ("workdir_under_a_regular_file", ["--workdir", "{data}/a_file/run"],
     ["a_file", "writable --workdir"]),
    # A workdir that holds another run.
    ("workdir_holds_another_config", ["--workdir", "{run}",
                                      "--config.optim.learning_rate=0.01"],
     ["optim.learning_rate", "--fork"]),
    ("fork_onto_a_different_model", ["--workdir", "{run}", "--fork",
                                      "--config.model.name=lenet5",
                                      "--config.model.dropout=0.5",
                                      "--config.optim.name=adam"],
     ["different model or optimizer", "--overwrite"]),
    ("fork_onto_a_different_architecture", ["--workdir", "{run}", "--fork",
                                            "--config.model.name=resnet20",
                                            "--config.model.width=2"],
     ["different model", "--workdir"]),
]


@pytest.mark.parametrize("case,args,needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_exit_2_and_writes_nothing(
    case, args, needles, data, request, tmp_path, capfd):
  run = request.getfixturevalue("finished_run") if any("{run}" in a for a in args) else None
  fill = lambda a: a.format(data=data, run=run)
  args = [fill(a) for a in args]
  argv = ["--config", CONFIG, "--workdir", str(tmp_path / "w"), *TINY]
  for flag in ("--config", "--workdir"):
    if flag in args:  # a row's own --config / --workdir replaces the default
      i = args.index(flag)
      j = argv.index(flag)
      argv[j + 1] = args[i + 1]
      args = args[:i] + args[i + 2:]
  argv += args
  workdir = pathlib.Path(argv[argv.index("--workdir") + 1])
  before = _snapshot(workdir)
  capfd.readouterr()

  with pytest.raises(SystemExit) as exit_info:
    train_cli.main(argv)

  err = capfd.readouterr().err.strip()
  assert exit_info.value.code == 2, err
  assert err.count("\n") == 0, f"more than one line on stderr:\n{err}"
  assert err.startswith("error: "), err
  for needle in needles:
    assert needle in err, f"{needle!r} not in {err!r}"
  if before:
    assert _snapshot(workdir) == before, "the existing workdir was changed"
  else:
    assert not workdir.exists(), f"{workdir} was created"
