"""Quiet logging for experiment scripts: our progress lines, not Orbax's per-save chatter."""
import logging


class _DropLibraryInfo(logging.Filter):
  """Drops INFO (and lower) records logged from inside Orbax and TFDS; warnings and errors pass."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno > logging.INFO or not any(
        part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/"))


def quiet_libraries() -> None:
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    handler.addFilter(_DropLibraryInfo())
  logging.getLogger("absl").addFilter(_DropLibraryInfo())
