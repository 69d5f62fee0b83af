"""The app behind ``fastcleanup demo``: a crawl of a local test site, cleaned up by guards.

Not part of the library's API: nothing outside this subpackage imports it.
``cli`` is the command, ``site`` the test site's child process, ``crawl``
the crawler, ``report`` the figures and the final table.
"""
