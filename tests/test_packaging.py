"""The wheel and the sdist build, install into a fresh venv and import (with py.typed and the
CLI entry point), so a release is not missing a module or a data file."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from .conftest import clean_env

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str, timeout: float = 120) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=ROOT)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.timeout(240)
def test_wheel_and_sdist_install_into_a_fresh_venv(tmp_path: Path) -> None:
    pytest.importorskip("build")
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(dist), str(ROOT))
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("client.py", "recording.py", "operator.py", "py.typed", "jetstream/context.py"):
        assert f"telestion_sync/{module}" in names, module
    assert not [n for n in names if n.startswith("tests/")]
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    assert any(m.endswith("/setup.cfg") for m in members) and any(m.endswith("/README.md") for m in members)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = str(env_dir / "bin" / "python")
    check = (
        "import telestion_sync as ts, importlib.resources as r; "
        "assert r.files('telestion_sync').joinpath('py.typed').is_file(); "
        "assert callable(ts.load_recording) and callable(ts.MessageBus.wait_for); print(ts.__version__)"
    )
    for artifact in (wheel, sdist):
        _run(py, "-m", "pip", "install", "-q", "--force-reinstall", str(artifact), timeout=180)
        version = _run(py, "-c", check).strip()
        assert version
    cli = env_dir / "bin" / "telestion-sync"
    assert "record" in _run(str(cli), "--help")
