r"""Serve finished teacher runs behind an OpenAI-compatible API (research/teachers/server.py).

  python -m experiments.serve_teacher --teacher=/tmp/kr/teacher --port=8000
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \
      -d '{"model": "teacher", "prompt": "12+7=", "max_tokens": 8, "temperature": 0, "logprobs": 5}'

--teacher may be repeated (or comma-separated) to serve several runs; each is served under its
workdir's basename, or the matching --model_name. A language-model run answers /v1/completions and
/v1/chat/completions, an image classifier /v1/classifications. Stop with Ctrl-C.
"""
import os
import sys
import time

from research.errors import UserError
from research.teachers import server


def model_names(teachers: list, names: list) -> dict:
  """{name: workdir}: `names` in order, else each workdir's basename; names must be distinct."""
  if names and len(names) != len(teachers):
    raise UserError(f"--model_name has {len(names)} names for {len(teachers)} --teacher workdirs; give one per "
                    "teacher, in the same order, or none (each workdir's basename).")
  names = names or [os.path.basename(os.path.normpath(t)) for t in teachers]
  if len(set(names)) != len(names):
    raise UserError(f"Model names {names} are not distinct; set --model_name=NAME1,NAME2,... .")
  return dict(zip(names, teachers))


if __name__ == "__main__":
  from absl import app, flags, logging  # pylint: disable=import-outside-toplevel

  flags.DEFINE_list("teacher", None, "Workdir(s) of finished runs to serve.")
  flags.DEFINE_list("model_name", [], "Served name of each --teacher (default: the workdir's basename).")
  flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (0.0.0.0: every interface).")
  flags.DEFINE_integer("port", 8000, "Port to listen on (0: a free one).")
  flags.DEFINE_integer("max_request_bytes", 1_000_000, "Larger request bodies get 413 unread.")
  flags.DEFINE_integer("max_batch", 64, "Most rows per device call (larger requests run in chunks).")
  flags.DEFINE_integer("max_context", 1024, "Most prompt + max_tokens tokens per row.")
  flags.mark_flags_as_required(["teacher"])
  FLAGS = flags.FLAGS

  def main(argv):
    del argv
    try:
      running = server.serve(model_names(FLAGS.teacher, FLAGS.model_name), FLAGS.host, FLAGS.port,
                             max_request_bytes=FLAGS.max_request_bytes, max_batch=FLAGS.max_batch,
                             max_context=FLAGS.max_context)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    logging.info("Serving %s at %s", ", ".join(running.app.models), running.url)
    print(f"serving {', '.join(running.app.models)} at {running.url}", flush=True)
    try:
      while True:
        time.sleep(3600)
    except KeyboardInterrupt:
      running.shutdown()

  app.run(main)
