"""A crawl of a local test site, cleaned up by guards: ``python -m examples.demo``.

Not part of the library and not installed with it. ``cli`` is the command,
``site`` the test site's child process, ``crawl`` the crawler, ``report``
the figures and the final table.
"""
