"""Tests of kanerva_tf.data: TFDS loading, preprocessing and episode sampling.

Most tests need no real data: they run under `tfds.testing.mock_data` with
`policy=MockPolicy.USE_CODE`, i.e. the dataset's features come from the TFDS builder code shipped
with tensorflow-datasets (no metadata files, no network), and examples are either TFDS's random
ones or synthetic Omniglot-like images built here (white page, black strokes whose position
encodes the label). The test on real data reads the prepared TFDS folder `../shared/tfds` (or
$KANERVA_TFDS_DIR) and is skipped when it is absent.

Shapes: B batch of episodes, T episode length, H W D image height/width/depth.
"""

import contextlib
import functools
import os
import socket
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from kanerva_tf import data

SYNTH_SIZE = 105      # synthetic Omniglot-like page, as the TFDS images
SYNTH_CLASSES = 6
SYNTH_PER_CLASS = 10


def _real_tfds_dir():
  env = os.environ.get("KANERVA_TFDS_DIR")
  return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "tfds"


@contextlib.contextmanager
def mocked(num_examples=40, as_dataset_fn=None):
  """tfds.testing.mock_data from the builder code (offline); the load_split cache is cleared."""
  data.clear_cache()
  kwargs = dict(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)
  if as_dataset_fn is not None:
    kwargs["as_dataset_fn"] = as_dataset_fn
  try:
    with tfds.testing.mock_data(**kwargs):
      yield
  finally:
    data.clear_cache()


@functools.lru_cache(maxsize=1)
def _synthetic_pages():
  """uint8 [60, 105, 105, 3] white pages with black ink, and int64 labels [60].

  Example i has label i % 6: a horizontal bar at rows 12*label + 10 ... + 17, plus one 8x8 ink
  square at a random place, so every page is different.
  """
  rng = np.random.default_rng(0)
  n = SYNTH_CLASSES * SYNTH_PER_CLASS
  labels = np.arange(n, dtype=np.int64) % SYNTH_CLASSES
  pages = np.full((n, SYNTH_SIZE, SYNTH_SIZE, 3), 255, np.uint8)
  for i, label in enumerate(labels):
    pages[i, 12 * label + 10:12 * label + 18, 20:85] = 0
    r, c = rng.integers(0, SYNTH_SIZE - 8, size=2)
    pages[i, r:r + 8, c:c + 8] = 0
  return pages, labels


def _synthetic_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
  del self, split, decoders, read_config, kwargs
  pages, labels = _synthetic_pages()
  return tf.data.Dataset.from_tensor_slices({"image": pages, "label": labels})


def _area_matrix(n_in, n_out):
  """[n_out, n_in] box-average weights: overlap of output cell i with input pixel j / cell size."""
  scale = n_in / n_out
  lo = np.arange(n_out)[:, None] * scale
  j = np.arange(n_in)[None, :]
  return np.clip(np.minimum(lo + scale, j + 1) - np.maximum(lo, j), 0, None) / scale


def _omniglot_reference(pages):
  """Independent numpy version of the documented recipe: channel 0, invert, area 28x28, > 0.25."""
  x = 1.0 - pages[..., 0].astype(np.float64) / 255.0
  a = _area_matrix(pages.shape[1], 28)
  small = a @ x @ a.T  # [n, 28, 28]
  return (small > 0.25).astype(np.uint8)[..., None]


def _first(ds, n=1):
  return [tf.nest.map_structure(lambda t: t.numpy(), e) for e in ds.take(n)]


# ---------------------------------------------------------------------------------------------
# Defaults and preprocessing.


def test_dataset_defaults():
  omni = data.dataset_defaults("omniglot")
  assert (omni["image_size"], omni["binarize"], omni["grayscale"]) == (28, True, True)
  assert omni["invert"] and omni["threshold"] == data.OMNIGLOT_THRESHOLD == 0.25
  cifar = data.dataset_defaults("cifar10")
  assert (cifar["image_size"], cifar["binarize"], cifar["grayscale"]) == (None, False, False)
  other = data.dataset_defaults("mnist")
  assert (other["image_size"], other["binarize"], other["threshold"]) == (None, False, 0.5)
  omni["binarize"] = False  # a fresh copy: editing it changes nothing
  assert data.dataset_defaults("omniglot")["binarize"] is True


def test_area_reference_is_a_box_average():
  a = _area_matrix(105, 28)
  np.testing.assert_allclose(a.sum(axis=1), 1.0)
  np.testing.assert_allclose(a.sum(axis=0), 28 / 105)  # every input pixel is used once in total


def test_omniglot_preprocessing_matches_numpy_reference():
  pages, labels = _synthetic_pages()
  with mocked(as_dataset_fn=_synthetic_as_dataset):
    images, got_labels, info = data.load_split("omniglot", "train")
    again = data.load_split("omniglot", "train")
  assert images.dtype == np.uint8 and images.shape == (len(pages), 28, 28, 1)
  np.testing.assert_array_equal(images, _omniglot_reference(pages))
  np.testing.assert_array_equal(got_labels, labels)
  assert got_labels.dtype == np.int64
  assert info == data.DatasetInfo("omniglot", (28, 28, 1), True, len(pages), SYNTH_CLASSES)
  # Ink (dark in the source) is 1 and the minority; the bar of label l is where it should be.
  assert set(np.unique(images)) == {0, 1}
  assert 0.02 < images.mean() < 0.2
  bar_row = int(round((12 * 2 + 14) / 3.75))  # centre row of the label-2 bar after resizing
  assert images[labels == 2, bar_row, 10:20, 0].all()
  assert not images[labels == 0, bar_row, 10:20, 0].all(axis=-1).any()
  # Cached, read-only arrays.
  assert again[0] is images and again[1] is got_labels
  assert not images.flags.writeable and not got_labels.flags.writeable


def test_cifar10_is_loaded_unchanged():
  with mocked(num_examples=12):
    raw = np.stack([e["image"] for e in tfds.as_numpy(
        tfds.load("cifar10", split="train", download=False))])
    images, labels, info = data.load_split("cifar10", "train")
  np.testing.assert_array_equal(images, raw)
  assert info == data.DatasetInfo("cifar10", (32, 32, 3), False, 12, info.num_classes)
  assert labels.shape == (12,) and labels.dtype == np.int64 and labels.max() < 10


def test_generic_flags_grayscale_resize_binarize():
  with mocked(num_examples=12):
    raw = np.stack([e["image"] for e in tfds.as_numpy(
        tfds.load("cifar10", split="test", download=False))]).astype(np.float64)
    gray, _, info = data.load_split("cifar10", "test", grayscale=True)
    small, _, small_info = data.load_split("cifar10", "test", image_size=(16, 8))
    binary, _, binary_info = data.load_split("cifar10", "test", grayscale=True, binarize=True)
  luma = raw @ np.array([0.2989, 0.5870, 0.1140])
  assert gray.shape == (12, 32, 32, 1) and info.image_shape == (32, 32, 1)
  np.testing.assert_allclose(gray[..., 0], luma, atol=1.0)
  ref = np.einsum("ij,njkc,lk->nilc", _area_matrix(32, 16), raw, _area_matrix(32, 8),
                  optimize=True)
  assert small.shape == (12, 16, 8, 3) and small_info.image_shape == (16, 8, 3)
  np.testing.assert_allclose(small, ref, atol=0.5 + 1e-3)  # rounded to uint8
  np.testing.assert_array_equal(binary, (gray / 255.0 > 0.5).astype(np.uint8))
  assert binary_info.binarize and not info.binarize


def test_dataset_without_labels():
  with mocked(num_examples=10):
    images, labels, info = data.load_split("binarized_mnist", "train")
    assert labels is None and info.num_classes is None
    assert images.shape == (10, 28, 28, 1) and not info.binarize
    ds = data.episode_dataset("binarized_mnist", "train", batch_size=2, episode_length=3, seed=0)
    assert _first(ds)[0].shape == (2, 3, 28, 28, 1)
    with pytest.raises(ValueError, match=r"num_classes=2.*no 'label'"):
      data.episode_dataset("binarized_mnist", "train", batch_size=2, episode_length=3, seed=0,
                           num_classes=2)
    with pytest.raises(ValueError, match=r"with_labels=True.*no 'label'"):
      data.episode_dataset("binarized_mnist", "train", batch_size=2, episode_length=3, seed=0,
                           with_labels=True)


@pytest.mark.parametrize("shape,dtype,kwargs,pattern", [
    ((105,), np.uint8, {}, r"2-D \[H, W\] or 3-D.*\(105,\)"),
    ((2, 3, 4, 5), np.uint8, {}, r"2-D \[H, W\] or 3-D.*\(2, 3, 4, 5\)"),
    ((28, 28, 1), np.float32, {}, r"uint8.*float32"),
    ((None, None, 3), np.uint8, {}, r"variable size.*image_size"),
    ((28, 28, 4), np.uint8, dict(grayscale=True), r"D=4"),
])
def test_check_image_feature_rejects(shape, dtype, kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    data.check_image_feature("some_ds", "image", shape, dtype, **kwargs)
  data.check_image_feature("some_ds", "image", (28, 28), np.uint8)  # 2-D is fine
  data.check_image_feature("some_ds", "image", (None, None, 3), np.uint8, size=(8, 8))


# ---------------------------------------------------------------------------------------------
# Episodes.


@pytest.mark.parametrize("name,image_shape,binary", [
    ("omniglot", (28, 28, 1), True),
    ("cifar10", (32, 32, 3), False),
])
def test_episode_shapes_dtypes_values(name, image_shape, binary):
  with mocked(num_examples=40):
    ds = data.episode_dataset(name, "train", batch_size=3, episode_length=5, seed=1)
    (x,) = _first(ds)
  assert ds.element_spec.shape == (3, 5) + image_shape  # static shapes
  assert ds.element_spec.dtype == tf.float32
  assert x.shape == (3, 5) + image_shape and x.dtype == np.float32
  assert x.min() >= 0.0 and x.max() <= 1.0
  if binary:
    assert set(np.unique(x)) == {0.0, 1.0}
  else:
    np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-3)  # pixel / 255
    assert len(np.unique(x)) > 2


def test_episodes_hold_images_with_their_labels():
  pages, labels = _synthetic_pages()
  ref = _omniglot_reference(pages).astype(np.float32)
  with mocked(as_dataset_fn=_synthetic_as_dataset):
    ds = data.episode_dataset("omniglot", "train", batch_size=4, episode_length=12, seed=3,
                              with_labels=True)
    x, y = _first(ds)[0]
  assert ds.element_spec[1].shape == (4, 12) and y.dtype == np.int64
  flat = ref.reshape(len(ref), -1)
  for image, label in zip(x.reshape(-1, flat.shape[1]), y.reshape(-1)):
    (match,) = np.nonzero((flat == image).all(axis=1))  # pages are all different
    assert labels[match[0]] == label
  for episode in x:  # T distinct images per episode
    assert len(np.unique(episode.reshape(12, -1), axis=0)) == 12


def test_determinism_and_finite_prefix():
  kwargs = dict(batch_size=2, episode_length=4, with_labels=True)
  with mocked(num_examples=30):
    a = _first(data.episode_dataset("cifar10", "train", seed=7, **kwargs), 3)
    b = _first(data.episode_dataset("cifar10", "train", seed=7, **kwargs), 3)
    c = _first(data.episode_dataset("cifar10", "train", seed=8, **kwargs), 3)
    finite = _first(data.episode_dataset("cifar10", "train", seed=7, repeat=False,
                                         num_episodes=5, **kwargs), 10)
    epoch = _first(data.episode_dataset("cifar10", "train", seed=7, repeat=False, **kwargs), 100)
  for (xa, ya), (xb, yb) in zip(a, b):
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
  assert not np.array_equal(a[0][0], c[0][0])
  assert not np.array_equal(a[1][0], a[0][0])  # batches differ from each other
  assert len(finite) == 3  # ceil(5 episodes / B=2) full batches
  for (xa, _), (xf, _) in zip(a, finite):
    np.testing.assert_array_equal(xa, xf)
  assert len(epoch) == 4  # default: ceil(ceil(30 / T=4) / B=2) batches


@pytest.mark.parametrize("num_classes", [1, 2, 4])
def test_num_classes_episodes(num_classes):
  pages, labels = _synthetic_pages()
  ref = _omniglot_reference(pages).reshape(len(pages), -1)
  with mocked(as_dataset_fn=_synthetic_as_dataset):
    ds = data.episode_dataset("omniglot", "train", batch_size=8, episode_length=12, seed=0,
                              num_classes=num_classes, with_labels=True)
    x, y = _first(ds)[0]
  chosen = set()
  for episode, episode_labels in zip(x.reshape(8, 12, -1), y):
    classes, counts = np.unique(episode_labels, return_counts=True)
    assert len(classes) == num_classes  # exactly n classes, T/n images each
    assert (counts == 12 // num_classes).all()
    chosen.update(classes.tolist())
    for image, label in zip(episode, episode_labels):
      assert labels[np.nonzero((ref == image).all(axis=1))[0][0]] == label
  assert len(chosen) > num_classes  # classes change between episodes


def test_num_classes_with_many_mock_classes():
  with mocked(num_examples=50):  # random labels among Omniglot's 1623 characters
    _, _, info = data.load_split("omniglot", "train")
    ds = data.episode_dataset("omniglot", "train", batch_size=4, episode_length=10, seed=0,
                              num_classes=3, with_labels=True)
    _, y = _first(ds)[0]
  assert info.num_classes > 20
  assert all(len(np.unique(row)) == 3 for row in y)


def test_uniform_indices_distinct_and_uniform():
  batches = [data._uniform_indices(tf.constant([5, i], tf.int64), batch_size=8,
                                   episode_length=20, num_examples=25).numpy()
             for i in range(100)]
  idx = np.stack(batches)  # [100, B, T]
  assert idx.min() >= 0 and idx.max() < 25
  assert all(len(np.unique(row)) == 20 for row in idx.reshape(-1, 20))
  freq = np.bincount(idx.reshape(-1), minlength=25) / idx.size
  np.testing.assert_allclose(freq, 1 / 25, rtol=0.15)  # 16000 draws: ~3% std per index


def test_class_indices_without_replacement_then_cycling():
  labels = np.array([7] * 3 + [2] * 5 + [9] * 20 + [4] * 2)
  members, counts = data.class_table(labels)
  np.testing.assert_array_equal(counts, [5, 2, 3, 20])  # labels 2, 4, 7, 9
  for j, c in enumerate(counts):
    assert len(set(labels[members[j, :c]])) == 1
  per_class = {}
  for i in range(50):
    idx = data._class_indices(tf.constant([1, i], tf.int64), members=tf.constant(members),
                              counts=tf.constant(counts), batch_size=4, episode_length=12,
                              num_classes=2).numpy()
    for row in idx:
      row_labels = labels[row]
      assert len(set(row_labels)) == 2
      for label in set(row_labels):
        picks = row[row_labels == label]
        size = int((labels == label).sum())
        assert len(picks) == 6
        assert len(set(picks)) == min(6, size)  # no repeat before the class is exhausted
        reps = np.unique(picks, return_counts=True)[1]
        assert reps.max() - reps.min() <= 1     # then its order repeats evenly
        per_class[label] = per_class.get(label, 0) + 1
  assert set(per_class) == {2, 4, 7, 9}
  assert min(per_class.values()) > 0.5 * 400 / 4  # 400 class draws, ~100 each


# ---------------------------------------------------------------------------------------------
# Errors.


def test_missing_data_raises_dataset_not_found(tmp_path, monkeypatch):
  data.clear_cache()
  with pytest.raises(data.DatasetNotFoundError) as err:
    data.load_split("omniglot", "test", data_dir=str(tmp_path))
  message = str(err.value)
  assert isinstance(err.value, FileNotFoundError)
  assert "'omniglot'" in message and "'test'" in message and str(tmp_path) in message
  assert "tfds build omniglot" in message and "TFDS_DATA_DIR" in message
  # With data_dir=None the directory comes from $TFDS_DATA_DIR, read at call time.
  other = tmp_path / "from_env"
  other.mkdir()
  monkeypatch.setenv("TFDS_DATA_DIR", str(other))
  with pytest.raises(data.DatasetNotFoundError, match=str(other)):
    data.episode_dataset("cifar10", "train", batch_size=2, episode_length=3, seed=0)


# ---------------------------------------------------------------------------------------------
# Downloading (download=True; train.py and eval.py default to it).


class KanervaTinyPages(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset made on the spot, without source URLs: 8x8x1 uint8 images, 2 labels."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(num_classes=2)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(12, seed=0),
            "test": self._generate_examples(6, seed=1)}

  def _generate_examples(self, n, seed):
    rng = np.random.default_rng(seed)
    for i in range(n):
      yield i, {"image": rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), "label": i % 2}


TINY_PAGES = "kanerva_tiny_pages"  # the name TFDS registers KanervaTinyPages under


def test_download_prepares_missing_data_then_loads_it(tmp_path):
  """The online path for real, on a dataset that needs no network: TFDS download_and_prepare."""
  data.clear_cache()
  with pytest.raises(data.DatasetNotFoundError, match="Downloading is off"):
    data.load_split(TINY_PAGES, "train", data_dir=str(tmp_path))          # download=False
  with pytest.raises(data.DatasetNotFoundError, match="Downloading is off"):
    data.prepare(TINY_PAGES, data_dir=str(tmp_path), download=False)
  assert not tfds.builder(TINY_PAGES, data_dir=str(tmp_path)).is_prepared()
  images, labels, info = data.load_split(TINY_PAGES, "train", data_dir=str(tmp_path),
                                         download=True)
  assert images.shape == (12, 8, 8, 1) and info.num_examples == 12 and info.num_classes == 2
  rng = np.random.default_rng(0)  # the generator's images, in TFDS's shuffled order
  made = [rng.integers(0, 256, (8, 8, 1), dtype=np.uint8).tobytes() for _ in range(12)]
  assert sorted(x.tobytes() for x in images) == sorted(made)
  assert np.bincount(labels).tolist() == [6, 6]
  assert tfds.builder(TINY_PAGES, data_dir=str(tmp_path)).is_prepared()
  # Prepared for good: every split loads without downloading, in a fresh cache too.
  data.clear_cache()
  test_images, _, _ = data.load_split(TINY_PAGES, "test", data_dir=str(tmp_path))
  assert test_images.shape == (6, 8, 8, 1)
  assert data.prepare(TINY_PAGES, data_dir=str(tmp_path), download=False) == str(tmp_path)
  data.clear_cache()


def test_prepare_checks_each_source_host_then_downloads(tmp_path, monkeypatch):
  """The online path under tfds.testing.mock_data: omniglot's source host is asked once (one
  HEAD, DOWNLOAD_TIMEOUT, no retries), then TFDS download_and_prepare runs."""
  import requests  # pylint: disable=g-import-not-at-top

  heads = []

  class Answer:
    def close(self):
      pass

  def head(url, **kwargs):
    heads.append((url, kwargs))
    return Answer()

  monkeypatch.setattr(requests, "head", head)
  calls = []
  with mocked():
    no_op = tfds.core.DatasetBuilder.download_and_prepare  # mock_data's no-op

    def spy(self, *args, **kwargs):
      calls.append(self.name)
      return no_op(self, *args, **kwargs)

    with mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", spy):
      assert data.prepare("omniglot", data_dir=str(tmp_path)) == str(tmp_path)
      images, _, _ = data.load_split("omniglot", "train", data_dir=str(tmp_path), download=True)
  assert calls == ["omniglot"]
  assert images.shape[1:] == (28, 28, 1)
  # omniglot has 4 source files on one host: one request.
  assert [url.split("/")[2] for url, _ in heads] == ["github.com"]
  assert heads[0][1] == dict(timeout=data.DOWNLOAD_TIMEOUT, allow_redirects=False)


def _closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _resolves(host):
  try:
    socket.getaddrinfo(host, 443)
    return True
  except OSError:
    return False


@pytest.mark.parametrize("network", ["dead_proxy", "this_machine"])
def test_download_without_internet_fails_fast_with_one_clear_error(network, tmp_path,
                                                                   monkeypatch):
  """The offline path for real: TFDS, requests and a connection that fails. `dead_proxy` sends
  every request to a closed local port (offline on any machine); `this_machine` uses the
  machine's own network and runs only where github.com does not resolve."""
  import requests  # pylint: disable=g-import-not-at-top

  if network == "dead_proxy":
    proxy = f"http://127.0.0.1:{_closed_port()}"
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
      monkeypatch.setenv(var, proxy)
    for var in ("NO_PROXY", "no_proxy"):
      monkeypatch.delenv(var, raising=False)
  elif _resolves("github.com"):
    pytest.skip("github.com resolves here: the download would really start")
  data.clear_cache()
  start = time.monotonic()
  with pytest.raises(data.DatasetNotFoundError) as err:
    data.load_split("omniglot", "train", data_dir=str(tmp_path), download=True)
  assert time.monotonic() - start < 30  # TFDS alone retries for about 200 s
  message = str(err.value)
  assert message.startswith(f"dataset 'omniglot' is not prepared in data_dir {tmp_path}. "
                            "Downloading it failed: ")
  assert "github.com" in message  # the download's own error
  assert "tfds build omniglot --data_dir=DIR" in message and "copy DIR/omniglot" in message
  assert "--data_dir" in message and "TFDS_DATA_DIR" in message
  assert isinstance(err.value.download_error, requests.RequestException)
  assert err.value.__cause__ is None and err.value.__suppress_context__  # one traceback
  assert not list(tmp_path.iterdir())  # nothing half-downloaded left behind


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match="'no_such_dataset_xyz'"):
    data.load_split("no_such_dataset_xyz", "train")


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(batch_size=0), r"batch_size.*0"),
    (dict(batch_size=-2), r"batch_size.*-2"),
    (dict(batch_size=2.0), r"batch_size.*2\.0"),
    (dict(episode_length=0), r"episode_length.*0"),
    (dict(episode_length=41), r"episode_length=41.*40 images"),
    (dict(num_classes=0), r"num_classes.*0"),
    (dict(num_classes=11), r"num_classes=11.*classes"),
    (dict(num_classes=6, episode_length=5), r"num_classes=6.*episode_length=5"),
    (dict(seed=1.5), r"seed.*1\.5"),
    (dict(seed=None), r"seed.*None"),
    (dict(num_episodes=4), r"num_episodes=4.*repeat=False"),
    (dict(num_episodes=0, repeat=False), r"num_episodes.*0"),
    (dict(image_size=(28,)), r"image_size.*\(28,\)"),
    (dict(image_size=-1), r"image_size.*-1"),
    (dict(binarize="yes"), r"binarize.*'yes'"),
    (dict(grayscale=1), r"grayscale.*1"),
])
def test_bad_arguments(kwargs, pattern):
  args = dict(batch_size=2, episode_length=5, seed=0)
  args.update(kwargs)
  with mocked(num_examples=40):  # cifar10: at most 10 classes
    with pytest.raises(ValueError, match=pattern):
      data.episode_dataset("cifar10", "train", **args)


def test_bad_split_and_name_arguments():
  with pytest.raises(ValueError, match="split.*None"):
    data.load_split("omniglot", None)
  with pytest.raises(ValueError, match="name.*''"):
    data.load_split("", "train")


# ---------------------------------------------------------------------------------------------
# Real data (skipped when the prepared TFDS folder is absent).


def test_real_omniglot_test_split():
  root = _real_tfds_dir()
  if not (root / "omniglot").is_dir():
    pytest.skip(f"prepared TFDS omniglot not found in {root} (set KANERVA_TFDS_DIR to a folder "
                "holding omniglot/3.0.0)")
  images, labels, info = data.load_split("omniglot", "test", data_dir=str(root))
  assert images.shape == (13180, 28, 28, 1) and images.dtype == np.uint8
  assert set(np.unique(images)) == {0, 1}
  ink = images.mean()
  print(f"omniglot test: ink fraction {ink:.4f}")
  assert 0.08 < ink < 0.15  # measured 0.113; strokes, not blobs nor empty pages
  assert labels.shape == (13180,) and info.num_classes == 659
  assert info == data.DatasetInfo("omniglot", (28, 28, 1), True, 13180, 659)
  # The first pages follow the documented recipe exactly.
  raw = np.stack([e["image"] for e in tfds.as_numpy(
      tfds.load("omniglot", split="test[:20]", data_dir=str(root), download=False))])
  np.testing.assert_array_equal(images[:20], _omniglot_reference(raw))
  with pytest.raises(ValueError, match="'bogus'"):
    data.load_split("omniglot", "bogus", data_dir=str(root))
  ds = data.episode_dataset("omniglot", "test", batch_size=2, episode_length=32, seed=0,
                            data_dir=str(root), num_classes=2, with_labels=True)
  x, y = _first(ds)[0]
  assert x.shape == (2, 32, 28, 28, 1) and all(len(np.unique(row)) == 2 for row in y)
