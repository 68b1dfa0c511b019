"""Every test runs in its own empty temporary folder, so no test depends on (or leaves
files in) the folder pytest was started from: a ``./limits.h5`` left there by the README's
quick start must not change what ``validate`` picks. Use paths relative to the test files
(``Path(__file__)``) for the repository's data."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
