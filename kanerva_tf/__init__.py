"""kanerva_tf: The Kanerva Machine (Wu, Wayne, Graves, Lillicrap; ICLR 2018) in TF2 / Keras 3 / TFP.

Shape glossary, used in every docstring, comment and einsum string of the package:

  B  batch of episodes
  T  episode length (number of observations written to / read from one memory)
  N  number of queries read from a memory (iterative reading, generation)
  K  memory rows (memory size)
  C  code size (columns of the memory, dimension of z)
  S  address / key size (dimension of y and of the key b = f(y))
  H, W, D  image height, width, depth (channels)
  F  convolution filters

A leading `...` means any number of batch dimensions.
"""

from kanerva_tf.config import ModelConfig
from kanerva_tf.memory import KanervaMemory
from kanerva_tf.model import VAE
from kanerva_tf.model import KanervaMachine

__all__ = ["KanervaMemory", "KanervaMachine", "ModelConfig", "VAE"]
