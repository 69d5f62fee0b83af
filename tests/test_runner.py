import asyncio

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
