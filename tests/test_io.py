"""The resumable-folder base and the file primitives the run folder, the generation folder and
the rank cache share (qkscore.io): torn tails cut, settings compared key by key, digests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qkscore.data.items import DataError
from qkscore.io import (
    FolderError,
    FolderMismatchError,
    ResumableFolder,
    append_jsonl,
    drop_torn_tail,
    read_jsonl,
    save_array,
    scan_jsonl,
    write_json,
)


class _Folder(ResumableFolder):
    SETTINGS = "settings.json"
    JOB = "job"
    KIND = "a test folder's settings"


def test_atomic_writes_leave_no_temporary_file(tmp_path):
    write_json(tmp_path / "a" / "x.json", {"n": (1, 2)})
    save_array(tmp_path / "a" / "y.npy", np.arange(3, dtype=np.float32))
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"n": [1, 2]}
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "y.npy"), [0, 1, 2])
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.json", "y.npy"]


def test_atomic_writes_get_the_mode_open_would_give(tmp_path):
    """Every result file came out 0600 (mkstemp's mode): a teammate on a shared machine, or a
    web server serving report.html, could not read it. Now the umask decides, as for open(),
    and a file that is replaced keeps its own mode."""
    import os
    import stat

    from qkscore.io import _umask

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    old = os.umask(0o022)
    try:
        assert _umask() == 0o022
        write_json(tmp_path / "open.json", {})
        save_array(tmp_path / "open.npy", np.zeros(2))
        assert mode(tmp_path / "open.json") == mode(tmp_path / "open.npy") == 0o644
        os.umask(0o077)
        write_json(tmp_path / "private.json", {})
        assert mode(tmp_path / "private.json") == 0o600
        (tmp_path / "open.json").chmod(0o640)
        write_json(tmp_path / "open.json", {"again": 1})  # replaced: keeps its 0640
        assert mode(tmp_path / "open.json") == 0o640
    finally:
        os.umask(old)


def test_a_torn_tail_is_left_out_then_cut_and_appending_resumes_on_a_line_of_its_own(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "ab") as fh:
        fh.write(b'{"a": 3, "b"')  # a kill mid-write
    scan = scan_jsonl(path)
    assert (scan.records, scan.torn, scan.bad) == ([{"a": 1}, {"a": 2}], 3, [])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    drop_torn_tail(path)
    assert path.read_bytes() == b'{"a": 1}\n{"a": 2}\n'
    append_jsonl(path, [{"a": 3}])
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    path.write_bytes(b'{"a": 1}\nnot json\n{"a": 3}\n')  # damage in the middle is no torn tail
    with pytest.raises(DataError, match=r"log\.jsonl:2"):
        drop_torn_tail(path)


def test_a_settings_mismatch_is_refused_naming_each_difference(tmp_path):
    folder = _Folder(tmp_path / "f")
    assert not folder.exists()
    folder.write_settings({"seed": 0, "layers": (1, 2), "items": "aaa"})
    recorded = folder.read_settings()
    folder.refuse_differences(recorded, {"seed": 0, "layers": [1, 2]})  # a tuple is its list
    with pytest.raises(FolderMismatchError) as err:
        folder.refuse_differences(recorded, {"seed": 1, "items": "bbb", "new": True, "layers": [1]})
    assert str(err.value) == (
        f"{folder.path} was made by a different job and is not mixed with this one:\n"
        "  seed: folder has 0, this job asks for 1\n"
        "  items: content hash differs (data changed since the folder was made)\n"
        "  new: folder has no record of it, this job asks for True\n"
        "  layers: folder has [1, 2], this job asks for [1]\n"
        "Use another --out folder, or delete this one."
    )
    assert folder.same(recorded, {"items": "aaa", "layers": [1, 2], "seed": 0})
    assert not folder.same(None, {}) and not folder.same(recorded, {"seed": 0})


def test_a_damaged_settings_file_is_a_folder_error(tmp_path):
    folder = _Folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        folder.read_settings()
    folder.meta_path.write_bytes(b"")
    with pytest.raises(FolderError, match="settings.json is empty"):
        folder.read_settings()
    folder.meta_path.write_text("[1, 2]")
    with pytest.raises(FolderError, match="is not a test folder's settings"):
        folder.read_settings()


def test_the_digest_depends_on_the_settings_not_their_order():
    a = ResumableFolder.digest({"model": "m", "seed": 0})
    assert a == ResumableFolder.digest({"seed": 0, "model": "m"})
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != ResumableFolder.digest({"model": "m", "seed": 1})


def test_set_aside_takes_the_first_free_name(tmp_path):
    names = lambda k: f"cache.stale-{k + 1}"  # noqa: E731
    for n in (1, 2):
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / "x").write_text(str(n))
        dest = ResumableFolder.move_aside(tmp_path / "cache", names)
        assert dest == tmp_path / f"cache.stale-{n}" and (dest / "x").read_text() == str(n)
    (tmp_path / "c.npz").write_text("bad")
    dest = ResumableFolder.move_aside(tmp_path / "c.npz", lambda k: f"c.{k}.npz", tmp_path / "bad")
    assert dest == tmp_path / "bad" / "c.0.npz" and not (tmp_path / "c.npz").exists()


def test_the_three_resumable_folders_share_the_base(tmp_path):
    from qkscore.generation.folder import GenFolder
    from qkscore.generation.rank_cache import RankCache
    from qkscore.run import RunFolder, RunFolderError, RunMismatchError

    assert RunFolderError is FolderError and RunMismatchError is FolderMismatchError
    cache = RankCache(tmp_path / "ranked", {"profile_sha256": "a"})
    for folder in (RunFolder(tmp_path / "r"), GenFolder(tmp_path / "g"), cache):
        assert isinstance(folder, ResumableFolder)
    assert cache.read_settings() == {"profile_sha256": "a"}
