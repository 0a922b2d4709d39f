"""cnn.multi: k seeds in one program (vmapped or unrolled) give the results of k
separate runs."""
import json

import jax
import numpy as np
import pytest

from cnn import config as config_lib
from cnn import evaluation
from cnn import multi
from cnn import train
from cnn.errors import ConfigError
from scripts import sweep as sweep_script

SEEDS = (0, 1)


def tiny(seed: int, **train_overrides):
  """A ResNet-8 of width 4 (batch norm, option A shortcuts) on the digits, with the
  CIFAR pad-crop-flip augmentation, for 4 steps: exercises per-model BN statistics,
  data order and augmentation."""
  c = config_lib.defaults()
  c.seed = seed
  c.model = config_lib.ml_collections.ConfigDict(
      {"name": "cifar_resnet", "depth": 8, "width": 4, "residual": True})
  c.data.source = "digits"
  c.data.augment = "cifar"
  c.optim.learning_rate = 0.05
  c.optim.weight_decay = 1e-4
  c.train.batch_size = 32
  c.train.steps = 4
  c.train.log_every = 2
  c.train.eval_every = 4
  c.train.tensorboard = False
  c.train.quiet = True
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def _params(workdir):
  _, state, step = evaluation.restore_state(workdir)
  return step, jax.device_get({"params": state.params, "batch_stats": state.batch_stats})


def _rows(workdir):
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  for r in rows:
    r.pop("img_per_s")
  return rows


# vmap turns the k models' convolutions into one grouped convolution and their matrix
# products into batched ones, so sums may be taken in another order. Measured against
# one-device runs after 4 steps: at most 2.4e-7 (0 for "unroll") (a few float32 ulps, on BN running
# variances of order 1). The bounds leave ~40x room. (Against train.fit on the 8
# simulated devices of the tests, whose batch split changes the order much more, the
# difference grows to ~2e-5 in 4 steps.)
RTOL, ATOL = 1e-5, 1e-6


@pytest.mark.parametrize("impl", ["vmap", "unroll"])
def test_seeds_in_one_program_match_separate_runs(tmp_path, monkeypatch, impl):
  """Model 1 of the stack (not the first: its data, augmentation and initialisation
  come from seed 1) ends where a separate seed-1 run ends. (Evaluation is off here to
  save compiling; the resume test below evaluates.)"""
  results = train.fit_group([tiny(s, eval_every=0) for s in SEEDS],
                            [tmp_path / f"m{s}" for s in SEEDS], multi_impl=impl)
  assert [r["status"] for r in results] == ["done"] * len(SEEDS)
  from cnn import sharding
  original = sharding.make_mesh   # separate runs on one device, as fit_multi runs
  monkeypatch.setattr(sharding, "make_mesh",
                      lambda mp=1, devices=None: original(mp, jax.devices()[:1]))
  for s in SEEDS[1:]:
    train.fit(tiny(s, eval_every=0), tmp_path / f"s{s}")
    step_m, vm = _params(tmp_path / f"m{s}")
    step_s, sep = _params(tmp_path / f"s{s}")
    assert step_m == step_s == 4
    if impl == "unroll":   # the same kernels as the separate run: bit for bit
      jax.tree.map(np.testing.assert_array_equal, vm, sep)
    else:
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
                   vm, sep)
    for a, b in zip(_rows(tmp_path / f"m{s}"), _rows(tmp_path / f"s{s}")):
      assert a.keys() == b.keys()
      for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), (s, key)
  # Different seeds really train different models (own init and data order).
  a, b = _params(tmp_path / "m0")[1], _params(tmp_path / "m1")[1]
  assert not np.allclose(a["params"]["head"]["kernel"], b["params"]["head"]["kernel"])


def test_refuses_groups_that_differ_beyond_the_seed(tmp_path):
  other = tiny(1)
  other.optim.learning_rate = 0.1
  with pytest.raises(ConfigError, match="optim.learning_rate differ"):
    train.fit_group([tiny(0), other], [tmp_path / "a", tmp_path / "b"])
  with pytest.raises(ConfigError, match="its own seed"):
    train.fit_group([tiny(0), tiny(0)], [tmp_path / "a", tmp_path / "b"])
  with pytest.raises(ConfigError, match="Unknown multi-model implementation 'pmap'"):
    multi.resolve_impl("pmap")
  # "auto" unrolls on CPU, where vmap's grouped convolutions are slow.
  assert multi.resolve_impl("auto") == ("unroll" if jax.default_backend() == "cpu"
                                        else "vmap")


SPEC = """
from cnn import config as config_lib
from cnn import sweep


def get_config(preset=""):
  c = config_lib.defaults()
  c.model = config_lib.ml_collections.ConfigDict(
      {"name": "cifar_resnet", "depth": 8, "width": 4, "residual": True})
  c.data.source = "digits"
  c.data.augment = "cifar"
  c.optim.learning_rate = 0.05
  c.optim.weight_decay = 1e-4
  c.train.batch_size = 32
  c.train.steps = 4
  c.train.log_every = 2
  c.train.eval_every = 4
  c.train.tensorboard = False
  c.train.quiet = True
  return c


def get_sweep(config):
  return sweep.product({"seed": [0, 1]})
"""


def test_sweep_vmap_seeds_resumes_an_interrupted_group(tmp_path, capsys):
  """An interrupted vmapped group resumes together through scripts.sweep and ends
  where an uninterrupted group ends, bit for bit (the same program)."""
  spec = tmp_path / "tiny_multi.py"
  spec.write_text(SPEC)
  root = tmp_path / "runs"
  whole = train.fit_group([tiny(0), tiny(1)], [tmp_path / "w0", tmp_path / "w1"],
                          multi_impl="vmap")
  part = train.fit_group([tiny(0), tiny(1)], [root / "s0", root / "s1"], stop_after=2,
                         multi_impl="vmap")
  assert [r["status"] for r in part] == ["preempted"] * 2
  capsys.readouterr()
  assert sweep_script.main(["--config", str(spec), "--root", str(root), "--vmap_seeds",
                            "--multi_impl", "vmap"]) == 0
  captured = capsys.readouterr()
  assert captured.err.count("resumed from step 2") == 2
  for s in (0, 1):
    _, a = _params(tmp_path / f"w{s}")
    _, b = _params(root / f"s{s}")
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert _rows(tmp_path / f"w{s}") == _rows(root / f"s{s}")
  assert [r["status"] for r in whole] == ["done", "done"]
