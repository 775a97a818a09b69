r"""The shipped Omniglot Kanerva Machine with TensorFlow alone: write, denoise, generate.

  python examples/pretrained.py [--out=pretrained_example.png] [--source=auto|tfds|bundled]

Loads `pretrained/omniglot_kanerva/export` with `tf.saved_model.load` (no kanerva_tf, no
TensorFlow Probability) and uses its serving signatures (README, "Serving signatures"):

1. `write`: an episode of T = 32 Omniglot test images [1, T, 28, 28, 1] into the memory, the
   posterior q(M|X) as `loc` [1, K, C] and `row_covariance` [1, K, K] (K = 64, C = 100);
2. `read`: N = 8 of the written images, each with a 12x12 block of random binary noise (as
   Fig. 3 right), as queries [1, N, 28, 28, 1], read from that memory by 3 iterations of
   iterative reading; the last iteration is the denoised image;
3. `generate`: N samples from the same memory, refined by 4 iterations of reading.

Every signature that samples takes an explicit stateless `seed` [2] (int32): the same inputs
and seed give the same images. The figure has four rows: originals, noisy, denoised (the
mean image of the last read), samples. It prints the episode's negative bound (`loss`, nats
per image) and the fraction of wrong pixels (mean > 0.5 vs the original) inside the noise
blocks and in the whole images, before and after the reads. With the shipped model (10,000
steps, not converged: pretrained/README.md) and the bundled episode, the reads fill the
blocks with strokes from the memory (51% of their pixels wrong before, 36% after) but blur
the rest of the images, which end worse than the noisy queries (9% of their pixels wrong
before the reads, 15% after): a partial denoiser, not yet the paper's.

The episode: with `--source=auto` (default) T random images of the TFDS Omniglot test split
when it is prepared (in $TFDS_DATA_DIR or TFDS's default directory; nothing is downloaded),
else the 32 bundled in examples/data/omniglot_test_episode.npz, which are the images seed 0
draws (made with `--source=tfds --save_episode=examples/data/omniglot_test_episode.npz`).
Preprocessing as `kanerva_tf.data` (28x28 area resize, ink = 1, thresholded at > 0.25).
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf

REPO = Path(__file__).resolve().parents[1]
EXPORT = REPO / "pretrained" / "omniglot_kanerva" / "export"
BUNDLED = REPO / "examples" / "data" / "omniglot_test_episode.npz"
T, N = 32, 8                 # episode length, images denoised and sampled
BLOCK = 12                   # side of the noise block (Fig. 3 right: 12x12 on 28x28)
READ_ITERATIONS, SAMPLE_ITERATIONS = 3, 4
THRESHOLD = 0.25             # kanerva_tf.data: Omniglot ink is a pixel > 0.25 after resizing


# ----------------------------------------------------------------------------- the episode
def tfds_episode(seed, data_dir=None):
  """T random images of the TFDS Omniglot test split, float32 [T, 28, 28, 1] in {0, 1}, and
  their indices in the split. Raises if the split is not prepared (never downloads)."""
  import tensorflow_datasets as tfds
  ds = tfds.load("omniglot", split="test", data_dir=data_dir, download=False)
  images = np.concatenate([batch["image"][..., :1].numpy()  # the 3 channels are copies
                           for batch in ds.batch(1024)])     # uint8 [num_examples, 105, 105, 1]
  indices = np.sort(np.random.default_rng(seed).choice(len(images), T, replace=False))
  ink = 1. - tf.cast(images[indices], tf.float32) / 255.
  small = tf.image.resize(ink, (28, 28), method="area")
  return tf.cast(small > THRESHOLD, tf.float32).numpy(), indices


def bundled_episode(path=BUNDLED):
  """The bundled episode, float32 [T, 28, 28, 1] in {0, 1}, and its test-split indices."""
  with np.load(path) as f:
    bits = np.unpackbits(f["packed"])[:int(np.prod(f["shape"]))]
    return bits.reshape(f["shape"]).astype(np.float32), f["indices"]


def save_episode(path, images, indices):
  np.savez_compressed(path, packed=np.packbits(images.astype(np.uint8)),
                      shape=np.array(images.shape), indices=indices)


def load_episode(source, seed):
  """(images [T, 28, 28, 1], a description of where they come from)."""
  if source in ("auto", "tfds"):
    try:
      images, _ = tfds_episode(seed)
      return images, f"TFDS omniglot test split, seed {seed}"
    except Exception as e:  # pylint: disable=broad-except
      if source == "tfds":
        raise
      print(f"(TFDS Omniglot test split not available: {type(e).__name__}; using the "
            f"bundled episode)")
  images, _ = bundled_episode()
  return images, f"bundled {BUNDLED.relative_to(REPO)}"


def with_noise_block(images, rng):
  """Each image with one randomly placed BLOCK x BLOCK square of random bits; the mask too."""
  n, h, w, _ = images.shape
  mask = np.zeros(images.shape, bool)
  for i in range(n):
    r, c = rng.integers(0, h - BLOCK + 1), rng.integers(0, w - BLOCK + 1)
    mask[i, r:r + BLOCK, c:c + BLOCK] = True
  noise = (rng.random(images.shape) < 0.5).astype(np.float32)
  return np.where(mask, noise, images), mask


# ----------------------------------------------------------------------------- the figure
def save_figure(rows, path):
  """rows: {label: images [N, 28, 28, 1]} -> a PNG with one row per label."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(1.0 + 0.8 * N, 0.85 * len(rows) + 0.3))
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(rows), N, squeeze=False)
  for r, (label, images) in enumerate(rows.items()):
    for c in range(N):
      ax = axes[r, c]
      ax.imshow(images[c, ..., 0], cmap="gray_r", vmin=0., vmax=1., interpolation="nearest")
      ax.set_xticks([]), ax.set_yticks([])
      if c == 0:
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
  fig.subplots_adjust(left=0.11, right=0.99, top=0.98, bottom=0.02, wspace=0.06, hspace=0.06)
  fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------- main
def main(out="pretrained_example.png", source="auto", seed=0, export=EXPORT):
  """Runs the example; returns a dict of the numbers it prints and the images it shows."""
  start = time.time()
  served = tf.saved_model.load(str(export))
  config = json.loads(served.signatures["config"]()["config"].numpy())
  print(f"Loaded {export} ({time.time() - start:.1f} s): a Kanerva Machine with K = "
        f"{config['memory_size']} memory rows, code size C = {config['code_size']}")
  images, where = load_episode(source, seed)
  episode = tf.constant(images[np.newaxis])                               # [1, T, 28, 28, 1]
  rng = np.random.default_rng(seed)
  seeds = [tf.constant(s, tf.int32) for s in rng.integers(0, 2**31 - 1, size=(4, 2))]

  memory = served.signatures["write"](episode=episode, seed=seeds[0])   # loc, row_covariance
  loss = served.signatures["loss"](episode=episode, seed=seeds[0])
  originals = images[:N]
  noisy, mask = with_noise_block(originals, rng)
  reads = served.signatures["read"](
      queries=tf.constant(noisy[np.newaxis]), iterations=tf.constant(READ_ITERATIONS),
      seed=seeds[1], **memory)["images"]                                  # [3, 1, N, 28, 28, 1]
  denoised = reads[-1, 0].numpy()                                         # E[x | z], [N, ...]
  samples = served.signatures["generate"](
      num_samples=tf.constant(N), iterations=tf.constant(SAMPLE_ITERATIONS), seed=seeds[2],
      **memory)["images"][-1, 0].numpy()                                  # [N, 28, 28, 1]

  def wrong(x, where):  # fraction of the pixels `where` that differ from the original's
    return float(np.mean((x[where] > 0.5) != (originals[where] > 0.5)))
  everywhere = np.ones_like(mask)
  error = {name: {"block": wrong(x, mask), "image": wrong(x, everywhere)}
           for name, x in (("noisy", noisy), ("denoised", denoised))}
  print(f"Episode: T = {T} images, {where}")
  print(f"Negative bound of the episode: {float(loss['loss']):.2f} nats per image "
        f"(reconstruction {float(loss['reconstruction']):.2f}, KL(y) {float(loss['kl_y']):.2f}, "
        f"KL(z) {float(loss['kl_z']):.2f})")
  print(f"Wrong pixels (vs the original) in the {BLOCK}x{BLOCK} noise blocks: noisy "
        f"{error['noisy']['block']:.1%}, after {READ_ITERATIONS} reads "
        f"{error['denoised']['block']:.1%}; in the whole images: noisy "
        f"{error['noisy']['image']:.1%}, after the reads {error['denoised']['image']:.1%}")
  save_figure({"original": originals, "noisy": noisy, "denoised": denoised,
               "samples": samples}, out)
  print(f"Wrote {out} (rows: originals, noisy, denoised, samples) in {time.time() - start:.1f} s")
  return {"loss": {k: float(v) for k, v in loss.items() if v.shape.rank == 0},
          "error": error, "originals": originals, "noisy": noisy, "denoised": denoised,
          "samples": samples, "memory": {k: v.numpy() for k, v in memory.items()}}


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="pretrained_example.png", help="the PNG to write")
  parser.add_argument("--source", default="auto", choices=("auto", "tfds", "bundled"),
                      help="where the episode comes from (see the module docstring)")
  parser.add_argument("--seed", type=int, default=0, help="episode choice, noise, sampling")
  parser.add_argument("--export", default=str(EXPORT), help="the SavedModel directory")
  parser.add_argument("--save_episode", default=None,
                      help="only draw the TFDS episode of --seed and save it to this .npz")
  args = parser.parse_args()
  if args.save_episode:
    save_episode(args.save_episode, *tfds_episode(args.seed))
    sys.exit(0)
  main(args.out, args.source, args.seed, args.export)
