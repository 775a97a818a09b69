"""Encoder, decoder and MLP networks of the Kanerva Machine (Appendix C of Wu et al., 2018).

The paper uses one architecture for every experiment and changes only the number of filters
(16 for Omniglot, 32 for CIFAR), the memory size and the code size C:

  * a convolutional encoder: 3 blocks of [4x4 convolution with stride 2 -> basic ResNet block
    without bottleneck (He et al., 2016)], all with F filters, flattened and linearly projected
    to a 2C dimensional embedding e(x);
  * a convolutional decoder that mirrors it with transposed convolutions;
  * "MLP" boxes that are 2-layer perceptrons with a ReLU in between.

Every layer here is a Keras 3 layer (float32 by default) that accepts any number of leading batch
dimensions, e.g. images [B, T, H, W, D] or [N, H, W, D], codes [B, T, C].

Shape letters (see `kanerva_tf/__init__.py`): B batch of episodes, T episode length, N queries,
C code size, H W D image height / width / depth, F filters. `...` is any leading batch shape.

Choices the paper leaves open, made here:

  * Residual blocks are *pre-activation* blocks (He et al., 2016b): x + conv(relu(conv(relu(x)))).
    The network is "full pre-activation" throughout: every weight layer except the first one of
    each network reads a ReLU'd input. So a ReLU comes before the 2nd and 3rd strided
    convolutions and before the final projection of the encoder, and before every transposed
    convolution of the decoder. The strided (transposed) convolutions and dense projections
    themselves are linear.
  * No batch normalisation: batch statistics would couple the images of an episode (and the
    episodes of a batch) through the encoder, so that e(x_t) would depend on the other x's and
    the memory would no longer be written with independent per-image codes; it would also make
    training and evaluation behave differently.
  * The decoder's last transposed convolution has `output_channels` filters and a linear output
    (Bernoulli logits or Gaussian means: the model decides); there is no extra 1x1 convolution.
  * 'same' padding everywhere; the decoder crops the trailing row / column after a transposed
    convolution where the encoder rounded an odd size up (28 -> 14 -> 7 -> 4 is undone as
    4 -> 8 [crop to 7] -> 14 -> 28).

#### References

Wu, Wayne, Graves, Lillicrap. The Kanerva Machine: A Generative Distributed Memory. ICLR 2018,
  Appendix C and Figure 9.
He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016.
He, Zhang, Ren, Sun. Identity Mappings in Deep Residual Networks. ECCV 2016 (2016b).
"""

import keras
from keras import ops

__all__ = [
    "NUM_DOWNSAMPLINGS",
    "MIN_IMAGE_SIZE",
    "check_image_shape",
    "encoder_spatial_sizes",
    "ResBlock",
    "Encoder",
    "Decoder",
    "MLP",
]

# Number of stride-2 (transposed) convolutions in the encoder (decoder).
NUM_DOWNSAMPLINGS = 3
# Smallest image height / width: each of the 3 stride-2 convolutions halves a map of >= 2 pixels.
MIN_IMAGE_SIZE = 2**NUM_DOWNSAMPLINGS
# Kernel sizes of Appendix C.
_STRIDED_KERNEL = 4
_RES_KERNEL = 3

# Keras' default, Glorot uniform. `ModelConfig.kernel_initializer` can change it (he_normal,
# lecun_normal). At initialisation the Omniglot encoder output varies across images by ~0.03
# per unit with Glorot (0.06 LeCun, 0.4 He), far below the N(0, 0.2^2) noise the Kanerva
# Machine adds to the input of q(y|x); He normal was tried against the address collapse this
# suggests, did not prevent it and trained slower early on (RESULTS.md).
KERNEL_INITIALIZER = "glorot_uniform"


def check_image_shape(image_shape):
  """Validates an image shape (H, W, D) for the encoder / decoder and returns it as a tuple.

  Args:
    image_shape: a sequence of 3 positive ints (H, W, D), with H and W at least
      `MIN_IMAGE_SIZE` = 8 (three stride-2 convolutions must each halve a map of >= 2 pixels).

  Returns:
    `tuple(int(H), int(W), int(D))`.

  Raises:
    ValueError: naming the shape and what is allowed, if it is not of rank 3, has a
      non-integer or non-positive entry, or H or W is smaller than 8.
  """
  allowed = (f"an image shape (H, W, D) of 3 positive ints with H, W >= {MIN_IMAGE_SIZE} "
             f"({NUM_DOWNSAMPLINGS} stride-2 convolutions)")
  try:
    dims = tuple(image_shape)
  except TypeError:
    raise ValueError(f"Expected {allowed}, got {image_shape!r}.") from None
  if len(dims) != 3:
    raise ValueError(f"Expected {allowed}, got {image_shape!r} of rank {len(dims)}.")
  out = []
  for d in dims:
    # bool is an int subclass but never a size; accept numpy integers via __index__.
    if isinstance(d, bool) or not hasattr(d, "__index__"):
      raise ValueError(f"Expected {allowed}, got {image_shape!r} with a non-integer size {d!r}.")
    out.append(int(d.__index__()))
  if any(d <= 0 for d in out):
    raise ValueError(f"Expected {allowed}, got {image_shape!r} with a non-positive size.")
  if out[0] < MIN_IMAGE_SIZE or out[1] < MIN_IMAGE_SIZE:
    raise ValueError(
        f"Expected {allowed}, got {image_shape!r}: H={out[0]}, W={out[1]} is too small.")
  return tuple(out)


def encoder_spatial_sizes(image_shape):
  """Spatial sizes [(H, W), (h1, w1), (h2, w2), (h3, w3)] of the encoder's feature maps.

  A stride-2 convolution with 'same' padding maps size s to ceil(s / 2):
  28 -> 14 -> 7 -> 4 (Omniglot) and 32 -> 16 -> 8 -> 4 (CIFAR).
  """
  h, w, _ = check_image_shape(image_shape)
  sizes = [(h, w)]
  for _ in range(NUM_DOWNSAMPLINGS):
    h, w = -(-h // 2), -(-w // 2)
    sizes.append((h, w))
  return sizes


def _shape_str(shape):
  return "[..., " + ", ".join(str(d) for d in shape) + "]"


@keras.saving.register_keras_serializable(package="kanerva_tf")
class ResBlock(keras.layers.Layer):
  """Basic ResNet block without bottleneck, pre-activation form, no batch norm.

  Computes, on feature maps [..., h, w, F] with F = `filters` in and out:

    y = x + conv3x3_b(relu(conv3x3_a(relu(x))))

  Both 3x3 convolutions have F filters, stride 1, 'same' padding and a bias. This is the basic
  (two 3x3 convolutions, no 1x1 bottleneck) block of He et al. (2016) in the pre-activation order
  of He et al. (2016b). There is no batch normalisation: batch statistics would couple the images
  of an episode, so one image's code would depend on the others written to the same memory.

  Args:
    filters: F, the number of channels of the input, of both convolutions and of the output.
    kernel_initializer: initializer of the convolution kernels (see `KERNEL_INITIALIZER`).
    **kwargs: passed to `keras.layers.Layer` (name, dtype, trainable, ...).
  """

  def __init__(self, filters, kernel_initializer=KERNEL_INITIALIZER, **kwargs):
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.kernel_initializer = kernel_initializer
    if self.filters <= 0:
      raise ValueError(f"ResBlock needs a positive number of filters, got {filters!r}.")
    self.conv_a = keras.layers.Conv2D(
        self.filters, _RES_KERNEL, padding="same", name="conv_a", dtype=self.dtype_policy,
        kernel_initializer=kernel_initializer)
    self.conv_b = keras.layers.Conv2D(
        self.filters, _RES_KERNEL, padding="same", name="conv_b", dtype=self.dtype_policy,
        kernel_initializer=kernel_initializer)

  def build(self, input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) < 4 or input_shape[-1] != self.filters:
      raise ValueError(f"ResBlock({self.filters}) expects feature maps [..., h, w, "
                       f"{self.filters}], got {list(input_shape)}.")
    maps = (None,) + input_shape[-3:]  # [N, h, w, F]
    self.conv_a.build(maps)
    self.conv_b.build(maps)

  def call(self, inputs):
    x = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
    batch_shape = ops.shape(x)[:-3]
    x4 = ops.reshape(x, (-1,) + tuple(x.shape[-3:]))  # [N, h, w, F]
    y = self.conv_b(ops.relu(self.conv_a(ops.relu(x4))))
    return ops.reshape(x4 + y, tuple(batch_shape) + tuple(x.shape[-3:]))

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({"filters": self.filters, "kernel_initializer": self.kernel_initializer})
    return config


@keras.saving.register_keras_serializable(package="kanerva_tf")
class Encoder(keras.layers.Layer):
  """Convolutional encoder of Appendix C: images [..., H, W, D] -> embeddings [..., E].

  Architecture (F = `num_filters`, E = `embedding_size`, the model uses E = 2C):

    x: [N, H, W, D]                       (leading dims ... flattened to N)
    conv4x4/2(F)            -> [N, h1, w1, F]     h1 = ceil(H / 2)
    ResBlock(F)
    relu, conv4x4/2(F)      -> [N, h2, w2, F]     h2 = ceil(h1 / 2)
    ResBlock(F)
    relu, conv4x4/2(F)      -> [N, h3, w3, F]     h3 = ceil(h2 / 2)
    ResBlock(F)
    relu, flatten           -> [N, h3 * w3 * F]
    dense(E), linear        -> [N, E]  -> reshaped to [..., E]

  conv4x4/2 is a 4x4 convolution with stride 2 and 'same' padding; ResBlock is `ResBlock`
  (pre-activation, no batch norm). The ReLUs before the 2nd and 3rd strided convolutions and
  the projection make every weight layer but the first read an activated input. Images are
  encoded independently of each other (no batch statistics).

  Parameters: (16 D + 1) F + 2 (16 F^2 + F) + 3 * 2 (9 F^2 + F) + (h3 w3 F + 1) E;
  73,816 for Omniglot (28x28x1, F=16, E=200), 295,088 for CIFAR (32x32x3, F=32, E=400).

  Args:
    num_filters: F, filters of every convolution (16 for Omniglot, 32 for CIFAR).
    embedding_size: E, size of the output embedding (2C in the model).
    image_shape: (H, W, D) of the input images, checked by `check_image_shape`. If None it is
      taken from the input at build time (and then appears in `get_config`).
    kernel_initializer: initializer of every kernel (see `KERNEL_INITIALIZER`).
    **kwargs: passed to `keras.layers.Layer`.

  Raises:
    ValueError: if `image_shape` is invalid, or the input's last 3 dims differ from it.
  """

  def __init__(self, num_filters, embedding_size, image_shape=None,
               kernel_initializer=KERNEL_INITIALIZER, **kwargs):
    super().__init__(**kwargs)
    self.kernel_initializer = kernel_initializer
    self.num_filters = int(num_filters)
    self.embedding_size = int(embedding_size)
    if self.num_filters <= 0 or self.embedding_size <= 0:
      raise ValueError(f"Encoder needs positive num_filters and embedding_size, got "
                       f"{num_filters!r} and {embedding_size!r}.")
    self.image_shape = None if image_shape is None else check_image_shape(image_shape)
    policy = self.dtype_policy
    self.convs = [
        keras.layers.Conv2D(self.num_filters, _STRIDED_KERNEL, strides=2, padding="same",
                            name=f"conv_{i}", dtype=policy, kernel_initializer=kernel_initializer)
        for i in range(NUM_DOWNSAMPLINGS)
    ]
    self.res_blocks = [
        ResBlock(self.num_filters, kernel_initializer, name=f"res_block_{i}", dtype=policy)
        for i in range(NUM_DOWNSAMPLINGS)
    ]
    self.projection = keras.layers.Dense(self.embedding_size, name="projection", dtype=policy,
                                         kernel_initializer=kernel_initializer)

  def _check_input_shape(self, input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) < 4:
      raise ValueError(f"Encoder expects images [..., H, W, D] with at least one leading "
                       f"batch dim, got shape {list(input_shape)}.")
    got = input_shape[-3:]
    if self.image_shape is None:
      if any(d is None for d in got):
        raise ValueError(f"Encoder without image_shape needs static H, W, D, got "
                         f"{_shape_str(got)}.")
      self.image_shape = check_image_shape(got)
    elif got != self.image_shape:
      raise ValueError(f"Encoder expects images {_shape_str(self.image_shape)}, "
                       f"got {_shape_str(got)}.")

  def build(self, input_shape):
    self._check_input_shape(input_shape)
    sizes = encoder_spatial_sizes(self.image_shape)
    channels = self.image_shape[-1]
    for i in range(NUM_DOWNSAMPLINGS):
      self.convs[i].build((None,) + sizes[i] + (channels,))
      self.res_blocks[i].build((None,) + sizes[i + 1] + (self.num_filters,))
      channels = self.num_filters
    h3, w3 = sizes[-1]
    self.projection.build((None, h3 * w3 * self.num_filters))

  def call(self, inputs):
    x = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
    self._check_input_shape(x.shape)
    batch_shape = ops.shape(x)[:-3]
    h = ops.reshape(x, (-1,) + self.image_shape)  # [N, H, W, D]
    for i in range(NUM_DOWNSAMPLINGS):
      if i > 0:
        h = ops.relu(h)
      h = self.res_blocks[i](self.convs[i](h))  # [N, h_{i+1}, w_{i+1}, F]
    h3, w3 = encoder_spatial_sizes(self.image_shape)[-1]
    h = ops.reshape(ops.relu(h), (-1, h3 * w3 * self.num_filters))  # [N, h3 * w3 * F]
    e = self.projection(h)  # [N, E]
    return ops.reshape(e, tuple(batch_shape) + (self.embedding_size,))  # [..., E]

  def compute_output_shape(self, input_shape):
    self._check_input_shape(input_shape)
    return tuple(input_shape)[:-3] + (self.embedding_size,)

  def get_config(self):
    config = super().get_config()
    config.update({
        "num_filters": self.num_filters,
        "embedding_size": self.embedding_size,
        "image_shape": self.image_shape,
        "kernel_initializer": self.kernel_initializer,
    })
    return config


@keras.saving.register_keras_serializable(package="kanerva_tf")
class Decoder(keras.layers.Layer):
  """Convolutional decoder of Appendix C, mirroring `Encoder`: codes [..., C] -> [..., H, W, O].

  Architecture (F = `num_filters`, O = `output_channels`, default D; (h_i, w_i) are the
  encoder's spatial sizes for `image_shape`, see `encoder_spatial_sizes`):

    z: [N, C]                             (leading dims ... flattened to N)
    dense(h3 * w3 * F), linear, reshape   -> [N, h3, w3, F]
    ResBlock(F)
    relu, deconv4x4/2(F), crop            -> [N, h2, w2, F]
    ResBlock(F)
    relu, deconv4x4/2(F), crop            -> [N, h1, w1, F]
    ResBlock(F)
    relu, deconv4x4/2(O), crop            -> [N, H, W, O]   linear -> reshaped to [..., H, W, O]

  deconv4x4/2 is a 4x4 transposed convolution with stride 2 and 'same' padding, which doubles
  the size; "crop" drops the trailing row / column where the encoder rounded an odd size up
  (for 28x28: 4 -> 8 cropped to 7 -> 14 -> 28; 32x32 needs no cropping). The encoder's 'same'
  padding puts the odd extra pixel at the bottom / right, so that is where it is cropped.

  The output is linear, one value per pixel and channel: Bernoulli logits (Omniglot) or Gaussian
  means (CIFAR), or with `output_channels=2*D` e.g. means and scales; the model decides.

  Parameters: (C + 1) h3 w3 F + 3 * 2 (9 F^2 + F) + 2 (16 F^2 + F) + 16 F O + O;
  48,257 for Omniglot (C=100, F=16, 28x28x1), 192,771 for CIFAR (C=200, F=32, 32x32x3).

  Args:
    num_filters: F, filters of every convolution but the last (16 Omniglot, 32 CIFAR).
    image_shape: (H, W, D) of the images to produce, checked by `check_image_shape`.
    output_channels: O, channels of the output; None means D.
    kernel_initializer: initializer of every kernel (see `KERNEL_INITIALIZER`).
    **kwargs: passed to `keras.layers.Layer`.
  """

  def __init__(self, num_filters, image_shape, output_channels=None,
               kernel_initializer=KERNEL_INITIALIZER, **kwargs):
    super().__init__(**kwargs)
    self.kernel_initializer = kernel_initializer
    self.num_filters = int(num_filters)
    if self.num_filters <= 0:
      raise ValueError(f"Decoder needs a positive num_filters, got {num_filters!r}.")
    self.image_shape = check_image_shape(image_shape)
    self.output_channels = None if output_channels is None else int(output_channels)
    if self.output_channels is not None and self.output_channels <= 0:
      raise ValueError(f"Decoder needs positive output_channels, got {output_channels!r}.")
    self._sizes = encoder_spatial_sizes(self.image_shape)  # [(H, W), ..., (h3, w3)]
    policy = self.dtype_policy
    h3, w3 = self._sizes[-1]
    self.projection = keras.layers.Dense(h3 * w3 * self.num_filters, name="projection",
                                         dtype=policy, kernel_initializer=kernel_initializer)
    self.res_blocks = [
        ResBlock(self.num_filters, kernel_initializer, name=f"res_block_{i}", dtype=policy)
        for i in range(NUM_DOWNSAMPLINGS)
    ]
    filters = [self.num_filters] * (NUM_DOWNSAMPLINGS - 1) + [self.out_channels]
    self.deconvs = [
        keras.layers.Conv2DTranspose(f, _STRIDED_KERNEL, strides=2, padding="same",
                                     name=f"deconv_{i}", dtype=policy,
                                     kernel_initializer=kernel_initializer)
        for i, f in enumerate(filters)
    ]

  @property
  def out_channels(self):
    """O: channels of the output images (`output_channels`, or D if that is None)."""
    return self.image_shape[-1] if self.output_channels is None else self.output_channels

  def build(self, input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) < 2 or input_shape[-1] is None:
      raise ValueError(f"Decoder expects codes [..., C] with a static C, got "
                       f"{list(input_shape)}.")
    self.projection.build((None, input_shape[-1]))
    # Decoder stage i works at the encoder's size index NUM_DOWNSAMPLINGS - i.
    for i in range(NUM_DOWNSAMPLINGS):
      size = self._sizes[NUM_DOWNSAMPLINGS - i]
      self.res_blocks[i].build((None,) + size + (self.num_filters,))
      self.deconvs[i].build((None,) + size + (self.num_filters,))

  def call(self, inputs):
    z = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
    batch_shape = ops.shape(z)[:-1]
    z = ops.reshape(z, (-1, z.shape[-1]))  # [N, C]
    h3, w3 = self._sizes[-1]
    h = ops.reshape(self.projection(z), (-1, h3, w3, self.num_filters))  # [N, h3, w3, F]
    for i in range(NUM_DOWNSAMPLINGS):
      h = self.deconvs[i](ops.relu(self.res_blocks[i](h)))
      th, tw = self._sizes[NUM_DOWNSAMPLINGS - i - 1]
      if (th, tw) != tuple(h.shape[1:3]):  # a no-op slice would still cost a gradient
        # [N, th, tw, F or O]: crop the trailing row / column. A Slice, whose gradient is a
        # Pad, not h[:, :th, :tw] (StridedSlice): its StridedSliceGrad took 3.9 ms of a 153 ms
        # Omniglot step, 4x the Slice's (bench/profile_step.py, 2026-12-03).
        h = ops.slice(h, (0, 0, 0, 0), (-1, th, tw, h.shape[-1]))
    return ops.reshape(h, tuple(batch_shape) + self.image_shape[:2] + (self.out_channels,))

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)[:-1] + self.image_shape[:2] + (self.out_channels,)

  def get_config(self):
    config = super().get_config()
    config.update({
        "num_filters": self.num_filters,
        "image_shape": self.image_shape,
        "output_channels": self.output_channels,
        "kernel_initializer": self.kernel_initializer,
    })
    return config


@keras.saving.register_keras_serializable(package="kanerva_tf")
class MLP(keras.layers.Layer):
  """The "MLP" boxes of Figure 9: a 2-layer perceptron with a ReLU in between.

    y = dense_2(relu(dense_1(x)))    [..., in] -> [..., hidden_size] -> [..., output_size]

  Both dense layers have biases; the output is linear. Works on any leading batch dims.

  Args:
    hidden_size: units of the hidden layer.
    output_size: units of the (linear) output layer.
    kernel_initializer: initializer of both kernels (see `KERNEL_INITIALIZER`).
    **kwargs: passed to `keras.layers.Layer`.
  """

  def __init__(self, hidden_size, output_size, kernel_initializer=KERNEL_INITIALIZER, **kwargs):
    super().__init__(**kwargs)
    self.kernel_initializer = kernel_initializer
    self.hidden_size = int(hidden_size)
    self.output_size = int(output_size)
    if self.hidden_size <= 0 or self.output_size <= 0:
      raise ValueError(f"MLP needs positive hidden_size and output_size, got "
                       f"{hidden_size!r} and {output_size!r}.")
    self.hidden = keras.layers.Dense(self.hidden_size, activation="relu", name="hidden",
                                     dtype=self.dtype_policy,
                                     kernel_initializer=kernel_initializer)
    self.output_layer = keras.layers.Dense(self.output_size, name="output",
                                           dtype=self.dtype_policy,
                                           kernel_initializer=kernel_initializer)

  def build(self, input_shape):
    input_shape = tuple(input_shape)
    if len(input_shape) < 1 or input_shape[-1] is None:
      raise ValueError(f"MLP expects inputs [..., in] with a static last dim, got "
                       f"{list(input_shape)}.")
    self.hidden.build((None, input_shape[-1]))
    self.output_layer.build((None, self.hidden_size))

  def call(self, inputs):
    x = ops.convert_to_tensor(inputs, dtype=self.compute_dtype)
    return self.output_layer(self.hidden(x))  # [..., output_size]

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)[:-1] + (self.output_size,)

  def get_config(self):
    config = super().get_config()
    config.update({"hidden_size": self.hidden_size, "output_size": self.output_size,
                   "kernel_initializer": self.kernel_initializer})
    return config
