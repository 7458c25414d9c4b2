"""Writing files: atomic replacement with usual permissions, one sentence on failure, stale temporaries
removed; and the user-error exception, which the prepare scripts and config errors get without torch."""

import os
import stat
import subprocess
import sys

import pytest

from gptkit import fileio
from gptkit.errors import UserError


def test_atomic_open_replaces_whole_files_with_normal_permissions(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    umask = os.umask(0o022)
    try:
        with fileio.atomic_open(str(path), "w") as f:
            f.write("new")
            assert path.read_text() == "old"  # nothing visible until the block ends
    finally:
        os.umask(umask)
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["f.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # 0666 less the umask, as any file the user makes


def test_a_failed_write_keeps_the_old_file_and_says_so(tmp_path):
    path = tmp_path / "f.json"
    path.write_text("old")
    with pytest.raises(UserError) as e:
        with fileio.atomic_open(str(path), "w", advice="do this") as f:
            f.write("partial")
            raise OSError(28, "No space left on device")
    assert str(e.value) == f"could not write {path} (No space left on device); do this"
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.json"]
    with pytest.raises(KeyboardInterrupt):  # anything else passes through, and still leaves no temporary
        with fileio.atomic_open(str(path), "w") as f:
            raise KeyboardInterrupt
    assert os.listdir(tmp_path) == ["f.json"]
    with pytest.raises(UserError, match="could not write"):  # a folder that does not exist
        with fileio.atomic_open(str(tmp_path / "no" / "f"), "w"):
            pass


@pytest.mark.slow
def test_the_user_error_and_config_errors_need_no_torch():
    code = ("import sys; from gptkit import errors, dataprep; from gptkit import configurator; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
