"""torchvision weights through cnn.pretrained: the logits of torchvision's modules.

torchvision itself does not install beside this torch, so the reference networks are
re-implemented (tests/torchvision_reference.py) from torchvision/models/{resnet,vgg,
alexnet}.py with its exact
module names (conv1, layer1.0.downsample.0, features.3, classifier.6, ...) and random
weights; batch norm is in eval mode with non-trivial running statistics. Inputs are
small but exercise each layer: 72x72 for ResNet-18 (odd maps, 9 -> 5 -> 3, test
where the padding of strided layers goes), 64x64 for ResNet-50 and VGG (pool5 is 2x2,
pooled adaptively to 7x7: the flatten order matters), 96x96 for AlexNet (odd maps
23 -> 11 -> 5, pool3 2x2 -> 6x6).
"""
import functools
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from cnn import pretrained
from cnn import transfer
from cnn.errors import ConfigError


@pytest.fixture(scope="module")
def tv():
  """tests/torchvision_reference.py: torchvision's modules (skips without PyTorch)."""
  pytest.importorskip("torch")
  import torchvision_reference  # pylint: disable=import-outside-toplevel
  return torchvision_reference


def logits_pair(tv, name, side, num_classes=None, batch=2):
  """(ours, torch's) logits of the same random weights on the same images."""
  net = tv.randomized(tv.torchvision_model(name))
  x = np.random.default_rng(1).normal(size=(batch, 3, side, side)).astype(np.float32)
  with tv.torch.no_grad():
    ref = net(tv.torch.from_numpy(x)).numpy()
  model, variables = pretrained.load_torchvision(name, net.state_dict(), num_classes)
  ours = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, x.transpose(0, 2, 3, 1))
  return np.asarray(ours), ref


def assert_logits_close(ours, ref):
  scale = np.abs(ref).max()
  assert scale > 1e-3 and ref.std(axis=-1).min() > 1e-4 * scale   # not degenerate
  np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-4 * max(scale, 1.0))


# ----------------------------------------------------------------------------------
# The logits
# ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, side", [("resnet18", 72), ("resnet50", 64),
                                        ("vgg11_bn", 64), ("alexnet", 96)])
def test_logits_match_torchvision(tv, name, side):
  assert_logits_close(*logits_pair(tv, name, side))


@pytest.mark.parametrize("size, out", [(1, 7), (2, 7), (5, 7), (9, 4), (13, 6), (7, 7)])
def test_adaptive_avg_pool_matches_torch(tv, size, out):
  from cnn import layers
  x = np.random.default_rng(0).normal(size=(2, 3, size, size + 1)).astype(np.float32)
  ref = tv.nn.functional.adaptive_avg_pool2d(tv.torch.from_numpy(x), out).numpy()
  ours = np.asarray(layers.adaptive_avg_pool(x.transpose(0, 2, 3, 1), out))
  np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)


def test_every_supported_name_has_torchvision_keys_and_shapes(tv):
  # Built on PyTorch's meta device: names and shapes only, no memory, no init.
  with tv.torch.device("meta"):
    for name in pretrained.supported():
      state = tv.torchvision_model(name).state_dict()
      theirs = {k: tuple(v.shape) for k, v in state.items()
                if not k.endswith("num_batches_tracked")}
      assert theirs == pretrained.expected_keys(name), name


# ----------------------------------------------------------------------------------
# Without PyTorch's objects: numpy dicts, and the errors
# ----------------------------------------------------------------------------------

def numpy_state(name, seed=0):
  """A random state_dict of numpy arrays with torchvision's keys and shapes."""
  rng = np.random.default_rng(seed)
  state = {k: rng.normal(size=s).astype(np.float32) * 0.05
           for k, s in pretrained.expected_keys(name).items()}
  for k in state:
    if k.endswith("running_var"):
      state[k] = np.abs(state[k]) + 1.0
  return state


def test_a_numpy_state_dict_converts_without_torch_tensors():
  state = numpy_state("resnet18")
  _, variables = pretrained.load_torchvision("resnet18", state)
  np.testing.assert_array_equal(
      np.asarray(variables["params"]["conv1"]["kernel"]),
      state["conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(variables["params"]["head"]["kernel"]),
                                state["fc.weight"].T)
  np.testing.assert_array_equal(
      np.asarray(variables["batch_stats"]["stage2_block0"]["proj_bn"]["bn"]["var"]),
      state["layer2.0.downsample.1.running_var"])


def _one_sentence(error):
  text = str(error.value)
  assert "\n" not in text and text.endswith((".", "?")), text
  return text


def test_mistakes_are_one_sentence_naming_the_key_or_file(tmp_path):
  state = numpy_state("resnet18")
  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision("resnet19", state)
  assert "resnet18" in _one_sentence(e) and "Did you mean" in str(e.value)
  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision("mobilenet_v2", state)
  assert "MobileNet v1" in _one_sentence(e) and "resnet18" in str(e.value)

  missing = {k: v for k, v in state.items() if k != "layer3.1.bn2.running_var"}
  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision("resnet18", missing)
  assert "'layer3.1.bn2.running_var'" in _one_sentence(e)

  wrong = {**state, "layer1.0.conv2.weight": np.zeros((64, 64, 5, 5), np.float32)}
  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision("resnet18", wrong)
  assert "'layer1.0.conv2.weight' has shape (64, 64, 5, 5)" in _one_sentence(e)
  assert "(64, 64, 3, 3)" in str(e.value)

  extra = {**state, "layer5.0.conv1.weight": np.zeros((1,), np.float32)}
  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision("resnet18", extra)
  assert "'layer5.0.conv1.weight'" in _one_sentence(e)

  with pytest.raises(ConfigError) as e:     # resnet50's weights for resnet18
    pretrained.load_torchvision("resnet18", numpy_state("resnet50"))
  assert "torchvision's resnet18" in _one_sentence(e)

  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision("resnet18", tmp_path / "nothing.pth")
  assert "nothing.pth" in _one_sentence(e)
  garbage = tmp_path / "garbage.pth"   # unreadable, or (without torch) unread
  garbage.write_bytes(b"not a pickle at all")
  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision("resnet18", garbage)
  assert "garbage.pth" in _one_sentence(e)


def test_a_pth_without_torch_says_what_to_install(tmp_path, monkeypatch):
  weights = tmp_path / "resnet18.pth"
  weights.write_bytes(b"whatever")
  monkeypatch.setitem(sys.modules, "torch", None)     # `import torch` fails
  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision("resnet18", weights)
  assert "resnet18.pth" in _one_sentence(e) and "torch==2.13.0" in str(e.value)


def test_cnn_imports_no_torch():
  import subprocess
  code = ("import sys, cnn.pretrained, cnn.train, cnn.models; "
          "print('torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------
# .pth files, a new head, the CLI's run directory
# ----------------------------------------------------------------------------------

def test_pth_round_trip_and_a_new_head(tv, tmp_path, capsys):
  net = tv.randomized(tv.torchvision_model("resnet18"))
  path = tmp_path / "resnet18.pth"
  tv.torch.save(net.state_dict(), path)
  _, from_file = pretrained.load_torchvision("resnet18", path)
  _, from_dict = pretrained.load_torchvision("resnet18", net.state_dict())
  jax.tree.map(np.testing.assert_array_equal, from_file, from_dict)

  model, ten = pretrained.load_torchvision("resnet18", path, num_classes=10)
  assert "initialised afresh: head/bias, head/kernel" in capsys.readouterr().err
  head = ten["params"]["head"]
  assert head["kernel"].shape == (512, 10) and head["bias"].shape == (10,)
  # Fresh: the model's own initialisation, not a slice of the 1000-way head.
  assert not np.allclose(np.asarray(head["kernel"]),
                         net.fc.weight.detach().numpy()[:10].T, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(head["bias"]), np.zeros(10))
  same = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  same(ten["params"]["stage4_block1"]["conv2"]["kernel"],
       from_dict["params"]["stage4_block1"]["conv2"]["kernel"])
  assert model.num_classes == 10


DIGITS_RGB = ["--config", "experiments/lenet_digits.py", "--config.data.channels=3",
              "--config.data.image_size=32", "--config.train.batch_size=8",
              "--config.train.steps=2", "--config.train.tensorboard=False"]


def test_cli_writes_a_run_that_transfer_and_evaluate_read(tv, tmp_path, monkeypatch):
  from scripts import convert_torchvision
  monkeypatch.chdir(pathlib.Path(__file__).resolve().parents[1])
  net = tv.randomized(tv.torchvision_model("resnet18"))
  weights = tmp_path / "resnet18.pth"
  tv.torch.save(net.state_dict(), weights)
  workdir = tmp_path / "resnet18_digits"
  assert convert_torchvision.main(["--name", "resnet18", "--weights", str(weights),
                                   "--workdir", str(workdir), "--num_classes", "10",
                                   *DIGITS_RGB]) == 0
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"] == {"name": "resnet18"} and saved["data"]["num_classes"] == 10

  params, stats, step = transfer.read_variables(workdir)
  _, expected = pretrained.load_torchvision("resnet18", net.state_dict(), 10)
  assert step == 0
  jax.tree.map(np.testing.assert_array_equal, params,
               jax.tree.map(np.asarray, expected["params"]))
  jax.tree.map(np.testing.assert_array_equal, stats,
               jax.tree.map(np.asarray, expected["batch_stats"]))

  # The engine restores the whole train state from it, as scripts.evaluate does
  # (evaluation.restore_state, without compiling a random init to throw away).
  from cnn import checkpoint as ckpt_lib
  from cnn import config as config_lib
  from cnn import sharding
  from cnn import train
  run = train.build_run(config_lib.load_saved(workdir))
  abstract = jax.eval_shape(functools.partial(train.state_factory, run), jax.random.key(0))
  checkpointer = ckpt_lib.Checkpointer(workdir, best_metric=run.config.train.best_metric,
                                       read_only=True)
  step, state = checkpointer.restore_latest(
      ckpt_lib.abstract_like(abstract, sharding.state_shardings(abstract, run.mesh)))
  assert step == 0 and run.model.num_classes == 10
  np.testing.assert_array_equal(np.asarray(state.params["conv1"]["kernel"]),
                                params["conv1"]["kernel"])

  # A fine-tuning run with transfer.init_from=<workdir> starts from these weights,
  # its head (transfer.reinit="auto") afresh.
  tune = config_lib.load("experiments/lenet_digits.py", [
      *(a[len("--config."):] for a in DIGITS_RGB[2:]), "model.name=resnet18",
      f"transfer.init_from={workdir}"])
  zeros = state.replace(params=jax.tree.map(np.zeros_like, state.params),
                        batch_stats=jax.tree.map(np.zeros_like, state.batch_stats))
  started = transfer.warm_start(zeros, train.build_run(tune))
  flat = lambda t: {transfer.path_name(p): np.asarray(v)
                    for p, v in jax.tree_util.tree_flatten_with_path(t)[0]}
  got, want = flat(started.params), flat(params)
  for name in want:
    if name.startswith("head/"):
      assert not got[name].any(), name
    else:
      np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  np.testing.assert_array_equal(np.asarray(started.batch_stats["bn1"]["bn"]["var"]),
                                stats["bn1"]["bn"]["var"])
