"""The one base class of "the input is wrong" errors, so callers catch them without a list.

Every reader and checker of user input (files, keypoints, checkpoints, configuration values
that reach the library) raises a subclass of :class:`InputError` whose message names the file,
key, shape or value and the fix.  The ``halo`` command prints them as one line (exit 2) and
``train.py`` does the same; anything else is a bug and keeps its traceback.  It is a
``ValueError``, so code that caught ``ValueError`` before still does.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A problem with the user's input; the message says which input and what to do."""
