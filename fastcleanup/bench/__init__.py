"""The benchmark behind ``fastcleanup bench``: fastcleanup against the usual ways to clean up.

Not part of the library's API: nothing outside this subpackage (and the
demo) imports it. ``cli`` is the command, ``harness`` times one burst,
``competitors`` and ``micro`` say what is measured.
"""
