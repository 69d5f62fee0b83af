import fastcleanup as fc


def test_public_names_are_pinned() -> None:
    assert sorted(fc.__all__) == [
        "AClose", "Call", "Cleaner", "CleanupTask", "RemoveFile", "RemoveTree", "ScratchDir",
        "StagingFile", "Stats", "TempFile", "drain", "init_worker", "metrics", "on_collect", "run",
        "shutdown", "stats", "submit", "sweep", "worker_inited",
    ]  # fmt: skip
    for name in fc.__all__:
        assert getattr(fc, name) is not None


def test_metrics_module_names_are_pinned() -> None:
    assert sorted(fc.metrics.__all__) == [
        "MetricsServer", "aiohttp_handler", "asgi_app", "register", "serve",
    ]  # fmt: skip
