"""Build the optional C module; all metadata lives in pyproject.toml.

``fastcleanup._cbulk`` holds the bulk unlink, the file lane's jobs and
pool (``_cbulk.c``), the C builds of ``RemoveFile`` and ``Call``
(``_ctask.c``), of ``submit`` (``_cintake.c``), and the tree walker
of ``fastcleanup._tree`` (``_ctree.c``).

``optional=True``: where the extension cannot be built (no C compiler, no
Python headers, no ``unlinkat``) the install still succeeds and fastcleanup
runs its pure-Python path (``fastcleanup._unlink.COMPILED`` is False).
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "fastcleanup._cbulk",
            [
                "fastcleanup/_cbulk.c",
                "fastcleanup/_ctask.c",
                "fastcleanup/_cintake.c",
                "fastcleanup/_ctree.c",
            ],
            optional=True,
            # Windows has neither unlinkat nor the GCC atomics.
        )
    ]
    if os.name == "posix"
    else [],
)
