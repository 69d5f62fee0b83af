"""The sdist and its wheel: no build warning, the library alone, works with or without a compiler.

The sdist carries no tests: they need the repository's checkout
(``bench/``, ``examples/``, ``grafana/``, ``docs/`` and README.md are read or
imported by them), so a test suite in the sdist could only fail.
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("build", reason="the [dev] extra installs build")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The sdist built from this checkout, and everything the build printed."""
    out = tmp_path_factory.mktemp("dist")
    # No isolation: the environment's setuptools, so the test needs no network.
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [tarball] = out.glob("fastcleanup-*.tar.gz")
    return tarball, proc.stdout + proc.stderr


def test_the_build_prints_no_deprecation_or_warning(sdist: tuple[Path, str]) -> None:
    _, output = sdist
    assert "Deprecat" not in output
    assert "warning:" not in output.lower()


def test_the_sdist_holds_the_library_and_no_tests(sdist: tuple[Path, str]) -> None:
    tarball, _ = sdist
    with tarfile.open(tarball) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py"} <= names
    assert {"fastcleanup/__init__.py", "fastcleanup/py.typed", "fastcleanup/_cbulk.c"} <= names
    sources = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "fastcleanup").iterdir()
        if p.suffix in (".py", ".c", ".pyi")
    }
    assert sources <= names  # every module and C source: the C module builds from it
    for tree in ("tests/", "bench/", "examples/", "grafana/", "docs/"):
        assert not [n for n in names if n.startswith(tree)], tree


def test_the_metadata_states_licence_pythons_and_platform(sdist: tuple[Path, str]) -> None:
    tarball, _ = sdist
    with tarfile.open(tarball) as tar:
        member = tar.extractfile(f"{tarball.name.removesuffix('.tar.gz')}/PKG-INFO")
        assert member is not None
        meta = email.parser.Parser().parsestr(member.read().decode())
    assert meta["License-Expression"] == "MIT"
    assert meta["License-File"] == "LICENSE"
    classifiers = set(meta.get_all("Classifier") or [])
    assert {
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Typing :: Typed",
    } <= classifiers
    assert meta["Requires-Python"] == ">=3.11"
    # README's build commands name the files of this version.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert tarball.name == f"fastcleanup-{meta['Version']}.tar.gz"
    assert readme.count(f"dist/fastcleanup-{meta['Version']}-*.whl") == 2
    assert (ROOT / "LICENSE").read_text(encoding="utf-8").startswith("MIT License")


# Run from outside the checkout, with the installed copy first on the path:
# it removes a file through a cleaner and says which build it is.
USE_THE_INSTALL = """
import os, sys, tempfile
import fastcleanup as fc
import fastcleanup._unlink as u

async def main():
    fc.init_worker()
    fd, path = tempfile.mkstemp()
    os.close(fd)
    fc.submit(fc.RemoveFile(path))
    await fc.shutdown()
    assert not os.path.exists(path)

fc.run(main())
print(os.path.dirname(fc.__file__), u.COMPILED, fc.stats().completed)
"""


@pytest.mark.parametrize("compiler", ["present", "missing"])
def test_a_wheel_built_from_the_sdist_installs_and_works(
    sdist: tuple[Path, str], compiler: str, tmp_path: Path
) -> None:
    """README's install: a wheel built as ``python -m build`` does (from the sdist)
    carries the compiled module; with no compiler the install still succeeds and
    the same library runs as pure Python, which ``COMPILED`` tells."""
    tarball, _ = sdist
    # -S below: no .pth file runs, so the checkout's editable install cannot
    # lend its compiled module; the dependencies come from this environment.
    path = [
        str(tmp_path / "site"),
        sysconfig.get_paths()["purelib"],
        sysconfig.get_paths()["platlib"],
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.pop("FASTCLEANUP_PURE_PYTHON", None)
    if compiler == "missing":
        env.update(CC="/bin/false", LDSHARED="/bin/false")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-cache-dir", "-q"]
    for step in (
        # No isolation: the environment's setuptools, so the test needs no network.
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", "wheels", str(tarball)],
        [*pip, "install", "--no-deps", "--no-index", "--target", "site", "--find-links",
         "wheels", "fastcleanup"],
    ):  # fmt: skip
        done = subprocess.run(step, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    used = subprocess.run(
        [sys.executable, "-S", "-c", USE_THE_INSTALL],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert used.returncode == 0, used.stderr
    where, compiled, completed = used.stdout.split()
    assert where == str(tmp_path / "site" / "fastcleanup")  # the install, not the checkout
    assert compiled == str(compiler == "present")
    assert completed == "1"
