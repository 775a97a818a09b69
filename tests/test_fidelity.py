"""Tests of kanerva_tf.fidelity: the nearest-neighbour score of generated samples (Fig. 4).

`nearest_neighbour_fidelity` is checked against a brute-force float64 numpy loop and hand-made
cases; `generation_fidelity` runs tiny untrained models on mocked TFDS omniglot whose classes
are known, and checks that it scores an episode's own images against other classes.

Shapes: E episodes, N samples, M conditioning images, H W D image height/width/depth.
"""

import numpy as np
import pytest
import tensorflow as tf

import kanerva_tf as kt
from kanerva_tf import fidelity
from kanerva_tf import runs

TINY = dict(code_size=6, memory_size=5, address_size=4, num_filters=4, y_size=3,
            mlp_hidden_size=8, episode_length=4)
OMNIGLOT_TINY = kt.ModelConfig(image_shape=(28, 28, 1), **TINY)


def _numpy_fidelity(samples, conditioning, others):
  """Brute-force reference: loops over episodes and samples, float64."""
  fractions, d_c, d_o = [], [], []
  samples, conditioning, others = (np.float64(v) for v in (samples, conditioning, others))
  for s_e, a_e, o_e in zip(samples, conditioning, others):
    hits, dc, do = [], [], []
    for s in s_e:
      near_a = min(np.linalg.norm((s - a).ravel()) for a in a_e)
      near_o = min(np.linalg.norm((s - o).ravel()) for o in o_e)
      hits.append(1. if near_a < near_o else 0.5 if near_a == near_o else 0.)
      dc.append(near_a), do.append(near_o)
    fractions.append(np.mean(hits)), d_c.append(np.mean(dc)), d_o.append(np.mean(do))
  fractions, d_c, d_o = np.array(fractions), np.array(d_c), np.array(d_o)
  e = len(fractions)
  ratio = d_c.mean() / d_o.mean()
  return {"nn_in_conditioning": fractions.mean(),
          "nn_in_conditioning_stderr": fractions.std(ddof=1) / np.sqrt(e),
          "distance_ratio": ratio,
          "distance_ratio_stderr": np.sqrt(np.sum((d_c - ratio * d_o) ** 2) / (e * (e - 1)))
                                   / d_o.mean(),
          "distance_conditioning": d_c.mean(), "distance_other": d_o.mean()}


def test_nearest_neighbour_fidelity_matches_numpy_and_hand_made_cases():
  rng = np.random.default_rng(0)
  e, n, m, shape = 5, 6, 7, (6, 5, 1)
  a = (rng.random((e, m) + shape) < 0.3).astype(np.float32)          # conditioning
  o = (rng.random((e, m) + shape) < 0.3).astype(np.float32)          # others
  # Samples: noisy copies of conditioning images for some, of other images for the rest.
  source = np.where(rng.random((e, n, 1, 1, 1)) < 0.6, a[:, :n], o[:, :n])
  samples = np.clip(source + 0.3 * rng.standard_normal(source.shape), 0, 1).astype(np.float32)
  got = fidelity.nearest_neighbour_fidelity(samples, a, o)
  want = _numpy_fidelity(samples, a, o)
  for key, value in want.items():
    assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
  assert got["num_episodes"] == e and 0 < got["nn_in_conditioning"] < 1
  # Samples that are conditioning images: fraction 1, ratio 0; other images: 0, ratio inf.
  same = fidelity.nearest_neighbour_fidelity(a[:, :n], a, o)
  assert same["nn_in_conditioning"] == 1. and same["distance_ratio"] == 0.
  assert same["distance_conditioning"] == 0. and same["nn_in_conditioning_stderr"] == 0.
  other = fidelity.nearest_neighbour_fidelity(o[:, :n], a, o)
  assert other["nn_in_conditioning"] == 0. and other["distance_ratio"] == np.inf
  # Equally far from both sets (both sets the same images): ties count 1/2, ratio 1.
  tie = fidelity.nearest_neighbour_fidelity(samples, a, a)
  assert tie["nn_in_conditioning"] == 0.5 and tie["distance_ratio"] == pytest.approx(1.)
  # Distances are pixel L2: a blank sample vs one image with k ink pixels is at sqrt(k).
  blank = np.zeros((1, 1) + shape, np.float32)
  one = np.zeros((1, 1) + shape, np.float32)
  one[0, 0, :2, :2] = 1.                                              # 4 pixels: distance 2
  nine = np.zeros((1, 1) + shape, np.float32)
  nine[0, 0, :3, :3] = 1.                                             # 9 pixels: distance 3
  d = fidelity.nearest_neighbour_fidelity(blank, one, nine)
  assert (d["distance_conditioning"], d["distance_other"]) == (2., 3.)
  assert d["distance_ratio"] == pytest.approx(2. / 3.) and d["nn_in_conditioning"] == 1.


def test_nearest_neighbour_fidelity_rejects_bad_shapes():
  x = np.zeros((2, 3, 4, 4, 1), np.float32)
  with pytest.raises(ValueError, match=r"samples must be non-empty images \[E, N, H, W, D\]"):
    fidelity.nearest_neighbour_fidelity(x[0], x, x)
  with pytest.raises(ValueError, match="others must be non-empty"):
    fidelity.nearest_neighbour_fidelity(x, x, x[:, :0])
  with pytest.raises(ValueError, match="same number of episodes E and image shape"):
    fidelity.nearest_neighbour_fidelity(x, x[:1], x)
  with pytest.raises(ValueError, match="same number of episodes E and image shape"):
    fidelity.nearest_neighbour_fidelity(x, x, np.zeros((2, 3, 5, 4, 1)))


@pytest.fixture
def labelled_omniglot():
  """TFDS omniglot mocked with 60 distinct pages of 6 classes (label = i % 6 = the row of a
  black bar; a random square besides), so the classes of an episode are known."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  labels = np.arange(60, dtype=np.int64) % 6
  pages = np.full((60, 105, 105, 3), 255, np.uint8)
  for i, label in enumerate(labels):
    pages[i, 12 * label + 10:12 * label + 18, 20:85] = 0
    r, c = rng.integers(0, 90, size=2)
    pages[i, r:r + 15, c:c + 15] = 0

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del self, split, decoders, read_config, kwargs
    return tf.data.Dataset.from_tensor_slices({"image": pages, "label": labels})
  data_lib.clear_cache()
  with tfds.testing.mock_data(num_examples=60, as_dataset_fn=as_dataset,
                              policy=tfds.testing.MockPolicy.USE_CODE):
    yield
  data_lib.clear_cache()


_MOCK_DATA = {"dataset": "omniglot", "data_dir": None, "image_size": None, "binarize": None,
              "grayscale": None}


@pytest.mark.parametrize("model_type", ["kanerva", "vae"])
def test_generation_fidelity_runs_the_models(model_type, labelled_omniglot):
  del labelled_omniglot
  model = runs.build_model(model_type, OMNIGLOT_TINY)
  kwargs = dict(class_counts=(2, "all", 50), num_episodes=3, conditioning_size=2,
                num_samples=2, iterations=(0, 2), batch_size=2, seed=1)
  out = fidelity.generation_fidelity(model, _MOCK_DATA, "test", **kwargs)
  again = fidelity.generation_fidelity(model, _MOCK_DATA, "test", **kwargs)
  assert out == again  # deterministic given the seed
  assert out["class_counts"] == ["2", "all", "50"] and out["iterations"] == [0, 2]
  assert out["conditioned"] == (model_type == "kanerva") and out["distance"] == "pixel L2"
  assert set(out["results"]) == {"2", "all"} and "50" in out["skipped"]
  for r in out["results"].values():
    assert all(0 <= v <= 1 for v in r["nn_in_conditioning"]) and len(r["distance_ratio"]) == 2
    assert all(np.isfinite(v) and v > 0 for v in r["distance_ratio"])


def test_generation_fidelity_scores_the_episode_against_other_classes(labelled_omniglot,
                                                                      monkeypatch):
  """With samples that are the conditioning images the score is 1 (ratio 0); the other
  images are distinct test images of classes that are not in the episode, as many per class
  as the episode has."""
  del labelled_omniglot
  from kanerva_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  images, labels, _ = data_lib.load_split("omniglot", "test")
  flat = images.reshape(len(images), -1).astype(np.float32)

  def label_of(image):
    return labels[np.flatnonzero((flat == image.reshape(1, -1)).all(1))]

  seen = []

  def copy_conditioning(model, episodes, num_samples, iterations, seed):
    del model, seed
    return tf.stack([episodes[:, :num_samples]] * (iterations + 1))
  real = fidelity.nearest_neighbour_fidelity

  def record(samples, conditioning, others):
    seen.append((conditioning, others))
    return real(samples, conditioning, others)
  monkeypatch.setattr(fidelity, "_generated", copy_conditioning)
  monkeypatch.setattr(fidelity, "nearest_neighbour_fidelity", record)
  model = runs.build_model("kanerva", OMNIGLOT_TINY)
  out = fidelity.generation_fidelity(model, _MOCK_DATA, "test", class_counts=(2,),
                                     num_episodes=3, conditioning_size=4, num_samples=3,
                                     iterations=(1,), batch_size=2, seed=0)
  r = out["results"]["2"]
  assert r["nn_in_conditioning"] == [1.] and r["distance_ratio"] == [0.]
  conditioning, others = seen[0]
  assert conditioning.shape == others.shape == (3, 4, 28, 28, 1)
  for a_e, o_e in zip(conditioning, others):
    classes = np.concatenate([label_of(a) for a in a_e])
    others_classes = np.concatenate([label_of(o) for o in o_e])
    assert len(classes) == len(others_classes) == 4
    assert len(set(classes)) == len(set(others_classes)) == 2
    assert not set(classes) & set(others_classes)
    assert sorted(np.unique(classes, return_counts=True)[1]) == sorted(
        np.unique(others_classes, return_counts=True)[1])
    assert len({o.tobytes() for o in o_e}) == len(o_e)   # drawn without replacement


def test_matched_others_copy_the_class_structure():
  by_class = {0: np.arange(0, 5), 1: np.arange(5, 7), 2: np.arange(7, 12), 3: np.arange(12, 20)}
  rng = np.random.default_rng(0)
  for _ in range(20):
    got = fidelity._matched_others(rng, by_class, np.array([0, 0, 0, 1]))
    labels = np.searchsorted([5, 7, 12, 20], got, side="right")
    assert sorted(np.unique(labels, return_counts=True)[1]) == [1, 3]
    assert set(labels) <= {2, 3} and len(set(got)) == 4
  # Three images of class 0 need a class with >= 3 images outside {0, 2, 3}: only class 1
  # (2 images) is left.
  assert fidelity._matched_others(rng, by_class, np.array([0, 0, 0, 2, 3])) is None


def test_generation_fidelity_rejects_bad_arguments():
  model = runs.build_model("vae", OMNIGLOT_TINY)
  for kwargs, message in [({"num_episodes": 0}, "num_episodes must be an int >= 1"),
                          ({"conditioning_size": 0}, "conditioning_size must be an int >= 1"),
                          ({"iterations": ()}, "iterations must not be empty"),
                          ({"iterations": (-1,)}, "iteration must be an int >= 0"),
                          ({"class_counts": ("two",)}, "class count must be an int")]:
    with pytest.raises(ValueError, match=message):
      fidelity.generation_fidelity(model, _MOCK_DATA, "test", **kwargs)
