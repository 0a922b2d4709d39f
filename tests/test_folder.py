"""The folder:<train>|<test> source: your own images in class subfolders."""
import numpy as np
import pytest
from PIL import Image

from cnn import config as config_lib
from cnn import data as data_lib
from cnn import train
from cnn.data import folder as folder_lib
from cnn.data import sources
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
@pytest.mark.parametrize("stream", [None, True])
def test_folder_mistakes_are_one_sentence(tmp_path, make, match, stream):
  root = tmp_path / "train"
  make(root)
  with pytest.raises(ConfigError, match=match) as error:
    data_lib.load(f"folder:{root}", validation_size=1, stream=stream)
  _assert_one_sentence(error.value)


def _assert_one_sentence(error):
  text = str(error)
  assert "\n" not in text and text.endswith(".") and "Traceback" not in text, text


@pytest.mark.parametrize("stream", [None, True])
def test_an_unknown_test_class_and_a_missing_test_folder_are_refused(tmp_path, stream):
  _folder(tmp_path / "train")
  _folder(tmp_path / "test", classes=("cat", "cow"), per_class=1)
  with pytest.raises(ConfigError, match="cow"):
    data_lib.load(f"folder:{tmp_path / 'train'}|{tmp_path / 'test'}", stream=stream)
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


# ----------------------------------------------------------------------------------
# Streamed folders: too big for memory, or stream=True
# ----------------------------------------------------------------------------------

def _grey_with_one_colour_image(root):
  """Grey images of two sizes and one RGB one: the folder is RGB, resizing needed."""
  _folder(root, per_class=4, size=(8, 6))
  _write(root / "dog" / "big.png", np.arange(20 * 10).reshape(20, 10) % 256)
  _write(root / "cat" / "colour.png", np.arange(8 * 6 * 3).reshape(8, 6, 3) * 5 % 256)
  return root


def _assert_same_split(streamed, held):
  assert streamed.streamed and not held.streamed and len(streamed) == len(held)
  for i in range(len(held)):
    image, label = streamed.example(i)
    assert image.dtype == np.uint8 and image.shape == held.x[i].shape
    np.testing.assert_array_equal(image, held.x[i])
    assert label == held.y[i]


@pytest.mark.parametrize("kwargs", [
    dict(),                                                   # grey, one size
    dict(image_size=(5, 7), channels=3),                      # grey -> RGB, resized
    dict(validation_size=3, image_size=(4, 4), seed=1),       # carved validation
])
def test_a_streamed_folder_gives_the_in_memory_images(tmp_path, kwargs):
  _folder(tmp_path / "train", classes=("cat", "cow", "dog"), per_class=3)
  _folder(tmp_path / "test", classes=("cat", "dog"), per_class=2)     # a subset
  source = f"folder:{tmp_path / 'train'}|{tmp_path / 'test'}"
  held = data_lib.load(source, **kwargs)
  streamed = data_lib.load(source, stream=True, **kwargs)
  for split in ("train", "eval", "test"):
    _assert_same_split(getattr(streamed, split), getattr(held, split))
  assert streamed.num_classes == held.num_classes == 3
  assert streamed.train.image_size == held.train.x.shape[1:3]
  # Fewer images than the sample: the estimate covers every pixel, so it is exact.
  np.testing.assert_allclose(streamed.mean, held.mean, rtol=1e-5)
  np.testing.assert_allclose(streamed.std, held.std, rtol=1e-5)
  with pytest.raises(ConfigError, match="data.num_classes=3"):
    data_lib.load(source, stream=True, num_classes=2)


def test_a_folder_too_big_for_memory_is_streamed_rgb_like_the_in_memory_one(
    tmp_path, monkeypatch):
  root = _grey_with_one_colour_image(tmp_path / "train")
  source = f"folder:{root}"
  held = data_lib.load(source, validation_size=2, image_size=(8, 6))
  assert held.train.x.shape[-1] == 3
  # 10 images of 8x6, grey by the first header: 480 bytes, which still fit.
  monkeypatch.setattr(sources, "MAX_IN_MEMORY_BYTES", 480)
  assert not data_lib.load(source, validation_size=2, image_size=(8, 6)).train.streamed
  monkeypatch.setattr(sources, "MAX_IN_MEMORY_BYTES", 479)
  streamed = data_lib.load(source, validation_size=2, image_size=(8, 6))
  for split in ("train", "eval"):
    _assert_same_split(getattr(streamed, split), getattr(held, split))
  with pytest.raises(ConfigError, match="different sizes") as error:
    data_lib.load(source, validation_size=2)
  _assert_one_sentence(error.value)
  # Grey or RGB comes from a sample of headers: sampling only the first (grey) one makes
  # the folder grey, the colour image included.
  monkeypatch.setattr(folder_lib, "HEADER_SAMPLE", 1)
  grey = data_lib.load(source, validation_size=2, image_size=(8, 6))
  assert {grey.train.example(i)[0].shape for i in range(len(grey.train))} == {(8, 6, 1)}


def test_bad_files_of_a_streamed_folder_fail_in_one_sentence(tmp_path):
  root = _folder(tmp_path / "train", per_class=4)
  png = (root / "dog" / "3.png").read_bytes()
  # Cut short: the header reads, the pixels do not; found when the statistics decode it.
  (root / "dog" / "3.png").write_bytes(png[:len(png) // 2])
  with pytest.raises(ConfigError, match=r"dog/3\.png is not a readable image") as error:
    data_lib.load(f"folder:{root}", validation_size=2, stream=True)
  _assert_one_sentence(error.value)
  # Broken after loading: found when a batch decodes it.
  (root / "dog" / "3.png").write_bytes(png)
  ds = data_lib.load(f"folder:{root}", validation_size=2, stream=True)
  (root / "dog" / "3.png").write_bytes(b"not a png")
  index = [str(ds.train.source[i][0]).endswith("3.png") and ds.train.source[i][1] == 1
           for i in range(len(ds.train))].index(True)
  with pytest.raises(ConfigError, match="not a readable image") as error:
    ds.train.example(index)
  _assert_one_sentence(error.value)
  # Another size after loading (or unsampled): found when it is decoded.
  _write(root / "dog" / "3.png", np.zeros((5, 5)))
  with pytest.raises(ConfigError, match="different sizes") as error:
    ds.train.example(index)
  _assert_one_sentence(error.value)


def test_lenet_trains_on_a_streamed_folder(tmp_path, monkeypatch):
  _folder(tmp_path / "train", per_class=8, size=(32, 32))
  _folder(tmp_path / "test", per_class=2, size=(32, 32))
  monkeypatch.setattr(sources, "MAX_IN_MEMORY_BYTES", 1024)   # 20 KB of images: streamed
  c = config_lib.load("experiments/lenet_digits.py")
  c.data.source = f"folder:{tmp_path / 'train'}|{tmp_path / 'test'}"
  c.data.augment = "none"
  c.train.batch_size, c.train.steps, c.train.log_every = 8, 2, 2
  c.train.tensorboard, c.train.quiet = False, True
  assert data_lib.load(c.data.source).train.streamed
  result = train.fit(c, tmp_path / "run")
  assert result["status"] == "done" and 0.0 <= result["eval_top1_error"] <= 1.0
