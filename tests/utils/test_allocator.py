"""halo.utils.allocator: process-level CPU settings."""

import torch

from halo.utils.allocator import flush_denormals

DENORMAL = 1e-39  # below float32's smallest normal (1.18e-38)


def _survives() -> bool:
    """Whether a float32 denormal survives arithmetic right now."""
    x = torch.tensor([DENORMAL], dtype=torch.float32)
    return bool((x * 1.0)[0] != 0)


def test_flush_denormals_zeroes_them_inside_and_restores_outside():
    assert _survives()  # torch's default
    with flush_denormals() as supported:
        if not supported:  # a CPU without the flag: nothing to test
            return
        assert not _survives()
        with flush_denormals():  # nested: still on after the inner block
            assert not _survives()
        assert not _survives()
    assert _survives()


def test_flush_denormals_restores_after_an_error():
    try:
        with flush_denormals():
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert _survives()
