"""Tests of the package import side effects (`kanerva_tf/__init__.py`)."""

import os
import subprocess
import sys

import pytest

_CHECK = ("import os, kanerva_tf; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'));"
          "print(sorted(kanerva_tf.__all__))")


@pytest.mark.parametrize("preset, expected", [
    (None, "1"),
    pytest.param("0", "0", marks=pytest.mark.slow),  # a fresh TensorFlow import each
    pytest.param("1", "1", marks=pytest.mark.slow),
])
def test_import_turns_on_onednn_unless_set(preset, expected):
  env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
  if preset is not None:
    env["TF_ENABLE_ONEDNN_OPTS"] = preset
  out = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True,
                       check=True, timeout=120)
  lines = out.stdout.strip().splitlines()
  assert lines[0] == expected
  assert lines[1] == str(sorted(["KanervaMemory", "KanervaMachine", "ModelConfig", "VAE",
                                   "SparseDistributedMemory"]))
