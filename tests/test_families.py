"""The backbone-family registry: families are found by name, a new one registered in a test is asked
by every call site that used to branch on Qwen2.5-VL, and an unknown name is a clear error."""

from __future__ import annotations

import dataclasses

import pytest

from infomerge.backbones.family import (
    BackboneFamily,
    family_names,
    get_family,
    register_family,
    unregister_family,
)
from infomerge.backbones.registry import BACKBONES, TINY, get_backbone
from infomerge.errors import InfomergeError, UnknownFamilyError, UsageError


class StubFamily(BackboneFamily):
    """A made-up family: 3 frames per temporal group, a 2 x 5 token grid, one vision backend."""

    name = "stub-family"
    title = "Stub"
    newline_modes = ("none",)
    backends = {"vision": ("torch",)}
    missing_backend = {"vision": "the stub runs torch only"}

    def patch_grid(self, bb):
        return 4, 10

    def token_grid(self, bb):
        return 2, 5

    def frame_step(self, bb):
        return 3

    def groups_for(self, bb, frames):
        return frames // 3

    def video_tokens_for(self, bb, frames, tokens_per_frame=None):
        return self.groups_for(bb, frames) * (10 if tokens_per_frame is None else tokens_per_frame) + 7

    def decode_options(self, bb):
        return {"size": 123}

    def pixel_shape(self, bb, frames):
        return [frames, 3, 40, 100]


@pytest.fixture
def stub():
    family = register_family(StubFamily())
    try:
        yield family
    finally:
        unregister_family(family.name)


def test_registered_families_and_every_backbone_names_one():
    assert {"llava", "qwen2_5_vl"} <= set(family_names())
    for bb in BACKBONES.values():
        assert bb.family_spec is get_family(bb.family) and bb.family_spec.name == bb.family


def test_family_geometry_matches_hand_computation():
    # LLaVA: 384 / 14 = 27 patches a side; bilinear 14 x 14 (OneVision), average 13 x 13 + a newline
    # per row (LLaVA-Video)
    ov, tv = get_backbone("ov-0.5b"), get_backbone("tiny-video")
    assert (ov.patch_grid, ov.token_grid, ov.groups_for(32)) == ((27, 27), (14, 14), 32)
    assert ov.video_tokens == 32 * 196 + 1
    assert (tv.token_grid, tv.video_tokens) == ((13, 13), 32 * 13 * 14)
    # Qwen2.5-VL 7B at 336 x 588: 24 x 42 patches, 12 x 21 merged tokens, 32 frames -> 16 groups
    q = get_backbone("qwen2.5-vl-7b")
    assert (q.patch_grid, q.token_grid, q.groups_for(32)) == ((24, 42), (12, 21), 16)
    assert q.video_tokens == 16 * 252
    assert q.family_spec.frame_step(q) == 2 and ov.family_spec.frame_step(ov) == 1


def test_a_family_registered_in_a_test_is_found_and_asked(stub):
    from infomerge.export.graphs import feature_frames, pixel_shape
    from infomerge.runtime.decode_thread import decode_options
    from infomerge.runtime.pipeline import check_backbone_support

    assert get_family("stub-family") is stub and "stub-family" in family_names()
    bb = dataclasses.replace(TINY, name="stub", family="stub-family")
    assert bb.family_spec is stub
    assert (bb.patch_grid, bb.token_grid, bb.num_patches, bb.tokens_per_frame) == ((4, 10), (2, 5), 40, 10)
    assert (bb.groups_for(12), bb.video_tokens_for(12)) == (4, 4 * 10 + 7)
    assert decode_options(bb) == {"size": 123}
    assert (pixel_shape(bb, 6), feature_frames(bb, 6)) == ([6, 3, 40, 100], 2)
    with pytest.raises(UsageError, match=r"\(Stub\) cannot run the 'ort' vision backend: the stub runs"):
        check_backbone_support(bb, "ort", "none", "torch", "infomerge", None)
    with pytest.raises(UsageError, match="temporal patches of 3"):
        check_backbone_support(bb, "torch", "none", "torch", "infomerge", None, frames=8)
    check_backbone_support(bb, "torch", "none", "torch", "infomerge", None, frames=9)  # allowed


def test_a_family_is_registered_once(stub):
    with pytest.raises(ValueError, match="registered twice"):
        register_family(StubFamily())
    with pytest.raises(ValueError, match="needs a name"):
        register_family(BackboneFamily())


def test_unknown_family_is_a_clear_error():
    with pytest.raises(UnknownFamilyError) as err:
        get_family("gemma3")
    msg = str(err.value)
    assert "gemma3" in msg and "llava" in msg and "qwen2_5_vl" in msg and "backbones/families" in msg
    assert isinstance(err.value, InfomergeError) and err.value.exit_code == 2
    bb = dataclasses.replace(TINY, name="odd", family="gemma3")
    with pytest.raises(UnknownFamilyError, match="unknown backbone family 'gemma3'"):
        bb.tokens_per_frame  # noqa: B018 - the property asks the family


def test_higher_layer_family_tables_cover_every_family():
    """The per-layer tables keyed by family (the planner's rows) or by its position scheme (the
    runtime's assembly) have an entry for every registered family."""
    from infomerge.jetson import planner
    from infomerge.runtime import pipeline

    names = set(family_names())
    assert set(planner._VISION_ROWS) == names and set(planner._HOST_FRAMES) == names
    assert {get_family(n).positions for n in names} <= set(pipeline._ASSEMBLERS)
