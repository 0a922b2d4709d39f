"""The folder:<train>|<test> source: your own images in class subfolders."""
import numpy as np
import pytest
from PIL import Image

from cnn import config as config_lib
from cnn import data as data_lib
from cnn import train
from cnn.errors import ConfigError


def _write(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _folder(root, classes=("cat", "dog"), per_class=3, size=(8, 6), rgb=False):
  """Class i's image j is filled with the value 10 * (3 * i + j) + 1."""
  for i, name in enumerate(classes):
    for j in range(per_class):
      shape = (*size, 3) if rgb else size
      _write(root / name / f"{j}.png", np.full(shape, 10 * (3 * i + j) + 1))
  return root


def test_images_labels_and_classes_come_from_the_folders(tmp_path):
  _folder(tmp_path / "train")
  _folder(tmp_path / "test", per_class=1)
  ds = data_lib.load(f"folder:{tmp_path / 'train'}|{tmp_path / 'test'}")
  assert ds.train.x.shape == (6, 8, 6, 1) and ds.train.x.dtype == np.uint8
  assert ds.num_classes == 2
  assert ds.train.y.tolist() == [0, 0, 0, 1, 1, 1]      # sorted names: cat, dog
  # cat/1.png holds 10 * 1 + 1 = 11 everywhere; dog/2.png 10 * 5 + 1 = 51.
  assert np.all(ds.train.x[1] == 11) and np.all(ds.train.x[5] == 51)
  assert ds.test.y.tolist() == [0, 1]


def test_relative_paths_data_dir_resize_and_colour(tmp_path):
  _folder(tmp_path / "mine" / "train", size=(8, 6), rgb=True)
  _write(tmp_path / "mine" / "train" / "cat" / "big.png", np.zeros((20, 10, 3)))
  ds = data_lib.load("folder:mine/train", data_dir=str(tmp_path), validation_size=2,
                     image_size=(4, 4))
  assert ds.train.x.shape[1:] == (4, 4, 3)
  assert len(ds.train) + len(ds.eval) == 7


@pytest.mark.parametrize("make,match", [
    (lambda root: None, "does not exist"),
    (lambda root: root.mkdir(), "no class subfolders"),
    (lambda root: (root / "cat").mkdir(parents=True), "holds no images"),
    (lambda root: ((root / "cat").mkdir(parents=True),
                   (root / "cat" / "x.png").write_bytes(b"not a png")), "not a readable"),
    (lambda root: (_folder(root), _write(root / "dog" / "odd.png", np.zeros((5, 5)))),
     "different sizes"),
])
def test_folder_mistakes_are_one_sentence(tmp_path, make, match):
  root = tmp_path / "train"
  make(root)
  with pytest.raises(ConfigError, match=match):
    data_lib.load(f"folder:{root}", validation_size=1)


def test_an_unknown_test_class_and_a_missing_test_folder_are_refused(tmp_path):
  _folder(tmp_path / "train")
  _folder(tmp_path / "test", classes=("cat", "cow"), per_class=1)
  with pytest.raises(ConfigError, match="cow"):
    data_lib.load(f"folder:{tmp_path / 'train'}|{tmp_path / 'test'}")
  with pytest.raises(ConfigError, match="no test folder"):
    data_lib.load(f"folder:{tmp_path / 'train'}")


def test_lenet_trains_on_a_folder(tmp_path):
  _folder(tmp_path / "train", per_class=8, size=(32, 32))
  _folder(tmp_path / "test", per_class=2, size=(32, 32))
  c = config_lib.load("experiments/lenet_digits.py")
  c.data.source = f"folder:{tmp_path / 'train'}|{tmp_path / 'test'}"
  c.data.augment = "none"
  c.train.batch_size, c.train.steps, c.train.log_every = 8, 2, 2
  c.train.tensorboard, c.train.quiet = False, True
  result = train.fit(c, tmp_path / "run")
  assert result["status"] == "done" and 0.0 <= result["eval_top1_error"] <= 1.0
