import os
from collections.abc import Sequence

from _typeshed import WriteableBuffer

def unlinkat_many(
    dir_fds: int | Sequence[int] | None,
    names: Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]],
    state: WriteableBuffer,
    start: int = 0,
    stop: int | None = None,
) -> list[tuple[int, int]]: ...
def untrack(obj: object) -> None: ...
