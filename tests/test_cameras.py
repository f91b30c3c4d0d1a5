"""Camera conventions: OpenGL c2w <-> OpenCV w2c, projection, transforms.json reading and safety."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from stages.errors import NeroicError
from stages.common.cameras import (
    Frame,
    c2w_from_w2c,
    project,
    read_transforms,
    similarity_from_points,
    transform_c2w,
    w2c_from_c2w,
    write_transforms,
)


def random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def look_at_c2w(position, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """OpenGL c2w looking from `position` at `target` (-Z towards it, +Y towards `up`)."""
    back = np.asarray(position, float) - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, position
    return c2w


def test_opengl_opencv_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        R, t = random_rotation(rng), rng.normal(size=3)
        c2w = c2w_from_w2c(R, t)
        R2, t2 = w2c_from_c2w(c2w)
        assert np.allclose(R2, R) and np.allclose(t2, t)
        assert np.allclose(c2w_from_w2c(R2, t2), c2w)
        # The camera centre is where the world-to-camera map sends to the origin.
        assert np.allclose(R @ c2w[:3, 3] + t, 0)


def test_axes_mean_what_the_conventions_say():
    """OpenGL: looks along -Z, +Y up, +X right; pixel v grows downwards (OpenCV image rows)."""
    c2w = look_at_c2w([0.0, 0.0, 5.0])  # at +Z, looking at the origin, up +Y
    frame = Frame("a", c2w, fl_x=100.0, fl_y=100.0, cx=50.0, cy=40.0, w=100, h=80)
    points = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 10]], float)
    uv, depth = project(points, frame)
    assert np.allclose(uv[0], [50, 40]) and depth[0] == pytest.approx(5.0)
    assert uv[1][1] < 40 and uv[1][0] == pytest.approx(50)  # world up -> image top
    assert uv[2][0] > 50 and uv[2][1] == pytest.approx(40)  # world +X -> image right
    assert depth[3] < 0  # behind the camera
    R, t = w2c_from_c2w(c2w)  # OpenCV: the point in front has camera z > 0, up has camera y < 0
    assert (R @ points[0] + t)[2] > 0 and (R @ points[1] + t)[1] < (R @ points[0] + t)[1]


def test_distortion_and_scaling():
    frame = Frame("a", look_at_c2w([0, 0, 4.0]), fl_x=200.0, fl_y=210.0, cx=101.0, cy=77.0, w=200, h=150,
                  k1=-0.1, k2=0.02, p1=0.001, p2=-0.002)
    point = np.array([[0.7, -0.4, 0.3]])
    uv, _ = project(point, frame)
    x, y = 0.7 / 3.7, 0.4 / 3.7  # OpenCV normalised coordinates (y down)
    r2 = x * x + y * y
    radial = 1 - 0.1 * r2 + 0.02 * r2 * r2
    xd = x * radial + 2 * 0.001 * x * y + -0.002 * (r2 + 2 * x * x)
    yd = y * radial + 0.001 * (r2 + 2 * y * y) + 2 * -0.002 * x * y
    assert np.allclose(uv[0], [200 * xd + 101, 210 * yd + 77])
    half = frame.scaled(100, 75)
    assert np.allclose(project(point, half)[0], uv / 2)


def test_similarity_moves_cameras_and_points_together():
    rng = np.random.default_rng(1)
    frame = Frame("a", look_at_c2w([1.0, 2.0, 5.0]), fl_x=300, fl_y=300, cx=160, cy=120, w=320, h=240, k1=0.05)
    points = rng.normal(scale=0.5, size=(50, 3))
    T = np.eye(4)
    T[:3, :3] = 2.5 * random_rotation(rng)
    T[:3, 3] = rng.normal(size=3)
    moved = replace(frame, c2w=transform_c2w(T, frame.c2w))
    assert np.allclose(np.linalg.det(moved.c2w[:3, :3]), 1.0)
    assert np.allclose(project(points @ T[:3, :3].T + T[:3, 3], moved)[0], project(points, frame)[0])
    assert np.allclose(similarity_from_points(points, points @ T[:3, :3].T + T[:3, 3]), T)


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


def test_read_transforms_resolves_intrinsics(tmp_path):
    c2w = look_at_c2w([0, 0, 3.0]).tolist()
    path = write_json(tmp_path / "transforms.json", {
        "camera_angle_x": 2 * math.atan(0.5), "w": 400, "h": 300, "k1": 0.1,
        "frames": [
            {"file_path": "images/a.png", "transform_matrix": c2w},
            {"file_path": "./images/b", "transform_matrix": c2w, "fl_x": 500, "fl_y": 510, "cx": 190, "w": 380},
            {"file_path": "images\\c.jpg", "transform_matrix": c2w[:3]},
        ]})
    a, b, c = read_transforms(path)
    assert (a.stem, b.stem, c.stem) == ("a", "b", "c")
    assert a.fl_x == pytest.approx(400) and a.fl_y == pytest.approx(400)  # fl = w / 2 / tan(angle / 2)
    assert (a.cx, a.cy, a.k1, a.k2) == (200, 150, 0.1, 0)
    assert (b.fl_x, b.fl_y, b.cx, b.cy, b.w, b.h) == (500, 510, 190, 150, 380, 300)
    assert np.allclose(c.c2w, c2w)


def test_read_transforms_takes_missing_size_from_the_photos(tmp_path):
    path = write_json(tmp_path / "t.json", {"camera_angle_x": 1.0, "frames": [
        {"file_path": "r_0", "transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(NeroicError, match="no image size"):
        read_transforms(path)
    (frame,) = read_transforms(path, sizes={"r_0": (800, 600)})
    assert (frame.w, frame.h, frame.cx) == (800, 600, 400)
    assert frame.fl_x == pytest.approx(400 / math.tan(0.5))


@pytest.mark.parametrize("file_path", ["/etc/passwd", "../outside/a.png", "images/../../a.png",
                                       "..\\..\\a.png", "C:\\photos\\a.png", "C:a.png"])
def test_read_transforms_refuses_paths_outside_its_folder(tmp_path, file_path):
    folder = tmp_path / "capture"
    folder.mkdir()
    path = write_json(folder / "transforms.json", {"fl_x": 100, "w": 10, "h": 10, "frames": [
        {"file_path": "images/ok.png", "transform_matrix": np.eye(4).tolist()},
        {"file_path": file_path, "transform_matrix": np.eye(4).tolist()}]})
    with pytest.raises(NeroicError, match="refusing"):
        read_transforms(path)


def test_read_transforms_allows_a_given_root_and_refuses_symlink_escapes(tmp_path):
    (tmp_path / "capture").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "capture" / "link").symlink_to(tmp_path / "photos")
    frames = [{"file_path": "../photos/a.png", "transform_matrix": np.eye(4).tolist()}]
    path = write_json(tmp_path / "capture" / "transforms.json", {"fl_x": 100, "w": 10, "h": 10, "frames": frames})
    assert read_transforms(path, roots=[tmp_path / "photos"])[0].stem == "a"
    frames[0]["file_path"] = "link/a.png"
    write_json(path, {"fl_x": 100, "w": 10, "h": 10, "frames": frames})
    with pytest.raises(NeroicError, match="refusing"):
        read_transforms(path)


@pytest.mark.parametrize("change, message", [
    ({"camera_model": "OPENCV_FISHEYE"}, "not supported"),
    ({"k3": 0.1}, "k3"),
    ({"frames": []}, "no frames"),
    ({"fl_x": "wide"}, "not a number"),
    ({"frames": [{"file_path": "a.png", "transform_matrix": (2 * np.eye(4)).tolist()}]}, "not a rotation"),
    ({"frames": [{"file_path": "a.png", "transform_matrix": np.diag([1, 1, -1, 1.0]).tolist()}]}, "not a rotation"),
    ({"frames": [{"file_path": "a.png", "transform_matrix": [[1, 2], [3, 4]]}]}, "4x4"),
])
def test_read_transforms_rejects_bad_files(tmp_path, change, message):
    data = {"fl_x": 100, "w": 10, "h": 10,
            "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}], **change}
    with pytest.raises(NeroicError, match=message):
        read_transforms(write_json(tmp_path / "transforms.json", data))


def test_write_then_read_transforms(tmp_path):
    rng = np.random.default_rng(2)
    frames = [Frame(f"s{i}", c2w_from_w2c(random_rotation(rng), rng.normal(size=3)), fl_x=300 + i, fl_y=301 + i,
                    cx=160.5, cy=119.5, w=320, h=240, k1=0.01 * i, k2=-0.001, p1=1e-4, p2=-1e-4,
                    file_path=f"images/s{i}.png", mask_path=f"masks/s{i}.png") for i in range(3)]
    write_transforms(tmp_path / "transforms.json", frames, "OPENCV")
    data = json.loads((tmp_path / "transforms.json").read_text())
    assert data["camera_model"] == "OPENCV" and data["frames"][1]["stem"] == "s1"
    back = read_transforms(tmp_path / "transforms.json")
    for a, b in zip(frames, back):
        assert np.allclose(a.c2w, b.c2w) and a.file_path == b.file_path and a.mask_path == b.mask_path
        assert (a.fl_x, a.fl_y, a.cx, a.cy, a.w, a.h, a.k1, a.k2, a.p1, a.p2) == \
               (b.fl_x, b.fl_y, b.cx, b.cy, b.w, b.h, b.k1, b.k2, b.p1, b.p2)
