"""The command lines: one shape for every script, help that runs nothing, overrides in
both spellings, presets refused with the list, and curves of any runs.

Everything runs in-process through each module's main(argv) (no subprocess: fast, and
a traceback shows up as a test failure rather than as text on stderr). Nothing here
trains: `cnn.train.fit` is replaced where a CLI would call it.
"""
import importlib
import json
import pathlib
import re

import pytest
from PIL import Image

from cnn import cli
from cnn import visualize
from cnn.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
# Every module in scripts/ (found, so a new script is covered without editing this
# list), the studies' CLIs and the harnesses.
SCRIPTS = sorted(f"scripts.{p.stem}" for p in (REPO / "scripts").glob("*.py")
                 if p.stem != "__init__")
STUDY_CLIS = ["experiments.degradation.plot", "experiments.degradation.report",
              "experiments.finetune.run"]
BENCHMARKS = sorted(f"benchmarks.{p.stem}" for p in (REPO / "benchmarks").glob("*.py")
                    if p.stem != "__init__")
TINY_SWEEP = """
from cnn import config as config_lib
from cnn import sweep


def get_config(preset=""):
  c = config_lib.defaults()
  c.train.steps = 4
  return c


def get_sweep(config):
  return sweep.product({"seed": [0, 1]})
"""


def _help(module_name: str, argv: list[str], capsys) -> str:
  """main(argv) of `module_name`: must exit 0 having printed usage to stdout."""
  if module_name == "benchmarks.torch_reference":
    pytest.importorskip("torch")
  module = importlib.import_module(module_name)
  with pytest.raises(SystemExit) as info:
    module.main(argv)
  assert info.value.code == 0
  captured = capsys.readouterr()
  assert captured.out.startswith("usage: "), captured.out[:200]
  assert "Traceback" not in captured.err
  return captured.out


@pytest.mark.parametrize("module_name", SCRIPTS + STUDY_CLIS + BENCHMARKS)
def test_every_cli_answers_help_and_runs_nothing(module_name, capsys, monkeypatch):
  from cnn import train
  monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("--help trained"))
  text = _help(module_name, ["--help"], capsys)
  # benchmarks.train_step is what `python -m scripts.benchmark` runs: its prog is that.
  prog = "scripts.benchmark" if module_name == "benchmarks.train_step" else module_name
  assert f"python -m {prog}" in text.split("\n\n")[0]
  # One spelling: flags take underscores, never dashes (--dry_run, --image_index).
  usage = text.split("\n\n")[0]
  assert not re.findall(r"--[a-z0-9]+-[a-z0-9]", usage), usage


@pytest.mark.parametrize("command", ["filters", "features", "kernels", "structure",
                                     "segmentation"])
def test_visualize_subcommands_answer_help(command, capsys):
  _help("scripts.visualize", [command, "--help"], capsys)


@pytest.mark.parametrize("argv, expected", [
    (["--config.train.steps=5"], ["train.steps=5"]),
    (["--config.train.steps", "5"], ["train.steps=5"]),
    (["--workdir", "w", "--config.optim.b1", "-0.5", "--fork"],
     ["optim.b1=-0.5"]),
    (["--config.model.name", "resnet20", "--config.seed=3"],
     ["model.name=resnet20", "seed=3"]),
])
def test_both_override_spellings_split_alike(argv, expected):
  rest, overrides = cli.split_overrides(argv)
  assert overrides == expected
  assert not any(a.startswith("--config.") for a in rest)


def test_an_override_without_value_is_one_sentence(capsys):
  with pytest.raises(ConfigError, match="has no value"):
    cli.split_overrides(["--config.train.steps", "--workdir", "w"])
  from scripts import train as train_cli
  with pytest.raises(SystemExit) as info:
    train_cli.main(["--config", "experiments/lenet_digits.py", "--workdir", "w",
                    "--config.train.steps"])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1
  assert "--config.train.steps has no value" in err


def test_train_applies_both_override_spellings(tmp_path, monkeypatch, capsys):
  """scripts.train hands `cnn.train.fit` the config with both spellings applied."""
  from cnn import train
  from scripts import train as train_cli
  seen = {}

  def fake_fit(config, workdir, **kwargs):
    seen.update(config=config, workdir=workdir, **kwargs)
    return {"status": "done", "step": 0}

  monkeypatch.setattr(train, "fit", fake_fit)
  assert train_cli.main(["--config", "experiments/lenet_digits.py", "--workdir",
                         str(tmp_path), "--config.train.steps", "7",
                         "--config.optim.learning_rate=0.5", "--config.seed", "4"]) == 0
  c = seen["config"]
  assert (c.train.steps, c.optim.learning_rate, c.seed) == (7, 0.5, 4)
  assert seen["workdir"] == str(tmp_path)


def test_sweep_plan_takes_two_token_overrides(tmp_path, capsys):
  from scripts import sweep as sweep_cli
  spec = tmp_path / "tiny.py"
  spec.write_text(TINY_SWEEP)
  assert sweep_cli.main(["--config", str(spec), "--root", str(tmp_path / "r"),
                         "--dry_run", "--config.train.steps", "9"]) == 0
  rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:-1]]
  assert [(r[0], r[2]) for r in rows] == [("s0", "9"), ("s1", "9")]


def test_unknown_preset_is_one_sentence_listing_the_presets(tmp_path, capsys,
                                                            monkeypatch):
  from cnn import train
  from scripts import train as train_cli
  monkeypatch.setattr(train, "fit", lambda *a, **k: pytest.fail("trained anyway"))
  with pytest.raises(SystemExit) as info:
    train_cli.main(["--config", "experiments/finetune/config.py:bogus", "--workdir",
                    str(tmp_path)])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Traceback" not in err
  assert "'bogus'" in err and "all, head, pretrain, scratch" in err


def _fake_workdir(path: pathlib.Path, seed: int, scale: float, *,
                  config: bool = True) -> pathlib.Path:
  """A workdir as cnn.train.fit leaves it, written by hand: a few log rows."""
  path.mkdir(parents=True)
  rows = [{"step": s, "train_loss": scale / s, "eval_top1_error": 0.5 - 0.01 * s}
          for s in range(10, 101, 10)]
  (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  if config:
    (path / "config.json").write_text(json.dumps({"seed": seed, "model": {"name": "x"}}))
  return path


def test_plot_draws_two_arbitrary_workdirs(tmp_path, capsys):
  from scripts import plot as plot_cli
  a = _fake_workdir(tmp_path / "one" / "run", 0, 2.0, config=False)  # no config.json
  b = _fake_workdir(tmp_path / "two" / "run", 0, 3.0)
  out = tmp_path / "fig.png"
  assert plot_cli.main([str(a), str(b), "--metric", "train_loss,eval_top1_error",
                        "--out", str(out)]) == 0
  assert capsys.readouterr().out.strip() == str(out)
  with Image.open(out) as image:     # two panels of CURVE_W x CURVE_H inches at DPI
    assert image.size == (2 * 500, 360)
  curves = visualize.runs_curves([a, b], ["train_loss"])
  # Both runs are named "run": their parent folders tell them apart.
  assert [label for label, _ in curves] == ["one/run", "two/run"]
  steps, values = curves[1][1]["train_loss"]
  assert steps[0] == 10 and values[0] == pytest.approx(0.3)


def test_plot_means_seeds_of_a_sweep_root_and_refuses_unknown_metrics(tmp_path, capsys):
  from scripts import plot as plot_cli
  for seed, scale in ((0, 2.0), (1, 4.0)):
    _fake_workdir(tmp_path / "sweep" / f"s{seed}", seed, scale)
  curves = visualize.runs_curves([tmp_path / "sweep"], ["train_loss"], mean_seeds=True)
  assert len(curves) == 1 and "mean of 2 seeds" in curves[0][0]
  assert curves[0][1]["train_loss"][1][0] == pytest.approx(0.3)    # (0.2 + 0.4) / 2
  with pytest.raises(SystemExit) as info:
    plot_cli.main([str(tmp_path / "sweep"), "--metric", "nope"])
  assert info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "eval_top1_error, train_loss" in err


def test_report_tables_any_workdirs(tmp_path, capsys):
  from scripts import report as report_cli
  a = _fake_workdir(tmp_path / "a", 0, 2.0)
  b = _fake_workdir(tmp_path / "b", 1, 4.0)
  (b / "final.json").write_text(json.dumps({"step": 100, "train_loss": 0.04}))
  assert report_cli.main([str(a), str(b), "--metric", "train_loss"]) == 0
  out = capsys.readouterr().out
  assert "| a | partial | 100 | 0.02 |" in out and "| b | done | 100 | 0.04 |" in out
