"""Atomic writes: whole file or nothing, and a folder in the way is a one-line error."""

import os

import pytest

from matmeta.checkpoint import atomic_write_text
from matmeta.errors import InputError


def test_atomic_write_replaces_whole_file_with_plain_permissions(tmp_path):
    path = tmp_path / "sub" / "out.csv"
    atomic_write_text(path, "a\n1\n")
    atomic_write_text(path, "b\n2\n")
    assert path.read_text() == "b\n2\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_a_folder_where_a_file_should_go_is_a_clear_error(tmp_path):
    (tmp_path / "w2").mkdir()
    with pytest.raises(InputError, match="w2: is a folder; expected a file name"):
        atomic_write_text(tmp_path / "w2", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["w2"]
    assert list((tmp_path / "w2").iterdir()) == []


def test_files_that_are_not_checkpoints_get_messages_a_user_can_act_on(tmp_path):
    """A JSON prior passed where a checkpoint goes, a pickle that would need code to load, a
    random file, and a checkpoint passed where a prior goes: one line each, never torch's
    advice to load with weights_only=False (which would let the file run code)."""
    import fractions

    import torch

    from matmeta.checkpoint import load_checkpoint
    from matmeta.errors import CheckpointError
    from matmeta.models.parametric import Prior

    prior = Prior.from_std("jmak", ["ln_k", "ln_n"], [-9.0, 0.7], [3.0, 0.5])
    prior_path = prior.save(tmp_path / "prior.json")
    with pytest.raises(CheckpointError, match="a JSON file, not a model checkpoint"):
        load_checkpoint(prior_path)
    code = tmp_path / "code.pt"
    torch.save({"matmeta_kind": "meta", "x": fractions.Fraction(1, 3)}, code)
    rnd = tmp_path / "random.bin"
    rnd.write_bytes(bytes(range(7, 107)))
    for path, why in ((code, "only code could rebuild"), (rnd, "not a torch checkpoint file")):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        msg = str(info.value)
        assert why in msg and "weights_only" not in msg and len(msg.splitlines()) == 1
        with pytest.raises(InputError) as info:
            Prior.load(path)
        assert "not a prior file" in str(info.value)
        assert "weights_only" not in str(info.value)
    ckpt = tmp_path / "meta.pt"
    torch.save({"matmeta_kind": "meta", "params": {"w": torch.zeros(2)}}, ckpt)
    with pytest.raises(InputError, match="a matmeta 'meta' checkpoint, not a prior"):
        Prior.load(ckpt)
    assert Prior.load(prior_path).names == ["ln_k", "ln_n"]
