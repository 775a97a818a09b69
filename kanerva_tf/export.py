"""SavedModel export of a trained KanervaMachine, VAE or DNCMachine, for serving without
kanerva_tf.

`export(model, path)` writes a SavedModel whose named signatures take and return plain
tensors; loading it needs only TensorFlow (`tf.saved_model.load`, `saved_model_cli`,
TF Serving), not this package nor TensorFlow Probability.

Shapes follow the package glossary (`kanerva_tf/__init__.py`); H, W, D, K and C are fixed
to the model's config, the batch B, episode length T and number of queries/samples N are
free.  Images are float32 in [0, 1].

#### Signatures of a Kanerva Machine ("kanerva")

```none
write(episode [B, T, H, W, D], seed [2])
    -> loc [B, K, C], row_covariance [B, K, K]       posterior memory q(M|X) (Algorithm 2)
read(queries [B, N, H, W, D], loc [B, K, C], row_covariance [B, K, K],
     iterations [] >= 1, seed [2])
    -> images [iterations, B, N, H, W, D]            iterative reading (Algorithm 1)
generate(loc [B, K, C], row_covariance [B, K, K], num_samples [] >= 1,
         iterations [] >= 0, seed [2])
    -> images [iterations + 1, B, N, H, W, D]        samples given a memory (index 0: before
                                                      reading), N = num_samples
reconstruct(episode [B, T, H, W, D], seed [2])
    -> images [B, T, H, W, D]                        write, then read back once
loss(episode [B, T, H, W, D], seed [2])
    -> loss, reconstruction, kl_y, kl_z, kl_memory [] and per_example_loss [B]
                                                      negative bound (eq. 12 / T), training=False
prior()
    -> loc [1, K, C], row_covariance [1, K, K]       the learned prior memory p(M) (eq. 4), e.g.
                                                      to `generate` without writing
config()
    -> config [] string (ModelConfig JSON), model_type [] string, image_shape [3] int32
```

#### Signatures of a VAE ("vae")

```none
reconstruct(episode [B, T, H, W, D], seed [2]) -> images [B, T, H, W, D]
generate(num_samples [] >= 1, iterations [] >= 0, seed [2])
    -> images [iterations + 1, N, H, W, D]           z ~ N(0, I), then fed back (Fig. 8)
loss(episode [B, T, H, W, D], seed [2])
    -> loss, reconstruction, kl_z [] and per_example_loss [B]   (eq. 1, training=False)
config() -> config, model_type, image_shape          as above
```

#### Signatures of the DNC baseline ("dnc")

The DNC's memory is a `kanerva_tf.dnc.DNCState`, passed as its six named tensors (the
"state" below). Here K is the DNC's memory slots (`DNCConfig.memory_slots`, default
`ModelConfig.memory_size`), V its word size (`DNCConfig.word_size`, default the code size
C) and R its read heads (`DNCConfig.num_reads`); `kanerva_tf.dnc` calls them N, W and R.

```none
state = memory [B, K, V], usage [B, K], link [B, K, K], precedence [B, K],
        read_weights [B, R, K], write_weights [B, K]          (float32)
write(episode [B, T, H, W, D], seed [2])
    -> state                                         the DNC state after writing the
                                                      episode in order (from all zeros)
read(queries [B, N, H, W, D], state, iterations [] >= 1, seed [2])
    -> images [iterations, B, N, H, W, D]            iterative reading, a read-only access
generate(state, num_samples [] >= 1, iterations [] >= 0, seed [2])
    -> images [iterations + 1, B, N, H, W, D]        y ~ N(0, I), read, decoded (index 0),
                                                      then iterative reading; N = num_samples
reconstruct(episode [B, T, H, W, D], seed [2]) -> images [B, T, H, W, D]
    write the episode into the DNC, then read it back once
loss(episode [B, T, H, W, D], seed [2])
    -> loss, reconstruction, kl_y, kl_z [] and per_example_loss [B]   (training=False)
config() -> config, model_type, image_shape          as above (config: the ModelConfig),
    and dnc_config [] string                         the DNCConfig JSON (None sizes: K, C)
```

The empty memory (nothing written) is all zeros, e.g. to `generate` without writing.

`iterations` and `num_samples` are int32 scalars; the loops run inside the graph.

#### Seeds

Every sampling signature takes `seed`, an int32 `[2]` stateless seed: the same inputs and
seed give the same outputs, and a client wanting fresh samples passes a fresh seed per call
(e.g. `np.random.randint(0, 2**31 - 1, size=2, dtype=np.int32)`).  A SavedModel keeps no
random state between calls, so there is no implicit default.  `config` and `prior` are
deterministic and take no inputs.

#### Input checks

The restored `tf.function`s (`loaded.reconstruct(...)`) refuse inputs that do not match
their input signature with a TypeError naming the expected `TensorSpec`.  Signature
functions (`loaded.signatures["reconstruct"](...)`, servers) run the graph on whatever they
are given, so every signature also checks its inputs at run time and fails with an
InvalidArgumentError such as `Shape of tensor episode [1,32,32,32,1] is not compatible with
expected shape [?,?,28,28,1]`.  It also checks that `loc` and `row_covariance` have the
batch size of the queries (every tensor of a DNC state that of the queries, or of
`memory`), and the ranges of `iterations` and `num_samples`; the model's own
checks (values in [0, 1], no NaN) run as well.  (`saved_model_cli run` feeds through a TF1
session, which refuses a wrongly shaped feed before running anything.)

#### Examples

```sh
saved_model_cli show --dir <workdir>/export --all
python -c "import numpy as np; np.save('/tmp/episode.npy', np.zeros((1,32,28,28,1), np.float32))"
saved_model_cli run --dir <workdir>/export --tag_set serve --signature_def reconstruct \
  --inputs episode=/tmp/episode.npy --input_exprs 'seed=[0,0]' --outdir /tmp/out
```

(`--input_exprs` evaluates Python literals only, `np.zeros(...)` is refused: arrays come
from .npy/.npz files through `--inputs`. The images are written to /tmp/out/images.npy.)

```python
import json
import numpy as np
import tensorflow as tf            # no kanerva_tf needed

served = tf.saved_model.load("<workdir>/export")
config = json.loads(served.signatures["config"]()["config"].numpy())
# Signature functions take tf.Tensors (keyword arguments) and return dicts of them.
memory = served.signatures["write"](episode=tf.constant(episode), seed=tf.constant([1, 2]))
images = served.signatures["read"](queries=tf.constant(noisy), iterations=tf.constant(4),
                                   seed=tf.constant([3, 4]), **memory)["images"][-1]
```

The restored object also holds the model's variables, in the order of `model.variables`,
as `served.model_variables`.
"""

import json
import os
import uuid

import tensorflow as tf

from kanerva_tf.dnc import DNCState
from kanerva_tf.dnc_model import DNCMachine
from kanerva_tf.memory import KanervaMemory
from kanerva_tf.model import VAE
from kanerva_tf.model import KanervaMachine

__all__ = ["ServingModule", "export", "SIGNATURES", "MEMORY_INPUTS"]

# Signature names of each model type, in the order they are documented.
SIGNATURES = {
    "kanerva": ("write", "read", "generate", "reconstruct", "loss", "prior", "config"),
    "vae": ("reconstruct", "generate", "loss", "config"),
    "dnc": ("write", "read", "generate", "reconstruct", "loss", "config"),
}
_MODEL_CLASSES = {"kanerva": KanervaMachine, "vae": VAE, "dnc": DNCMachine}
# The named tensors of a memory, by model type: what write returns and read, generate take.
MEMORY_INPUTS = {"kanerva": ("loc", "row_covariance"), "dnc": DNCState._fields}
_MEMORY_HINT = {"kanerva": "loc [B, K, C] and row_covariance [B, K, K] come from write or prior",
                "dnc": "the DNC state's six tensors come from write, or are zeros"}


def _model_type_of(model, model_type=None):
  """"kanerva", "vae" or "dnc" for `model`; checks `model_type` if given."""
  inferred = next((name for name, cls in _MODEL_CLASSES.items() if isinstance(model, cls)),
                  None)
  if inferred is None:
    raise TypeError(f"export needs a kanerva_tf KanervaMachine or VAE (or DNCMachine, the DNC "
                    f"baseline); got {type(model).__name__}.")
  if model_type is not None and model_type != inferred:
    raise ValueError(f"model_type={model_type!r} does not match the model, a "
                     f"{type(model).__name__} ({inferred!r}).")
  return inferred


def _tf_variable(variable):
  """The `tf.Variable` behind a Keras 3 variable (TensorFlow backend).

  The SavedModel tracks these rather than the Keras wrappers: a Keras variable exports as
  a second variable initialised from the first, which the TF1 loader used by
  `saved_model_cli run` and TF Serving never restores.
  """
  value = getattr(variable, "value", variable)
  if not isinstance(value, tf.Variable):
    raise TypeError(f"Cannot export {variable!r}: it is not backed by a tf.Variable "
                    "(export needs the TensorFlow Keras backend).")
  return value


class ServingModule(tf.Module):
  """The serving `tf.Module` of a built KanervaMachine, VAE or DNCMachine (module docstring).

  Its `tf.function`s carry explicit input signatures, so each is traced once, whatever the
  batch size or episode length of the calls.  The model's variables are tracked as
  `model_variables`; the Keras model itself is not part of the saved object graph (saving
  it would also save Keras' own call graphs, which serving does not need).

  Args:
    model: a `KanervaMachine`, `VAE` or `DNCMachine` whose variables exist (called once,
      or restored).
    model_type: optional "kanerva", "vae" or "dnc", checked against the model.
  """

  def __init__(self, model, model_type=None, name="kanerva_tf_serving"):
    super().__init__(name=name)
    self.model_type = _model_type_of(model, model_type)
    if not model.variables:
      raise ValueError(f"The {type(model).__name__} has no variables yet: call it once on an "
                       "episode (or restore a checkpoint) before exporting it.")
    self._hold(model)
    self.model_variables = [_tf_variable(v) for v in model.variables]
    cfg = model.config
    self._config_json = json.dumps(cfg.to_dict(), sort_keys=True)
    h, w, d = cfg.image_shape
    k, c = cfg.memory_size, cfg.code_size

    def images(name):
      return tf.TensorSpec([None, None, h, w, d], tf.float32, name=name)

    seed = tf.TensorSpec([2], tf.int32, name="seed")
    iterations = tf.TensorSpec([], tf.int32, name="iterations")
    num_samples = tf.TensorSpec([], tf.int32, name="num_samples")
    if self.model_type == "dnc":
      self._dnc_config_json = json.dumps(model.dnc_config.to_dict(), sort_keys=True)
      slots, word, reads = model.memory_slots, model.word_size, model.num_reads  # K, V, R
      memory_shapes = DNCState(memory=[None, slots, word], usage=[None, slots],
                               link=[None, slots, slots], precedence=[None, slots],
                               read_weights=[None, reads, slots],
                               write_weights=[None, slots])._asdict()
    else:
      memory_shapes = {"loc": [None, k, c], "row_covariance": [None, k, k]}
    memory = [tf.TensorSpec(memory_shapes[name], tf.float32, name=name)
              for name in MEMORY_INPUTS.get(self.model_type, ())]
    specs = {
        "write": [images("episode"), seed],
        "read": [images("queries"), *memory, iterations, seed],
        "generate": ([*memory, num_samples, iterations, seed]
                     if self.model_type in MEMORY_INPUTS else [num_samples, iterations, seed]),
        "reconstruct": [images("episode"), seed],
        "loss": [images("episode"), seed],
        "prior": [],
        "config": [],
    }
    for signature in SIGNATURES[self.model_type]:
      method = getattr(self, f"_{self.model_type}_{signature}", None) or getattr(
          self, f"_{signature}")
      # No autograph: the model's loops are explicit (tf.while_loop), and converting the
      # Keras layers' code would make tracing several times slower.
      setattr(self, signature, tf.function(method, input_signature=specs[signature],
                                           autograph=False))

  @tf.__internal__.tracking.no_automatic_dependency_tracking
  def _hold(self, model):
    # Untracked: the variables are saved through `model_variables`.
    self._model = model

  @property
  def signature_names(self):
    """Names of this module's signatures."""
    return SIGNATURES[self.model_type]

  def signature_functions(self):
    """The `signatures` argument of `tf.saved_model.save`: {name: tf.function}."""
    return {name: getattr(self, name) for name in self.signature_names}

  # ------------------------------------------------------------------ input checks
  def _checked(self, signature, **inputs):
    """Inputs after run-time checks against the input signature; same order.

    Signature functions do not check the shapes of their inputs (only restored tf.functions
    and TF1 feeds do), so every input goes through an EnsureShape op, a data dependency of
    everything downstream: a mismatch fails first, with "Shape of tensor episode
    [1,2,9,8,1] is not compatible with expected shape [?,?,8,8,1]". Then the memory must
    have the queries' batch size, and the loop counts must be in range.
    """
    specs = {spec.name: spec for spec in getattr(self, signature).input_signature}
    x = {name: tf.ensure_shape(value, specs[name].shape, name=f"{name}_shape")
         for name, value in inputs.items()}
    checks = []
    names = MEMORY_INPUTS.get(self.model_type, ())
    if names and names[0] in x:
      source = "queries" if "queries" in x else names[0]
      for name in names:
        if name != source:
          checks.append(tf.debugging.assert_equal(
              tf.shape(x[name])[0], tf.shape(x[source])[0],
              message=f"{signature}: the batch size B of {name} must be that of {source} "
              f"({_MEMORY_HINT[self.model_type]})"))
    if "iterations" in x:
      least = 1 if signature == "read" else 0
      checks.append(tf.debugging.assert_greater_equal(
          x["iterations"], least, message=f"{signature}: iterations must be >= {least}"))
    if "num_samples" in x:
      checks.append(tf.debugging.assert_greater_equal(
          x["num_samples"], 1, message=f"{signature}: num_samples must be >= 1"))
    with tf.control_dependencies(checks):
      return [tf.identity(value) for value in x.values()]

  # ------------------------------------------------------------------ both models
  def _reconstruct(self, episode, seed):
    episode, seed = self._checked("reconstruct", episode=episode, seed=seed)
    return {"images": self._model.reconstruct(episode, seed)}

  def _loss(self, episode, seed):
    episode, seed = self._checked("loss", episode=episode, seed=seed)
    return dict(self._model(episode, training=False, seed=seed))

  def _config(self):
    outputs = {"config": tf.constant(self._config_json),
               "model_type": tf.constant(self.model_type),
               "image_shape": tf.constant(self._model.config.image_shape, tf.int32)}
    if self.model_type == "dnc":
      outputs["dnc_config"] = tf.constant(self._dnc_config_json)
    return outputs

  # ------------------------------------------------------------------ Kanerva Machine
  def _kanerva_write(self, episode, seed):
    episode, seed = self._checked("write", episode=episode, seed=seed)
    memory = self._model.write(episode, seed)
    return {"loc": tf.convert_to_tensor(memory.loc),
            "row_covariance": tf.convert_to_tensor(memory.row_covariance)}

  def _kanerva_read(self, queries, loc, row_covariance, iterations, seed):
    queries, loc, row_covariance, iterations, seed = self._checked(
        "read", queries=queries, loc=loc, row_covariance=row_covariance,
        iterations=iterations, seed=seed)
    memory = KanervaMemory(loc, row_covariance)
    return {"images": self._model.read(queries, memory, iterations, seed)}

  def _kanerva_generate(self, loc, row_covariance, num_samples, iterations, seed):
    loc, row_covariance, num_samples, iterations, seed = self._checked(
        "generate", loc=loc, row_covariance=row_covariance, num_samples=num_samples,
        iterations=iterations, seed=seed)
    memory = KanervaMemory(loc, row_covariance)
    return {"images": self._model.generate(memory, num_samples, iterations, seed)}

  def _kanerva_prior(self):
    prior = self._model.prior()
    return {"loc": tf.convert_to_tensor(prior.loc)[tf.newaxis],
            "row_covariance": tf.convert_to_tensor(prior.row_covariance)[tf.newaxis]}

  # ------------------------------------------------------------------ DNC baseline
  def _dnc_write(self, episode, seed):
    episode, seed = self._checked("write", episode=episode, seed=seed)
    return self._model.write(episode, seed)._asdict()

  def _dnc_read(self, queries, memory, usage, link, precedence, read_weights, write_weights,
                iterations, seed):
    queries, *state, iterations, seed = self._checked(
        "read", queries=queries, memory=memory, usage=usage, link=link, precedence=precedence,
        read_weights=read_weights, write_weights=write_weights, iterations=iterations,
        seed=seed)
    return {"images": self._model.read(queries, DNCState(*state), iterations, seed)}

  def _dnc_generate(self, memory, usage, link, precedence, read_weights, write_weights,
                    num_samples, iterations, seed):
    *state, num_samples, iterations, seed = self._checked(
        "generate", memory=memory, usage=usage, link=link, precedence=precedence,
        read_weights=read_weights, write_weights=write_weights, num_samples=num_samples,
        iterations=iterations, seed=seed)
    return {"images": self._model.generate(DNCState(*state), num_samples, iterations, seed)}

  # ------------------------------------------------------------------ VAE
  def _vae_generate(self, num_samples, iterations, seed):
    num_samples, iterations, seed = self._checked(
        "generate", num_samples=num_samples, iterations=iterations, seed=seed)
    return {"images": self._model.generate(num_samples, iterations, seed)}


def export(model, path, model_type=None):
  """Saves `model` as a SavedModel at `path` (e.g. `runs.export_dir(workdir)`), atomically.

  The SavedModel is written to a temporary directory next to `path` and renamed into place
  only once complete; an older export at `path` is moved aside just before, and removed
  after. A failing save (or rename) leaves the older export in place and removes the
  partial one. Renames are atomic on a local file system; only a kill between the two
  renames leaves no `path`, with both exports intact as `.<name>.old-*` and `.<name>.tmp-*`
  next to it.

  Args:
    model: a built `KanervaMachine`, `VAE` or `DNCMachine`.
    path: the export directory (created or replaced).
    model_type: optional "kanerva", "vae" or "dnc", checked against the model.

  Returns:
    `path`.
  """
  module = ServingModule(model, model_type)
  path = os.fspath(path).rstrip("/")
  parent, base = os.path.split(path)
  tf.io.gfile.makedirs(parent or ".")
  tag = uuid.uuid4().hex[:8]
  tmp = os.path.join(parent, f".{base}.tmp-{tag}")
  old = os.path.join(parent, f".{base}.old-{tag}")
  try:
    tf.saved_model.save(module, tmp, signatures=module.signature_functions())
    if not tf.saved_model.contains_saved_model(tmp):
      raise RuntimeError(f"tf.saved_model.save wrote no SavedModel to {tmp}.")
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
    raise
  # Swap: the old export moves aside, the new one moves in, then the old one goes.
  had_old = tf.io.gfile.exists(path)
  if had_old:
    tf.io.gfile.rename(path, old)
  try:
    tf.io.gfile.rename(tmp, path)
  except BaseException:
    if had_old and not tf.io.gfile.exists(path):
      tf.io.gfile.rename(old, path)
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
    raise
  if had_old:
    tf.io.gfile.rmtree(old)
  return path
