"""Tests of kanerva_tf.config.ModelConfig."""

import pytest

from kanerva_tf.config import ModelConfig


def test_presets_match_the_paper():
  omniglot = ModelConfig.omniglot()
  assert (omniglot.image_shape, omniglot.memory_size, omniglot.code_size,
          omniglot.address_size, omniglot.num_filters, omniglot.likelihood,
          omniglot.episode_length) == ((28, 28, 1), 64, 100, 50, 16, "bernoulli", 32)
  cifar = ModelConfig.cifar()
  assert (cifar.image_shape, cifar.memory_size, cifar.code_size, cifar.address_size,
          cifar.num_filters, cifar.likelihood, cifar.episode_length) == (
              (32, 32, 3), 128, 200, 50, 32, "gaussian", 32)
  assert ModelConfig.omniglot(memory_size=32).memory_size == 32


def test_addressing_defaults_and_legacy_runs():
  """Presets take the addressing defaults that use the memory; a recorded config from
  before y_scale / write_address existed restores the model it was trained with."""
  for cfg in (ModelConfig(), ModelConfig.omniglot(), ModelConfig.cifar()):
    assert (cfg.y_size, cfg.y_scale, cfg.write_address, cfg.read_posterior) == (
        16, None, "mean", "encoder_skip")
  old = {k: v for k, v in ModelConfig.omniglot(y_size=50, read_posterior="concat").to_dict()
         .items() if k not in ("y_scale", "write_address")}
  restored = ModelConfig.from_dict(old)
  assert (restored.y_scale, restored.write_address, restored.y_size) == (None, "sample", 50)
  assert ModelConfig.from_dict({**old, "write_address": "mean"}).write_address == "mean"


def test_dict_round_trip():
  cfg = ModelConfig.cifar(write_method="online", chunk_size=4)
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="unknown fields.*bogus"):
    ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


@pytest.mark.parametrize("kwargs, message", [
    (dict(image_shape=(28, 28)), r"image_shape must be \(H, W, D\)"),
    (dict(code_size=0), "code_size must be a positive int; got 0"),
    (dict(memory_size=2.5), "memory_size must be a positive int; got 2.5"),
    (dict(likelihood="poisson"), "likelihood must be one of.*'poisson'"),
    (dict(write_method="exact"), "write_method must be one of.*'exact'"),
    (dict(chunk_size=4), "chunk_size is only used with write_method='online'"),
    (dict(write_method="online", chunk_size=0), "chunk_size must be a positive int"),
    (dict(noise_variance=0.), "noise_variance must be > 0"),
    (dict(y_noise_std=-1.), "y_noise_std must be >= 0"),
    (dict(read_posterior="sum"), "read_posterior must be one of.*'sum'"),
    (dict(prior_loc_stddev=-0.5), "prior_loc_stddev must be a float >= 0; got -0.5"),
    (dict(prior_loc_stddev="1"), "prior_loc_stddev must be a float >= 0"),
    (dict(y_scale=0.), "y_scale must be None or a float > 0.0001; got 0.0"),
    (dict(y_scale=True), "y_scale must be None or a float"),
    (dict(write_address="argmax"), "write_address must be one of.*'argmax'"),
])
def test_bad_values_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**kwargs)
