"""Figures: each command writes a non-empty PNG of the size its layout fixes.

Sizes at 100 dpi (cnn/visualize.py): tile grids are ceil(sqrt(n)) columns of 1 inch
(at least 4 inches wide) plus a 0.6-inch title; the kernel row has 2-inch panels; the
structure diagram is 6 inches wide with 0.5 inch per block.
"""
import numpy as np
import pytest
from PIL import Image

from cnn import config as config_lib
from cnn import segmentation
from cnn import train
from scripts import visualize as cli


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lenet")
  c = config_lib.defaults()
  c.data.source = "digits"
  c.train.batch_size = 32
  c.train.steps = 2
  c.train.log_every = 2
  c.train.eval_every = 2
  c.train.tensorboard = False
  c.train.quiet = True
  train.fit(c, workdir)
  return workdir


def _png(path, size):
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == size
    pixels = np.asarray(image.convert("L"), np.float32)
  assert pixels.std() > 0          # something was drawn


def test_filters_grid_of_lenet_conv1(lenet_run, tmp_path):
  out = tmp_path / "filters.png"
  assert cli.main(["filters", "--workdir", str(lenet_run), "--out", str(out)]) == 0
  # conv1 has 6 filters: 3 columns x 2 rows -> max(3, 4) x 100 by (2 + 0.6) x 100.
  _png(out, (400, 260))


@pytest.mark.parametrize("layer,size", [
    ("conv1", (400, 360)),   # input + 6 maps = 7 tiles: 3 x 3 -> 400 x (300 + 60)
    ("conv2", (500, 460)),   # input + 16 maps = 17 tiles: 5 columns x 4 rows
])
def test_feature_maps_of_a_layer(lenet_run, tmp_path, layer, size):
  out = tmp_path / f"{layer}.png"
  assert cli.main(["features", "--workdir", str(lenet_run), "--layer", layer,
                   "--image_index", "3", "--out", str(out)]) == 0
  _png(out, size)


def test_feature_maps_refuse_a_dense_layer_in_one_sentence(lenet_run, tmp_path, capsys):
  with pytest.raises(SystemExit) as info:
    cli.main(["features", "--workdir", str(lenet_run), "--layer", "fc4",
              "--out", str(tmp_path / "x.png")])
  assert info.value.code == 2
  err = capsys.readouterr().err.strip()
  assert "not feature maps" in err and "\n" not in err
  with pytest.raises(SystemExit):
    cli.main(["features", "--workdir", str(lenet_run), "--layer", "conv9",
              "--out", str(tmp_path / "x.png")])
  assert "layers are: conv1, conv2" in capsys.readouterr().err


def test_fixed_kernels_on_a_real_digit(tmp_path):
  out = tmp_path / "kernels.png"
  assert cli.main(["kernels", "--source", "digits", "--out", str(out)]) == 0
  # image, box blur, edge detect: 3 x 2 inches by 2 + 0.6 inches.
  _png(out, (600, 260))


def test_structure_diagram_and_markdown_of_lenet5(tmp_path):
  out = tmp_path / "lenet5.png"
  assert cli.main(["structure", "--model", "lenet5", "--out", str(out)]) == 0
  # input, C1, S2, C3, S4, C5, F6, output (activations fold into their layer): 8 blocks
  # of 0.5 inch plus the title -> 600 x 460.
  _png(out, (600, 460))
  md = tmp_path / "lenet5.md"
  assert cli.main(["structure", "--model", "lenet5", "--out", str(md)]) == 0
  assert "61,706" in md.read_text()        # LeNet-5's parameter count (lenet.py)


def test_segmentation_predictions_figure(tmp_path):
  c = config_lib.load("experiments/segmentation_digits.py")
  c.data.source = "canvas:digits"
  # The programs of tests/test_segmentation.py's tiny run (shared compilation cache).
  c.model.width, c.model.depth = 4, 2
  c.optim.name, c.optim.learning_rate = "adam", 1e-2
  c.train.batch_size, c.train.steps = 16, 2
  c.train.log_every = c.train.eval_every = 2
  c.train.eval_batch_size = 16
  c.train.tensorboard, c.train.quiet = False, True
  c.data.canvas.size, c.data.canvas.max_digits = 32, 1
  c.data.canvas.train_size, c.data.canvas.test_size = 64, 16  # as test_segmentation
  train.fit(c, tmp_path / "seg")
  out = tmp_path / "seg.png"
  assert cli.main(["segmentation", "--workdir", str(tmp_path / "seg"), "--count", "2",
                   "--out", str(out)]) == 0
  # image, truth, prediction: 3 x 2 inches by 2 rows x 2 inches + 0.6.
  _png(out, (600, 460))
