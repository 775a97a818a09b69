"""Tests for kanerva_tf.networks: the Appendix C encoder, decoder, ResNet block and MLP."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kanerva_tf import networks
from kanerva_tf.networks import MLP, Decoder, Encoder, ResBlock, check_image_shape

# Presets of the paper (Section 4): image shape (H, W, D), filters F, code size C.
PRESETS = {
    "omniglot": dict(image_shape=(28, 28, 1), num_filters=16, code_size=100),
    "cifar": dict(image_shape=(32, 32, 3), num_filters=32, code_size=200),
}
# Named leading batch shapes: an episode batch [B, T] and a flat batch of queries [N].
LEADING = {"BT": (2, 3), "N": (4,)}


def _images(leading, image_shape, seed=0):
  rng = np.random.default_rng(seed)
  return rng.uniform(size=leading + tuple(image_shape)).astype(np.float32)


def _codes(leading, size, seed=1):
  return np.random.default_rng(seed).normal(size=leading + (size,)).astype(np.float32)


def _conv_same_np(x, kernel, bias):
  """Independent numpy 'same' stride-1 convolution: x [N, h, w, I], kernel [k, k, I, O]."""
  k = kernel.shape[0]
  lo = (k - 1) // 2
  xp = np.pad(x, ((0, 0), (lo, k - 1 - lo), (lo, k - 1 - lo), (0, 0)))
  h, w = x.shape[1:3]
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for i in range(k):
    for j in range(k):
      out += np.einsum("nhwi,io->nhwo", xp[:, i:i + h, j:j + w], kernel[i, j])
  return out + bias


def _relu(x):
  return np.maximum(x, 0.0)


# ---------------------------------------------------------------------------------------------
# check_image_shape


def test_check_image_shape_accepts_and_normalises():
  assert check_image_shape([28, 28, 1]) == (28, 28, 1)
  assert check_image_shape((np.int64(8), 8, 3)) == (8, 8, 3)
  assert networks.encoder_spatial_sizes((28, 28, 1)) == [(28, 28), (14, 14), (7, 7), (4, 4)]
  assert networks.encoder_spatial_sizes((32, 32, 3)) == [(32, 32), (16, 16), (8, 8), (4, 4)]


@pytest.mark.parametrize(
    "shape, pattern",
    [
        ((7, 7, 1), r"\(7, 7, 1\).*H=7, W=7 is too small"),
        ((28, 7, 1), r"too small"),
        ((28, 28), r"\(28, 28\) of rank 2"),
        ((1, 28, 28, 1), r"of rank 4"),
        ((28, 28, 0), r"non-positive"),
        ((28, -2, 1), r"non-positive"),
        ((28.0, 28, 1), r"non-integer size 28.0"),
        ((28, None, 1), r"non-integer size None"),
        (28, r"got 28"),
    ],
    ids=["7x7", "narrow", "rank2", "rank4", "zero_depth", "negative", "float", "none", "scalar"])
def test_check_image_shape_rejects(shape, pattern):
  with pytest.raises(ValueError, match=r"H, W >= 8"):
    check_image_shape(shape)
  with pytest.raises(ValueError, match=pattern):
    check_image_shape(shape)


@pytest.mark.parametrize("shape", [(7, 7, 1), (28, 28)], ids=["7x7", "rank2"])
def test_encoder_and_decoder_reject_bad_image_shape(shape):
  with pytest.raises(ValueError, match=r"image shape \(H, W, D\)"):
    Encoder(16, 200, image_shape=shape)
  with pytest.raises(ValueError, match=r"image shape \(H, W, D\)"):
    Decoder(16, shape)


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("leading", LEADING.values(), ids=LEADING.keys())
@pytest.mark.parametrize("preset", PRESETS.keys())
def test_encoder_decoder_shapes(preset, leading):
  p = PRESETS[preset]
  c = p["code_size"]
  encoder = Encoder(p["num_filters"], 2 * c, image_shape=p["image_shape"])
  decoder = Decoder(p["num_filters"], p["image_shape"])
  e = encoder(_images(leading, p["image_shape"]))
  assert tuple(e.shape) == leading + (2 * c,)
  x = decoder(e[..., :c])
  assert tuple(x.shape) == leading + p["image_shape"]
  assert e.dtype == tf.float32 and x.dtype == tf.float32
  assert encoder.compute_output_shape((None,) + leading + p["image_shape"]) == (
      (None,) + leading + (2 * c,))
  assert decoder.compute_output_shape(leading + (c,)) == leading + p["image_shape"]


@pytest.mark.parametrize("image_shape", [(20, 24, 2), (9, 13, 1), (8, 8, 3)])
def test_other_image_sizes_round_trip_shape(image_shape):
  # (20, 24): 20 -> 10 -> 5 -> 3 and 24 -> 12 -> 6 -> 3; (9, 13) needs a crop at every stage.
  encoder = Encoder(4, 6, image_shape=image_shape)
  decoder = Decoder(4, image_shape)
  decoder_2d = Decoder(4, image_shape, output_channels=2 * image_shape[-1])
  e = encoder(_images((3,), image_shape))
  assert tuple(e.shape) == (3, 6)
  assert tuple(decoder(e).shape) == (3,) + image_shape
  assert tuple(decoder_2d(e).shape) == (3,) + image_shape[:2] + (2 * image_shape[-1],)


def test_encoder_rejects_images_of_another_shape():
  encoder = Encoder(4, 6, image_shape=(28, 28, 1))
  bad = _images((2,), (32, 32, 3))
  message = r"Encoder expects images \[\.\.\., 28, 28, 1\], got \[\.\.\., 32, 32, 3\]"
  with pytest.raises(ValueError, match=message):
    encoder(bad)
  encoder(_images((2,), (28, 28, 1)))  # builds
  with pytest.raises(ValueError, match=r"expects images \[\.\.\., 28, 28, 1\]"):
    encoder(bad)
  with pytest.raises(ValueError, match=r"at least one leading batch dim"):
    encoder(_images((), (28, 28, 1)))


def test_encoder_infers_image_shape_then_enforces_it():
  encoder = Encoder(4, 6)
  assert encoder.image_shape is None
  encoder(_images((2,), (20, 24, 2)))
  assert encoder.image_shape == (20, 24, 2)
  assert encoder.get_config()["image_shape"] == (20, 24, 2)
  message = r"expects images \[\.\.\., 20, 24, 2\], got \[\.\.\., 24, 20, 2\]"
  with pytest.raises(ValueError, match=message):
    encoder(_images((2,), (24, 20, 2)))
  with pytest.raises(ValueError, match=r"too small"):
    Encoder(4, 6)(_images((2,), (7, 7, 1)))


def test_resblock_rejects_channel_mismatch():
  with pytest.raises(ValueError, match=r"ResBlock\(8\) expects feature maps \[\.\.\., h, w, 8\]"):
    ResBlock(8)(np.zeros((1, 4, 4, 3), np.float32))


def test_leading_dims_are_independent_images():
  """[B, T] is flattened and restored in order, and images never interact (no batch norm)."""
  image_shape, c = (20, 24, 2), 5
  encoder = Encoder(4, 2 * c, image_shape=image_shape)
  decoder = Decoder(4, image_shape)
  x = _images((2, 3), image_shape)
  e = encoder(x).numpy()
  e_flat = encoder(x.reshape((6,) + image_shape)).numpy()
  np.testing.assert_allclose(e, e_flat.reshape(2, 3, 2 * c), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(e[1, 2], encoder(x[1:2, 2]).numpy()[0], rtol=1e-5, atol=1e-5)
  z = _codes((2, 3), c)
  y = decoder(z).numpy()
  np.testing.assert_allclose(y[0, 1], decoder(z[0:1, 1]).numpy()[0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(e[0, 0], e[0, 1])  # different images, different codes


def test_unknown_leading_dims_in_tf_function():
  image_shape, c = (28, 28, 1), 3
  encoder = Encoder(4, 2 * c, image_shape=image_shape)
  decoder = Decoder(4, image_shape)
  mlp = MLP(5, 2)

  @tf.function(input_signature=[tf.TensorSpec([None, None] + list(image_shape), tf.float32)])
  def run(x):
    e = encoder(x)  # [B, T, 2C]
    return decoder(e[..., :c]), mlp(e)

  x = _images((2, 3), image_shape)
  y, m = run(x)
  assert tuple(y.shape) == (2, 3) + image_shape and tuple(m.shape) == (2, 3, 2)
  np.testing.assert_allclose(y, decoder(encoder(x)[..., :c]), rtol=1e-5, atol=1e-5)
  y1, _ = run(x[:1, :2])  # another leading shape, same trace
  assert tuple(y1.shape) == (1, 2) + image_shape


def test_functional_keras_model():
  image_shape = (28, 28, 1)
  inputs = keras.Input((5,) + image_shape)  # [B, T, H, W, D]
  e = Encoder(4, 6, image_shape=image_shape)(inputs)
  outputs = Decoder(4, image_shape)(MLP(8, 3)(e))
  model = keras.Model(inputs, outputs)
  assert tuple(model.output.shape) == (None, 5) + image_shape
  assert tuple(model(_images((2, 5), image_shape)).shape) == (2, 5) + image_shape


# ---------------------------------------------------------------------------------------------
# Reference computations


def test_resblock_is_residual():
  block = ResBlock(3)
  x = np.random.default_rng(0).normal(size=(2, 2, 5, 6, 3)).astype(np.float32)  # [B, T, h, w, F]
  y_random = block(x).numpy()
  assert not np.allclose(y_random, x, atol=1e-3)  # the residual branch does something ...
  for conv in (block.conv_a, block.conv_b):
    conv.kernel.assign(np.zeros(conv.kernel.shape, np.float32))
    conv.bias.assign(np.zeros(conv.bias.shape, np.float32))
  np.testing.assert_array_equal(block(x).numpy(), x)  # ... and without it, y = x


def test_resblock_matches_numpy_pre_activation_reference():
  rng = np.random.default_rng(3)
  block = ResBlock(4)
  x = rng.normal(size=(3, 5, 6, 4)).astype(np.float32)
  block.build(x.shape)
  for conv in (block.conv_a, block.conv_b):
    conv.bias.assign(rng.normal(size=conv.bias.shape).astype(np.float32))
  ka, ba = block.conv_a.kernel.numpy(), block.conv_a.bias.numpy()
  kb, bb = block.conv_b.kernel.numpy(), block.conv_b.bias.numpy()
  expected = x + _conv_same_np(_relu(_conv_same_np(_relu(x), ka, ba)), kb, bb)
  np.testing.assert_allclose(block(x).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_mlp_matches_numpy_reference():
  rng = np.random.default_rng(4)
  mlp = MLP(7, 3)
  x = rng.normal(size=(2, 4, 5)).astype(np.float32)  # [B, T, in]
  mlp.build(x.shape)
  mlp.hidden.bias.assign(rng.normal(size=(7,)).astype(np.float32))
  mlp.output_layer.bias.assign(rng.normal(size=(3,)).astype(np.float32))
  w1, b1, w2, b2 = [v.numpy() for v in (mlp.hidden.kernel, mlp.hidden.bias,
                                        mlp.output_layer.kernel, mlp.output_layer.bias)]
  expected = _relu(x @ w1 + b1) @ w2 + b2
  np.testing.assert_allclose(mlp(x).numpy(), expected, rtol=1e-5, atol=1e-5)
  assert mlp.count_params() == (5 + 1) * 7 + (7 + 1) * 3


def _randomise_biases(layer, seed):
  rng = np.random.default_rng(seed)
  for v in layer.trainable_variables:
    if len(v.shape) == 1:
      v.assign(0.1 * rng.normal(size=v.shape).astype(np.float32))


def _res_block_tf(block, x):
  conv = lambda c, h: tf.nn.conv2d(h, c.kernel, 1, "SAME") + c.bias
  return x + conv(block.conv_b, tf.nn.relu(conv(block.conv_a, tf.nn.relu(x))))


def test_encoder_matches_reference_wiring():
  """Appendix C encoder written with raw tf.nn ops on the layer's weights (pre-activation)."""
  image_shape = (9, 13, 2)
  encoder = Encoder(3, 5, image_shape=image_shape)
  x = _images((4,), image_shape)
  encoder.build(x.shape)
  _randomise_biases(encoder, 5)
  h = tf.constant(x)
  for i in range(3):
    if i > 0:
      h = tf.nn.relu(h)
    h = tf.nn.conv2d(h, encoder.convs[i].kernel, 2, "SAME") + encoder.convs[i].bias
    h = _res_block_tf(encoder.res_blocks[i], h)
  assert tuple(h.shape) == (4, 2, 2, 3)  # 9 -> 5 -> 3 -> 2, 13 -> 7 -> 4 -> 2
  h = tf.reshape(tf.nn.relu(h), (4, -1))
  expected = h @ encoder.projection.kernel + encoder.projection.bias
  np.testing.assert_allclose(encoder(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_decoder_matches_reference_wiring():
  """Mirror of the encoder with tf.nn.conv2d_transpose, cropping the trailing row / column."""
  image_shape = (9, 13, 2)
  decoder = Decoder(3, image_shape, output_channels=4)
  z = _codes((4,), 5)
  decoder.build(z.shape)
  _randomise_biases(decoder, 6)
  h = tf.reshape(z @ decoder.projection.kernel + decoder.projection.bias, (4, 2, 2, 3))
  for i, (th, tw) in enumerate([(3, 4), (5, 7), (9, 13)]):
    h = tf.nn.relu(_res_block_tf(decoder.res_blocks[i], h))
    deconv = decoder.deconvs[i]
    out_shape = (4, 2 * h.shape[1], 2 * h.shape[2], deconv.kernel.shape[2])
    h = tf.nn.conv2d_transpose(h, deconv.kernel, out_shape, 2, "SAME") + deconv.bias
    h = h[:, :th, :tw]
  assert tuple(h.shape) == (4, 9, 13, 4)
  np.testing.assert_allclose(decoder(z).numpy(), h.numpy(), rtol=1e-4, atol=1e-4)


def test_decoder_crop_has_no_strided_slice_gradient():
  """The crop is a Slice (gradient: Pad), not a StridedSlice, whose StridedSliceGrad cost 4x
  as much on the Omniglot step (bench/profile_step.py); the values are the same (above)."""
  decoder = Decoder(3, (9, 13, 2))
  z = _codes((4,), 5)
  decoder.build(z.shape)

  @tf.function
  def grads(z):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(decoder(z)))
    return tape.gradient(loss, decoder.trainable_variables)
  graph = grads.get_concrete_function(z).graph
  types = {op.type for op in graph.get_operations()}
  assert "Slice" in types and "StridedSliceGrad" not in types


# ---------------------------------------------------------------------------------------------
# Serialisation


def _layers_and_inputs():
  image_shape = (20, 24, 2)
  return {
      "resblock": (ResBlock(4, name="rb"), np.random.default_rng(0).normal(
          size=(2, 3, 5, 6, 4)).astype(np.float32)),
      "encoder": (Encoder(4, 6, image_shape=image_shape, name="enc"), _images((2, 3), image_shape)),
      "decoder": (Decoder(4, image_shape, output_channels=3, name="dec"), _codes((2, 3), 5)),
      "mlp": (MLP(7, 3, name="mlp"), _codes((2, 3), 5)),
  }


@pytest.mark.parametrize("which", ["resblock", "encoder", "decoder", "mlp"])
def test_config_round_trip(which):
  layer, x = _layers_and_inputs()[which]
  y = layer(x).numpy()
  config = layer.get_config()
  clone = type(layer).from_config(config)
  assert clone.get_config() == config
  clone(x)  # build
  assert len(clone.get_weights()) == len(layer.get_weights()) > 0
  assert not np.allclose(clone(x).numpy(), y)  # fresh weights differ ...
  clone.set_weights(layer.get_weights())
  np.testing.assert_allclose(clone(x).numpy(), y, rtol=1e-6, atol=1e-6)  # ... copied agree

  # Registered under the "kanerva_tf" package, so generic Keras deserialisation finds it too.
  restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
  assert type(restored) is type(layer) and restored.get_config() == config


# ---------------------------------------------------------------------------------------------
# Gradients and parameter counts


def test_gradients_reach_all_trainable_variables():
  image_shape, c = (20, 24, 2), 4
  encoder = Encoder(4, 2 * c, image_shape=image_shape)
  decoder = Decoder(4, image_shape)
  mlp = MLP(6, c)
  x = _images((2, 3), image_shape)
  with tf.GradientTape() as tape:
    e = encoder(x)  # [B, T, 2C]
    y = decoder(e[..., :c] + mlp(e))  # [B, T, H, W, D]
    loss = tf.reduce_sum(tf.square(y - x))
  variables = encoder.trainable_variables + decoder.trainable_variables + mlp.trainable_variables
  # 3 convs + 3 blocks x 2 convs + dense, each kernel and bias; decoder alike; MLP 2 denses.
  assert len(variables) == 2 * (3 + 6 + 1) * 2 + 2 * 2
  grads = tape.gradient(loss, variables)
  for v, g in zip(variables, grads):
    assert g is not None, v.path
    assert np.any(g.numpy() != 0), v.path


def _encoder_params(image_shape, f, e):
  """Hand count of Appendix C: 3 x [conv4x4/2 + ResBlock(2 x conv3x3)] + dense to E."""
  h, w, d = image_shape
  for _ in range(3):
    h, w = -(-h // 2), -(-w // 2)
  strided = (4 * 4 * d * f + f) + 2 * (4 * 4 * f * f + f)
  res = 3 * 2 * (3 * 3 * f * f + f)
  return strided + res + (h * w * f + 1) * e


def _decoder_params(image_shape, f, c, out):
  h, w, _ = image_shape
  for _ in range(3):
    h, w = -(-h // 2), -(-w // 2)
  return (c + 1) * h * w * f + 3 * 2 * (9 * f * f + f) + 2 * (16 * f * f + f) + 16 * f * out + out


@pytest.mark.parametrize("preset", PRESETS.keys())
def test_parameter_counts(preset):
  p = PRESETS[preset]
  f, c, shape = p["num_filters"], p["code_size"], p["image_shape"]
  encoder = Encoder(f, 2 * c, image_shape=shape)
  decoder = Decoder(f, shape)
  encoder.build((None,) + shape)
  decoder.build((None, c))
  assert encoder.count_params() == _encoder_params(shape, f, 2 * c)
  assert decoder.count_params() == _decoder_params(shape, f, c, shape[-1])
  expected = {"omniglot": (73_816, 48_257), "cifar": (295_088, 192_771)}[preset]
  assert (encoder.count_params(), decoder.count_params()) == expected
