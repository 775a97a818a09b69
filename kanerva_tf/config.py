"""ModelConfig: every size and switch of the Kanerva Machine and its matched VAE.

`field_docs` reads the documentation of a config dataclass's fields (its docstring's
Attributes section, for `ModelConfig` and `kanerva_tf.training.TrainConfig`), and
`check_field_docs` checks that it describes every field with its default and choices.
"""

import ast
import dataclasses
import inspect
import re
from typing import ClassVar, Dict, List, Optional, Tuple

from kanerva_tf.memory import WRITE_METHODS
from kanerva_tf.networks import KERNEL_INITIALIZER

LIKELIHOODS = ("bernoulli", "gaussian")
READ_POSTERIORS = ("concat", "encoder_skip", "prior")
WRITE_ADDRESSES = ("sample", "mean")
ROW_COVARIANCES = ("full", "diagonal")
KERNEL_INITIALIZERS = ("glorot_uniform", "he_normal", "lecun_normal")
MIN_SCALE = 1e-4  # the floor added to every softplus scale of the models


# The fields the matched VAE uses; the others configure the Kanerva Machine's memory only.
VAE_FIELDS = ("image_shape", "code_size", "num_filters", "likelihood", "kernel_initializer",
              "episode_length")

# The behaviour of runs recorded before these fields existed (their config.json lacks them).
LEGACY_VALUES = {"y_scale": None, "write_address": "sample"}

# Experiment switches that lost and serve no ablation, retired so that ModelConfig reads as
# the model (issue 12, section 6). A run recorded with a retired field at its neutral value
# (the behaviour every model has now) loads, the field dropped; any other value, or a
# retired value of a field that stays, cannot be rebuilt by this code and raises.
RETIRED_FIELDS = {"reuse_write_address": False, "prior_loc_stddev": 0.0}  # {field: neutral}
RETIRED_VALUES = {"read_posterior": ("residual",)}
RETIRED_ON = "2026-12-02 (issue 12)"
LAST_SUPPORTING_COMMIT = "9a1990e"


def _retired_error(name, value):
  return ValueError(
      f"ModelConfig.{name}={value!r} was retired on {RETIRED_ON}, an experiment switch that "
      f"lost and serves no ablation; the last commit that supports it is "
      f"{LAST_SUPPORTING_COMMIT} (check it out to rebuild or evaluate this run).")


def _is_neutral(value, neutral):
  # False only as a bool; 0.0 as any number but a bool (0 and 0.0 were both written).
  return value == neutral and isinstance(value, bool) == isinstance(neutral, bool)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and options of `KanervaMachine` and `VAE` (paper section 4, Appendix C).

  The defaults of the four addressing settings the paper leaves open (`y_size`, `y_scale`,
  `write_address`, `read_posterior`) are the configuration under which the Kanerva Machine
  learns to use its memory under eq. 12 (RESULTS.md, ablation); the paper's literal reading
  (y_size=50, y_scale=None, write_address="sample", read_posterior="concat") stays one
  setting away and does not learn to use its memory. The presets `omniglot()` and `cifar()`
  set the paper's sizes per dataset (section 4).

  This section is the one description of every field: `train.py` takes its flags' help,
  defaults and choices from it, the dataclass defaults and `CHOICES`; `check_field_docs`
  (run by the tests) keeps them in step. Each entry names its default in the form
  Default: `<Python literal>`.

  Attributes:
    image_shape: (H, W, D) of one image, positive ints. Default: `(28, 28, 1)`
      (`cifar()`: (32, 32, 3)).
    code_size: C, dimension of z_t and columns of the memory M (K x C, eq. 4); the encoder
      outputs 2C numbers, the mean and scale of q(z_t|x_t) (Appendix C). Positive int.
      Default: `100` (`cifar()`: 200).
    memory_size: K, rows of the memory M (eq. 4) and of the addresses A. Positive int.
      Default: `64` (`cifar()`: 128).
    address_size: S, size of the key b_t = f(y_t) and columns of the addresses A (K x S) in
      w_t = b_t^T A (eq. 5). Positive int. Default: `50`.
    num_filters: F, filters of every convolution in the encoder and decoder (Appendix C: 16
      or 32 by dataset). Positive int. Default: `16` (`cifar()`: 32).
    likelihood: p(x_t|z_t): "bernoulli" (binary images) or "gaussian" (a learned scale per
      pixel, with uniform U(0, 1/256) dequantisation noise on the inputs during training,
      Appendix C). Default: `"bernoulli"` (`cifar()`: "gaussian").
    y_size: dimension of the addressing variable y_t (prior N(0, I), eq. 3); the paper does
      not give it. 16: each dimension q(y|x) makes precise costs KL(y), and 16 cost about
      half the nats of 50 for addresses as good (RESULTS.md). Positive int. Default: `16`.
    mlp_hidden_size: hidden units of every 2-layer MLP (Appendix C). Positive int.
      Default: `200` (`cifar()`: 400).
    y_noise_std: std of the Gaussian noise added, in training only, to the input of q(y|x)
      (Appendix C: 0.2). Float >= 0. Default: `0.2`.
    noise_variance: sigma^2 of p(z_t | y_t, M) = N(w_t^T M, sigma^2 I) (eq. 6); the paper
      fixes 1. Float > 0. Default: `1.0`.
    write_method: how the memory is written (section 3.3, eq. 9-11): "batch" (one T x T
      solve) or "online" (one observation, or `chunk_size`, at a time); identical
      posteriors. Default: `"batch"`.
    chunk_size: observations per on-line write step (write_method "online" only; None = 1).
      None or a positive int. Default: `None`.
    distribution_memory: read and write with distributions, Appendix F (eq. 19), instead of
      mean-field reads (eq. 6 with R) and sampled writes (eq. 8). Bool. Default: `False`.
    episode_length: T, images per episode in training and by default in evaluation.
      Positive int. Default: `32`.
    kernel_initializer: initializer of every convolution and dense kernel (a Keras name):
      "glorot_uniform" (Keras' default, see `networks.KERNEL_INITIALIZER`), "he_normal" or
      "lecun_normal" (Sonnet's default). Default: `"glorot_uniform"`.
    read_posterior: parameterisation of q(z_t | x_t, y_t, M) (eq. 7), an MLP on
      [e(x_t), w_t^T R] (section 3.2 fixes only its input): "concat" takes its mean from the
      MLP; "encoder_skip" adds the MLP's mean output to the mean of q(z_t|x_t) (the code
      that is written), so that the code read is the written code plus a correction, as the
      VAE's code is the encoder's. Both are eq. 12; they differ in what is easy to learn:
      with "concat" nothing ties the written code to the code read at the start.
      "prior": no bottom-up stream (Appendix D, the DNC comparison of section 4.4): z_t is
      sampled from p(z_t | y_t, M) itself, q(z_t | x_t, y_t, M) = p(z_t | y_t, M), so KL(z)
      is 0 and x_t reaches its code only through its address y_t and the memory; no q_z MLP.
      Default: `"encoder_skip"`.
    y_scale: scale of q(y_t|x_t) (section 3.2 fixes only that it is a diagonal Gaussian):
      None, a scale per input output by the q(y|x) MLP (softplus, about 0.7 at
      initialisation); a float s > 1e-4, one learned scale per dimension of y, shared by all
      inputs and initialised to s (e.g. 0.3, as the Dynamic Kanerva Machine's addressing).
      With y of size 16 and writing with the mean address, the per-input scale starts
      slower and is ahead from ~2,500 steps on (RESULTS.md: 5.8 and 6.8 nats at 5,000 steps
      on seeds 0 and 1). Eq. 12 holds either way. Default: `None`.
    write_address: the address that writes x_t (eq. 8): "sample", w_t from one y_t ~
      q(y_t|x_t) (the paper's one-sample approximation), or "mean", w_t from the mean of
      q(y_t|x_t), so that the read's sample scatters around the written address instead of
      two samples around each other. Either is a choice of q(M|X); reading always samples
      y_t (eq. 12). Default: `"mean"`.
    row_covariance: U, the covariance between the memory's rows (eq. 4, section 3.1):
      "full" (the paper's model: a learned K x K U_0 = L L^T and the exact posterior U,
      eq. 9-11) or "diagonal" (Fig. 10's comparison): a learned diagonal U_0, and after every
      write only the diagonal (the rows' variances) of the exact posterior U is kept, so no
      covariance between rows coordinates memory access. The posterior mean R of a batch
      write is the exact one from that diagonal prior. Default: `"full"`.
  """
  # The allowed values of the fields that take one of a few strings (validated in
  # __post_init__; train.py's enum flags).
  CHOICES: ClassVar[Dict[str, Tuple[str, ...]]] = {
      "likelihood": LIKELIHOODS, "write_method": WRITE_METHODS,
      "kernel_initializer": KERNEL_INITIALIZERS, "read_posterior": READ_POSTERIORS,
      "write_address": WRITE_ADDRESSES, "row_covariance": ROW_COVARIANCES}

  image_shape: Tuple[int, int, int] = (28, 28, 1)
  code_size: int = 100
  memory_size: int = 64
  address_size: int = 50
  num_filters: int = 16
  likelihood: str = "bernoulli"
  y_size: int = 16
  mlp_hidden_size: int = 200
  y_noise_std: float = 0.2
  noise_variance: float = 1.0
  write_method: str = "batch"
  chunk_size: Optional[int] = None
  distribution_memory: bool = False
  episode_length: int = 32
  kernel_initializer: str = KERNEL_INITIALIZER
  read_posterior: str = "encoder_skip"
  y_scale: Optional[float] = None
  write_address: str = "mean"
  row_covariance: str = "full"

  def __post_init__(self):
    shape = tuple(self.image_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s > 0 for s in shape):
      raise ValueError(f"ModelConfig.image_shape must be (H, W, D) of positive ints; "
                       f"got {self.image_shape!r}.")
    object.__setattr__(self, "image_shape", shape)
    for name in ("code_size", "memory_size", "address_size", "num_filters", "y_size",
                 "mlp_hidden_size", "episode_length"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int; got {value!r}.")
    self._check_choice("likelihood")
    self._check_choice("write_method")
    if self.chunk_size is not None:
      if self.write_method != "online":
        raise ValueError("ModelConfig.chunk_size is only used with write_method='online'; "
                         f"got chunk_size={self.chunk_size} with {self.write_method!r}.")
      if not isinstance(self.chunk_size, int) or self.chunk_size <= 0:
        raise ValueError(f"ModelConfig.chunk_size must be a positive int; got {self.chunk_size!r}.")
    if not self.noise_variance > 0:
      raise ValueError(f"ModelConfig.noise_variance must be > 0; got {self.noise_variance!r}.")
    if not isinstance(self.distribution_memory, bool):
      raise ValueError(f"ModelConfig.distribution_memory must be a bool; "
                       f"got {self.distribution_memory!r}.")
    self._check_choice("kernel_initializer")
    if self.read_posterior in RETIRED_VALUES["read_posterior"]:
      raise _retired_error("read_posterior", self.read_posterior)
    self._check_choice("read_posterior")
    if self.y_scale is not None and (isinstance(self.y_scale, bool) or
                                     not isinstance(self.y_scale, (int, float)) or
                                     not self.y_scale > MIN_SCALE):
      raise ValueError(f"ModelConfig.y_scale must be None or a float > {MIN_SCALE}; "
                       f"got {self.y_scale!r}.")
    self._check_choice("write_address")
    if not self.y_noise_std >= 0:
      raise ValueError(f"ModelConfig.y_noise_std must be >= 0; got {self.y_noise_std!r}.")
    self._check_choice("row_covariance")

  def _check_choice(self, name):
    value, choices = getattr(self, name), self.CHOICES[name]
    if value not in choices:
      raise ValueError(f"ModelConfig.{name} must be one of {choices}; got {value!r}.")

  @classmethod
  def omniglot(cls, **overrides):
    """Paper preset for 28x28 binarized Omniglot: K=64, C=100, S=50, 16 filters, T=32."""
    return cls(**{**dict(image_shape=(28, 28, 1), code_size=100, memory_size=64,
                         address_size=50, num_filters=16, likelihood="bernoulli",
                         mlp_hidden_size=200), **overrides})

  @classmethod
  def cifar(cls, **overrides):
    """Paper preset for CIFAR-10: K=128, C=200, S=50, 32 filters, Gaussian likelihood, T=32."""
    return cls(**{**dict(image_shape=(32, 32, 3), code_size=200, memory_size=128,
                         address_size=50, num_filters=32, likelihood="gaussian",
                         mlp_hidden_size=400), **overrides})

  def to_dict(self):
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values):
    """A config from `to_dict` output. Fields missing from `values` (a run recorded before
    they existed) take the value that reproduces that run's model, `LEGACY_VALUES`, where
    it differs from today's default, else the default. A retired field (`RETIRED_FIELDS`,
    a run recorded before it was retired) is dropped when it holds its neutral value.

    Raises:
      ValueError: a retired field with another value, or a retired value
        (`RETIRED_VALUES`), naming it and the last commit that supports it; unknown fields.
    """
    values = dict(values)
    for name, neutral in RETIRED_FIELDS.items():
      if name in values:
        value = values.pop(name)
        if not _is_neutral(value, neutral):
          raise _retired_error(name, value)
    values = {**{k: v for k, v in LEGACY_VALUES.items() if k not in values}, **values}
    if "image_shape" in values:
      values["image_shape"] = tuple(values["image_shape"])
    unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"ModelConfig: unknown fields {sorted(unknown)}.")
    return cls(**values)


_DEFAULT = re.compile(r"Default: `([^`]*)`")


def field_docs(cls) -> Dict[str, str]:
  """{field name: its description} from the Attributes section of a dataclass's docstring.

  An entry is a line `name: text` indented one step below "Attributes:", continued by the
  lines indented further; its text is returned on one line (white space folded).
  """
  lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
  if "Attributes:" not in lines:
    return {}
  docs, name = {}, None
  for line in lines[lines.index("Attributes:") + 1:]:
    entry = re.match(r"^  (\w+): (.*)$", line)
    if entry:
      name = entry.group(1)
      docs[name] = [entry.group(2)]
    elif name and line.startswith("   "):
      docs[name].append(line.strip())
    elif line.strip():
      break  # the next section
  return {k: " ".join(" ".join(v).split()) for k, v in docs.items()}


def field_default(cls, name):
  """The default of the dataclass field `name`."""
  return {f.name: f for f in dataclasses.fields(cls)}[name].default


def check_field_docs(cls) -> List[str]:
  """What `field_docs(cls)` lacks: every field documented, nothing else, each entry with its
  default as Default: `<Python literal>` equal to the dataclass default, and naming every
  allowed value of `cls.CHOICES` (in double quotes). [] when the documentation is complete."""
  docs = field_docs(cls)
  names = [f.name for f in dataclasses.fields(cls)]
  problems = [f"{cls.__name__}.{n}: not documented" for n in names if n not in docs]
  problems += [f"{cls.__name__}.{n}: documented but not a field" for n in docs
               if n not in names]
  for name in (n for n in names if n in docs):
    stated = _DEFAULT.findall(docs[name])
    try:
      ok = len(stated) == 1 and ast.literal_eval(stated[0]) == field_default(cls, name)
    except (ValueError, SyntaxError):
      ok = False
    if not ok:
      problems.append(f"{cls.__name__}.{name}: its doc must state its default once as "
                      f"Default: `{field_default(cls, name)!r}`; it states {stated}")
    for choice in getattr(cls, "CHOICES", {}).get(name, ()):
      if f'"{choice}"' not in docs[name]:
        problems.append(f"{cls.__name__}.{name}: its doc does not name the choice \"{choice}\"")
  return problems
