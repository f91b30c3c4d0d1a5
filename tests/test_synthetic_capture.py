"""The synthetic Spot capture: its cameras, ground truth and shading must agree with each other."""
import json
import math

import numpy as np
import open3d as o3d
import pytest
import torch
import trimesh
from PIL import Image

from stages.common.sh import read_lighting, sh_irradiance
from stages.common.colour import linear_to_srgb, srgb_to_linear
from tests.synthetic.spot_capture import SPOT_DIR, main, make_spot_capture

pytestmark = pytest.mark.skipif(not (SPOT_DIR / "spot_triangulated.obj").exists(), reason="Spot data not available")

N_TRAIN, N_HELDOUT, SIZE = 6, 2, 80


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return make_spot_capture(
        tmp_path_factory.mktemp("spot_random"), size=SIZE, n_train=N_TRAIN, n_heldout=N_HELDOUT,
        lighting="random", seed=3, nthreads=1,
    )


@pytest.fixture(scope="module")
def ambient_capture(tmp_path_factory):
    return make_spot_capture(
        tmp_path_factory.mktemp("spot_ambient"), size=64, n_train=3, n_heldout=1, lighting="ambient", nthreads=1
    )


def _frames(root):
    """(file_path, c2w [4, 4], intrinsics dict) for both splits."""
    out = []
    for name in ("transforms.json", "transforms_test.json"):
        data = json.loads((root / name).read_text())
        for frame in data["frames"]:
            out.append((frame["file_path"], np.array(frame["transform_matrix"]), data))
    return out


def _gt(root, file_path):
    stem = file_path.split("/")[-1][:-4]
    return np.load(root / "gt" / f"{stem}.npz", allow_pickle=False)


def _rgba(root, file_path):
    return np.asarray(Image.open(root / file_path), dtype=np.float32) / 255.0


def _project(points, c2w, K):
    """World points [N, 3] -> pixel coordinates [N, 2] (x right, y down) and depth along -Z [N]."""
    w2c = np.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -cam[:, 2]
    u = K["fl_x"] * cam[:, 0] / depth + K["cx"]
    v = -K["fl_y"] * cam[:, 1] / depth + K["cy"]
    return np.stack([u, v], axis=1), depth


def _unproject(rows, cols, depth, c2w, K):
    """Pixel centres and depths along -Z -> world points [N, 3]."""
    x = (cols + 0.5 - K["cx"]) / K["fl_x"] * depth
    y = -(rows + 0.5 - K["cy"]) / K["fl_y"] * depth
    cam = np.stack([x, y, -depth], axis=1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def test_layout_and_files(capture):
    frames = _frames(capture)
    assert [fp for fp, _, _ in frames] == [f"images/r_{k:03d}.png" for k in range(N_TRAIN)] + [
        f"test/r_{k:03d}.png" for k in range(N_TRAIN, N_TRAIN + N_HELDOUT)
    ]
    for fp, c2w, K in frames:
        assert (K["w"], K["h"]) == (SIZE, SIZE) and K["cx"] == SIZE / 2
        image = Image.open(capture / fp)
        assert image.mode == "RGBA" and image.size == (SIZE, SIZE)
        assert Image.open(capture / "gt" / (fp.split("/")[-1][:-4] + "_normal.png")).mode == "RGBA"
    params = json.loads((capture / "capture.json").read_text())
    assert params["lighting"] == "random" and params["n_train"] == N_TRAIN and params["seed"] == 3
    assert (capture / "gt" / "mesh.ply").exists()


def test_ground_truth_arrays(capture):
    for fp, _, _ in _frames(capture):
        gt = _gt(capture, fp)
        assert set(gt.files) >= {"normal", "depth", "alpha", "albedo"}
        assert gt["normal"].shape == (SIZE, SIZE, 3) and gt["albedo"].shape == (SIZE, SIZE, 3)
        assert gt["depth"].shape == (SIZE, SIZE) and gt["alpha"].shape == (SIZE, SIZE)
        inside, empty = gt["alpha"] > 0, gt["alpha"] == 0
        np.testing.assert_allclose(np.linalg.norm(gt["normal"][inside], axis=-1), 1.0, atol=1e-4)
        assert np.all(gt["depth"][empty] == 0) and np.all(gt["depth"][inside] > 0)
        # The photo's alpha is the ground-truth coverage, 8-bit.
        np.testing.assert_allclose(_rgba(capture, fp)[..., 3], gt["alpha"], atol=0.5 / 255 + 1e-6)
        assert 0.05 < inside.mean() < 0.6  # the cow is in frame and not cropped away


def test_camera_placement(capture):
    params = json.loads((capture / "capture.json").read_text())
    positions = []
    for _, c2w, _ in _frames(capture):
        R, position = c2w[:3, :3], c2w[:3, 3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
        assert np.linalg.det(R) == pytest.approx(1.0)
        assert np.linalg.norm(position) == pytest.approx(params["radius"])
        np.testing.assert_allclose(R[:, 2], position / np.linalg.norm(position), atol=1e-9)  # -Z looks at 0
        assert abs(R[1, 0]) < 1e-9  # no roll: the camera's +X stays horizontal
        elevation = math.degrees(math.asin(position[1] / np.linalg.norm(position)))
        assert params["elevation_deg"][0] <= elevation <= params["elevation_deg"][1]
        positions.append(position)
    positions = np.array(positions)
    gaps = np.linalg.norm(positions[:, None] - positions[None], axis=-1) + np.eye(len(positions)) * 1e9
    assert gaps.min() > 0.3  # held-out views are new viewpoints, not copies of training ones


def test_mesh_vertices_project_into_the_mask(capture):
    mesh = o3d.io.read_triangle_mesh(str(capture / "gt" / "mesh.ply"))
    vertices = np.asarray(mesh.vertices)
    assert np.linalg.norm(vertices, axis=1).max() == pytest.approx(1.0, abs=1e-6)
    for fp, c2w, K in _frames(capture):
        # Every surface point, hidden or not, projects inside the object's silhouette.
        uv, depth = _project(vertices, c2w, K)
        assert np.all(depth > 0)
        cols, rows = np.floor(uv).astype(int).T
        assert np.all((cols >= 0) & (cols < SIZE) & (rows >= 0) & (rows < SIZE))
        # At the silhouette a vertex can fall between the supersampled rays of its pixel, so allow
        # a few to land one pixel outside the coverage, none further.
        alpha = _rgba(capture, fp)[..., 3]
        assert np.mean(alpha[rows, cols] > 0) > 0.97, fp
        padded = np.pad(alpha > 0, 1)
        near = np.any([padded[dy:dy + SIZE, dx:dx + SIZE] for dy in range(3) for dx in range(3)], axis=0)
        assert np.all(near[rows, cols]), fp


def test_depth_unprojects_onto_the_mesh(capture):
    mesh = o3d.io.read_triangle_mesh(str(capture / "gt" / "mesh.ply"))
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    for fp, c2w, K in _frames(capture):
        gt = _gt(capture, fp)
        rows, cols = np.nonzero(gt["alpha"] == 1.0)
        points = _unproject(rows, cols, gt["depth"][rows, cols], c2w, K)
        distance = scene.compute_distance(o3d.core.Tensor(points.astype(np.float32))).numpy()
        assert np.median(distance) < 2e-3 and np.quantile(distance, 0.95) < 1e-2, fp
        # Ground-truth normals face the camera that sees them.
        to_camera = c2w[:3, 3] - points
        to_camera /= np.linalg.norm(to_camera, axis=1, keepdims=True)
        assert np.mean(np.sum(gt["normal"][rows, cols] * to_camera, axis=1) > 0) > 0.97


def test_albedo_follows_the_obj_texture_mapping(capture):
    """Compare the albedo with an independent lookup: trimesh's OBJ UVs at the closest surface point."""
    params = json.loads((capture / "capture.json").read_text())
    obj = trimesh.load(SPOT_DIR / "spot_triangulated.obj", process=False)
    world_from_obj = np.array(params["world_from_obj"])
    vertices = np.asarray(obj.vertices) @ world_from_obj[:3, :3].T + world_from_obj[:3, 3]
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)), o3d.core.Tensor(np.asarray(obj.faces, dtype=np.uint32)))
    texture = srgb_to_linear(np.asarray(Image.open(SPOT_DIR / "spot_texture.png").convert("RGB"), dtype=np.float32) / 255)
    th, tw = texture.shape[:2]
    luminance = np.array([0.2126, 0.7152, 0.0722])
    for fp, c2w, K in _frames(capture)[:3]:
        gt = _gt(capture, fp)
        rows, cols = np.nonzero(gt["alpha"] == 1.0)
        points = _unproject(rows, cols, gt["depth"][rows, cols], c2w, K)
        closest = scene.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))
        faces = np.asarray(obj.faces)[closest["primitive_ids"].numpy().astype(np.int64)]
        b = closest["primitive_uvs"].numpy()
        weights = np.concatenate([1 - b.sum(axis=1, keepdims=True), b], axis=1)
        uv = np.einsum("nk,nkc->nc", weights, np.asarray(obj.visual.uv)[faces])
        tx = np.clip((uv[:, 0] * tw).astype(int), 0, tw - 1)
        ty = np.clip(((1 - uv[:, 1]) * th).astype(int), 0, th - 1)
        expected = texture[ty, tx] @ luminance
        got = gt["albedo"][rows, cols] @ luminance
        assert np.median(np.abs(got - expected)) < 0.02, fp
        # The spots, hooves and eyes line up (a flipped v gives a correlation near 0).
        assert np.corrcoef(got, expected)[0, 1] > 0.9, fp


def test_ambient_light_reproduces_albedo(ambient_capture):
    for _, light in read_lighting(ambient_capture / "lighting.json"):
        np.testing.assert_allclose(sh_irradiance(torch.from_numpy(light), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)).numpy(), math.pi, rtol=1e-5)
    for fp, _, _ in _frames(ambient_capture):
        gt, rgba = _gt(ambient_capture, fp), _rgba(ambient_capture, fp)
        inside = gt["alpha"] > 0
        expected = np.round(linear_to_srgb(gt["albedo"][inside]) * 255) / 255
        np.testing.assert_allclose(rgba[..., :3][inside], expected, atol=1.01 / 255)
        assert np.all(gt["shadow"] == 0)


def test_random_lighting_shading_and_light_files(capture):
    frames = _frames(capture)
    lights = read_lighting(capture / "lighting.json") + read_lighting(capture / "lighting_test.json")
    assert [fp for fp, _ in lights] == [fp for fp, _, _ in frames]
    flat = np.array([sh.ravel() for _, sh in lights])
    distinct = np.linalg.norm(flat[:, None] - flat[None], axis=-1) + np.eye(len(flat)) * 1e9
    assert distinct.min() > 1e-3  # every photo, held-out ones included, has its own light
    for (fp, _, _), (_, light) in zip(frames, lights):
        gt, rgba = _gt(capture, fp), _rgba(capture, fp)
        inside = (gt["alpha"] == 1.0) & np.all(rgba[..., :3] < 254 / 255, axis=-1)
        E = sh_irradiance(torch.from_numpy(light), torch.from_numpy(gt["normal"][inside].astype(np.float64))).numpy()
        predicted = linear_to_srgb(gt["albedo"][inside] / math.pi * E)
        assert np.median(np.abs(predicted - rgba[..., :3][inside])) < 2.0 / 255, fp
        assert np.quantile(np.abs(predicted - rgba[..., :3][inside]), 0.95) < 0.03, fp


def test_constant_lighting_is_shared(tmp_path):
    root = make_spot_capture(tmp_path, size=32, n_train=2, n_heldout=1, lighting="constant", supersample=1, nthreads=1)
    lights = [sh for _, sh in read_lighting(root / "lighting.json") + read_lighting(root / "lighting_test.json")]
    assert len(lights) == 3 and all(np.array_equal(lights[0], sh) for sh in lights)
    with pytest.raises(ValueError):
        make_spot_capture(tmp_path / "bad", size=16, n_train=1, n_heldout=0, lighting="sunny")


def test_shadows_and_specular_only_darken_or_brighten_where_expected(tmp_path):
    kwargs = dict(size=64, n_train=3, n_heldout=0, lighting="constant", seed=1, nthreads=1)
    plain = make_spot_capture(tmp_path / "plain", **kwargs)
    shadowed = make_spot_capture(tmp_path / "shadowed", shadows=True, **kwargs)
    glossy = make_spot_capture(tmp_path / "glossy", specular=0.5, **kwargs)
    total_shadow = 0.0
    for fp, _, _ in _frames(plain):
        a, b, c = (_rgba(root, fp)[..., :3].mean(axis=-1) for root in (plain, shadowed, glossy))
        shadow = _gt(shadowed, fp)["shadow"]
        total_shadow += shadow.sum()
        assert np.all(b <= a + 1.0 / 255)  # shadows never brighten
        assert np.all(np.abs(b - a)[shadow == 0] <= 1.0 / 255)  # and change nothing outside them
        if shadow.max() == 1.0:
            assert np.mean(a[shadow == 1.0] - b[shadow == 1.0]) > 0.02
        assert np.all(c >= a - 1.0 / 255) and (c - a).max() > 0.05  # highlights add light
    assert total_shadow > 10


def test_cli(tmp_path):
    main(["--out", str(tmp_path / "cli"), "--size", "24", "--train", "2", "--heldout", "1", "--lighting", "random",
          "--supersample", "1", "--threads", "1", "--seed", "5"])
    params = json.loads((tmp_path / "cli" / "capture.json").read_text())
    assert params["size"] == 24 and params["lighting"] == "random" and params["shadows"] is False
    assert (tmp_path / "cli" / "test" / "r_002.png").exists()
