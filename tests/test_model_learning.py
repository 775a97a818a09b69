"""Learning tests: the memory pays off on episodes with strong within-episode redundancy.

400 Adam steps on tiny synthetic binary episodes. Each episode shows one prototype (a 4x4
filled square at a uniform random position of an 8x8 image, drawn afresh for every episode)
T = 32 times, each copy with 1% of its pixels flipped. Since prototypes are fresh, the only
thing a model can exploit beyond the per-image statistics is the redundancy *within* an
episode: the Kanerva Machine writes the episode into its memory and reads the prototype back as
the prior of z, so it hardly pays KL for it, while the matched VAE encodes every image alone.

Checked:
  * the Kanerva Machine's held-out bound (fresh episodes, fixed seeds, training=False) is
    clearly below the matched VAE's after the same steps;
  * the advantage comes from the redundancy: on held-out episodes of T *different* prototypes
    the Kanerva Machine is much worse than on redundant ones and loses its edge over the VAE;
  * iterative reading of a corrupted copy of a stored prototype moves it towards the prototype.

Design notes (from sweeps on this machine; see the margins below):
  * Both models first sit in posterior collapse; the Kanerva Machine escapes earlier (~200-300
    steps here) because the memory makes the code nearly free. The margin at 400 steps is
    partly this head start: with more steps the VAE learns the 25 positions too and the gap
    tends to the cost of encoding the position (~log 25 = 3.2 nats).
  * One prototype per episode: with 2 or more, q(y|x) collapses to the prior within this
    budget (kl_y ~ 0), so the memory cannot address prototypes separately and gives no edge.
    For the same reason the read is driven by the memory, not the query: any query (even a
    blank one) is read back as the stored prototype.
  * Dense random prototypes (p = 0.5 pixels, blocks, quadrants) keep both models collapsed
    for 400-1000+ steps, so they are not usable at this budget.

Both models are trained once per module (fixture `trained`, ~30-45 s on 2 shared cores); the
tests are marked slow (`pytest -m slow`).
"""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import kanerva_tf as kt

SIZE = 8              # images are SIZE x SIZE x 1
SQUARE = 4            # side of the square prototype
EPISODE_LENGTH = 32   # T
BATCH = 8             # episodes per step
STEPS = 400
LEARNING_RATE = 3e-3
FLIP = 0.01           # pixel-flip noise of every copy of a prototype
MODEL_SEED = 0

CONFIG = kt.ModelConfig(image_shape=(SIZE, SIZE, 1), code_size=16, memory_size=16,
                        address_size=8, num_filters=8, y_size=8, mlp_hidden_size=32,
                        episode_length=EPISODE_LENGTH)


# ----------------------------------------------------------------------------- data
def squares(rng, num):
  """`num` prototypes: a SQUARE x SQUARE block of ones at a uniform random position, bool
  `[num, SIZE, SIZE, 1]`."""
  corner = rng.integers(0, SIZE - SQUARE + 1, size=(num, 2))
  ii = np.arange(SIZE)
  rows = (ii >= corner[:, :1]) & (ii < corner[:, :1] + SQUARE)   # [num, SIZE]
  cols = (ii >= corner[:, 1:]) & (ii < corner[:, 1:] + SQUARE)
  return (rows[:, :, None] & cols[:, None, :])[..., None]


def flip(rng, images, rate):
  """Flips each pixel of the bool `images` with probability `rate`."""
  return images ^ (rng.random(images.shape) < rate)


def episodes(rng, batch, distinct=False):
  """float32 episodes `[batch, T, SIZE, SIZE, 1]`: T noisy copies of one fresh prototype per
  episode, or (`distinct=True`, the no-redundancy control) T different fresh prototypes."""
  if distinct:
    clean = squares(rng, batch * EPISODE_LENGTH).reshape(
        (batch, EPISODE_LENGTH, SIZE, SIZE, 1))
  else:
    clean = np.repeat(squares(rng, batch)[:, None], EPISODE_LENGTH, axis=1)
  return flip(rng, clean, FLIP).astype(np.float32)


# ----------------------------------------------------------------------------- training
def _train(cls, steps):
  keras.utils.set_random_seed(MODEL_SEED)
  model = cls(CONFIG)
  rng = np.random.default_rng(1000 + MODEL_SEED)
  model(episodes(rng, 2))
  optimizer = keras.optimizers.Adam(LEARNING_RATE)
  optimizer.build(model.trainable_variables)

  @tf.function
  def step(x, seed):
    with tf.GradientTape() as tape:
      loss = model(x, training=True, seed=seed)["loss"]
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  for i in range(steps):
    step(episodes(rng, BATCH), tf.constant([MODEL_SEED, i]))
  return model


def _held_out_bound(model, x):
  """Negative bound per sample (nats) on held-out episodes, averaged over 2 fixed seeds."""
  return float(np.mean([model(x, training=False, seed=(7, s))["loss"] for s in range(2)]))


@pytest.fixture(scope="module")
def trained():
  start = time.time()
  km = _train(kt.KanervaMachine, STEPS)
  vae = _train(kt.VAE, STEPS)
  redundant = episodes(np.random.default_rng(99), 32)
  distinct = episodes(np.random.default_rng(98), 32, distinct=True)
  out = {
      "km": km,
      "km_bound": _held_out_bound(km, redundant),
      "vae_bound": _held_out_bound(vae, redundant),
      "km_bound_distinct": _held_out_bound(km, distinct),
      "vae_bound_distinct": _held_out_bound(vae, distinct),
      "seconds": time.time() - start,
  }
  print({k: v for k, v in out.items() if k != "km"})
  return out


# ----------------------------------------------------------------------------- tests
# Margins were set from 5 model seeds (0-4) at STEPS = 400 (held-out bounds, nats per image):
#   Kanerva Machine 16.4 / 19.5 / 18.2 / 24.7 / 18.2,  VAE 27.9 / 27.3 / 31.0 / 31.2 / 24.4,
#   i.e. the Kanerva Machine is 6.2-12.8 nats lower; on the no-redundancy control episodes it is
#   13-29 nats worse than on redundant ones (and 1.4-17 nats worse than the VAE).
MARGIN_VS_VAE = 3.0        # nats
MARGIN_REDUNDANCY = 5.0    # nats
CORRUPTION = 0.25          # fraction of flipped pixels in the query
DENOISE_MARGIN = 0.05      # Hamming distance per pixel (observed improvement 0.086-0.135)


@pytest.mark.slow
def test_memory_bound_clearly_below_vae_on_redundant_episodes(trained):
  km, vae = trained["km_bound"], trained["vae_bound"]
  # Untrained, both are ~46-48 nats; the per-pixel marginal alone gives ~31.
  assert np.isfinite(km) and np.isfinite(vae)
  assert km < vae - MARGIN_VS_VAE, (km, vae)


@pytest.mark.slow
def test_memory_advantage_comes_from_within_episode_redundancy(trained):
  # Control: held-out episodes of T *different* prototypes. There is nothing useful to read
  # back from the memory, so the Kanerva Machine loses its advantage over the VAE there, and
  # does much worse than on redundant episodes.
  advantage = trained["vae_bound"] - trained["km_bound"]
  advantage_distinct = trained["vae_bound_distinct"] - trained["km_bound_distinct"]
  assert advantage > advantage_distinct + MARGIN_REDUNDANCY, trained
  assert trained["km_bound"] < trained["km_bound_distinct"] - MARGIN_REDUNDANCY, trained


@pytest.mark.slow
def test_iterative_reading_denoises_towards_stored_pattern(trained):
  km = trained["km"]
  rng = np.random.default_rng(5)
  batch = 64
  clean = squares(rng, batch)                                          # [B, H, W, 1]
  episode = flip(rng, np.repeat(clean[:, None], EPISODE_LENGTH, 1), FLIP).astype(np.float32)
  memory = km.write(episode, seed=(1, 2))
  corrupted = flip(rng, clean, CORRUPTION)                             # [B, H, W, 1]
  reads = km.read(corrupted[:, None].astype(np.float32), memory, iterations=3, seed=(3, 4))
  assert reads.shape == (3, batch, 1, SIZE, SIZE, 1)
  reads = np.asarray(reads)[:, :, 0]                                   # [3, B, H, W, 1]
  before = np.mean(corrupted != clean)
  after = [float(np.mean((r > 0.5) != clean)) for r in reads]
  print({"hamming_before": before, "hamming_after_each_iteration": after,
         "l1_after": float(np.mean(np.abs(reads[-1] - clean)))})
  assert after[-1] < before - DENOISE_MARGIN, (before, after)
