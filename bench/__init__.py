"""fastcleanup against the usual ways to clean up: ``python -m bench`` from a checkout.

Not part of the library and not installed with it. ``cli`` is the command,
``harness`` times one burst, ``competitors`` and ``micro`` say what is
measured; the pytest-benchmark suite beside them (``test_*.py``) drives the
same pieces.
"""
