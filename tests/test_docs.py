"""The docs stay true: the CLI reference matches ``--help``, and every documented command runs.

Documented commands are the lines starting with ``$ bmc-calib`` inside fenced ```console
blocks of ``docs/*.md`` and ``README.md``. They run in order, per file, in a temporary folder
holding a copy of ``data_samples/``, in process (typer's CliRunner), with glob patterns
expanded as a shell would. Each must exit 0, or with the code a trailing ``# exit N`` comment
states. A command of a subcommand that is not registered, or ``plot`` without matplotlib, is
reported as a warning instead of failing.
"""

from __future__ import annotations

import glob
import importlib.util
import re
import shlex
import shutil
import warnings
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bmc_calib.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
_BLOCK = re.compile(r"^```console[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")


def _load_reference_script():
    spec = importlib.util.spec_from_file_location(
        "make_cli_reference", ROOT / "docs" / "make_cli_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date() -> None:
    script = _load_reference_script()
    committed = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert script.render() == committed, (
        "docs/cli.md is out of date: run `python docs/make_cli_reference.py` and commit it"
    )
    for name in script.command_names():
        assert f"## `bmc-calib {name}`" in committed


def documented_commands(text: str) -> list[tuple[str, int]]:
    """``(command line, expected exit code)`` of every ``$ bmc-calib`` line, in order."""
    commands = []
    for block in _BLOCK.findall(text):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):  # continuation lines
                i += 1
                line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            if not line.startswith("$ bmc-calib"):
                continue
            match = _EXIT.search(line)
            commands.append((line[2:], int(match.group(1)) if match else 0))
    return commands


def _argv(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    if any(w in {"|", ">", ">>", "<", "&&", ";"} for w in words):
        raise AssertionError(f"documented commands must be plain, without shell syntax: {command}")
    argv = []
    for word in words[1:]:
        matches = sorted(glob.glob(word)) if glob.has_magic(word) else []
        argv.extend(matches or [word])
    return argv


def _missing_requirement(argv: list[str]) -> str | None:
    registered = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    if argv and not argv[0].startswith("-") and argv[0] not in registered:
        return f"command {argv[0]!r} is not registered"
    if argv and argv[0] == "plot" and importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed"
    return None


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_commands_run(doc: Path, tmp_path, monkeypatch) -> None:
    if not doc.exists():
        pytest.skip(f"{doc.name} does not exist")
    commands = documented_commands(doc.read_text(encoding="utf-8"))
    if not commands:
        return
    shutil.copytree(ROOT / "data_samples", tmp_path / "data_samples")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
    for command, expected in commands:
        argv = _argv(command)
        missing = _missing_requirement(argv)
        if missing:
            warnings.warn(f"{doc.name}: not run ({missing}): {command}", stacklevel=1)
            continue
        result = runner.invoke(app, argv, catch_exceptions=False)
        assert result.exit_code == expected, (
            f"{doc.name}: `{command}` exited {result.exit_code}, expected {expected}:\n"
            f"{result.output}"
        )


def test_documented_commands_are_parsed() -> None:
    text = """
```console
$ bmc-calib fit data_samples/*.npy \\
    -o limits.h5
Wrote limits.h5
$ bmc-calib validate x.npy  # exit 1
```
```bash
$ bmc-calib not-run
```
"""
    assert documented_commands(text) == [
        ("bmc-calib fit data_samples/*.npy -o limits.h5", 0),
        ("bmc-calib validate x.npy  # exit 1", 1),
    ]
