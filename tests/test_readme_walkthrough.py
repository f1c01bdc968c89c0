"""The README's dispute walk-through, run as written: keygen, register, mark, deploy
(``arena serve``), verify the suspect's API, the same behind ``evade-detector``, and the
model as an ONNX file. Each ``arena`` line runs as a real process in a fresh folder; a
line ending in ``&`` is a server, started and waited for; a line whose comment says
``exit N`` must exit N, every other line 0. The README's ports are swapped for free ones.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- dispute walk-through -->"
ARENA = [sys.executable, "-c", "from arena.cli import console; console()"]


def walkthrough() -> list[str]:
    text = README.read_text()
    assert MARKER in text, "the README lost its dispute walk-through"
    block = text.split(MARKER, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/info", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def test_the_readme_dispute_walkthrough_runs(tmp_path):
    lines = walkthrough()
    assert [line.split()[1] for line in lines] == [
        "keygen",
        "register",
        "mark",
        "serve",
        "verify",
        "serve",
        "verify",
        "export",
        "verify",
    ]
    ports = {port: str(_free_port()) for port in set(re.findall(r"\b87\d\d\b", "\n".join(lines)))}
    env = {"ARENA_HOME": str(tmp_path / "home"), "ARENA_THREADS": "1", "COLUMNS": "200"}
    env = {**os.environ, **env}
    servers: list[subprocess.Popen] = []
    try:
        for line in lines:
            command, _, comment = line.partition("#")
            for old, new in ports.items():
                command = command.replace(old, new)
            background = command.rstrip().endswith("&")
            words = shlex.split(command.rstrip().rstrip("&"))
            assert words[0] == "arena", line
            if background:
                process = subprocess.Popen(
                    [*ARENA, *words[1:]],
                    cwd=tmp_path,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                servers.append(process)
                port = words[words.index("--port") + 1]
                _wait_for(f"http://127.0.0.1:{port}", process)
                continue
            expected = re.search(r"exit (\d)", comment)
            result = subprocess.run(
                [*ARENA, *words[1:]], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            print(f"$ {command.strip()}\n{result.stdout}{result.stderr}exit {result.returncode}")
            want = int(expected.group(1)) if expected else 0
            assert result.returncode == want, f"{line}\n{result.stdout}{result.stderr}"
    finally:
        for process in servers:
            process.terminate()
        for process in servers:
            assert process.wait(timeout=30) == 0  # SIGTERM stops it as Ctrl-C does
