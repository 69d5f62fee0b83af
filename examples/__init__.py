"""Programs that embed fastcleanup; run them from the project's root (see each module)."""
