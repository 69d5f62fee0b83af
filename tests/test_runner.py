import asyncio
import sys

import pytest

import fastcleanup as fc


def test_run_uses_uvloop_when_installed() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def which() -> type:
        return type(asyncio.get_running_loop())

    assert fc.run(which()) is uvloop.Loop
    assert fc.run(which(), use_uvloop=False) is not uvloop.Loop
    # the process-wide policy is left alone
    assert not isinstance(asyncio.get_event_loop_policy(), uvloop.EventLoopPolicy)


def test_run_uses_plain_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop not importable: the coroutine runs on asyncio's own loop, its result returned."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now raises ImportError

    async def main() -> tuple[type, int]:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()), 42

    loop_type, result = fc.run(main())
    assert result == 42
    probe = asyncio.new_event_loop()  # what asyncio itself makes here
    probe.close()
    assert loop_type is type(probe)
    assert loop_type.__module__.startswith("asyncio.")
