"""The documentation site: ``mkdocs build --strict`` passes (a broken link or API reference
fails it), and every ```python block of the guides runs, page by page in one namespace like
notebook cells, against a real nats-server with JetStream. A block whose first line is
``# skip-test`` (or whose fence has a ``title``) is only shown, never run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from telestion_sync.server import NatsServer

from .conftest import clean_env

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)

RUNNER = r"""
import sys
ns = {"__name__": "__main__"}
for i, path in enumerate(sys.argv[1:]):
    code = open(path).read()
    try:
        exec(compile(code, path, "exec"), ns)
    except BaseException:
        print(f"--- block {i + 1} failed:\n{code}", file=sys.stderr)
        raise
"""


def blocks(page: Path) -> Tuple[List[str], int]:
    """The runnable python blocks of a page, and how many were skipped."""
    run, skipped = [], 0
    for info, code in FENCE.findall(page.read_text("utf-8")):
        if "title" in info or code.lstrip().startswith("# skip-test"):
            skipped += 1
        else:
            run.append(code)
    return run, skipped


PAGES = sorted(p for p in DOCS.rglob("*.md") if blocks(p)[0])


def test_every_guide_is_in_the_docs_and_skips_are_few() -> None:
    names = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    for guide in ("core", "services", "reliability", "security", "jetstream", "key-value",
                  "object-store", "operators", "cli", "websocket"):  # fmt: skip
        assert f"guides/{guide}.md" in names
    skipped = sum(blocks(p)[1] for p in DOCS.rglob("*.md"))
    ran = sum(len(blocks(p)[0]) for p in DOCS.rglob("*.md"))
    assert ran >= 8 and skipped <= 4, (ran, skipped)


@pytest.mark.timeout(120)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
         "-d", str(tmp_path / "site")],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=110,
        env={**clean_env(), "NO_MKDOCS_2_WARNING": "1"},
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "operators" / "index.html").read_text("utf-8")
    assert "wait_for" in reference and "load_recording" in reference  # docstrings rendered





@pytest.mark.timeout(60)
@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_code_blocks_run(page: Path, js_server: NatsServer, tmp_path: Path) -> None:
    files = []
    for i, code in enumerate(blocks(page)[0]):
        f = tmp_path / f"block{i + 1}.py"
        f.write_text(code.replace("localhost:4222", f"{js_server.host}:{js_server.port}"))
        files.append(str(f))
    out = subprocess.run(
        [sys.executable, "-c", RUNNER, *files],
        capture_output=True,
        text=True,
        timeout=50,
        env={**clean_env(), "NATS_URL": js_server.url, "MPLBACKEND": "Agg"},
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    shutil.rmtree(tmp_path, ignore_errors=True)
