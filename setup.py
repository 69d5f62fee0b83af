"""Build the optional C bulk unlink; all metadata lives in pyproject.toml.

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
            ["fastcleanup/_cbulk.c"],
            optional=True,
            # Windows has neither unlinkat nor the GCC atomics.
        )
    ]
    if os.name == "posix"
    else [],
)
