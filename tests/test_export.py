"""Tests of kanerva_tf.export: the serving SavedModel of a KanervaMachine, a VAE and the
DNC baseline (DNCMachine).

Tiny untrained models are exported once per module. Their signatures are called on the
reloaded SavedModel in this process and in a fresh Python that never imports kanerva_tf
(nor TensorFlow Probability), and once through `saved_model_cli run`; every output must
match the in-memory model for the same seeds. The Kanerva Machine uses a Bernoulli
likelihood; the VAE a Gaussian one and variables created under a MirroredStrategy, as in
training; the DNC a DNCConfig whose slots and word size differ from K and C.

Shapes: B batch of episodes, T episode length, N queries/samples, H W D image, K memory
rows, C code size; of the DNC: K its slots, V its word size, R its read heads.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import kanerva_tf as kt
from kanerva_tf import dnc
from kanerva_tf import dnc_model
from kanerva_tf import export as export_lib

TINY = kt.ModelConfig(image_shape=(8, 8, 1), code_size=6, memory_size=5, address_size=4,
                      num_filters=4, y_size=3, mlp_hidden_size=8, episode_length=4)
TINY_GAUSSIAN = dataclasses.replace(TINY, likelihood="gaussian")
TINY_DNC = dnc_model.DNCConfig(num_reads=2, word_size=4, memory_slots=7,
                               controller_hidden_size=8)
DNC_STATE = ("memory", "usage", "link", "precedence", "read_weights", "write_weights")
B, T, N = 2, 4, 3
READ_ITERATIONS, KM_GENERATE_ITERATIONS, VAE_GENERATE_ITERATIONS = 2, 1, 2
NUM_SAMPLES = 3
ATOL = RTOL = 1e-5

# Calls every signature of a loaded export. Run as is in this process and, with _CHILD_MAIN,
# in a subprocess that imports nothing but numpy and TensorFlow.
_CALL_SIGNATURES = f"""
import numpy as np
import tensorflow as tf


def call_signatures(served, inputs):
  '''{{"<signature>/<output>": array}} for every signature; inputs: dict of numpy arrays.'''
  sig = served.signatures
  out = {{}}

  def record(name, result):
    out.update({{name + "/" + key: value.numpy() for key, value in result.items()}})

  def const(key):
    return tf.constant(inputs[key])

  record("config", sig["config"]())
  if "write" in sig:  # a Kanerva Machine or the DNC: a memory to read and generate from
    memory = sig["write"](episode=const("episode"), seed=const("seed_write"))
    record("write", memory)
    record("read", sig["read"](queries=const("queries"), iterations=tf.constant({READ_ITERATIONS}),
                               seed=const("seed_read"), **memory))
    record("generate", sig["generate"](num_samples=tf.constant({NUM_SAMPLES}),
                                       iterations=tf.constant({KM_GENERATE_ITERATIONS}),
                                       seed=const("seed_generate"), **memory))
    if "prior" in sig:
      record("prior", sig["prior"]())
  else:
    record("generate", sig["generate"](num_samples=tf.constant({NUM_SAMPLES}),
                                       iterations=tf.constant({VAE_GENERATE_ITERATIONS}),
                                       seed=const("seed_generate")))
  record("reconstruct", sig["reconstruct"](episode=const("episode"),
                                           seed=const("seed_reconstruct")))
  record("loss", sig["loss"](episode=const("episode"), seed=const("seed_loss")))
  return out
"""

_CHILD_MAIN = """
import sys

inputs = dict(np.load(sys.argv[1]))
for export_dir, outputs_path in zip(sys.argv[2::2], sys.argv[3::2]):
  served = tf.saved_model.load(export_dir)
  outputs = call_signatures(served, inputs)
  outputs["num_model_variables"] = np.array(len(served.model_variables))
  np.savez(outputs_path, **outputs)
for name in ("kanerva_tf", "tensorflow_probability"):
  if name in sys.modules:
    raise SystemExit(name + " was imported")
"""


def _call_signatures(served, inputs):
  namespace = {}
  exec(_CALL_SIGNATURES, namespace)  # pylint: disable=exec-used
  return namespace["call_signatures"](served, inputs)


def _expected(model, inputs):
  """What `call_signatures` must return, from the in-memory model."""
  seed = {k: tf.constant(v) for k, v in inputs.items() if k.startswith("seed")}
  out = {}
  if isinstance(model, kt.KanervaMachine):
    memory = model.write(inputs["episode"], seed["seed_write"])
    out["write/loc"], out["write/row_covariance"] = memory.loc, memory.row_covariance
    out["read/images"] = model.read(inputs["queries"], memory, READ_ITERATIONS,
                                    seed["seed_read"])
    out["generate/images"] = model.generate(memory, NUM_SAMPLES, KM_GENERATE_ITERATIONS,
                                            seed["seed_generate"])
    prior = model.prior()
    out["prior/loc"] = tf.convert_to_tensor(prior.loc)[tf.newaxis]
    out["prior/row_covariance"] = tf.convert_to_tensor(prior.row_covariance)[tf.newaxis]
  elif isinstance(model, dnc_model.DNCMachine):
    state = model.write(inputs["episode"], seed["seed_write"])
    out.update({f"write/{name}": value for name, value in state._asdict().items()})
    out["read/images"] = model.read(inputs["queries"], state, READ_ITERATIONS, seed["seed_read"])
    out["generate/images"] = model.generate(state, NUM_SAMPLES, KM_GENERATE_ITERATIONS,
                                            seed["seed_generate"])
  else:
    out["generate/images"] = model.generate(NUM_SAMPLES, VAE_GENERATE_ITERATIONS,
                                            seed["seed_generate"])
  out["reconstruct/images"] = model.reconstruct(inputs["episode"], seed["seed_reconstruct"])
  for key, value in model(inputs["episode"], training=False, seed=seed["seed_loss"]).items():
    out["loss/" + key] = value
  return {k: np.asarray(v) for k, v in out.items()}


def _assert_matches_model(outputs, model, model_type, inputs):
  outputs = dict(outputs)
  config = json.loads(bytes(outputs.pop("config/config")))
  assert config == json.loads(json.dumps(model.config.to_dict()))
  assert bytes(outputs.pop("config/model_type")) == model_type.encode()
  np.testing.assert_array_equal(outputs.pop("config/image_shape"), model.config.image_shape)
  if model_type == "dnc":
    assert json.loads(bytes(outputs.pop("config/dnc_config"))) == model.dnc_config.to_dict()
  want = _expected(model, inputs)
  assert sorted(outputs) == sorted(want)
  for key, value in want.items():
    assert outputs[key].shape == value.shape, key
    np.testing.assert_allclose(outputs[key], value, rtol=RTOL, atol=ATOL, err_msg=key)


def _tree_digest(path):
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(os.path.relpath(full, path).encode())
      with open(full, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def inputs():
  episode = tf.cast(tf.random.stateless_uniform((B, T) + TINY.image_shape, (1, 0)) < 0.3,
                    tf.float32).numpy()
  queries = episode[:, :N].copy()
  queries[:, :, TINY.image_shape[0] // 2:] = 0.  # bottom halves occluded
  seeds = {f"seed_{name}": np.array([i, 7], np.int32) for i, name in enumerate(
      ["write", "read", "generate", "reconstruct", "loss"])}
  return {"episode": episode, "queries": queries, **seeds}


@pytest.fixture(scope="module")
def models(inputs):
  kanerva = kt.KanervaMachine(TINY, name="kanerva")
  kanerva(inputs["episode"])
  kanerva.prior_loc.assign(tf.random.stateless_normal(kanerva.prior_loc.shape, (5, 5)))
  # Variables created under a strategy (MirroredVariables), as in kanerva_tf.training.
  with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
    vae = kt.VAE(TINY_GAUSSIAN, name="vae")
    vae(inputs["episode"])
  dnc = dnc_model.DNCMachine(TINY, TINY_DNC, name="dnc")
  dnc(inputs["episode"])
  return {"kanerva": kanerva, "vae": vae, "dnc": dnc}


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory):
  root = tmp_path_factory.mktemp("exports")
  return {name: export_lib.export(model, str(root / name / "export"), name)
          for name, model in models.items()}


@pytest.fixture(scope="module")
def loaded(exports):
  return {name: tf.saved_model.load(path) for name, path in exports.items()}


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("model_type", ["kanerva", "vae", "dnc"])
def test_signatures_have_the_documented_inputs_and_outputs(loaded, model_type):
  served = loaded[model_type]
  assert tuple(served.signatures) == export_lib.SIGNATURES[model_type]
  h, w, d = TINY.image_shape
  k, c = TINY.memory_size, TINY.code_size
  images = [None, None, h, w, d]
  want_inputs = {
      "reconstruct": {"episode": images, "seed": [2]},
      "loss": {"episode": images, "seed": [2]},
      "config": {},
  }
  want_outputs = {"reconstruct": {"images"}, "config": {"config", "model_type", "image_shape"},
                  "loss": {"loss", "per_example_loss", "reconstruction", "kl_z"}}
  if model_type in ("kanerva", "dnc"):
    if model_type == "kanerva":
      memory = {"loc": [None, k, c], "row_covariance": [None, k, k]}
      want_inputs["prior"], want_outputs["prior"] = {}, {"loc", "row_covariance"}
      want_outputs["loss"] |= {"kl_y", "kl_memory"}
    else:  # K slots, V word size, R read heads of the DNCConfig
      k, v, r = TINY_DNC.memory_slots, TINY_DNC.word_size, TINY_DNC.num_reads
      memory = {"memory": [None, k, v], "usage": [None, k], "link": [None, k, k],
                "precedence": [None, k], "read_weights": [None, r, k],
                "write_weights": [None, k]}
      want_outputs["loss"] |= {"kl_y"}
      want_outputs["config"] |= {"dnc_config"}
    want_inputs.update(
        write={"episode": images, "seed": [2]},
        read={"queries": images, **memory, "iterations": [], "seed": [2]},
        generate={**memory, "num_samples": [], "iterations": [], "seed": [2]})
    want_outputs.update(write=set(memory), read={"images"}, generate={"images"})
  else:
    want_inputs["generate"] = {"num_samples": [], "iterations": [], "seed": [2]}
    want_outputs["generate"] = {"images"}
  assert set(want_inputs) == set(served.signatures)
  for name, fn in served.signatures.items():
    specs = fn.structured_input_signature[1]
    assert {k: v.shape.as_list() for k, v in specs.items()} == want_inputs[name], name
    assert set(fn.structured_outputs) == want_outputs[name], name


@pytest.mark.parametrize("model_type", ["kanerva", "vae", "dnc"])
def test_saved_variables_are_the_models(models, exports, loaded, model_type):
  model, served = models[model_type], loaded[model_type]
  assert len(served.model_variables) == len(model.variables)
  for saved, variable in zip(served.model_variables, model.variables):
    np.testing.assert_array_equal(saved.numpy(), variable.numpy())
  # Nothing else is in the checkpoint (no duplicates through the Keras model).
  entries = tf.train.list_variables(os.path.join(exports[model_type], "variables", "variables"))
  assert len([n for n, _ in entries if n.endswith("VARIABLE_VALUE")]) == len(model.variables)


@pytest.mark.parametrize("model_type", ["kanerva", "vae", "dnc"])
def test_reloaded_signatures_match_the_model(models, loaded, inputs, model_type):
  model, served = models[model_type], loaded[model_type]
  _assert_matches_model(_call_signatures(served, inputs), model, model_type, inputs)
  # The restored tf.functions too.
  np.testing.assert_allclose(
      served.reconstruct(tf.constant(inputs["episode"]), tf.constant([3, 4]))["images"],
      model.reconstruct(inputs["episode"], tf.constant([3, 4])), rtol=RTOL, atol=ATOL)


@pytest.mark.slow
def test_load_without_kanerva_tf_matches_the_model(models, exports, inputs, tmp_path):
  np.savez(tmp_path / "inputs.npz", **inputs)
  args = [str(tmp_path / "inputs.npz")]
  for name, path in exports.items():
    args += [path, str(tmp_path / f"{name}.npz")]
  proc = subprocess.run([sys.executable, "-c", _CALL_SIGNATURES + _CHILD_MAIN, *args],
                        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name, model in models.items():
    outputs = dict(np.load(tmp_path / f"{name}.npz"))
    assert int(outputs.pop("num_model_variables")) == len(model.variables)
    _assert_matches_model(outputs, model, name, inputs)


@pytest.mark.slow
def test_saved_model_cli_runs_reconstruct(models, exports, inputs, tmp_path):
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  command = [cli] if os.path.exists(cli) else [
      sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
  np.save(tmp_path / "episode.npy", inputs["episode"])
  # This TF's --input_exprs takes Python literals only (no np.*): arrays come from files.
  proc = subprocess.run(
      command + ["run", "--dir", exports["kanerva"], "--tag_set", "serve",
                 "--signature_def", "reconstruct",
                 "--inputs", f"episode={tmp_path / 'episode.npy'}",
                 "--input_exprs", "seed=[3,4]", "--outdir", str(tmp_path / "out")],
      capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  images = np.load(tmp_path / "out" / "images.npy")
  want = models["kanerva"].reconstruct(inputs["episode"], tf.constant([3, 4]))
  np.testing.assert_allclose(images, want, rtol=RTOL, atol=ATOL)


def test_wrong_shapes_are_refused_with_the_expected_shape(loaded, inputs):
  served = loaded["kanerva"]
  seed = tf.constant([0, 0])
  episode, queries = tf.constant(inputs["episode"]), tf.constant(inputs["queries"])  # B = 2
  wrong_hw = tf.zeros((1, 2, 9, 8, 1))
  # The restored tf.function checks its input signature.
  with pytest.raises(TypeError, match=r"\(None, None, 8, 8, 1\)"):
    served.reconstruct(wrong_hw, seed)
  # Signature functions (TF Serving) check at run time, before anything else runs.
  reconstruct = served.signatures["reconstruct"]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"tensor episode \[1,2,9,8,1\] is not compatible with expected "
                     r"shape \[\?,\?,8,8,1\]"):
    reconstruct(episode=wrong_hw, seed=seed)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"tensor seed \[3\] is not compatible with expected shape \[2\]"):
    reconstruct(episode=episode, seed=tf.constant([0, 0, 0]))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"tensor episode \[1,8,8,1\] is not compatible with expected"):
    reconstruct(episode=tf.zeros((1, 8, 8, 1)), seed=seed)
  # read: the memory must have the queries' batch size; at least one iteration.
  memory = served.signatures["write"](episode=episode, seed=seed)
  read = served.signatures["read"]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="read: the batch size B of loc must be that of queries"):
    read(queries=queries[:1], iterations=tf.constant(1), seed=seed, **memory)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="generate: the batch size B of row_covariance must be that of loc"):
    served.signatures["generate"](loc=memory["loc"][:1], row_covariance=memory["row_covariance"],
                                  num_samples=tf.constant(1), iterations=tf.constant(0), seed=seed)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"tensor loc \[2,5,7\] is not compatible with expected shape "
                     r"\[\?,5,6\]"):
    read(queries=queries, loc=tf.zeros((2, 5, 7)),
         row_covariance=memory["row_covariance"], iterations=tf.constant(1), seed=seed)
  with pytest.raises(tf.errors.InvalidArgumentError, match="read: iterations must be >= 1"):
    read(queries=queries, iterations=tf.constant(0), seed=seed, **memory)
  with pytest.raises(tf.errors.InvalidArgumentError, match="generate: num_samples must be >= 1"):
    loaded["vae"].signatures["generate"](num_samples=tf.constant(0), iterations=tf.constant(0),
                                         seed=seed)


def test_dnc_state_is_the_named_tensors_of_a_dnc_state(models, loaded, inputs):
  """write returns the DNCState's fields; the empty memory (zeros) generates as in process."""
  assert DNC_STATE == dnc.DNCState._fields == export_lib.MEMORY_INPUTS["dnc"]
  served, model = loaded["dnc"], models["dnc"]
  state = served.signatures["write"](episode=tf.constant(inputs["episode"]),
                                     seed=tf.constant([1, 2]))
  assert set(state) == set(DNC_STATE)
  empty = model.initial_state(B)
  got = served.signatures["generate"](num_samples=tf.constant(2), iterations=tf.constant(0),
                                      seed=tf.constant([5, 6]), **empty._asdict())["images"]
  np.testing.assert_allclose(got, model.generate(empty, 2, 0, tf.constant([5, 6])),
                             rtol=RTOL, atol=ATOL)
  assert got.shape == (1, B, 2) + TINY.image_shape


def test_dnc_wrong_shapes_are_refused_with_the_expected_shape(loaded, inputs):
  served = loaded["dnc"]
  seed = tf.constant([0, 0])
  episode, queries = tf.constant(inputs["episode"]), tf.constant(inputs["queries"])  # B = 2
  state = served.signatures["write"](episode=episode, seed=seed)
  read, generate = served.signatures["read"], served.signatures["generate"]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"tensor episode \[2,4,9,8,1\] is not compatible with expected "
                     r"shape \[\?,\?,8,8,1\]"):
    served.signatures["write"](episode=tf.zeros((2, 4, 9, 8, 1)), seed=seed)
  # Every tensor of the state has its K, V, R (7 slots, words of 4, 2 read heads).
  for name, wrong in [("memory", (2, 7, 6)), ("link", (2, 5, 5)), ("read_weights", (2, 4, 7))]:
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"tensor {name} \[{','.join(map(str, wrong))}\] is not "
                       r"compatible with expected shape"):
      read(queries=queries, iterations=tf.constant(1), seed=seed,
           **{**state, name: tf.zeros(wrong)})
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"tensor usage \[2,7,1\] is not compatible with expected shape "
                     r"\[\?,7\]"):
    generate(num_samples=tf.constant(1), iterations=tf.constant(0), seed=seed,
             **{**state, "usage": tf.zeros((2, 7, 1))})
  # The state must have the queries' batch size, all six tensors the same.
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="read: the batch size B of memory must be that of queries"):
    read(queries=queries[:1], iterations=tf.constant(1), seed=seed, **state)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="generate: the batch size B of precedence must be that of memory"):
    generate(num_samples=tf.constant(1), iterations=tf.constant(0), seed=seed,
             **{**state, "precedence": state["precedence"][:1]})
  with pytest.raises(tf.errors.InvalidArgumentError, match="read: iterations must be >= 1"):
    read(queries=queries, iterations=tf.constant(0), seed=seed, **state)
  with pytest.raises(tf.errors.InvalidArgumentError, match="generate: iterations must be >= 0"):
    generate(num_samples=tf.constant(1), iterations=tf.constant(-1), seed=seed, **state)
  with pytest.raises(tf.errors.InvalidArgumentError, match="generate: num_samples must be >= 1"):
    generate(num_samples=tf.constant(0), iterations=tf.constant(0), seed=seed, **state)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"tensor seed \[3\] is not compatible with expected shape \[2\]"):
    generate(num_samples=tf.constant(1), iterations=tf.constant(0),
             seed=tf.constant([0, 0, 0]), **state)
  # The restored tf.function checks its input signature.
  with pytest.raises(TypeError, match=r"\(None, 7, 4\)"):
    served.read(queries, tf.zeros((2, 7, 6)), *[state[n] for n in DNC_STATE[1:]],
                tf.constant(1), seed)


def test_functions_are_traced_once(models, inputs):
  module = export_lib.ServingModule(models["vae"])
  for shape in [(1, 2), (3, 5)]:
    episode = tf.random.stateless_uniform(shape + TINY.image_shape, (0, 1))
    module.reconstruct(episode, tf.constant([0, 1]))
    module.reconstruct(episode, tf.constant([2, 3]))
    module.generate(tf.constant(shape[1]), tf.constant(shape[0]), tf.constant([0, 1]))
  assert module.reconstruct.experimental_get_tracing_count() == 1
  assert module.generate.experimental_get_tracing_count() == 1


def test_export_replaces_an_older_export_and_failures_keep_it(models, exports, monkeypatch,
                                                              tmp_path):
  path = tmp_path / "run" / "export"
  shutil.copytree(exports["kanerva"], path)
  # A second export replaces the first and leaves nothing else behind.
  assert export_lib.export(models["vae"], str(path)) == str(path)
  served = tf.saved_model.load(str(path))
  assert served.signatures["config"]()["model_type"].numpy() == b"vae"
  assert os.listdir(path.parent) == ["export"]
  before = _tree_digest(path)

  # A save that fails half-way through leaves the earlier export intact.
  def failing_save(module, export_dir, **kwargs):
    del module, kwargs
    os.makedirs(export_dir)
    with open(os.path.join(export_dir, "saved_model.pb"), "w") as f:
      f.write("partial")
    raise RuntimeError("disk full")

  monkeypatch.setattr(tf.saved_model, "save", failing_save)
  with pytest.raises(RuntimeError, match="disk full"):
    export_lib.export(models["kanerva"], str(path))
  assert _tree_digest(path) == before
  assert os.listdir(path.parent) == ["export"]

  # So does a failure to move the new export into place: the old one is moved back.
  def complete_save(module, export_dir, **kwargs):
    del module, kwargs
    os.makedirs(export_dir)
    with open(os.path.join(export_dir, "saved_model.pb"), "w") as f:
      f.write("complete")

  rename = tf.io.gfile.rename

  def failing_rename(src, dst, overwrite=False):
    if ".tmp-" in src:
      raise OSError("rename failed")
    return rename(src, dst, overwrite)

  monkeypatch.setattr(tf.saved_model, "save", complete_save)
  monkeypatch.setattr(tf.io.gfile, "rename", failing_rename)
  with pytest.raises(OSError, match="rename failed"):
    export_lib.export(models["kanerva"], str(path))
  assert _tree_digest(path) == before
  assert os.listdir(path.parent) == ["export"]


def test_export_refuses_unbuilt_models_and_wrong_types(models, tmp_path):
  with pytest.raises(ValueError, match="call it once"):
    export_lib.export(kt.VAE(TINY), str(tmp_path / "export"))
  with pytest.raises(ValueError, match="does not match"):
    export_lib.export(models["vae"], str(tmp_path / "export"), "kanerva")
  with pytest.raises(TypeError, match="KanervaMachine or VAE"):
    export_lib.export(tf.Module(), str(tmp_path / "export"))
  assert not os.path.exists(tmp_path / "export")
