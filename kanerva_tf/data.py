"""Input pipeline: episodes of images from TensorFlow Datasets (TFDS).

Shapes use the package glossary: B batch of episodes, T episode length, H W D image height,
width, depth. `num_examples` is the number of images in a split (no glossary letter: N is taken
by the number of memory queries).

A split is loaded once into memory as uint8 [num_examples, H, W, D] (`load_split`, cached in
process), and `episode_dataset` turns it into a `tf.data.Dataset` of float32 episodes
[B, T, H, W, D] in [0, 1]. As in the paper (section 4), an episode is T images drawn at random
from the whole split with the labels ignored; optionally (sections 4.2 and 4.4, Fig. 4 and 6) from
`num_classes` random classes only.

Preprocessing (decided by `dataset_defaults(name)`; every step can be overridden by arguments):

* omniglot (TFDS 3.0.0: 105x105x3 uint8 scans, white background, black ink) becomes the paper's
  28x28x1 binary Omniglot with ink = 1:
    1. keep channel 0 (the three channels of TFDS omniglot are identical copies of a grayscale
       scan whose pixels are 0 or 255);
    2. scale to [0, 1] and invert, x = 1 - pixel / 255, so ink is 1 and background 0;
    3. resize 105x105 -> 28x28 with `tf.image.resize(method="area")`: each output pixel is the
       mean of the 3.75 x 3.75 input pixels it covers, i.e. the fraction of its area that is ink;
    4. threshold: a pixel is ink (1) when that fraction is strictly greater than 0.25
       (`OMNIGLOT_THRESHOLD`), otherwise background (0).
  The threshold 0.25 keeps strokes continuous (checked by eye on real pages: from about 0.35 thin
  strokes get gaps; lower values thicken strokes and merge nearby ones more often). It lies between the values area-resizing a 0/1
  image can produce (multiples of 1/225), so it is insensitive to float rounding. Measured on the
  prepared TFDS data: 10.5% of the 28x28 pixels of the train split are ink (7.8% of the 105x105
  pixels are). The paper (footnote 2) made its labelled Omniglot with the Python Imaging Library
  and "thresholding at 20"; this pipeline does not try to reproduce that pixel for pixel.
* cifar10 (32x32x3 uint8) stays colour at its native size, not binarized: x = pixel / 255.
* any other TFDS image dataset: native size and channels, not binarized, unless the arguments say
  otherwise: `grayscale=True` converts RGB to one channel with `tf.image.rgb_to_grayscale`
  (ITU-R 601 luma weights), `image_size` resizes with `tf.image.resize(method="area")` (a box
  average; when enlarging it repeats pixels like nearest-neighbour), `binarize=True` thresholds at
  0.5 after scaling to [0, 1] (`DEFAULT_THRESHOLD`).

Stored arrays are uint8: values 0/1 when binarized, 0..255 otherwise (non-binarized images that
were resized or inverted are rounded back to 0..255). `episode_dataset` maps them to float32
[0, 1] (0/1 exactly when binarized).

Data location: `data_dir`, else `$TFDS_DATA_DIR` if set (read at call time), else
`~/tensorflow_datasets` (`resolve_data_dir`). Downloading is off unless asked for
(`download=True`; `train.py` and `eval.py` ask by default, `--nodownload` turns it off): when a
split cannot be loaded from the data directory, `prepare` checks that the dataset's source URLs
answer (one request per host, `DOWNLOAD_TIMEOUT` seconds, no retries: offline it fails at once
instead of TFDS's minutes of retries), then runs TFDS's `download_and_prepare` with its progress
bars. Absent data that is not downloaded, or whose download fails, raises `DatasetNotFoundError`
naming the dataset and the folder, with TFDS's or the download's error and the steps to prepare
it offline.
"""

import dataclasses
import functools
import math
import numbers
import os
from typing import Optional, Tuple, Union

import urllib.parse

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

OMNIGLOT_SIZE = 28
OMNIGLOT_THRESHOLD = 0.25
DEFAULT_THRESHOLD = 0.5
RESIZE_METHOD = "area"

# Per-dataset preprocessing defaults. Keys: image_size (int side, (H, W) or None = native),
# binarize, grayscale, invert (ink is dark in the source), threshold (in [0, 1], used when
# binarizing), grayscale_method ("first_channel" when the channels are identical copies, which is
# exact and cheap; "luma" = tf.image.rgb_to_grayscale).
_DEFAULTS = {
    "omniglot": dict(image_size=OMNIGLOT_SIZE, binarize=True, grayscale=True, invert=True,
                     threshold=OMNIGLOT_THRESHOLD, grayscale_method="first_channel"),
    "cifar10": dict(image_size=None, binarize=False, grayscale=False, invert=False,
                    threshold=DEFAULT_THRESHOLD, grayscale_method="luma"),
}
_GENERIC_DEFAULTS = dict(image_size=None, binarize=False, grayscale=False, invert=False,
                         threshold=DEFAULT_THRESHOLD, grayscale_method="luma")

_LOAD_BATCH = 1024  # images preprocessed per tf.image.resize call while loading a split
_CACHE_SIZE = 8     # preprocessed splits kept in memory by load_split
DOWNLOAD_TIMEOUT = 10.0  # seconds: connect/read timeout of the check that the sources answer


class DatasetNotFoundError(FileNotFoundError):
  """A TFDS dataset/split is not prepared in the data directory and is not or cannot be downloaded."""


class _NotPrepared(Exception):
  """Internal: loading a split failed because the data is not (completely) prepared."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model needs to know about the (preprocessed) data.

  Attributes:
    name: TFDS dataset name, e.g. "omniglot".
    image_shape: (H, W, D) of one image after preprocessing.
    binarize: True -> images are in {0, 1} (Bernoulli likelihood); False -> floats in [0, 1].
    num_examples: number of images in the loaded split.
    num_classes: number of distinct labels present in the split; None if the dataset has no
      'label' feature.
  """
  name: str
  image_shape: Tuple[int, int, int]
  binarize: bool
  num_examples: int
  num_classes: Optional[int] = None


def dataset_defaults(name: str) -> dict:
  """Preprocessing defaults of dataset `name` (a fresh dict; editing it changes nothing).

  Returns:
    {'image_size': 28 or None (native size), 'binarize': bool, 'grayscale': bool,
     'invert': bool (ink is dark in the source and is inverted to 1), 'threshold': float in
     [0, 1] used when binarizing}. omniglot -> 28x28x1 binarized (inverted, threshold 0.25);
    cifar10 -> native 32x32x3 floats; any other name -> native size and channels, not binarized,
    threshold 0.5.
  """
  _check_name(name)
  d = dict(_DEFAULTS.get(name, _GENERIC_DEFAULTS))
  d.pop("grayscale_method")
  return d


def resolve_data_dir(data_dir=None) -> str:
  """The TFDS data directory: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets.

  $TFDS_DATA_DIR is read at call time (TFDS itself reads it once, at import). Local paths are
  made absolute; URLs such as gs://... are kept as they are.
  """
  if data_dir is None or str(data_dir) == "":
    data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.join("~", "tensorflow_datasets")
  data_dir = str(data_dir)
  if "://" in data_dir:
    return data_dir
  return os.path.abspath(os.path.expanduser(data_dir))


def clear_cache() -> None:
  """Forget every split cached by `load_split` (frees the memory; tests use it around mocks)."""
  _load_split_cached.cache_clear()


def load_split(name: str, split: str, data_dir=None, image_size=None, binarize=None,
               grayscale=None, download: bool = False):
  """Loads a whole TFDS split into memory, preprocessed (see the module docstring).

  Args:
    name: TFDS dataset name ("omniglot", "cifar10", or any TFDS dataset with an 'image' feature).
    split: TFDS split, e.g. "train", "test" or a TFDS slice such as "train[:10%]".
    data_dir: TFDS data directory; None -> $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    image_size: None (dataset default), an int side or an (H, W) pair of positive ints.
    binarize: None (dataset default) or bool: threshold to {0, 1}.
    grayscale: None (dataset default) or bool: convert to one channel.
    download: when the split is not prepared in the data directory, download and prepare the
      dataset there (`prepare`) instead of raising. Off by default: the library touches the
      network only when asked.

  Returns:
    images: read-only uint8 np.ndarray [num_examples, H, W, D]; values 0/1 if binarized, else
      0..255.
    labels: read-only int64 np.ndarray [num_examples] (the TFDS 'label' feature), or None if the
      dataset has no 'label'.
    info: `DatasetInfo`.
    The result is cached in process: repeated calls with the same arguments return the same
    arrays without reading the data again (see `clear_cache`).

  Raises:
    DatasetNotFoundError: the dataset/split is not prepared in the data directory, and
      `download` is False or the download failed.
    ValueError: unknown dataset name or split, invalid arguments, or images that are not 2-D
      [H, W] / 3-D [H, W, D] uint8 (or of variable size without `image_size`).
  """
  _check_name(name)
  if not isinstance(split, str) or not split:
    raise ValueError(f"split must be a non-empty string such as 'train' or 'test'; got {split!r}.")
  defaults = _DEFAULTS.get(name, _GENERIC_DEFAULTS)
  size = _check_image_size(defaults["image_size"] if image_size is None else image_size)
  binarize = _check_bool("binarize", defaults["binarize"] if binarize is None else binarize)
  grayscale = _check_bool("grayscale", defaults["grayscale"] if grayscale is None else grayscale)
  download = _check_bool("download", download)
  data_dir = resolve_data_dir(data_dir)
  try:
    return _load_split_cached(name, split, data_dir, size, binarize, grayscale)
  except _NotPrepared as e:
    if not download:
      raise DatasetNotFoundError(_not_found_message(
          name, split, data_dir, "Downloading is off (download=False, --nodownload): pass "
          "download=True (train.py/eval.py --download, their default) on a machine with "
          "internet, or prepare it offline.", str(e))) from None
  prepare(name, data_dir, download=True)  # lru_cache keeps no exception: the load is retried
  try:
    return _load_split_cached(name, split, data_dir, size, binarize, grayscale)
  except _NotPrepared as e:
    raise DatasetNotFoundError(_not_found_message(
        name, split, data_dir, f"The folder {data_dir}/{name} looks prepared but is incomplete "
        "(TFDS has its metadata, not the split's records): delete it and download again, or "
        "prepare it offline.", str(e))) from None


def prepare(name: str, data_dir=None, *, download: bool = True) -> str:
  """Makes sure TFDS dataset `name` is prepared in the data directory (all its splits).

  A prepared dataset is left as it is. Otherwise, with `download`, the dataset's source URLs
  (from its TFDS checksums) are first asked once each per host with a `DOWNLOAD_TIMEOUT`
  second timeout and no retries, so that without internet this fails in seconds (TFDS itself
  retries a dead connection for about 3.5 minutes); then `download_and_prepare` downloads and
  prepares it, with TFDS's progress bars.

  Args:
    name: TFDS dataset name.
    data_dir: TFDS data directory; None -> $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    download: False -> only check, and raise if the dataset is not prepared.

  Returns:
    The resolved data directory (`resolve_data_dir(data_dir)`).

  Raises:
    DatasetNotFoundError: not prepared and `download` is False, or the download failed (the
      message names the dataset, the directory and the download's error, and says how to
      prepare the data offline; the error itself is its `download_error` attribute).
    ValueError: unknown dataset name.
  """
  _check_name(name)
  download = _check_bool("download", download)
  data_dir = resolve_data_dir(data_dir)
  builder = _builder(name, data_dir)
  if builder.is_prepared():
    return data_dir
  if not download:
    raise DatasetNotFoundError(_not_found_message(
        name, None, data_dir, "Downloading is off (download=False, --nodownload): pass "
        "download=True (train.py/eval.py --download, their default) on a machine with internet, "
        "or prepare it offline.", f"no {builder.data_path}/dataset_info.json"))
  try:
    urls = sorted(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except  (builders without a checksums file)
    urls = []
  try:
    _check_reachable(urls, DOWNLOAD_TIMEOUT)
    logging.info("Dataset %r is not prepared in %s: downloading and preparing it (TFDS "
                 "download_and_prepare; sources: %s).", name, data_dir, ", ".join(urls) or "?")
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except  (requests, TFDS and I/O errors alike)
    error = DatasetNotFoundError(_not_found_message(
        name, None, data_dir, f"Downloading it failed: {type(e).__name__}: {str(e).rstrip('.')}.",
        ""))
    error.download_error = e
    raise error from None  # its text is in the message: one traceback, not two
  return data_dir


def dataset_info(name: str, split: str, **kwargs) -> DatasetInfo:
  """`DatasetInfo` of a split: `load_split(name, split, **kwargs)[2]` (cached: cheap to repeat)."""
  return load_split(name, split, **kwargs)[2]


def episode_dataset(name: str, split: str, *, batch_size: int, episode_length: int, seed: int,
                    data_dir=None, image_size=None, binarize=None, grayscale=None,
                    num_classes: Optional[int] = None, repeat: bool = True,
                    num_episodes: Optional[int] = None,
                    with_labels: bool = False, download: bool = False,
                    part: Optional[Tuple[int, int]] = None) -> tf.data.Dataset:
  """A `tf.data.Dataset` of batches of episodes drawn from one TFDS split.

  Each element is float32 images [B, T, H, W, D] in [0, 1] ({0, 1} when binarized), or the pair
  (images [B, T, H, W, D], labels int64 [B, T]) when `with_labels`. Shapes are static.

  Sampling (labels ignored unless `num_classes` is set):
    * num_classes=None: an episode is T distinct images drawn uniformly at random from the split
      (a uniformly random subset, in random order; episodes are independent of each other, so an
      image can appear in several episodes). Requires T <= num_examples.
    * num_classes=n: the episode first draws n distinct labels uniformly among the labels present
      in the split, then gives every class ceil(T/n) or floor(T/n) of the T slots (slots are
      dealt in turn, then shuffled), so it holds exactly n classes. Within a class the images
      are drawn without replacement until the class is exhausted, after which the class's random
      order repeats (e.g. Omniglot classes have 20 images: T=64 with n=2 gives 32 slots per class,
      so each image appears once or twice).
  Randomness is stateless: batch i is a pure function of (seed, i), so the same seed gives the
  same sequence of batches (whatever the parallelism) and a different seed a different one. No
  global RNG state is read or changed.

  Parts (multi-worker training): with `part=(p, P)` each element is part p of P of the batch
  of B episodes that the same call without `part` yields: its rows [p B/P, (p + 1) B/P), shape
  [B/P, T, H, W, D] (B must be divisible by P). The P parts of a batch are disjoint slices of
  the one batch, so P input pipelines that take parts 0 .. P-1 with the same seed never draw
  the same episode of a batch twice, and together they draw exactly the batches of one
  pipeline; each part is a pure function of (seed, i, p).

  Length:
    * repeat=True (training): infinite; `num_episodes` must be None.
    * repeat=False (evaluation): ceil(num_episodes / B) batches, all of full size B (so at least
      num_episodes episodes). `num_episodes` defaults to ceil(num_examples / T), i.e. as many
      images as the split holds. The finite dataset is the prefix of the infinite one with the
      same seed.

  Args:
    name, split, data_dir, image_size, binarize, grayscale, download: see `load_split`.
    batch_size: B > 0, episodes per element.
    episode_length: T > 0, images per episode.
    seed: int, seed of the stateless sampling.
    num_classes: None, or n with 1 <= n <= number of classes in the split and n <= T.
    repeat: infinite (True) or finite (False) dataset.
    num_episodes: repeat=False only: number of episodes (> 0) to cover.
    with_labels: also yield the labels [B, T] (needs a dataset with a 'label' feature).
    part: None, or (p, P) with 0 <= p < P and B divisible by P: yield part p of every batch
      (see Parts above).

  Returns:
    tf.data.Dataset, prefetching with tf.data.AUTOTUNE.

  Raises:
    DatasetNotFoundError: see `load_split`.
    ValueError: invalid argument (the message names the value).
  """
  batch_size = _check_positive_int("batch_size", batch_size)
  episode_length = _check_positive_int("episode_length", episode_length)
  if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
    raise ValueError(f"seed must be an int; got {seed!r}.")
  if not -2**63 <= int(seed) < 2**63:
    raise ValueError(f"seed must fit in int64; got {seed!r}.")
  seed = int(seed)
  repeat = _check_bool("repeat", repeat)
  with_labels = _check_bool("with_labels", with_labels)
  if num_classes is not None:
    num_classes = _check_positive_int("num_classes", num_classes)
  if num_episodes is not None:
    if repeat:
      raise ValueError(f"num_episodes={num_episodes!r} only applies to a finite dataset; pass "
                       "repeat=False with it (repeat=True is infinite).")
    num_episodes = _check_positive_int("num_episodes", num_episodes)
  rows = slice(None)
  if part is not None:
    if (not isinstance(part, (tuple, list)) or len(part) != 2 or
        not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in part) or
        not 0 <= part[0] < part[1]):
      raise ValueError(f"part must be None or a pair (p, P) of ints with 0 <= p < P; got {part!r}.")
    if batch_size % part[1]:
      raise ValueError(f"batch_size={batch_size} must be divisible by the number of parts "
                       f"{part[1]} (part={tuple(part)!r}).")
    size = batch_size // part[1]
    rows = slice(int(part[0]) * size, (int(part[0]) + 1) * size)

  images, labels, info = load_split(name, split, data_dir=data_dir, image_size=image_size,
                                    binarize=binarize, grayscale=grayscale, download=download)
  where = f"split {split!r} of dataset {name!r}"
  if (num_classes is not None or with_labels) and labels is None:
    what = f"num_classes={num_classes!r}" if num_classes is not None else "with_labels=True"
    raise ValueError(f"{what} needs labels, but {where} has no 'label' feature; pass "
                     "num_classes=None and with_labels=False.")

  if num_classes is None:
    if episode_length > info.num_examples:
      raise ValueError(f"episode_length={episode_length} is larger than the {info.num_examples} "
                       f"images of {where}; episodes hold distinct images, so use "
                       f"episode_length <= {info.num_examples}.")
    sampler = functools.partial(_uniform_indices, batch_size=batch_size,
                                episode_length=episode_length, num_examples=info.num_examples)
  else:
    if num_classes > info.num_classes:
      raise ValueError(f"num_classes={num_classes} is larger than the {info.num_classes} classes "
                       f"present in {where}.")
    if num_classes > episode_length:
      raise ValueError(f"num_classes={num_classes} is larger than episode_length="
                       f"{episode_length}: every class needs at least one image of the episode.")
    members, counts = class_table(labels)
    sampler = functools.partial(_class_indices, members=tf.constant(members),
                                counts=tf.constant(counts), batch_size=batch_size,
                                episode_length=episode_length, num_classes=num_classes)

  images_t = tf.constant(images)  # uint8 [num_examples, H, W, D]
  labels_t = tf.constant(labels) if with_labels else None
  base_seed = tf.constant(seed, tf.int64)
  scale = 1.0 if info.binarize else 1.0 / 255.0

  def make_batch(index):
    idx = sampler(tf.stack([base_seed, index]))[rows]                 # [B, T] (B/P with part)
    x = tf.cast(tf.gather(images_t, idx), tf.float32) * scale         # [B, T, H, W, D]
    if with_labels:
      return x, tf.gather(labels_t, idx)                              # [B, T]
    return x

  if repeat:
    indices = tf.data.Dataset.counter(dtype=tf.int64)
  else:
    if num_episodes is None:
      num_episodes = math.ceil(info.num_examples / episode_length)
    indices = tf.data.Dataset.range(math.ceil(num_episodes / batch_size))
  ds = indices.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# Sampling (pure functions of a stateless seed [2]; exposed for tests).


def class_table(labels: np.ndarray):
  """Groups example indices by label.

  Args:
    labels: int [num_examples].

  Returns:
    members: int64 [num_labels, max_count], row j holds the indices of the examples of the j-th
      distinct label (sorted), padded with 0 after counts[j] entries.
    counts: int64 [num_labels], examples per distinct label (all >= 1).
  """
  labels = np.asarray(labels)
  order = np.argsort(labels, kind="stable")
  _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
  members = np.zeros((len(counts), counts.max()), np.int64)
  for j, (s, c) in enumerate(zip(starts, counts)):
    members[j, :c] = order[s:s + c]
  return members, counts.astype(np.int64)


def _uniform_indices(seed, *, batch_size, episode_length, num_examples):
  """int64 [B, T]: each row a uniformly random ordered subset of T distinct example indices.

  Gumbel-top-k trick with uniform keys: the T largest of num_examples i.i.d. keys.
  """
  keys = tf.random.stateless_uniform([batch_size, num_examples], seed)   # [B, num_examples]
  return tf.cast(tf.math.top_k(keys, k=episode_length, sorted=True).indices, tf.int64)


def _class_indices(seed, *, members, counts, batch_size, episode_length, num_classes):
  """int64 [B, T] example indices of episodes drawn from `num_classes` random classes each.

  `members`, `counts` come from `class_table`. Slot t of an episode gets chosen class t % n and
  rank t // n inside it; rank r takes the (r mod count)-th image of a random permutation of the
  class; finally the T slots are shuffled.
  """
  seed_cls, seed_ex, seed_perm = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
  n = num_classes
  num_labels, max_count = members.shape
  # n distinct classes per episode.
  cls_keys = tf.random.stateless_uniform([batch_size, num_labels], seed_cls)
  chosen = tf.math.top_k(cls_keys, k=n).indices                        # [B, n] rows of `members`
  count = tf.gather(counts, chosen)                                    # [B, n]
  # Random order of the members of each chosen class (padding keys -1 sort last); only the
  # first ceil(T/n) positions can be used.
  top = min(math.ceil(episode_length / n), max_count)
  ex_keys = tf.random.stateless_uniform([batch_size, n, max_count], seed_ex)
  valid = tf.range(max_count, dtype=tf.int64) < count[..., None]      # [B, n, max_count]
  ex_keys = tf.where(valid, ex_keys, -1.0)
  order = tf.math.top_k(ex_keys, k=top).indices                        # [B, n, top]
  # Deal the T slots to the n classes in turn.
  slot = tf.range(episode_length, dtype=tf.int64)
  slot_cls = slot % n                                                  # [T]
  rank = (slot // n)[None, :] % tf.gather(count, slot_cls, axis=1)     # [B, T]
  pos = tf.gather(tf.gather(order, slot_cls, axis=1), rank[..., None], batch_dims=2)[..., 0]
  row = tf.gather(chosen, slot_cls, axis=1)                            # [B, T]
  idx = tf.gather_nd(members, tf.stack([tf.cast(row, tf.int64), tf.cast(pos, tf.int64)], -1))
  perm = tf.argsort(tf.random.stateless_uniform([batch_size, episode_length], seed_perm))
  return tf.gather(idx, perm, batch_dims=1)                            # [B, T]


# ---------------------------------------------------------------------------------------------
# Loading and preprocessing.


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_split_cached(name, split, data_dir, size, binarize, grayscale):
  """`load_split` after argument checks; `data_dir` resolved, `size` None or (H, W)."""
  ds, tfds_info = _tfds_load(name, split, data_dir)
  features = tfds_info.features
  image_key = _image_key(name, features)
  feature = features[image_key]
  shape = tuple(feature.shape)
  dtype = np.dtype(getattr(feature, "np_dtype", None) or feature.dtype.as_numpy_dtype)
  check_image_feature(name, image_key, shape, dtype, size=size, grayscale=grayscale)
  depth = shape[2] if len(shape) == 3 else 1
  static = None not in shape
  defaults = _DEFAULTS.get(name, _GENERIC_DEFAULTS)
  # Labels: the 'label' feature when it is an integer (ClassLabel or int Tensor).
  has_label = "label" in features and np.issubdtype(
      np.dtype(getattr(features["label"], "np_dtype", None) or
               features["label"].dtype.as_numpy_dtype), np.integer)
  finish = functools.partial(_finish, size=size, invert=defaults["invert"], binarize=binarize,
                             threshold=defaults["threshold"])

  def element(example):
    x = example[image_key]
    if len(shape) == 2:
      x = x[..., None]                                                 # [H, W, 1]
    if grayscale and depth == 3:
      if defaults["grayscale_method"] == "first_channel":
        x = x[..., :1]
      else:
        x = tf.image.rgb_to_grayscale(x)
    if not static:
      x = finish(x)
    label = example["label"] if has_label else tf.zeros([], tf.int64)
    return x, tf.cast(label, tf.int64)

  # Channel selection per image (cheap, parallel), then resize/threshold per batch of images.
  ds = ds.map(element, num_parallel_calls=tf.data.AUTOTUNE).batch(_LOAD_BATCH)
  if static:
    ds = ds.map(lambda x, y: (finish(x), y), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.prefetch(2)
  images, labels = [], []
  try:
    for x, y in ds:
      images.append(x.numpy())
      labels.append(y.numpy())
  except tf.errors.NotFoundError as e:  # metadata present but record files missing
    raise _NotPrepared(str(e)) from e
  if not images:
    raise ValueError(f"split {split!r} of dataset {name!r} has no examples.")
  images = np.concatenate(images)
  labels = np.concatenate(labels) if has_label else None
  images.flags.writeable = False
  num_classes = None
  if labels is not None:
    labels.flags.writeable = False
    num_classes = int(np.unique(labels).size)
  info = DatasetInfo(name=name, image_shape=tuple(int(s) for s in images.shape[1:]),
                     binarize=binarize, num_examples=int(images.shape[0]),
                     num_classes=num_classes)
  return images, labels, info


def check_image_feature(name, key, shape, dtype, *, size=None, grayscale=False):
  """Raises ValueError unless feature `key` of dataset `name` holds images this module can load.

  Args:
    shape: the feature's shape, (H, W) or (H, W, D), None for a variable dimension.
    dtype: its numpy dtype (must be uint8).
    size: the requested (H, W) or None (variable-size images need one).
    grayscale: whether a conversion to one channel is requested (needs D = 1 or 3).
  """
  shape = tuple(shape)
  if len(shape) not in (2, 3):
    raise ValueError(f"images must be 2-D [H, W] or 3-D [H, W, D]; feature {key!r} of "
                     f"dataset {name!r} has shape {shape} (rank {len(shape)}).")
  if np.dtype(dtype) != np.uint8:
    raise ValueError(f"images must be uint8 (0..255); feature {key!r} of dataset {name!r} "
                     f"has dtype {np.dtype(dtype)}.")
  if None in shape and size is None:
    raise ValueError(f"images of dataset {name!r} have variable size {shape}; pass image_size to "
                     "resize them to one size.")
  depth = shape[2] if len(shape) == 3 else 1
  if grayscale and depth not in (1, 3):
    raise ValueError(f"grayscale=True converts 1 or 3 channels; images of dataset {name!r} have "
                     f"D={depth} channels.")


def _finish(x, *, size, invert, binarize, threshold):
  """uint8 [..., H, W, D] -> uint8 [..., H', W', D]: invert, resize, threshold or requantise."""
  if size is None and not invert and not binarize:
    return x
  f = tf.cast(x, tf.float32) / 255.0
  if invert:
    f = 1.0 - f
  if size is not None:
    f = tf.image.resize(f, size, method=RESIZE_METHOD)
  if binarize:
    return tf.cast(f > threshold, tf.uint8)
  return tf.cast(tf.round(tf.clip_by_value(f, 0.0, 1.0) * 255.0), tf.uint8)


def _tfds_load(name, split, data_dir):
  """tfds.load(..., download=False, with_info=True); _NotPrepared when the data is absent."""
  try:
    return tfds.load(name, split=split, data_dir=data_dir, download=False, with_info=True)
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown_name(name, data_dir) from None
  except AssertionError as e:
    # TFDS 4.9 asserts "Dataset X: could not find data in DIR" when not prepared.
    if "could not find data" in str(e) or "download_and_prepare" in str(e):
      raise _NotPrepared(str(e)) from e
    raise
  except ValueError as e:
    if "split" in str(e).lower():
      raise ValueError(f"unknown or invalid split {split!r} for dataset {name!r}: {e}") from e
    raise


def _builder(name, data_dir):
  try:
    return tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown_name(name, data_dir) from None


def _unknown_name(name, data_dir):
  return ValueError(f"unknown dataset name {name!r}: it is not a TFDS dataset and no prepared "
                    f"copy of it was found in {data_dir}. Check the spelling (e.g. 'omniglot', "
                    "'cifar10').")


def _check_reachable(urls, timeout):
  """One HEAD request per (scheme, host) of the http(s) `urls`, no retries, `timeout` seconds.

  Any HTTP answer counts (redirects are not followed); raises `requests.RequestException` when
  a host cannot be reached. Proxies come from the environment (HTTPS_PROXY, ...), as for TFDS.
  """
  import requests  # pylint: disable=g-import-not-at-top  (a dependency of tensorflow-datasets)
  seen = set()
  for url in urls:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or (parts.scheme, parts.netloc) in seen:
      continue
    seen.add((parts.scheme, parts.netloc))
    requests.head(url, timeout=timeout, allow_redirects=False).close()


def _not_found_message(name, split, data_dir, why, detail):
  what = f"dataset {name!r}" + (f" (split {split!r})" if split is not None else "")
  detail = f" (TFDS said: {detail.strip()})" if detail.strip() else ""
  return (f"{what} is not prepared in data_dir {data_dir}. {why} To prepare it offline: on a "
          f"machine with internet run `tfds build {name} --data_dir=DIR` (or "
          f"tfds.builder({name!r}, data_dir=DIR).download_and_prepare()), copy DIR/{name} to "
          f"{data_dir}/{name} on this machine (or anywhere, then pass that directory as "
          f"--data_dir / data_dir or set TFDS_DATA_DIR to it).{detail}")


def _image_key(name, features):
  """Name of the image feature: 'image', else the only tfds.features.Image feature."""
  if "image" in features:
    return "image"
  keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  if len(keys) != 1:
    raise ValueError(f"dataset {name!r} has no single image feature (features: "
                     f"{sorted(features.keys())}); this pipeline needs an 'image' feature.")
  return keys[0]


# ---------------------------------------------------------------------------------------------
# Argument checks.


def _check_name(name):
  if not isinstance(name, str) or not name:
    raise ValueError(f"dataset name must be a non-empty string such as 'omniglot'; got {name!r}.")


def _check_positive_int(what, value):
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
    raise ValueError(f"{what} must be a positive int; got {value!r}.")
  return int(value)


def _check_bool(what, value):
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{what} must be True or False; got {value!r}.")
  return bool(value)


def _check_image_size(image_size) -> Union[None, Tuple[int, int]]:
  """None, an int side or an (H, W) pair -> None or (H, W)."""
  if image_size is None:
    return None
  if isinstance(image_size, numbers.Integral) and not isinstance(image_size, bool):
    pair = (image_size, image_size)
  elif isinstance(image_size, (tuple, list)) and len(image_size) == 2:
    pair = tuple(image_size)
  else:
    pair = None
  if pair is None or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool)
                             and s > 0 for s in pair):
    raise ValueError(f"image_size must be None, a positive int or an (H, W) pair of positive "
                     f"ints; got {image_size!r}.")
  return (int(pair[0]), int(pair[1]))
