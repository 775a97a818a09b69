"""Tests of kanerva_tf.figures: every figure is a PNG, deterministic given its seed.

Models are tiny and untrained (8x8 images); episodes are random binary images. Which figures a
whole run gets, with which notes, is tested in test_evaluate_run.py (`run_evaluation`).

Shapes: B batch of episodes, T episode length, H W D image height/width/depth.
"""

import numpy as np
import pytest

import kanerva_tf as kt
from kanerva_tf import figures
from kanerva_tf import runs

TINY = dict(code_size=6, memory_size=5, address_size=4, num_filters=4, y_size=3,
            mlp_hidden_size=8, episode_length=4)
SMALL = kt.ModelConfig(image_shape=(8, 8, 1), **TINY)


def test_figures_are_deterministic(tmp_path, binary_episodes):
  model = runs.build_model("kanerva", SMALL)
  episode = next(iter(binary_episodes(1, 1, 6, (8, 8, 1), seed=4)))[0]
  for name in ("a", "b"):
    figures.plot_denoising(model, episode, str(tmp_path / f"{name}.png"), seed=3)
  assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
  figures.plot_denoising(model, episode, str(tmp_path / "c.png"), seed=4)
  assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
  vae = runs.build_model("vae", SMALL)
  with pytest.raises(ValueError, match="needs a KanervaMachine"):
    figures.plot_interpolation(vae, episode, str(tmp_path / "d.png"))


@pytest.mark.parametrize("model_type", ["kanerva", "vae", "dnc"])
def test_every_figure_of_a_model_is_a_png(model_type, tmp_path, check_png, binary_episodes):
  """The figures `run_evaluation` draws for each model; the VAE's generation needs no
  conditioning, the Kanerva Machine's and the DNC's do."""
  model = runs.build_model(model_type, SMALL)
  episodes = next(iter(binary_episodes(1, 2, 6, (8, 8, 1), seed=5)))    # [B, T, H, W, D]
  figures.plot_reconstructions(model, episodes, str(tmp_path / "r.png"), seed=1)
  conditioning = {} if model_type == "vae" else {"two episodes": episodes[0]}
  figures.plot_generation(model, conditioning, str(tmp_path / "g.png"), seed=1)
  written = ["r.png", "g.png"]
  if model_type != "vae":
    figures.plot_denoising(model, episodes[0], str(tmp_path / "d.png"), seed=1)
    written.append("d.png")
    with pytest.raises(ValueError, match="needs conditioning episodes"):
      figures.plot_generation(model, {}, str(tmp_path / "none.png"))
  if model_type == "kanerva":
    figures.plot_interpolation(model, episodes[0], str(tmp_path / "i.png"), seed=1)
    written.append("i.png")
  for file in written:
    check_png(tmp_path / file)


def test_plot_bound_sweep_draws_the_points_it_has(tmp_path, check_png):
  sweep = {"episode_sizes": [4, 8, 16], "class_counts": ["2", "all"],
           "loss": {"2": [90., None, 80.], "all": [None, None, None]}}
  figures.plot_bound_sweep(sweep, str(tmp_path / "s.png"))
  check_png(tmp_path / "s.png")


def test_mosaic_draws_ink_dark_and_leaves_empty_cells_blank():
  cells = np.zeros((1, 2, 3, 3, 1), np.float32)
  cells[0, 0, 1, 1] = 1.                   # one ink pixel
  cells[0, 1] = np.nan                     # an empty cell
  mosaic = figures._mosaic(cells)          # pylint: disable=protected-access
  assert mosaic.shape == (1 * (3 + 1) + 1, 2 * (3 + 1) + 1, 3)
  np.testing.assert_array_equal(mosaic[2, 2], 0.)          # ink: black
  np.testing.assert_array_equal(mosaic[1, 1], 1.)          # background: white
  np.testing.assert_allclose(mosaic[2, 6], figures._PAD_RGB)  # pylint: disable=protected-access
