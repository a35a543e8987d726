"""Atomic writes keep the permissions a plain open() would give."""

from __future__ import annotations

import os
from pathlib import Path

from lmscope.serialization import write_json


def test_atomic_write_gives_umask_permissions_not_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
