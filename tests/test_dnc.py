"""Tests of kanerva_tf.dnc: the DNC's addressing against hand-computed numbers (content
weights, allocation, usage, link matrix and precedence, read modes, write), and its layers
(DNCMemory, DNC: the unrolled recurrence, reads that store nothing).

The DNC baseline model built on them, kanerva_tf.dnc_model (DNCMachine, DNCConfig), is tested
in tests/test_dnc_model.py."""

import numpy as np
import pytest
import tensorflow as tf

from kanerva_tf import dnc

EPS = 1e-6  # dnc._EPSILON: the allocation's and the cosine's stabiliser


def _t(x):
  return tf.constant(np.asarray(x, np.float32))


def _state(**values):
  """A DNCState of batch 1 from unbatched numpy values (missing fields: zeros of N=3, R=1)."""
  n, w, r = 3, 2, 1
  defaults = dict(memory=np.zeros((n, w)), usage=np.zeros(n), link=np.zeros((n, n)),
                  precedence=np.zeros(n), read_weights=np.zeros((r, n)),
                  write_weights=np.zeros(n))
  defaults.update(values)
  return dnc.DNCState(**{k: _t(v)[tf.newaxis] for k, v in defaults.items()})


def _interface(**values):
  """A parsed interface of batch 1 (missing: no write, no freeing, content reads)."""
  r = len(values.get("read_keys", [[1., 0.]]))
  w = len(values["read_keys"][0]) if "read_keys" in values else len(values.get("write_key", [1, 0]))
  defaults = dict(read_keys=[[1.] + [0.] * (w - 1)] * r, read_strengths=[1.] * r,
                  write_key=[1.] + [0.] * (w - 1),
                  write_strength=1., erase=[0.] * w, write_vector=[0.] * w,
                  free_gates=[0.] * r, allocation_gate=1., write_gate=0.,
                  read_modes=[[0., 1., 0.]] * r)
  defaults.update(values)
  return {k: _t(v)[tf.newaxis] for k, v in defaults.items()}


# ----------------------------------------------------------------------------- addressing
def test_content_weights_cosine_with_strength():
  memory = _t([[[1., 0.], [0., 1.], [1., 1.], [0., 0.]]])           # [1, N=4, W=2]
  keys = _t([[[2., 0.], [0., -1.]]])                                 # [1, R=2, W]
  got = dnc.content_weights(memory, keys, _t([[2., 1.]])).numpy()[0]
  # cosines: key 0 -> (1, 0, 1/sqrt2, 0); key 1 -> (0, -1, -1/sqrt2, 0) (zero row: 0).
  logits0 = 2. * np.array([1., 0., 1. / np.sqrt(2.), 0.])
  logits1 = 1. * np.array([0., -1., -1. / np.sqrt(2.), 0.])
  want = np.stack([np.exp(logits0) / np.exp(logits0).sum(),
                   np.exp(logits1) / np.exp(logits1).sum()])
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Keys with extra dimensions (T queries): [1, T=2, R=2, W] -> [1, 2, 2, N].
  batched = dnc.content_weights(memory, tf.stack([keys, keys[:, ::-1]], 1),
                                _t([[[2., 1.], [1., 2.]]])).numpy()[0]
  np.testing.assert_allclose(batched[0], want, atol=1e-5)
  np.testing.assert_allclose(batched[1], want[::-1], atol=1e-5)


def test_content_weights_of_the_empty_memory_are_uniform_with_finite_gradients():
  memory = tf.zeros([1, 3, 2])
  with tf.GradientTape() as tape:
    tape.watch(memory)
    weights = dnc.content_weights(memory, _t([[[1., 2.]]]), _t([[5.]]))
    first = weights[0, 0, 0]
  np.testing.assert_allclose(weights.numpy(), np.full((1, 1, 3), 1. / 3.), atol=1e-6)
  assert np.all(np.isfinite(tape.gradient(first, memory).numpy()))


@pytest.mark.parametrize("usage, want", [
    # Sorted by usage, ties by slot: 1 (0.2), 3 (0.2), 0 (0.5), 2 (0.5).
    ([0.5, 0.2, 0.5, 0.2], [0.5 * 0.2 * 0.2, 0.8, 0.5 * 0.2 * 0.2 * 0.5, 0.8 * 0.2]),
    # 1 (0.3), 2 (0.6), 0 (0.9).
    ([0.9, 0.3, 0.6], [0.1 * 0.3 * 0.6, 0.7, 0.4 * 0.3]),
    # All free: the first slot (the others get eps-sized weights).
    ([0., 0., 0.], [1., 0., 0.]),
    # Full memory: nothing to allocate.
    ([1., 1.], [0., 0.]),
])
def test_allocation_weights_hand_computed_including_ties(usage, want):
  got = dnc.allocation_weights(_t([usage])).numpy()[0]
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_allocation_weights_batched_and_differentiable():
  usage = _t([[0.5, 0.2, 0.5, 0.2], [0.9, 0.3, 0.6, 0.]])
  with tf.GradientTape() as tape:
    tape.watch(usage)
    a = dnc.allocation_weights(usage)
    last = a[0, 3]
  # Row 1: order 3 (0), 1 (0.3), 2 (0.6), 0 (0.9).
  np.testing.assert_allclose(a.numpy()[1], [0., 0., 0., 1.], atol=1e-5)
  np.testing.assert_allclose(a.numpy()[0], [0.02, 0.8, 0.01, 0.16], atol=1e-5)
  grad = tape.gradient(last, usage).numpy()
  # a[3] = (1 - u[3]) u[1] (the tie broken in favour of slot 1).
  np.testing.assert_allclose(grad[0], [0., 0.8, 0., -0.2], atol=1e-4)
  assert np.all(grad[1] == 0.)


def test_usage_update_hand_computed():
  usage = dnc.update_usage(
      usage=_t([[0.5, 0., 1., 0.2]]), write_weights=_t([[0.5, 1., 0., 0.]]),
      free_gates=_t([[1., 0.5]]), read_weights=_t([[[1., 0., 0., 0.], [0., 0., 1., 0.]]]))
  # after the write: u + w - u w = (0.75, 1, 1, 0.2); retention psi = (0, 1, 0.5, 1).
  np.testing.assert_allclose(usage.numpy()[0], [0., 1., 0.5, 0.2], atol=1e-6)


def test_link_and_precedence_of_a_written_sequence():
  link, precedence = tf.zeros([1, 3, 3]), tf.zeros([1, 3])
  for slot in (0, 1, 2):
    w = tf.one_hot([slot], 3)
    link = dnc.update_link(link, precedence, w)
    precedence = dnc.update_precedence(precedence, w)
  # L[i, j] = 1: slot i was written right after slot j.
  np.testing.assert_allclose(link.numpy()[0], [[0., 0., 0.], [1., 0., 0.], [0., 1., 0.]])
  np.testing.assert_allclose(precedence.numpy()[0], [0., 0., 1.])


def test_link_and_precedence_soft_weights_against_the_formula():
  rng = np.random.default_rng(0)
  prev_link = rng.uniform(size=(3, 3)) * (1. - np.eye(3))
  prev_p = np.array([0.5, 0.5, 0.])
  w = np.array([0.1, 0.2, 0.3])
  got = dnc.update_link(_t([prev_link]), _t([prev_p]), _t([w])).numpy()[0]
  want = np.zeros((3, 3))
  for i in range(3):
    for j in range(3):
      if i != j:
        want[i, j] = (1. - w[i] - w[j]) * prev_link[i, j] + w[i] * prev_p[j]
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(dnc.update_precedence(_t([prev_p]), _t([w])).numpy()[0],
                             0.4 * prev_p + w, atol=1e-6)  # = (0.3, 0.4, 0.3)


def test_read_modes_forward_backward_content():
  link = np.array([[0., 0., 0.], [1., 0., 0.], [0., 1., 0.]])  # written 0, then 1, then 2
  memory = np.array([[1., 0.], [0., 1.], [1., 1.]])
  read_weights = np.eye(3)[[0, 1, 1]]                          # heads at slots 0, 1, 1
  forward, backward = dnc.directional_weights(_t([link]), _t([read_weights]))
  np.testing.assert_allclose(forward.numpy()[0], np.eye(3)[[1, 2, 2]])
  np.testing.assert_allclose(backward.numpy()[0], [[0., 0., 0.], [1., 0., 0.], [1., 0., 0.]])
  memory_layer = dnc.DNCMemory(3, 2, 3)
  state = _state(memory=memory, link=link, read_weights=read_weights)
  interface = _interface(read_keys=[[1., 0.]] * 3, read_strengths=[3.] * 3,
                         read_modes=[[0., 0., 1.], [1., 0., 0.], [0.2, 0.5, 0.3]])
  vectors, weights = memory_layer.read(state, interface)
  cos = np.array([1., 0., 1. / np.sqrt(2.)])
  content = np.exp(3. * cos) / np.exp(3. * cos).sum()
  want = np.stack([[0., 1., 0.],                                   # head 0: forward of slot 0
                   [1., 0., 0.],                                   # head 1: backward of slot 1
                   0.2 * np.eye(3)[0] + 0.5 * content + 0.3 * np.eye(3)[2]])
  np.testing.assert_allclose(weights.numpy()[0], want, atol=1e-5)
  np.testing.assert_allclose(vectors.numpy()[0], want @ memory, atol=1e-5)


def test_write_erase_and_add_hand_computed():
  memory_layer = dnc.DNCMemory(2, 2, 1)
  state = _state(memory=[[1., 2.], [3., 4.]], usage=[0., 1.], link=np.zeros((2, 2)),
                 precedence=[0., 1.], read_weights=[[0., 0.]], write_weights=[0., 0.])
  # Allocation only (g^a = 1): slot 0 is free; write gate 0.5 -> w = (0.5, 0).
  new = memory_layer.write(state, _interface(allocation_gate=1., write_gate=0.5,
                                             erase=[1., 0.5], write_vector=[10., 20.],
                                             free_gates=[0.]))
  np.testing.assert_allclose(new.write_weights.numpy()[0], [0.5, 0.], atol=1e-5)
  # M[0] = (1, 2) o (1 - 0.5 (1, 0.5)) + 0.5 (10, 20) = (5.5, 11.5); M[1] unchanged.
  np.testing.assert_allclose(new.memory.numpy()[0], [[5.5, 11.5], [3., 4.]], atol=1e-4)
  np.testing.assert_allclose(new.usage.numpy()[0], [0., 1.], atol=1e-6)
  np.testing.assert_allclose(new.link.numpy()[0], [[0., 0.5], [0., 0.]], atol=1e-5)
  np.testing.assert_allclose(new.precedence.numpy()[0], [0.5, 0.5], atol=1e-5)
  # Content only (g^a = 0): the write key (0, 1) is closest to slot 1 (cos 0.89 vs 0.8).
  new = memory_layer.write(state, _interface(allocation_gate=0., write_gate=1.,
                                             write_key=[0., 1.], write_strength=50.,
                                             erase=[0., 0.], write_vector=[1., 1.]))
  cos = np.array([2. / np.sqrt(5.), 4. / 5.])
  want = np.exp(50. * cos) / np.exp(50. * cos).sum()
  np.testing.assert_allclose(new.write_weights.numpy()[0], want, atol=1e-5)
  np.testing.assert_allclose(new.memory.numpy()[0],
                             [[1., 2.], [3., 4.]] + want[:, None], atol=1e-4)


def test_steps_store_a_sequence_and_follow_it_forward():
  """Three allocated writes to distinct free slots, then a content read of the first item
  and forward reads along the link, whatever slots the allocation chose.

  (After the first write the other slots are not exactly unused: the allocation gives them
  eps-sized weights, eps^2 for the third slot, ... so the least used slot next is the last
  one, not the second: ties are broken by index only when exact.)"""
  items = np.array([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.]])
  memory_layer = dnc.DNCMemory(4, 3, 1)
  state = memory_layer.initial_state(1)
  for item in items:
    _, state = memory_layer.step(state, _interface(
        write_key=[0., 0., 0.], allocation_gate=1., write_gate=1., erase=[1.] * 3,
        write_vector=item, read_keys=[[0., 0., 0.]], read_modes=[[0., 1., 0.]]))
  memory = state.memory.numpy()[0]
  slots = [int(np.argmax(memory @ item)) for item in items]
  assert len(set(slots)) == 3, slots
  np.testing.assert_allclose(memory[slots], items, atol=1e-4)
  np.testing.assert_allclose(np.delete(memory, slots, axis=0), 0., atol=1e-4)
  # The third write is counted in the usage at the next step.
  np.testing.assert_allclose(state.usage.numpy()[0][slots], [1., 1., 0.], atol=1e-4)
  read = dict(write_gate=0., read_strengths=[100.])              # counted at the next step
  r, state = memory_layer.step(state, _interface(read_keys=[items[0]], **read))
  np.testing.assert_allclose(r.numpy()[0, 0], items[0], atol=1e-3)
  for want in items[1:]:
    r, state = memory_layer.step(state, _interface(read_modes=[[0., 0., 1.]],
                                                   read_keys=[[0., 0., 0.]], **read))
    np.testing.assert_allclose(r.numpy()[0, 0], want, atol=1e-3)


def test_parse_interface_shapes_ranges_and_size_check():
  memory_layer = dnc.DNCMemory(5, 3, 2)
  assert memory_layer.interface_size == 2 * 3 + 3 * 3 + 5 * 2 + 3
  parsed = memory_layer.parse_interface(tf.random.stateless_normal([4, 7, 28], (0, 1)) * 5.)
  shapes = {k: tuple(v.shape) for k, v in parsed.items()}
  assert shapes == {"read_keys": (4, 7, 2, 3), "read_strengths": (4, 7, 2), "write_key": (4, 7, 3),
                    "write_strength": (4, 7), "erase": (4, 7, 3), "write_vector": (4, 7, 3),
                    "free_gates": (4, 7, 2), "allocation_gate": (4, 7), "write_gate": (4, 7),
                    "read_modes": (4, 7, 2, 3)}
  assert np.all(parsed["read_strengths"].numpy() >= 1.)
  for k in ("erase", "free_gates", "allocation_gate", "write_gate"):
    assert np.all((parsed[k].numpy() > 0.) & (parsed[k].numpy() < 1.)), k
  np.testing.assert_allclose(parsed["read_modes"].numpy().sum(-1), 1., atol=1e-5)
  with pytest.raises(ValueError, match="E = 28"):
    memory_layer.parse_interface(tf.zeros([1, 27]))
  with pytest.raises(ValueError, match="num_reads must be a positive int"):
    dnc.DNCMemory(5, 3, 0)


# ----------------------------------------------------------------------------- the DNC layer
def _dnc_layer():
  layer = dnc.DNC(memory_slots=5, word_size=3, num_reads=2, hidden_size=8, name="dnc")
  inputs = tf.random.stateless_normal([2, 4, 6], (1, 2))          # [B, T, I]
  return layer, inputs


def test_unroll_is_the_step_recurrence_and_runs_in_a_tf_function():
  layer, inputs = _dnc_layer()
  reads, final = layer.unroll(inputs)
  assert reads.shape == (2, 4, 2, 3)
  assert [tuple(v.shape) for v in final] == [(2, 5, 3), (2, 5), (2, 5, 5), (2, 5), (2, 2, 5),
                                            (2, 5)]
  state = layer.initial_state(2)
  for t in range(4):
    r, state = layer.step(inputs[:, t], state)
    np.testing.assert_allclose(r.numpy(), reads[:, t].numpy(), atol=1e-5)
  for a, b in zip(state, final):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
  graph_reads, graph_final = tf.function(layer.unroll)(inputs)
  np.testing.assert_allclose(graph_reads.numpy(), reads.numpy(), atol=1e-5)
  np.testing.assert_allclose(graph_final.memory.numpy(), final.memory.numpy(), atol=1e-5)
  assert len(layer.trainable_variables) == 4  # the controller MLP's two kernels and biases


def test_read_stores_nothing_and_reads_each_input_alone():
  layer, inputs = _dnc_layer()
  state = layer.write(inputs)
  before = [v.numpy() for v in state]
  queries = tf.random.stateless_normal([2, 3, 6], (3, 4))
  reads = layer.read(queries, state)                               # [B, 3, R, W]
  for a, b in zip(before, state):
    np.testing.assert_array_equal(a, b.numpy())
  for t in range(3):                                               # alone, or in any order
    np.testing.assert_allclose(layer.read(queries[:, t:t + 1], state)[:, 0].numpy(),
                               reads[:, t].numpy(), atol=1e-5)
  np.testing.assert_allclose(layer.read(queries[:, ::-1], state).numpy(),
                             reads[:, ::-1].numpy(), atol=1e-5)
  # A read is not a step: a step would write first and move the read weights.
  step_reads, _ = layer.step(queries[:, 0], state)
  assert not np.allclose(step_reads.numpy(), reads[:, 0].numpy(), atol=1e-3)
