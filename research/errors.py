"""The one exception type for mistakes a user can fix (config, paths, shapes, data)."""


class UserError(Exception):
  """A problem in what the user asked for. The message names the problem and the fix.

  The experiment scripts print it without a traceback and exit with status 2.
  """
