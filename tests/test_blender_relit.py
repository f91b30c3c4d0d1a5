"""The Blender-relighting bench's scoring and frame move, without Blender (bench/blender_relit.py)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from bench.blender_relit import score, write_in_frame
from stages.export.gltf import TexturedMesh, png_bytes, read_glb, write_glb
from tests.conftest import shared


def write_renders(capture, folder, change) -> None:
    """Each held-out photo of `capture`, changed by `change(rgba [H, W, 4] float) -> rgba`, as a render."""
    folder.mkdir()
    for photo in sorted((capture / "test").glob("test_*.png")):
        rgba = np.asarray(Image.open(photo).convert("RGBA"), dtype=np.float64) / 255.0
        Image.fromarray(np.round(np.clip(change(rgba), 0, 1) * 255).astype(np.uint8)).save(folder / photo.name)


def test_a_render_darker_by_one_factor_per_channel_scores_as_the_photo(tmp_path):
    """Albedo times light is all the photos fix: a render half as bright in red and a third less in
    blue scores near the photos themselves, and one with a patch wrong scores far below."""
    capture = shared("spot-wild")

    def dimmed(rgba):
        linear = np.where(rgba[..., :3] <= 0.04045, rgba[..., :3] / 12.92, ((rgba[..., :3] + 0.055) / 1.055) ** 2.4)
        linear = linear * np.array([0.5, 1.0, 0.66])
        encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
        return np.concatenate([encoded, rgba[..., 3:]], axis=-1)

    def patched(rgba):
        out = rgba.copy()
        h, w = out.shape[:2]
        out[h // 3:h // 2, w // 3:w // 2, :3] = 0.0
        return out

    write_renders(capture, tmp_path / "dimmed", dimmed)
    write_renders(capture, tmp_path / "patched", patched)
    near, far = score(tmp_path / "dimmed", capture), score(tmp_path / "patched", capture)
    assert near["blender_relit_psnr"] > 40 and abs(near["scale"][0] - 2.0) < 0.05
    assert far["blender_relit_psnr"] < 25 and len(far["per_view"]) == 8


def test_a_model_moves_into_the_capture_frame_with_its_textures(tmp_path):
    """The GLB written in another frame has its vertices moved by the similarity, its normals
    turned by its rotation, its textures untouched."""
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(4, 3)).astype(np.float32)
    normals = positions / np.linalg.norm(positions, axis=1, keepdims=True)
    tangents = np.concatenate([np.cross(normals, [0.0, 0.0, 1.0]), np.ones((4, 1))], axis=1).astype(np.float32)
    tangents[:, :3] /= np.linalg.norm(tangents[:, :3], axis=1, keepdims=True)
    texture = lambda: png_bytes(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))  # noqa: E731
    write_glb(tmp_path / "model.glb", TexturedMesh(positions, normals, tangents, rng.random((4, 2)).astype(np.float32),
                                                   np.array([[0, 1, 2], [0, 2, 3], [0, 3, 1], [1, 3, 2]]), texture(),
                                                   texture(), texture(), texture()))
    model = read_glb(tmp_path / "model.glb")
    turn = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    similarity = np.eye(4)
    similarity[:3, :3], similarity[:3, 3] = 2.0 * turn, [1.0, -2.0, 3.0]
    write_in_frame(model, similarity, tmp_path / "moved.glb")
    moved = read_glb(tmp_path / "moved.glb")
    assert np.allclose(moved.positions, 2.0 * model.positions @ turn.T + [1.0, -2.0, 3.0], atol=1e-5)
    assert np.allclose(moved.normals, model.normals @ turn.T, atol=1e-6)
    assert np.array_equal(moved.base_colour[..., :3], model.base_colour[..., :3])
