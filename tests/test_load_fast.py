"""Loading without waste: the vision encoder built on the meta device, the weights' fingerprint
computed once per unchanged checkpoint (and again after any write), none in a run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infomerge.backbones import loading
from infomerge.backbones.registry import TINY
from infomerge.backbones.tiny import SIGLIP_HEAD_SUBDIR, build_tiny_checkpoint
from infomerge.backbones.vision import VisionEncoder, bilinear_pool_matrix


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return build_tiny_checkpoint()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("INFOMERGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _checkpoint_tensors(tiny_dir: Path) -> dict[str, torch.Tensor]:
    """The encoder's tensors read straight from the two safetensors files (the tiny checkpoint
    stores the tower as ``vision_tower.*``, the SigLIP head as ``vision_model.{post_layernorm,head}.*``;
    the LLaVA tower's own post_layernorm is unused: features are taken before it)."""
    llava = load_file(str(tiny_dir / "model.safetensors"))
    head = load_file(str(tiny_dir / SIGLIP_HEAD_SUBDIR / "model.safetensors"))
    out = {
        k: v
        for k, v in llava.items()
        if k.split(".")[0] in ("vision_tower", "multi_modal_projector") and ".post_layernorm." not in k
    }
    out["image_newline"] = llava["image_newline"]
    out.update({"siglip_head." + k[len("vision_model.") :]: v for k, v in head.items()})
    return out


def test_meta_device_load_holds_the_checkpoint_tensors(tiny_dir, cache):
    enc = VisionEncoder.from_backbone("tiny", tiny_dir)
    want = _checkpoint_tensors(tiny_dir)
    got = enc.state_dict()
    assert set(got) == set(want)
    for k, v in got.items():
        assert v.device.type == "cpu" and v.dtype == torch.float32, k
        torch.testing.assert_close(v, want[k].float(), rtol=0, atol=0, msg=k)
    assert not [n for n, p in enc.named_parameters() if p.is_meta or not p.requires_grad]
    torch.testing.assert_close(enc.pool, bilinear_pool_matrix(TINY.patch_side, TINY.pooled_side))
    assert not enc.training


def test_meta_device_random_weights_equal_the_eager_ones():
    eager = VisionEncoder(TINY)
    eager.init_random(3)
    fast = VisionEncoder.from_backbone("tiny", random_weights=True, seed=3)
    for (k, a), b in zip(eager.state_dict().items(), fast.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=k)
    torch.testing.assert_close(fast.pool, eager.pool)


def test_a_run_does_not_hash_the_weights(tiny_dir, cache, monkeypatch):
    def no_hashing(_tensors):
        raise AssertionError("hashed")

    monkeypatch.setattr(loading, "tensors_sha256", no_hashing)
    enc = VisionEncoder.from_backbone("tiny", tiny_dir, fingerprint=False)
    assert enc.source["weights_sha256"] is None and enc.source["siglip_head"]["weights_sha256"] is None


def _flip_one_vision_value(path: Path) -> None:
    """Rewrite one byte inside the data of the first vision tensor, keeping size and mtime."""
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    key = sorted(k for k in header if k.startswith("vision_tower."))[0]
    offset = 8 + n + header[key]["data_offsets"][0] + 1
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes([raw[offset] ^ 0x40]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # a stale stamp's size and mtime still match


def _tower_side(state: dict) -> dict:
    """The LLaVA checkpoint's part of a loaded state (``weights_sha256``; the head has its own)."""
    return {k: v for k, v in state.items() if not k.startswith("siglip_head.")}


def test_fingerprint_is_cached_and_a_tampered_file_is_hashed_again(tiny_dir, tmp_path, cache, monkeypatch):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    head = ckpt / SIGLIP_HEAD_SUBDIR
    state, source = loading.load_vision_state("tiny", ckpt, siglip_path=head)
    first = source["weights_sha256"]
    assert first == loading.tensors_sha256(_tower_side(state))
    assert list((cache / "weights").glob("*.json"))  # stamps written

    calls = []
    real = loading.tensors_sha256
    monkeypatch.setattr(loading, "tensors_sha256", lambda t: calls.append(1) or real(t))
    _, again = loading.load_vision_state("tiny", ckpt, siglip_path=head)
    assert again["weights_sha256"] == first and calls == []  # unchanged: from the stamp

    _flip_one_vision_value(ckpt / "model.safetensors")
    state, tampered = loading.load_vision_state("tiny", ckpt, siglip_path=head)
    assert calls  # the stamp no longer matches the file (its ctime changed): hashed again
    assert tampered["weights_sha256"] != first
    assert tampered["weights_sha256"] == real(_tower_side(state))
    assert tampered["siglip_head"]["weights_sha256"] == source["siglip_head"]["weights_sha256"]


def test_a_grown_file_invalidates_the_stamp(tiny_dir, tmp_path, cache):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, ckpt)
    f = ckpt / "model.safetensors"
    files = [f]
    keys = ["image_newline"]
    tensors = {"image_newline": torch.ones(3)}
    first = loading.cached_tensors_sha256(tensors, files, keys)
    # same identity: the remembered digest comes back even for other tensors (that is the point)
    assert loading.cached_tensors_sha256({"image_newline": torch.zeros(3)}, files, keys) == first
    with open(f, "ab") as fh:  # size and mtime change
        fh.write(b" ")
    assert loading.cached_tensors_sha256({"image_newline": torch.zeros(3)}, files, keys) != first
