"""Sweeps: grid expansion and naming, the dry-run plan, skip/resume, submitit."""
import json
import pathlib

import jax
import jax.numpy as jnp
import pytest

from cnn import config as config_lib
from cnn import models
from cnn import sweep
from cnn import train
from cnn.errors import ConfigError
from scripts import sweep as sweep_script

REPO = pathlib.Path(__file__).resolve().parents[1]
DEGRADATION = str(REPO / "experiments" / "degradation" / "config.py")

TINY = """
from cnn import config as config_lib
from cnn import sweep


def get_config(preset=""):
  c = config_lib.defaults()
  c.model.name = "lenet5"
  c.data.source = "digits"
  c.optim.learning_rate = 0.05
  c.train.batch_size = 32
  c.train.steps = 4
  c.train.log_every = 2
  c.train.eval_every = 4
  c.train.tensorboard = False
  c.train.quiet = True
  return c


def get_sweep(config):
  return SWEEP
"""


def tiny_spec(tmp_path, sweep_expr='sweep.product({"seed": [0, 1]})') -> str:
  path = tmp_path / "tiny.py"
  path.write_text(TINY.replace("SWEEP", sweep_expr))
  return str(path)


def test_product_and_run_names():
  runs = sweep.product({"model.name": ["plain20", "resnet20"], "seed": [0, 1]})
  assert runs == [{"model.name": "plain20", "seed": 0}, {"model.name": "plain20", "seed": 1},
                  {"model.name": "resnet20", "seed": 0}, {"model.name": "resnet20", "seed": 1}]
  assert [sweep.run_name(r) for r in runs] == ["plain20_s0", "plain20_s1", "resnet20_s0",
                                               "resnet20_s1"]
  assert sweep.run_name({"model.name": "plain56", "optim.learning_rate": 0.05,
                         "seed": 1}) == "plain56_learning_rate0.05_s1"
  assert sweep.zip_axes({"seed": [0, 1], "train.steps": [10, 20]}) == [
      {"seed": 0, "train.steps": 10}, {"seed": 1, "train.steps": 20}]
  with pytest.raises(ConfigError, match="one length"):
    sweep.zip_axes({"seed": [0, 1], "train.steps": [10]})
  with pytest.raises(ConfigError, match="non-empty list"):
    sweep.product({"seed": []})


def test_degradation_grid_follows_the_paper(tmp_path):
  runs = sweep.plan(DEGRADATION, tmp_path)
  # {plain, resnet} x {20, 32, 44, 56} x seeds {0, 1, 2} = 2 * 4 * 3 = 24 runs.
  assert len(runs) == 24
  assert {r.name for r in runs} == {f"{f}{d}_s{s}" for f in ("plain", "resnet")
                                    for d in (20, 32, 44, 56) for s in (0, 1, 2)}
  assert runs[0].workdir == tmp_path / "plain20_s0"
  c = runs[0].config
  # He et al. section 4.2: batch 128, momentum 0.9, wd 1e-4, lr 0.1 /10 at 32k and 48k,
  # 64k iterations, option A shortcuts, 16 filters in the first stage.
  assert (c.train.batch_size, c.optim.momentum, c.optim.weight_decay) == (128, 0.9, 1e-4)
  assert (c.optim.learning_rate, list(c.schedule.boundaries), c.schedule.decay,
          c.train.steps) == (0.1, [32000, 48000], 0.1, 64000)
  assert (c.model.shortcut, c.model.width, c.data.augment) == ("A", 16, "cifar")
  assert c.train.log_grad_norms and c.data.source == "cifar10"


def test_cpu_preset_scales_plain_and_residual_alike(tmp_path):
  runs = sweep.plan(DEGRADATION + ":cpu", tmp_path)
  # The pilot (the 20/56 pairs of seed 0, ResNets first) comes first, then the second
  # seed of those pairs, then depths 32 and 44 with one seed: 4 + 4 + 4 runs.
  assert [r.name for r in runs] == [
      "resnet20_s0", "resnet56_s0", "plain20_s0", "plain56_s0",
      "plain20_s1", "plain56_s1", "resnet20_s1", "resnet56_s1",
      "plain32_s0", "plain44_s0", "resnet32_s0", "resnet44_s0"]
  reference = runs[2].config.to_dict()                  # plain20_s0
  for r in runs:
    differing = set(config_lib.differing_keys(reference, r.config.to_dict()))
    allowed = {"model.name", "seed"} | ({"model.zero_init_residual"}
                                         if r.name.startswith("resnet") else set())
    assert differing <= allowed, (r.name, differing)
    assert bool(r.config.model.get("zero_init_residual")) == r.name.startswith("resnet")
  c = runs[0].config
  # The paper's batch, lr, momentum and weight decay; a warm-up from 0.01 and a cosine
  # that anneals to zero within the 1,500 iterations.
  assert (c.train.batch_size, c.optim.learning_rate, c.optim.weight_decay) == (128, 0.1,
                                                                               1e-4)
  assert (c.schedule.name, c.schedule.warmup_lr, c.train.steps) == ("cosine", 0.01, 1500)
  assert tuple(c.data.image_size) == (16, 16) and c.model.width == 8


def test_plain_and_residual_twins_have_identical_parameters():
  """Option A adds no parameters, so plain-20 and ResNet-20 have the same tree."""
  def shapes(name):
    model = models.create(name, num_classes=10, width=4)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                  jnp.zeros((1, 32, 32, 3)), train=False))
    return jax.tree.map(lambda x: x.shape, variables)
  assert shapes("plain20") == shapes("resnet20")


def test_dry_run_shows_done_partial_and_new(tmp_path, capsys):
  root = tmp_path / "deg"
  (root / "plain20_s0").mkdir(parents=True)
  (root / "plain20_s0" / "config.json").write_text("{}")
  (root / "plain20_s0" / "final.json").write_text("{}")
  (root / "resnet20_s0").mkdir()
  (root / "resnet20_s0" / "config.json").write_text("{}")
  (root / "resnet20_s0" / "metrics.jsonl").write_text('{"step": 300}\n')
  assert sweep_script.main(["--config", DEGRADATION + ":cpu", "--root", str(root),
                            "--dry_run"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[1].split()[:3] == ["run", "status", "steps"]
  rows = {line.split()[0]: line.split() for line in out[2:-1]}
  assert rows["plain20_s0"][1] == "done"
  assert rows["resnet20_s0"][1] == "partial@300"
  assert rows["plain56_s0"][1] == "new"
  assert rows["plain56_s0"][3:] == ["model.name=plain56", "seed=0"]
  assert out[-1] == "12 runs: 1 done, 1 partial, 10 new"
  assert not (root / "sweep.json").exists()    # a dry run writes nothing


@pytest.mark.parametrize("spec_suffix, sweep_expr, message", [
    (":bogus", None, "Unknown preset 'bogus'"),
    ("", '{"seed": 0}', "must return a non-empty list"),
    ("", '[{"train.stepz": 3}]', "Run stepz3 of"),
    ("", '[{"seed": 0}, ("s0", {"seed": 1})]', "names two runs 's0'"),
    ("", '[("bad/name", {"seed": 0})]', "not a portable directory name"),
])
def test_bad_specs_exit_with_one_sentence(tmp_path, capsys, spec_suffix, sweep_expr,
                                          message):
  spec = DEGRADATION if sweep_expr is None else tiny_spec(tmp_path, sweep_expr)
  with pytest.raises(SystemExit) as e:
    sweep_script.main(["--config", spec + spec_suffix, "--root", str(tmp_path / "r"),
                       "--dry_run"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_file_without_get_sweep_and_only_without_match(tmp_path, capsys):
  plain = tmp_path / "nosweep.py"
  plain.write_text(TINY.split("def get_sweep")[0])
  for argv, message in (([str(plain)], "has no get_sweep"),
                        ([tiny_spec(tmp_path), "--only", "x*"], "matches no run")):
    with pytest.raises(SystemExit) as e:
      sweep_script.main(["--config", *argv, "--root", str(tmp_path / "r"), "--dry_run"])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_slurm_without_a_cluster_is_one_sentence(tmp_path, capsys):
  import shutil
  if shutil.which("srun"):
    pytest.skip("a SLURM cluster is here")
  with pytest.raises(SystemExit) as e:
    sweep_script.main(["--config", tiny_spec(tmp_path), "--root", str(tmp_path / "r"),
                       "--executor", "slurm"])
  assert e.value.code == 2 and "needs a SLURM cluster" in capsys.readouterr().err
  assert not (tmp_path / "r").exists()      # refused before writing anything


def _config(spec, seed):
  return config_lib.load(spec, [f"seed={seed}"])


def test_local_sweep_resumes_partial_and_skips_done(tmp_path, capsys):
  spec, root = tiny_spec(tmp_path), tmp_path / "runs"
  # s1 was interrupted after 2 of its 4 steps.
  assert train.fit(_config(spec, 1), root / "s1", stop_after=2)["status"] == "preempted"
  assert sweep.run_status(root / "s1") == sweep.PARTIAL
  capsys.readouterr()
  assert sweep_script.main(["--config", spec, "--root", str(root)]) == 0
  captured = capsys.readouterr()
  assert "2 runs, 0 already done, 2 to train" in captured.out
  assert f"resumed from step 2 in {(root / 's1').resolve()}" in captured.err
  assert captured.err.count("resumed from") == 1      # s0 started afresh
  for name, seed in (("s0", 0), ("s1", 1)):
    assert json.loads((root / name / "final.json").read_text())["step"] == 4
    assert json.loads((root / name / "overrides.json").read_text())["overrides"] == {
        "seed": seed}
  listed = json.loads((root / "sweep.json").read_text())["runs"]
  assert [r["name"] for r in listed] == ["s0", "s1"]
  assert listed[1]["command"].endswith("--config.seed=1")
  stamps = {n: (root / n / "final.json").stat().st_mtime_ns for n in ("s0", "s1")}
  assert sweep_script.main(["--config", spec, "--root", str(root)]) == 0
  assert "2 runs, 2 already done, 0 to train" in capsys.readouterr().out
  assert stamps == {n: (root / n / "final.json").stat().st_mtime_ns for n in ("s0", "s1")}


def test_submitit_local_executor_trains_a_run(tmp_path, capsys, monkeypatch):
  """submitit's LocalExecutor: the run trains in a job subprocess (~10-30 s here)."""
  # Importing submitit runs logging.config.dictConfig, which closes every existing
  # logging handler, pytest's capturing ones included; NOCONFIG skips that.
  monkeypatch.setenv("SUBMITIT_LOG_LEVEL", "NOCONFIG")
  pytest.importorskip("submitit")
  spec, root = tiny_spec(tmp_path, 'sweep.product({"seed": [3]})'), tmp_path / "runs"
  assert sweep_script.main(["--config", spec, "--root", str(root),
                            "--executor", "submitit_local"]) == 0
  out = capsys.readouterr().out
  assert "submitted s3: job" in out and "s3: done" in out
  assert json.loads((root / "s3" / "final.json").read_text())["step"] == 4
  assert list((root / "submitit").glob("*_result.pkl"))


def test_imagenet_variant_pairs_plain_and_residual_18_34(tmp_path):
  runs = sweep.plan(str(REPO / "experiments" / "degradation" / "imagenet.py"), tmp_path)
  assert [r.name for r in runs] == ["plain18_s0", "resnet18_s0", "plain34_s0",
                                    "resnet34_s0"]
  c = runs[0].config
  # He et al. section 3.4: batch 256, lr 0.1 /10 on plateau, wd 1e-4, momentum 0.9,
  # 60e4 iterations; Table 2's ResNets use option A.
  assert (c.train.batch_size, c.optim.learning_rate, c.optim.weight_decay,
          c.optim.momentum, c.train.steps) == (256, 0.1, 1e-4, 0.9, 600_000)
  assert (c.schedule.name, c.schedule.factor, c.model.shortcut) == ("plateau", 0.1, "A")
  assert c.data.source == "tfds:imagenet2012"

  def shapes(name):   # abstract init only: no ImageNet-size computation
    model = models.create(name, num_classes=1000, shortcut="A")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                  jnp.zeros((1, 224, 224, 3)), train=False))
    return jax.tree.map(lambda x: x.shape, variables)
  assert shapes("plain34") == shapes("resnet34")


def test_subprocess_executor_trains_each_run_in_a_fresh_process(tmp_path, capsys,
                                                                monkeypatch):
  """The executor runs ``python -m scripts.sweep --config ... --only <run>`` from the
  repository root, whatever the current directory; the child's sweep.json merges with
  the parent's."""
  spec, root = tiny_spec(tmp_path, 'sweep.product({"seed": [5]})'), tmp_path / "runs"
  monkeypatch.chdir(tmp_path)          # not the repository root
  assert sweep_script.main(["--config", spec, "--root", str(root),
                            "--executor", "subprocess"]) == 0
  assert "s5: done" in capsys.readouterr().out
  assert json.loads((root / "s5" / "final.json").read_text())["step"] == 4
  assert [r["name"] for r in json.loads((root / "sweep.json").read_text())["runs"]] == [
      "s5"]
