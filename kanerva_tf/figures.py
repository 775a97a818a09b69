"""The paper's figures of a trained model, as PNG files.

  * `plot_reconstructions` (Fig. 3 left), `plot_generation` (Fig. 4, 5; Fig. 8 for the VAE),
    `plot_denoising` (Fig. 3 right), `plot_interpolation` (Fig. 7);
  * `plot_bound_sweep`: the numbers of `kanerva_tf.evaluation.bound_sweep` (Fig. 6 right).

Every figure is deterministic given its `seed` (stateless sampling) and drawn with
matplotlib's object-oriented API on an Agg canvas (no pyplot, no global backend change); the
PNG files carry no time stamp, so equal seeds give equal bytes. The numbers come from
`kanerva_tf.evaluation`, which never imports this module.

Shapes follow the package glossary (`kanerva_tf/__init__.py`).
"""

import io
import math

import numpy as np
import tensorflow as tf
from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorflow_probability.python.internal import samplers

from kanerva_tf.evaluation import MEMORY_MODELS
from kanerva_tf.evaluation import corrupt_with_block
from kanerva_tf.evaluation import require_model
from kanerva_tf.fidelity import GENERATION_ITERATIONS
from kanerva_tf.model import stateless_seed as _seed

__all__ = ["GENERATION_ITERATIONS", "plot_bound_sweep", "plot_reconstructions",
           "plot_generation", "plot_denoising", "plot_interpolation"]



# ============================================================================ drawing
def _figure(size, layout=None):
  fig = Figure(figsize=size, layout=layout)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path, dpi=100):
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buf.getvalue())


_PAD_RGB = (0.72, 0.8, 0.92)  # light blue between cells and in empty cells


def _mosaic(images, pad=1):
  """Images `[R, Cols, H, W, D]` (NaN = empty cell) -> one RGB array `[R(H+p)+p, Cols(W+p)+p, 3]`.

  One-channel images are drawn ink-dark as in the paper (1 = black: RGB 1 - x); colour images
  as they are. Values are clipped to [0, 1].
  """
  images = np.asarray(images, np.float32)
  r, c, h, w, d = images.shape
  out = np.empty((r * (h + pad) + pad, c * (w + pad) + pad, 3), np.float32)
  out[:] = _PAD_RGB
  for i in range(r):
    for j in range(c):
      cell = images[i, j]
      if np.isnan(cell).all():
        continue
      cell = np.clip(cell, 0., 1.)
      cell = np.repeat(1. - cell, 3, axis=-1) if d == 1 else cell[..., :3]
      out[pad + i * (h + pad):pad + i * (h + pad) + h,
          pad + j * (w + pad):pad + j * (w + pad) + w] = cell
  return out


def _show(ax, mosaic, title=None, col_labels=None, row_labels=None, cell=None, pad=1):
  """Draws a `_mosaic`, with optional labels under the columns and left of the rows."""
  ax.imshow(mosaic, interpolation="nearest")
  ax.set_xticks([]), ax.set_yticks([])
  if cell is not None:
    h, w = cell
    if col_labels is not None:
      ax.set_xticks([pad + j * (w + pad) + (w - 1) / 2 for j in range(len(col_labels))],
                    col_labels, fontsize=7)
    if row_labels is not None:
      ax.set_yticks([pad + i * (h + pad) + (h - 1) / 2 for i in range(len(row_labels))],
                    row_labels, fontsize=7)
  ax.tick_params(length=0)
  for spine in ax.spines.values():
    spine.set_visible(False)
  if title:
    ax.set_title(title, fontsize=9)


def _grid(images, cols):
  """Images `[N, H, W, D]` -> `[ceil(N/cols), cols, H, W, D]`, empty cells NaN."""
  images = np.asarray(images, np.float32)
  rows = math.ceil(len(images) / cols)
  out = np.full((rows * cols,) + images.shape[1:], np.nan, np.float32)
  out[:len(images)] = images
  return out.reshape((rows, cols) + images.shape[1:])


# ============================================================================ figures
def plot_reconstructions(model, episodes, path, *, seed=0, max_episodes=4, max_images=12):
  """Originals and reconstructions (Fig. 3 left), one pair of rows per episode.

  Kanerva Machine: each episode is written to the memory and read back once
  (`reconstruct`); VAE: x -> z ~ q(z|x) -> E[x|z].

  Args:
    model: a `KanervaMachine` or `VAE`.
    episodes: float32 `[B, T, H, W, D]`; the first `max_episodes` episodes are written whole,
      their first `max_images` images shown.
    path: output PNG.
  """
  x = tf.convert_to_tensor(episodes)[:max_episodes]
  recon = model.reconstruct(x, seed=_seed(seed)).numpy()[:, :max_images]    # [B, T', H, W, D]
  x = x.numpy()[:, :max_images]
  rows = np.stack([x, recon], axis=1).reshape((-1,) + x.shape[1:])   # [2B, T', H, W, D]
  labels = [f"{kind} {i}" for i in range(x.shape[0]) for kind in ("data", "recon")]
  h, w = x.shape[2:4]
  fig = _figure((0.6 * x.shape[1] + 1.2, 0.6 * len(rows) + 0.8))
  _show(fig.add_subplot(), _mosaic(rows), cell=(h, w), row_labels=labels,
        title=f"{type(model).__name__}: episodes (data) and reconstructions")
  fig.tight_layout()
  _save(fig, path)


def plot_generation(model, conditioning, path, *, num_samples=8,
                    iterations=GENERATION_ITERATIONS, seed=0):
  """Samples refined by iterative reading (Fig. 4, 5); for the VAE, fed-back samples (Fig. 8).

  Kanerva Machine: for each conditioning episode the episode is written to the memory and
  `generate(memory, num_samples, max(iterations))` draws y ~ N(0, I), z ~ p(z|y, M),
  x ~ p(x|z), then reads iteratively; the columns are the samples after the given
  iterations. One panel per episode: the conditioning images above, the samples below.
  VAE: `generate(num_samples, max(iterations))` (z ~ N(0, I), outputs fed back through the
  encoder), one panel; `conditioning` is ignored.

  Args:
    model: a `KanervaMachine` or `VAE`.
    conditioning: dict {panel title: episode float32 `[T, H, W, D]`} (Kanerva Machine).
    path: output PNG.
    num_samples: rows of samples per panel.
    iterations: the iterations shown (column 0 = before any reading).
    seed: stateless seed; panel i uses fold_in(seed, i).
  """
  iterations = tuple(int(i) for i in iterations)
  last = max(iterations)
  seed = _seed(seed)
  is_km = isinstance(model, MEMORY_MODELS)  # generates from a written memory (KM or DNC)
  panels = []  # (title, conditioning images [T, H, W, D] or None, samples [N, cols, H, W, D])
  if is_km:
    if not conditioning:
      raise ValueError("plot_generation: the Kanerva Machine needs conditioning episodes.")
    for i, (title, episode) in enumerate(conditioning.items()):
      write_seed, gen_seed = tf.unstack(samplers.split_seed(samplers.fold_in(seed, i), 2))
      episode = tf.convert_to_tensor(episode)[tf.newaxis]              # [1, T, H, W, D]
      memory = model.write(episode, seed=write_seed)
      samples = model.generate(memory, num_samples, last, seed=gen_seed)[:, 0]  # [it+1, N, ...]
      panels.append((title, episode[0].numpy(), samples.numpy()))
  else:
    samples = model.generate(num_samples, last, seed=seed)            # [it+1, N, H, W, D]
    panels.append(("VAE samples fed back (Fig. 8)", None, samples.numpy()))
  h, w = panels[0][2].shape[2:4]
  cols = len(iterations)
  fig = _figure((max(2.4, 0.5 * cols + 0.7) * len(panels), 0.5 * (num_samples + 3) + 1.4),
                layout="constrained")
  subfigs = fig.subfigures(1, len(panels), squeeze=False)[0]
  for sub, (title, images, samples) in zip(subfigs, panels):
    chosen = np.transpose(samples[list(iterations)], (1, 0, 2, 3, 4))  # [N, cols, H, W, D]
    if images is not None:
      cond = _grid(images, cols)
      axes = sub.subplots(2, 1, height_ratios=[cond.shape[0], num_samples])
      _show(axes[0], _mosaic(cond), title=f"{title}\nconditioning ({len(images)} images)")
      ax = axes[1]
      ax.set_title("samples", fontsize=8)
    else:
      ax = sub.subplots(1, 1)
      ax.set_title(title, fontsize=9)
    _show(ax, _mosaic(chosen), cell=(h, w), col_labels=[str(i) for i in iterations])
    ax.set_xlabel("iterations", fontsize=8)
  _save(fig, path)


def plot_denoising(model, episode, path, *, num_images=6, iterations=3, block_size=None,
                   fill="noise", seed=0):
  """Denoising by iterative reading (Fig. 3 right; Kanerva Machine only).

  The clean episode is written to the memory; its first `num_images` images, corrupted by
  `corrupt_with_block`, are the queries of `read(..., iterations)`. Columns: original,
  corrupted (the block outlined in red), then the reads after 1, 2, ... iterations.

  Args:
    model: a `KanervaMachine`.
    episode: float32 `[T, H, W, D]`.
    path: output PNG.
  """
  require_model(model, "plot_denoising", MEMORY_MODELS)
  seeds = samplers.split_seed(_seed(seed), 3)
  x = tf.convert_to_tensor(episode)
  memory = model.write(x[tf.newaxis], seed=seeds[0])
  clean = x[:num_images]
  corrupted, corners, (bh, bw) = corrupt_with_block(clean, seeds[1], block_size, fill)
  reads = model.read(corrupted[tf.newaxis], memory, iterations, seed=seeds[2])[:, 0]
  columns = [clean.numpy(), corrupted.numpy()] + list(reads.numpy())  # each [N, H, W, D]
  grid = np.stack(columns, axis=1)                                    # [N, 2 + it, H, W, D]
  h, w = grid.shape[2:4]
  fig = _figure((0.7 * grid.shape[1] + 0.8, 0.7 * grid.shape[0] + 1.))
  ax = fig.add_subplot()
  _show(ax, _mosaic(grid), cell=(h, w),
        col_labels=["original", "corrupted"] + [str(i + 1) for i in range(iterations)],
        title=f"Denoising: {bh}x{bw} block of "
              f"{'random binary noise' if fill == 'noise' else 'zeros'}\nthen reads after "
              f"1..{iterations} iterations")
  for i, (r, c) in enumerate(corners):   # outline each block in the 'corrupted' column
    ax.add_patch(patches.Rectangle((1 + (w + 1) + c - 0.5, 1 + i * (h + 1) + r - 0.5), bw, bh,
                                   fill=False, edgecolor="red", linewidth=0.8))
  fig.tight_layout()
  _save(fig, path)


def plot_interpolation(model, episode, path, *, num_pairs=4, num_steps=8, seed=0):
  """Interpolation in the space of addressing weights w (Fig. 7; Kanerva Machine only).

  The episode is written to the memory; pairs (x_0, x_1), (x_2, x_3), ... of its images give
  w_a, w_b from the means of q(y|x), and `interpolate` reads and decodes
  (1 - alpha) w_a + alpha w_b for alpha in [0, 1]. Columns: image a, the `num_steps` reads,
  image b.

  Args:
    model: a `KanervaMachine`.
    episode: float32 `[T, H, W, D]`, T >= 2.
    path: output PNG.
  """
  require_model(model, "plot_interpolation")
  x = tf.convert_to_tensor(episode)
  num_pairs = min(num_pairs, int(x.shape[0]) // 2)
  if num_pairs < 1:
    raise ValueError(f"plot_interpolation needs an episode of >= 2 images; got {x.shape[0]}.")
  memory = model.write(x[tf.newaxis], seed=_seed(seed))
  a, b = x[0:2 * num_pairs:2], x[1:2 * num_pairs:2]                   # [P, H, W, D]
  memory_p = type(memory)(tf.repeat(memory.loc, num_pairs, axis=0),
                          tf.repeat(memory.row_covariance, num_pairs, axis=0))
  reads = model.interpolate(a, b, memory_p, num_steps).numpy()         # [P, steps, H, W, D]
  grid = np.concatenate([a.numpy()[:, None], reads, b.numpy()[:, None]], axis=1)
  h, w = grid.shape[2:4]
  alphas = np.linspace(0., 1., num_steps)
  fig = _figure((0.6 * grid.shape[1] + 0.8, 0.6 * grid.shape[0] + 1.))
  _show(fig.add_subplot(), _mosaic(grid), cell=(h, w),
        col_labels=["a"] + [f"{v:.2g}" for v in alphas] + ["b"],
        title="Interpolation of addressing weights w (columns: alpha)")
  fig.tight_layout()
  _save(fig, path)


def plot_bound_sweep(sweep, path, title=None):
  """Line plot of `bound_sweep` results: loss (nats) against T, one line per class count."""
  fig = _figure((6, 4))
  ax = fig.add_subplot()
  for label in sweep["class_counts"]:
    points = [(t, v) for t, v in zip(sweep["episode_sizes"], sweep["loss"][label])
              if v is not None]
    if points:
      t, v = zip(*points)
      ax.plot(t, v, marker="o", label=f"{label} classes" if label != "all" else "all classes")
  ax.set_xscale("log", base=2)
  ax.set_xticks(sweep["episode_sizes"], [str(t) for t in sweep["episode_sizes"]])
  ax.set_xlabel("episode size T")
  ax.set_ylabel("test loss: negative bound per sample (nats)")
  ax.set_title(title or "Test bound vs episode size (Fig. 6 right)")
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  _save(fig, path)
