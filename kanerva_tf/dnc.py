"""A Differentiable Neural Computer memory (Graves et al., 2016) as batched Keras layers.

The DNC baseline of section 4.4 / Appendix D (`kanerva_tf.dnc_model.DNCMachine`) is built on
the two layers here: `DNCMemory`, the external memory and its addressing (no weights), and
`DNC`, a controller (a 2-layer MLP, not an LSTM: Appendix D) that emits the interface vector
driving `DNCMemory`, one step per input.

Shape glossary of this module. B and T are those of the package glossary
(`kanerva_tf/__init__.py`); N and W mean something else here than there (there: queries and
image width):

  B  batch
  T  sequence length (the episode)
  N  memory slots (rows of the memory matrix M)
  W  word size (columns of M)
  R  read heads (one write head)
  I  controller input size
  E  interface vector size, R W + 3 W + 5 R + 3

#### Mathematical Details

One step t (Graves et al., 2016, Methods; `DNCMemory.step`), from the state
(M_{t-1}, u_{t-1}, L_{t-1}, p_{t-1}, w^r_{t-1}, w^w_{t-1}) and the interface of the controller:

```none
C(M, k, beta)[n] = softmax_n(beta D(k, M[n])),  D = cosine similarity          content weights
psi_t   = prod_i (1 - f^i_t w^{r,i}_{t-1})                                       retention
u_t     = (u_{t-1} + w^w_{t-1} - u_{t-1} o w^w_{t-1}) o psi_t                    usage
phi_t   = the slots sorted by ascending usage (ties: lower slot first)
a_t[phi_t[j]] = (1 - u_t[phi_t[j]]) prod_{i<j} u_t[phi_t[i]]                     allocation
w^w_t   = g^w_t (g^a_t a_t + (1 - g^a_t) C(M_{t-1}, k^w_t, beta^w_t))            write weights
M_t     = M_{t-1} o (1 - w^w_t e_t^T) + w^w_t v_t^T                              erase, add
L_t[i, j] = (1 - w^w_t[i] - w^w_t[j]) L_{t-1}[i, j] + w^w_t[i] p_{t-1}[j],  L_t[i, i] = 0
p_t     = (1 - sum_n w^w_t[n]) p_{t-1} + w^w_t                                   precedence
f^i_t   = L_t w^{r,i}_{t-1},   b^i_t = L_t^T w^{r,i}_{t-1}                       forward, backward
w^{r,i}_t = pi^i_t[0] b^i_t + pi^i_t[1] C(M_t, k^{r,i}_t, beta^{r,i}_t) + pi^i_t[2] f^i_t
r^i_t   = M_t^T w^{r,i}_t                                                        read vectors
```

The interface (`DNCMemory.parse_interface`) maps the controller's E outputs to the read keys
k^r (R x W), read strengths beta^r = oneplus (R), write key k^w (W), write strength beta^w =
oneplus, erase vector e = sigmoid (W), write vector v (W), free gates f = sigmoid (R),
allocation gate g^a = sigmoid, write gate g^w = sigmoid, and read modes pi = softmax over
(backward, content, forward) per read head (R x 3); oneplus(x) = 1 + softplus(x).

Choices, where the paper leaves room or DeepMind's code differs from it:
  * Usage is differentiated through (the paper); DeepMind's `Freeness` stops its gradient with
    respect to the write weights. The sort itself has no gradient: its discontinuities are
    ignored, as in the paper.
  * Before the exclusive cumulative product of the allocation, usage is mapped to
    eps + (1 - eps) u with eps = 1e-6 (as DeepMind's code): `tf.math.cumprod`'s gradient
    divides by its inputs, so an exactly unused slot would give an infinite gradient.
  * Cosine similarity is k.m / (sqrt(|k|^2 + eps) sqrt(|m|^2 + eps)): the memory starts at
    zero, where |m| has no gradient.
  * The state starts at zero (memory, usage, link, precedence and weights).

#### References

Graves, Wayne, Reynolds, et al. Hybrid computing using a neural network with dynamic
  external memory. Nature 538, 2016 (Methods).
DeepMind's public implementation, github.com/deepmind/dnc (`addressing.py`, `access.py`).
"""

import collections

import keras
import tensorflow as tf

from kanerva_tf import networks

__all__ = ["DNCState", "DNCMemory", "DNC", "content_weights", "allocation_weights",
           "update_usage", "update_link", "update_precedence", "directional_weights",
           "interface_size", "NUM_READ_MODES"]

_EPSILON = 1e-6
NUM_READ_MODES = 3  # backward, content, forward (the order of pi in the paper)

DNCState = collections.namedtuple(
    "DNCState", ("memory", "usage", "link", "precedence", "read_weights", "write_weights"))
DNCState.__doc__ = """The recurrent state of a DNC memory (all float32, zeros at the start).

  memory         M    [B, N, W]
  usage          u    [B, N]     in [0, 1]
  link           L    [B, N, N]  L[i, j]: how much slot i was written right after slot j
  precedence     p    [B, N]     how much each slot was the last one written
  read_weights   w^r  [B, R, N]  of the last step
  write_weights  w^w  [B, N]     of the last step
"""


# ----------------------------------------------------------------------------- addressing
def _flatten_middle(x):
  """[B, ..., D] -> ([B, X, D], the shape of ...)."""
  shape = tf.shape(x)
  return tf.reshape(x, tf.stack([shape[0], -1, shape[-1]])), shape[1:-1]


def content_weights(memory, keys, strengths):
  """C(M, k, beta): softmax over slots of beta times the cosine similarity of k and M[n].

  Args:
    memory: M `[B, N, W]`.
    keys: k `[B, ..., W]` (e.g. `[B, R, W]`, or `[B, T, R, W]` for T queries).
    strengths: beta `[B, ...]`, > 0 (the sharpness of the softmax).

  Returns:
    `[B, ..., N]`, each row summing to 1.
  """
  flat_keys, middle = _flatten_middle(keys)                               # [B, X, W]
  dot = tf.matmul(flat_keys, memory, transpose_b=True)                    # [B, X, N]
  key_norms = tf.sqrt(tf.reduce_sum(tf.square(flat_keys), -1, keepdims=True) + _EPSILON)
  memory_norms = tf.sqrt(tf.reduce_sum(tf.square(memory), -1) + _EPSILON)  # [B, N]
  similarity = dot / (key_norms * memory_norms[:, tf.newaxis, :])         # [B, X, N]
  similarity = tf.reshape(similarity, tf.concat([tf.shape(keys)[:1], middle,
                                                 tf.shape(memory)[1:2]], 0))
  return tf.nn.softmax(strengths[..., tf.newaxis] * similarity, axis=-1)


def allocation_weights(usage):
  """a_t: the least used slot gets most of the weight (the sorted allocation weighting).

  ```none
  phi = argsort(u) (ascending, stable: of equal usages the lower slot comes first)
  a[phi[j]] = (1 - u[phi[j]]) prod_{i<j} u[phi[i]]
  ```
  with u replaced by eps + (1 - eps) u (module docstring).

  Args:
    usage: u `[B, N]` in [0, 1].

  Returns:
    `[B, N]`, summing to at most 1.
  """
  usage = _EPSILON + (1. - _EPSILON) * usage
  order = tf.argsort(usage, axis=-1, stable=True)                        # phi [B, N]
  sorted_usage = tf.gather(usage, order, batch_dims=1)
  sorted_allocation = (1. - sorted_usage) * tf.math.cumprod(sorted_usage, axis=-1,
                                                            exclusive=True)
  inverse = tf.argsort(order, axis=-1, stable=True)                      # phi^-1 [B, N]
  return tf.gather(sorted_allocation, inverse, batch_dims=1)


def update_usage(usage, write_weights, free_gates, read_weights):
  """u_t = (u_{t-1} + w^w_{t-1} - u_{t-1} o w^w_{t-1}) o prod_i (1 - f^i_t w^{r,i}_{t-1}).

  Args:
    usage: u_{t-1} `[B, N]`.
    write_weights: w^w_{t-1} `[B, N]`.
    free_gates: f_t `[B, R]` in [0, 1].
    read_weights: w^r_{t-1} `[B, R, N]`.

  Returns:
    u_t `[B, N]`.
  """
  retention = tf.reduce_prod(1. - free_gates[..., tf.newaxis] * read_weights, axis=-2)  # psi
  return (usage + write_weights - usage * write_weights) * retention


def update_link(link, precedence, write_weights):
  """L_t[i, j] = (1 - w[i] - w[j]) L_{t-1}[i, j] + w[i] p_{t-1}[j], with a zero diagonal.

  Args:
    link: L_{t-1} `[B, N, N]`.
    precedence: p_{t-1} `[B, N]`.
    write_weights: w^w_t `[B, N]`.

  Returns:
    L_t `[B, N, N]`.
  """
  w_i = write_weights[:, :, tf.newaxis]
  w_j = write_weights[:, tf.newaxis, :]
  new = (1. - w_i - w_j) * link + w_i * precedence[:, tf.newaxis, :]
  return tf.linalg.set_diag(new, tf.zeros_like(write_weights))


def update_precedence(precedence, write_weights):
  """p_t = (1 - sum_n w^w_t[n]) p_{t-1} + w^w_t: `[B, N]`."""
  return (1. - tf.reduce_sum(write_weights, -1, keepdims=True)) * precedence + write_weights


def directional_weights(link, read_weights):
  """Forward f = L w and backward b = L^T w weights of the read heads.

  Args:
    link: L `[B, N, N]`.
    read_weights: w^r `[B, ..., N]`.

  Returns:
    (forward, backward), each `[B, ..., N]`: forward moves each head to the slots written
    right after the ones it read, backward to those written right before.
  """
  flat, _ = _flatten_middle(read_weights)                                 # [B, X, N]
  forward = tf.matmul(flat, link, transpose_b=True)                       # (L w)^T
  backward = tf.matmul(flat, link)                                        # (L^T w)^T
  shape = tf.shape(read_weights)
  return tf.reshape(forward, shape), tf.reshape(backward, shape)


def interface_size(word_size, num_reads):
  """E = R W (read keys) + R (read strengths) + W + 1 (write key, strength) + 2 W (erase,
  write vector) + R (free gates) + 2 (allocation, write gates) + 3 R (read modes)."""
  return num_reads * word_size + 3 * word_size + (2 + NUM_READ_MODES) * num_reads + 3


def _oneplus(x):
  return 1. + tf.nn.softplus(x)


# ----------------------------------------------------------------------------- layers
@keras.saving.register_keras_serializable(package="kanerva_tf")
class DNCMemory(keras.layers.Layer):
  """The DNC's external memory and its addressing (module docstring); it has no weights.

  Its methods are pure functions of a `DNCState` and an interface dict (from
  `parse_interface`, or written by hand in tests): `write` (usage, allocation, write
  weighting, erase and add, link and precedence), `read` (read weights from the three read
  modes, read vectors) and `step` (write, then read: one DNC time step).

  Args:
    memory_slots: N.
    word_size: W.
    num_reads: R.
  """

  def __init__(self, memory_slots, word_size, num_reads, **kwargs):
    super().__init__(**kwargs)
    for name, value in (("memory_slots", memory_slots), ("word_size", word_size),
                        ("num_reads", num_reads)):
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"DNCMemory.{name} must be a positive int; got {value!r}.")
    self.memory_slots = memory_slots
    self.word_size = word_size
    self.num_reads = num_reads

  @property
  def interface_size(self):
    """E, the size of the interface vector `parse_interface` takes."""
    return interface_size(self.word_size, self.num_reads)

  def initial_state(self, batch_size):
    """The empty memory: a `DNCState` of zeros for `batch_size` (an int or int32 scalar)."""
    n, w, r = self.memory_slots, self.word_size, self.num_reads
    zeros = lambda *shape: tf.zeros(tf.stack([batch_size, *shape]), tf.float32)
    return DNCState(memory=zeros(n, w), usage=zeros(n), link=zeros(n, n),
                    precedence=zeros(n), read_weights=zeros(r, n), write_weights=zeros(n))

  def parse_interface(self, interface):
    """Splits and squashes the interface vector `[..., E]` into a dict of tensors:

    read_keys `[..., R, W]`, read_strengths `[..., R]` (>= 1), write_key `[..., W]`,
    write_strength `[...]` (>= 1), erase `[..., W]`, write_vector `[..., W]`, free_gates
    `[..., R]`, allocation_gate `[...]`, write_gate `[...]` (gates and erase in (0, 1)) and
    read_modes `[..., R, 3]` (softmax over backward, content, forward).
    """
    w, r = self.word_size, self.num_reads
    if interface.shape[-1] != self.interface_size:
      raise ValueError(f"DNCMemory: the interface vector must have E = {self.interface_size} "
                       f"entries (W={w}, R={r}); got shape {interface.shape}.")
    sizes = [r * w, r, w, 1, w, w, r, 1, 1, r * NUM_READ_MODES]
    (read_keys, read_strengths, write_key, write_strength, erase, write_vector, free_gates,
     allocation_gate, write_gate, read_modes) = tf.split(interface, sizes, axis=-1)
    batch = tf.shape(interface)[:-1]
    return {
        "read_keys": tf.reshape(read_keys, tf.concat([batch, [r, w]], 0)),
        "read_strengths": _oneplus(read_strengths),
        "write_key": write_key,
        "write_strength": _oneplus(write_strength[..., 0]),
        "erase": tf.sigmoid(erase),
        "write_vector": write_vector,
        "free_gates": tf.sigmoid(free_gates),
        "allocation_gate": tf.sigmoid(allocation_gate[..., 0]),
        "write_gate": tf.sigmoid(write_gate[..., 0]),
        "read_modes": tf.nn.softmax(
            tf.reshape(read_modes, tf.concat([batch, [r, NUM_READ_MODES]], 0)), axis=-1),
    }

  def write_weights(self, state, interface):
    """(u_t `[B, N]`, w^w_t `[B, N]`): usage after retention, then the write weighting."""
    usage = update_usage(state.usage, state.write_weights, interface["free_gates"],
                         state.read_weights)
    content = content_weights(state.memory, interface["write_key"][:, tf.newaxis],
                              interface["write_strength"][:, tf.newaxis])[:, 0]  # [B, N]
    allocation_gate = interface["allocation_gate"][:, tf.newaxis]
    weights = interface["write_gate"][:, tf.newaxis] * (
        allocation_gate * allocation_weights(usage) + (1. - allocation_gate) * content)
    return usage, weights

  def write(self, state, interface):
    """The write half of a step: a `DNCState` with the new memory, usage, link, precedence
    and write weights (read weights unchanged). `interface` entries have batch shape [B]."""
    usage, w = self.write_weights(state, interface)                      # [B, N]
    memory = (state.memory * (1. - w[:, :, tf.newaxis] * interface["erase"][:, tf.newaxis, :])
              + w[:, :, tf.newaxis] * interface["write_vector"][:, tf.newaxis, :])  # [B, N, W]
    return DNCState(memory=memory, usage=usage,
                    link=update_link(state.link, state.precedence, w),
                    precedence=update_precedence(state.precedence, w),
                    read_weights=state.read_weights, write_weights=w)

  def read_weights(self, state, interface):
    """w^r `[B, ..., R, N]`: the read modes' mixture of backward, content and forward weights.

    The content keys of `interface` may have extra dimensions after B (e.g. T queries,
    `[B, T, R, W]`); the forward and backward weights follow the link from the state's read
    weights, the same for all of them.
    """
    content = content_weights(state.memory, interface["read_keys"],
                              interface["read_strengths"])               # [B, ..., R, N]
    forward, backward = directional_weights(state.link, state.read_weights)  # [B, R, N]
    extra = tf.shape(content)[1:-2]
    expand = lambda v: tf.reshape(v, tf.concat([tf.shape(v)[:1], tf.ones_like(extra),
                                                tf.shape(v)[1:]], 0))
    modes = interface["read_modes"]                                      # [B, ..., R, 3]
    return (modes[..., 0:1] * expand(backward) + modes[..., 1:2] * content
            + modes[..., 2:3] * expand(forward))

  def read(self, state, interface):
    """(read vectors r = M^T w^r `[B, ..., R, W]`, read weights `[B, ..., R, N]`)."""
    weights = self.read_weights(state, interface)
    flat, _ = _flatten_middle(weights)                                    # [B, X, N]
    vectors = tf.matmul(flat, state.memory)                               # [B, X, W]
    shape = tf.concat([tf.shape(weights)[:-1], [self.word_size]], 0)
    return tf.reshape(vectors, shape), weights

  def step(self, state, interface):
    """One DNC time step, write then read: (read vectors `[B, R, W]`, the new `DNCState`)."""
    state = self.write(state, interface)
    vectors, weights = self.read(state, interface)
    return vectors, state._replace(read_weights=weights)

  def get_config(self):
    config = super().get_config()
    config.update(memory_slots=self.memory_slots, word_size=self.word_size,
                  num_reads=self.num_reads)
    return config


@keras.saving.register_keras_serializable(package="kanerva_tf")
class DNC(keras.layers.Layer):
  """A DNC with a feed-forward controller: `networks.MLP` -> interface -> `DNCMemory`.

  The controller is a 2-layer MLP with a ReLU in between (Appendix D: 200 hidden units, not
  an LSTM, so that no recurrent state outside the memory can store anything). Its linear
  output layer is the interface projection W_xi (E units); it sees only the current input,
  not the previous read vectors. There is no controller output bypassing the memory: what
  the DNC returns are the read vectors alone.

  Methods (inputs `[B, T, I]` or, for `step`, `[B, I]`):
    `unroll` (= `call`): the standard recurrence over T, returning every step's read vectors
      `[B, T, R, W]` and the final state.
    `write`: the same recurrence, returning only the final state (the read-outs discarded).
    `read`: for each t independently, a read-only access to the given state (no write, no
      state carried from one t to the next): read vectors `[B, T, R, W]`.

  Args:
    memory_slots: N.
    word_size: W.
    num_reads: R.
    hidden_size: hidden units of the controller (Appendix D: 200).
    kernel_initializer: of the controller's kernels (`networks.KERNEL_INITIALIZER`).
  """

  def __init__(self, memory_slots, word_size, num_reads, hidden_size=200,
               kernel_initializer=networks.KERNEL_INITIALIZER, **kwargs):
    super().__init__(**kwargs)
    self.memory = DNCMemory(memory_slots, word_size, num_reads, name="memory")
    self.hidden_size = int(hidden_size)
    self.kernel_initializer = kernel_initializer
    self.controller = networks.MLP(self.hidden_size, self.memory.interface_size,
                                   kernel_initializer, name="controller")

  def build(self, input_shape):
    input_shape = tuple(input_shape)
    if input_shape[-1] is None:
      raise ValueError(f"DNC expects inputs [..., I] with a static I; got {input_shape}.")
    self.controller.build((None, input_shape[-1]))
    self.built = True

  def _interface(self, inputs):
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    if not self.built:
      self.build(inputs.shape)
    return self.memory.parse_interface(self.controller(inputs))

  def initial_state(self, batch_size):
    return self.memory.initial_state(batch_size)

  def step(self, inputs, state):
    """One time step: inputs `[B, I]` -> (read vectors `[B, R, W]`, new `DNCState`)."""
    return self.memory.step(state, self._interface(inputs))

  def unroll(self, inputs, state=None):
    """The recurrence over inputs `[B, T, I]` from `state` (None: the empty memory).

    Returns:
      (read vectors `[B, T, R, W]`, final `DNCState`).
    """
    inputs = tf.convert_to_tensor(inputs, tf.float32)
    if not self.built:
      self.build(inputs.shape)
    if state is None:
      state = self.initial_state(tf.shape(inputs)[0])
    length = tf.shape(inputs)[1]
    time_major = tf.transpose(inputs, tf.concat([[1, 0], tf.range(2, tf.rank(inputs))], 0))
    reads = tf.TensorArray(tf.float32, size=length)

    def body(t, state, reads):
      vectors, state = self.step(time_major[t], state)
      return t + 1, state, reads.write(t, vectors)

    _, state, reads = tf.while_loop(lambda t, *_: t < length, body,
                                    (tf.constant(0), state, reads))
    return tf.transpose(reads.stack(), [1, 0, 2, 3]), state

  def call(self, inputs, state=None):
    return self.unroll(inputs, state)

  def write(self, inputs, state=None):
    """Writes inputs `[B, T, I]` in order and returns the final `DNCState` (read-outs
    discarded; the read weights stay in the state, as they drive the free gates and the
    forward and backward read modes)."""
    return self.unroll(inputs, state)[1]

  def read(self, inputs, state):
    """Read-only access for each of inputs `[B, T, I]` to `state` (batch [B]).

    Each t is read as if it were the only one: content keys from the controller's output for
    input t, forward / backward weights from the state's link and read weights; nothing is
    written and the state is left as it was, so nothing new is stored.

    Returns:
      read vectors `[B, T, R, W]`.
    """
    return self.memory.read(state, self._interface(inputs))[0]

  def get_config(self):
    config = super().get_config()
    config.update(memory_slots=self.memory.memory_slots, word_size=self.memory.word_size,
                  num_reads=self.memory.num_reads, hidden_size=self.hidden_size,
                  kernel_initializer=self.kernel_initializer)
    return config
