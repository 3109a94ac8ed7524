"""Every ```bash block of README.md and docs/*.md runs as written (the docs convention).

Blocks run in order per file, each with `bash -e -o pipefail`, from the root of one scratch copy
of the repository per file (the tracked and untracked, not ignored, files), with this checkout's
qdeploy first on PYTHONPATH; each must exit 0. A block after a line
`<!-- docs-test: skip REASON -->` is skipped with that reason; a file holding
`<!-- docs-test: slow REASON -->` runs only with `-m slow`. Background processes a block starts
(servers) are stopped when it ends. One test per block, so a skip shows its reason and a failure
names the file and line.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = re.compile(r"\s*<!--\s*docs-test:\s*skip\s+(.+?)\s*-->\s*")  # a line of its own
SLOW = re.compile(r"^\s*<!--\s*docs-test:\s*slow\b.*-->\s*$", re.MULTILINE)
FENCE = re.compile(r"^(`{3,})\s*(\S*)")
BLOCK_TIMEOUT_S = 1200  # the README tour's first block trains and exports: minutes on a loaded 2-core CPU


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # the reason, for a block marked `docs-test: skip`


def bash_blocks(text: str) -> list[Block]:
    """The ```bash blocks of a Markdown text, in order, each with the skip reason marked before it."""
    blocks: list[Block] = []
    fence, language, start, body, skip, previous = None, "", 0, [], None, ""
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if fence is None and match:
            fence, language, start, body = match.group(1), match.group(2), number, []
            marked = SKIP.fullmatch(previous)  # the marker is the last non-blank line before the fence
            skip = marked.group(1) if marked else None
        elif fence is None:
            previous = line if line.strip() else previous
        elif line.strip() == fence:
            if language == "bash":
                blocks.append(Block(start, "\n".join(body) + "\n", skip))
            fence, previous = None, line
        else:
            body.append(line)
    return blocks


def doc_files() -> list[Path]:
    """README.md and every page in docs/ (found by glob: pages other branches add are covered too)."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _cases() -> list:
    cases = []
    for path in doc_files():
        text = path.read_text()
        marks = [pytest.mark.slow] if SLOW.search(text) else []
        name = path.relative_to(ROOT).as_posix()
        cases += [pytest.param(path, index, marks=marks, id=f"{name}:{block.line}")
                  for index, block in enumerate(bash_blocks(text))]
    return cases


def scratch_copy(destination: Path) -> Path:
    """The repository's tracked and untracked (not ignored) files, as a user's checkout holds them."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def run_block(code: str, cwd: Path, timeout_s: float = BLOCK_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`code` under bash -e -o pipefail in `cwd`; whatever it left running in the background is stopped.

    The output goes to a file, not a pipe: a server started with `&` keeps the pipe open, and the
    block is over when bash exits, not when the server does.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd), os.environ.get("PYTHONPATH")]))}
    log = cwd / f".docs-test-{time.monotonic_ns()}.log"
    with log.open("w") as output:
        process = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", code], cwd=cwd, env=env, text=True,
                                   stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        finally:
            try:
                os.killpg(process.pid, signal.SIGTERM)  # servers started with `&` in the block
            except ProcessLookupError:
                pass
    text = log.read_text() + ("" if process.returncode != -signal.SIGKILL else f"\n[timed out after {timeout_s} s]")
    log.unlink()
    return subprocess.CompletedProcess(process.args, process.returncode, text)


_scratch: dict[Path, Path] = {}  # doc file -> its scratch copy (the blocks of one file share it)
_failed: set[Path] = set()


@pytest.mark.parametrize("path, index", _cases())
def test_docs_block_runs_as_written(path: Path, index: int, tmp_path_factory) -> None:
    block = bash_blocks(path.read_text())[index]
    where = f"{path.relative_to(ROOT)}:{block.line}"
    if block.skip:
        pytest.skip(f"{where}: {block.skip}")
    if path in _failed:
        pytest.skip(f"{where}: an earlier block of this file failed")
    if path not in _scratch:
        _scratch[path] = scratch_copy(tmp_path_factory.mktemp(path.stem))
    result = run_block(block.code, _scratch[path])
    if result.returncode != 0:
        _failed.add(path)
    assert result.returncode == 0, f"{where} exited {result.returncode}:\n{result.stdout[-6000:]}"


def test_blocks_are_found_with_their_skip_reasons_and_failures_are_caught(tmp_path) -> None:
    text = ("intro\n\n```bash\necho one > one.txt\n```\n\n<!-- docs-test: skip needs a GPU -->\n```bash\nnvidia-smi\n"
            "```\n```bash\ncat one.txt\n```\n\n```python\nprint('not run')\n```\n")
    blocks = bash_blocks(text)
    assert [(b.line, b.skip) for b in blocks] == [(3, None), (8, "needs a GPU"), (11, None)]
    mentioned = bash_blocks("Mark a block with `<!-- docs-test: skip REASON -->`:\n```bash\ntrue\n```\n")
    assert mentioned[0].skip is None and not SLOW.search("pages carry `<!-- docs-test: slow REASON -->` ...")
    assert [run_block(b.code, tmp_path).returncode for b in (blocks[0], blocks[2])] == [0, 0]
    failing = run_block("false\necho the rest must not run\n", tmp_path)
    assert failing.returncode == 1 and "the rest" not in failing.stdout
    started = time.monotonic()
    server = run_block("sleep 300 & echo $! > pid\n", tmp_path, timeout_s=30)  # background jobs do not outlive it
    assert server.returncode == 0 and time.monotonic() - started < 10
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
