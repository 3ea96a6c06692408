"""Test setup: 8 simulated CPU devices, and offline datasets built once per session."""
import os

# Must happen before JAX initialises its backends (i.e. before any test imports jax).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# Many tests train the same tiny models: one persistent XLA compilation cache per session (also
# inherited by the subprocesses the CLI, resume and multi-host tests start) compiles each once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile  # pylint: disable=wrong-import-position
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="distillery_xla_cache_")
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data dir with mnist5k and digits built from the packaged files (no downloads).

  Set DISTILLERY_TEST_DATA_DIR to reuse one across sessions.
  """
  from research.data import sources  # pylint: disable=import-outside-toplevel
  path = os.environ.get("DISTILLERY_TEST_DATA_DIR") or str(tmp_path_factory.mktemp("tfds"))
  for name in ("mnist5k", "digits"):
    sources.prepare(name, path, download=False)
  return path
