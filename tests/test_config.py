"""Tests of kanerva_tf.config: ModelConfig and the documentation of config fields."""

import dataclasses
import pathlib
from typing import ClassVar

import pytest

from kanerva_tf import runs
from kanerva_tf.config import ModelConfig
from kanerva_tf.config import check_field_docs
from kanerva_tf.config import field_docs


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


RETIRED = r"retired on 2026-12-02 \(issue 12\).*last commit that supports it is 9a1990e"


@pytest.mark.parametrize("retired", [
    dict(reuse_write_address=False), dict(prior_loc_stddev=0.0), dict(prior_loc_stddev=0),
    dict(reuse_write_address=False, prior_loc_stddev=0.0)])
def test_retired_fields_at_their_neutral_values_load(retired):
  """A run recorded before a field was retired, with the behaviour every model has now."""
  cfg = ModelConfig.omniglot(read_posterior="concat")
  assert ModelConfig.from_dict({**cfg.to_dict(), **retired}) == cfg
  assert not set(retired) & {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize("name, value", [
    ("reuse_write_address", True), ("prior_loc_stddev", 1.0), ("prior_loc_stddev", 0.1),
    ("reuse_write_address", 0), ("prior_loc_stddev", False), ("prior_loc_stddev", None),
    ("read_posterior", "residual")])
def test_retired_settings_are_refused_naming_them(name, value):
  with pytest.raises(ValueError, match=rf"ModelConfig.{name}={value!r} was {RETIRED}"):
    ModelConfig.from_dict({**ModelConfig().to_dict(), name: value})
  if name == "read_posterior":  # a retired value of a field that stays
    with pytest.raises(ValueError, match=RETIRED):
      ModelConfig(read_posterior=value)
    assert value not in ModelConfig.CHOICES[name]


REPO = pathlib.Path(__file__).resolve().parents[1]
RUN_DIRS = sorted(p.parent for d in ("results", "pretrained")
                  for p in (REPO / d).glob("**/config.json"))


def test_recorded_runs_are_found():
  assert len(RUN_DIRS) >= 10, RUN_DIRS


@pytest.mark.parametrize("workdir", RUN_DIRS, ids=lambda p: str(p.relative_to(REPO)))
def test_recorded_runs_load(workdir):
  """Every run recorded in the repository (results/, pretrained/) still builds its config."""
  cfg = ModelConfig.from_dict(runs.load_run_config(str(workdir))["model"])
  assert isinstance(cfg, ModelConfig)


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
    (dict(y_scale=0.), "y_scale must be None or a float > 0.0001; got 0.0"),
    (dict(y_scale=True), "y_scale must be None or a float"),
    (dict(write_address="argmax"), "write_address must be one of.*'argmax'"),
])
def test_bad_values_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ModelConfig(**kwargs)


def test_every_field_is_documented_with_its_default_and_choices():
  """The Attributes section describes each field once (the help of train.py's flags)."""
  assert check_field_docs(ModelConfig) == []
  docs = field_docs(ModelConfig)
  assert list(docs) == [f.name for f in dataclasses.fields(ModelConfig)]
  assert docs["noise_variance"].startswith("sigma^2 of p(z_t | y_t, M)")
  assert "\n" not in docs["read_posterior"] and "  " not in docs["read_posterior"]
  for name, choices in ModelConfig.CHOICES.items():  # the choices __post_init__ enforces
    with pytest.raises(ValueError, match=f"ModelConfig.{name} must be one of"):
      ModelConfig(**{name: "bogus"})
    for choice in choices:
      ModelConfig(**{name: choice})


def test_check_field_docs_names_what_is_missing():
  @dataclasses.dataclass
  class Toy:
    """A toy.

    Attributes:
      size: the size, continued
        on a second line. Default: `3`.
      mode: "a" or "b". Default: `"a"`.
      rate: a rate. Default: `0.5`.
      gone: no longer a field. Default: `1`.

    Returns:
      nothing: this section is not read.
    """
    CHOICES: ClassVar[dict] = {"mode": ("a", "b", "c")}
    size: int = 3
    mode: str = "a"
    rate: float = 0.25
    missing: bool = False

  assert field_docs(Toy)["size"] == "the size, continued on a second line. Default: `3`."
  assert "nothing" not in field_docs(Toy)
  problems = check_field_docs(Toy)
  assert problems == [
      "Toy.missing: not documented",
      "Toy.gone: documented but not a field",
      'Toy.mode: its doc does not name the choice "c"',
      "Toy.rate: its doc must state its default once as Default: `0.25`; it states ['0.5']",
  ], problems
