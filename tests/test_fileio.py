"""Writing run files: a failed write leaves the old file whole, no temp file and one line naming the file."""

import errno
import os

import pytest

from flair_core import fileio
from flair_core.fileio import WriteError, append_line, write_atomic


def disk_full():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fails_like_torch_save(f):
    """torch.save reports the file's OSError as a RuntimeError whose context is the OSError."""
    f.write(b"half a checkpoint")
    try:
        raise disk_full()
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def fails_with_oserror(f):
    f.write(b"half a file")
    raise disk_full()


def test_write_atomic_writes_bytes_text_and_functions(tmp_path):
    write_atomic(tmp_path / "a", b"\x00bytes")
    write_atomic(tmp_path / "b", "text ü")
    write_atomic(tmp_path / "c", lambda f: f.write(b"by function"))
    assert [(tmp_path / n).read_bytes() for n in "abc"] == [b"\x00bytes", "text ü".encode(), b"by function"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


@pytest.mark.parametrize("write", [fails_with_oserror, fails_like_torch_save])
def test_a_failed_write_keeps_the_old_content_and_leaves_no_temp(write, tmp_path):
    path = tmp_path / "step-00000008.pt"
    path.write_bytes(b"previous")
    with pytest.raises(WriteError) as caught:
        write_atomic(path, write)
    assert str(caught.value) == f"writing {path}: No space left on device"
    assert caught.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_other_failures_pass_through_and_leave_no_temp(tmp_path):
    def bug(f):
        raise KeyError("not a write error")

    with pytest.raises(KeyError):
        write_atomic(tmp_path / "x", bug)
    assert list(tmp_path.iterdir()) == []


def test_append_line_adds_whole_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"step": 1}')
    append_line(path, '{"step": 2}\n')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_append_line_cuts_a_partial_line_back(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    real_write = os.write

    # as the kernel does at the edge of a full disk: a short write, then ENOSPC
    def short_then_full(fd, data):
        if len(data) > 4:
            return real_write(fd, data[:4])
        raise disk_full()

    monkeypatch.setattr(fileio.os, "write", short_then_full)  # os.write for the duration of this test
    with pytest.raises(WriteError, match=f"^writing {path}: No space left on device$"):
        append_line(path, '{"step": 2, "loss/total": 1.5}')
    assert path.read_text() == '{"step": 1}\n'
