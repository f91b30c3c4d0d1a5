"""Camera conventions every stage shares, the lens model, and reading/writing transforms.json.

The distortion functions use arithmetic only, so numpy arrays and torch tensors both go through
them (stages.field.rays forms the training rays with the same code the exporters use).

Frames and axes
- World: the pipeline's normalised world is right-handed, +Y up (glTF), object at the origin.
- Camera-to-world `c2w` [4, 4] uses OpenGL camera axes (camera looks along -Z, +Y up, +X right),
  as transforms.json (nerfstudio, instant-ngp) stores it.
- COLMAP / OpenCV store world-to-camera (R [3, 3], t [3]) with OpenCV camera axes (looks along
  +Z, +Y down, +X right): x_cam = R @ x_world + t. The two camera frames differ by flipping Y and Z.
- Pixels: origin at the top-left corner of the image, so the top-left pixel's centre is (0.5, 0.5)
  (COLMAP's and nerfstudio's convention); cx, cy, fl_x, fl_y are in pixels of a w x h image.
- Distortion: OpenCV radial-tangential k1, k2, p1, p2 on normalised camera coordinates.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path, PureWindowsPath
from typing import Iterable, Mapping

import numpy as np

from stages.errors import NeroicError

# Flips the camera's Y and Z axes: OpenCV camera axes <-> OpenGL camera axes (its own inverse).
FLIP_YZ = np.diag([1.0, -1.0, -1.0])

# COLMAP camera models that transforms.json's k1 k2 p1 p2 can express exactly.
PERSPECTIVE_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
DISTORTION_KEYS = ("k1", "k2", "p1", "p2")
PATH_KEYS = ("file_path", "mask_path", "depth_file_path")


@dataclass
class Frame:
    """One photo's camera: OpenGL camera-to-world plus pinhole intrinsics and distortion."""

    stem: str
    c2w: np.ndarray  # [4, 4] camera-to-world, OpenGL camera axes
    fl_x: float
    fl_y: float
    cx: float
    cy: float
    w: int
    h: int
    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    file_path: str = ""
    mask_path: str | None = None

    @property
    def K(self) -> np.ndarray:
        """[3, 3] intrinsic matrix in this frame's pixels."""
        return np.array([[self.fl_x, 0.0, self.cx], [0.0, self.fl_y, self.cy], [0.0, 0.0, 1.0]])

    @property
    def centre(self) -> np.ndarray:
        """[3] camera centre in world coordinates."""
        return np.asarray(self.c2w, dtype=float)[:3, 3].copy()

    def scaled(self, width: int, height: int) -> "Frame":
        """The same camera for the image resized to width x height (distortion is unitless)."""
        sx, sy = width / self.w, height / self.h
        return replace(self, fl_x=self.fl_x * sx, fl_y=self.fl_y * sy, cx=self.cx * sx, cy=self.cy * sy,
                       w=int(width), h=int(height))

    def shrunk(self, max_size: int) -> "Frame":
        """The same camera for the image shrunk so its longer side is at most max_size pixels
        (unchanged when already smaller, or max_size is 0)."""
        if not max_size or max(self.w, self.h) <= max_size:
            return self
        scale = max_size / max(self.w, self.h)
        return self.scaled(max(1, round(self.w * scale)), max(1, round(self.h * scale)))


def c2w_from_w2c(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """COLMAP/OpenCV world-to-camera (R [3, 3], t [3]) -> OpenGL camera-to-world [4, 4]."""
    R = np.asarray(R, dtype=float)
    c2w = np.eye(4)
    c2w[:3, :3] = R.T @ FLIP_YZ
    c2w[:3, 3] = -R.T @ np.asarray(t, dtype=float)
    return c2w


def w2c_from_c2w(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenGL camera-to-world [4, 4] (or [3, 4]) -> COLMAP/OpenCV world-to-camera (R [3, 3], t [3])."""
    c2w = np.asarray(c2w, dtype=float)
    R = (c2w[:3, :3] @ FLIP_YZ).T
    return R, -R @ c2w[:3, 3]


def transform_c2w(world_from_old: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Re-express an OpenGL c2w [4, 4] in a new world related by a similarity [4, 4] (new <- old).

    The similarity's scale moves the camera centre but is removed from the camera's rotation.
    """
    T = np.asarray(world_from_old, dtype=float)
    scale = np.cbrt(np.linalg.det(T[:3, :3]))
    out = np.eye(4)
    out[:3, :3] = (T[:3, :3] / scale) @ np.asarray(c2w, dtype=float)[:3, :3]
    out[:3, 3] = T[:3, :3] @ np.asarray(c2w, dtype=float)[:3, 3] + T[:3, 3]
    return out


def distort(x, y, k1, k2, p1, p2):
    """OpenCV radial-tangential distortion of normalised camera coordinates x, y (arrays or
    tensors of one shape; the coefficients scalars or of that shape) -> (xd, yd)."""
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * k2)
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


def undistort(xd, yd, k1, k2, p1, p2, iterations: int = 10, tolerance: float = 1e-7):
    """Invert `distort` by fixed-point iteration (exact when the coefficients are zero), stopping
    once no point moves more than `tolerance` (normalised units: a photo's pixels are ~1e-3)."""
    x, y = xd, yd
    if len(x.reshape(-1)) == 0:
        return x, y
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * k2)
        x_next = (xd - (2 * p1 * x * y + p2 * (r2 + 2 * x * x))) / radial
        y_next = (yd - (p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)) / radial
        moved = max(float(abs(x_next - x).max()), float(abs(y_next - y).max()))
        x, y = x_next, y_next
        if moved < tolerance:
            break
    return x, y


def orbit_frames(n: int, template: Frame, distance: float, centre=(0.0, 0.0, 0.0), elevation_deg: float = 20.0,
                 stem: str = "orbit") -> list[Frame]:
    """n cameras evenly around the +Y axis through `centre`, looking at it from `distance` at the
    given elevation, with the template's intrinsics and size. Frame k sits at azimuth 360 k / n
    degrees, starting on +Z; its stem is f"{stem}_{k:03d}"."""
    centre = np.asarray(centre, dtype=np.float64)
    el = math.radians(elevation_deg)
    frames = []
    for k in range(n):
        az = 2.0 * math.pi * k / n
        back = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])  # camera +Z
        right = np.cross([0.0, 1.0, 0.0], back)
        right /= np.linalg.norm(right)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, centre + distance * back
        frames.append(replace(template, stem=f"{stem}_{k:03d}", c2w=c2w, file_path=f"{stem}_{k:03d}.png",
                              mask_path=None))
    return frames


def square_frame(size: int, fov_deg: float) -> Frame:
    """A pinhole camera of size x size pixels and the given field of view, at the origin."""
    focal = 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)
    return Frame(stem="camera", c2w=np.eye(4), fl_x=focal, fl_y=focal, cx=size / 2.0, cy=size / 2.0, w=size, h=size)


def project(points_world: np.ndarray, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """World points [N, 3] -> pixel coordinates [N, 2] (see the module's pixel convention) and
    depth [N] along the viewing direction (positive in front of the camera)."""
    R, t = w2c_from_c2w(frame.c2w)
    cam = np.asarray(points_world, dtype=float) @ R.T + t  # OpenCV camera axes
    depth = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = cam[:, :2] / depth[:, None]
    x, y = distort(xy[:, 0], xy[:, 1], frame.k1, frame.k2, frame.p1, frame.p2)
    return np.stack([x * frame.fl_x + frame.cx, y * frame.fl_y + frame.cy], axis=1), depth


def similarity_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity [4, 4] with dst ~ s R src + t (Umeyama 1991), src/dst [N, 3]."""
    src, dst = np.asarray(src, dtype=float), np.asarray(dst, dtype=float)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(b.T @ a / len(src))
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1.0
    R = U @ D @ Vt
    scale = np.trace(np.diag(S) @ D) / (a * a).sum(1).mean()
    T = np.eye(4)
    T[:3, :3] = scale * R
    T[:3, 3] = mu_d - scale * R @ mu_s
    return T


def robust_similarity(src: np.ndarray, dst: np.ndarray, factor: float = 3.0,
                      min_points: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """The similarity [4, 4] mapping points src [N, 3] onto dst [N, 3] (camera centres), fitted
    again on the points it already maps within `factor` x the median error (while `min_points`
    remain), so that a few cameras placed wrong do not tilt it; and that inlier mask [N]."""
    inliers = np.ones(len(src), dtype=bool)
    for _ in range(3):
        T = similarity_from_points(src[inliers], dst[inliers])
        error = np.linalg.norm(src @ T[:3, :3].T + T[:3, 3] - dst, axis=1)
        keep = error <= factor * max(float(np.median(error)), 1e-12)
        if keep.sum() < min_points or np.array_equal(keep, inliers):
            break
        inliers = keep
    return T, inliers


def rotation_angle(R: np.ndarray) -> float:
    """Degrees turned by the rotation matrix R [3, 3]."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))))


# -- transforms.json ------------------------------------------------------------------------

def safe_path(base: Path, relative: str, roots: Iterable[Path], what: str) -> Path:
    """`base / relative`, refusing absolute paths and anything that resolves outside `roots`.

    A transforms.json is user input: its paths must not reach files elsewhere on the machine.
    """
    if not isinstance(relative, str) or not relative:
        raise NeroicError(f"{what}: a frame's path is missing or not a string")
    if Path(relative).is_absolute() or PureWindowsPath(relative).is_absolute() or PureWindowsPath(relative).drive:
        raise NeroicError(f"{what}: refusing the absolute path {relative!r}",
                          hint="paths in transforms.json must be relative to its folder")
    resolved = (base / relative.replace("\\", "/")).resolve()  # Windows separators count too
    for root in roots:
        if resolved.is_relative_to(Path(root).resolve()):
            return resolved
    raise NeroicError(f"{what}: refusing {relative!r}, which points outside "
                      + " and ".join(str(Path(r)) for r in roots),
                      hint="paths in transforms.json must stay inside its folder or the photo folder")


def _number(value, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise NeroicError(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(v):
        raise NeroicError(f"{what} is not finite: {value!r}")
    return v


def _frame_intrinsics(frame: dict, top: dict, size: tuple[int, int] | None, what: str) -> dict:
    """Per-frame intrinsics from frame keys, else global keys, else the photo's size and defaults."""
    def get(key):
        return frame.get(key, top.get(key))

    w, h = get("w"), get("h")
    if w is None or h is None:
        if size is None:
            raise NeroicError(f"{what}: no image size (w, h) in transforms.json and no photo to take it from")
        w, h = size
    w, h = int(_number(w, f"{what} w")), int(_number(h, f"{what} h"))
    if w <= 0 or h <= 0:
        raise NeroicError(f"{what}: image size {w} x {h} is not positive")
    def focal(axis: str, pixels: int) -> float | None:
        """fl_<axis> in pixels, or from camera_angle_<axis> (full field of view, radians)."""
        if get(f"fl_{axis}") is not None:
            return _number(get(f"fl_{axis}"), f"{what} fl_{axis}")
        if get(f"camera_angle_{axis}") is not None:
            return 0.5 * pixels / math.tan(0.5 * _number(get(f"camera_angle_{axis}"), f"{what} camera_angle_{axis}"))
        return None

    fl_x = focal("x", w)
    if fl_x is None:
        raise NeroicError(f"{what}: no focal length (fl_x or camera_angle_x)")
    fl_y = focal("y", h)
    fl_y = fl_x if fl_y is None else fl_y
    if fl_x <= 0 or fl_y <= 0:
        raise NeroicError(f"{what}: focal length must be positive")
    for key in ("k3", "k4"):
        if get(key) is not None and _number(get(key), f"{what} {key}") != 0.0:
            raise NeroicError(f"{what}: distortion {key} is not supported (only k1 k2 p1 p2)",
                              hint="undistort the photos first, or import a COLMAP model with an OPENCV camera")
    return {"w": w, "h": h, "fl_x": fl_x, "fl_y": fl_y,
            "cx": _number(get("cx"), f"{what} cx") if get("cx") is not None else w / 2.0,
            "cy": _number(get("cy"), f"{what} cy") if get("cy") is not None else h / 2.0,
            **{k: _number(get(k), f"{what} {k}") if get(k) is not None else 0.0 for k in DISTORTION_KEYS}}


def _matrix(value, what: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise NeroicError(f"{what}: transform_matrix is not a matrix of numbers") from None
    if m.shape not in ((4, 4), (3, 4)) or not np.isfinite(m).all():
        raise NeroicError(f"{what}: transform_matrix must be a finite 4x4 (or 3x4) matrix")
    c2w = np.eye(4)
    c2w[:3] = m[:3]
    return c2w


def frame_stem(file_path: str) -> str:
    """The photo a frame refers to: its file name without the extension."""
    return Path(file_path.replace("\\", "/")).stem


def read_transforms(path: Path, roots: Iterable[Path] = (),
                    sizes: Mapping[str, tuple[int, int]] | None = None) -> list[Frame]:
    """Frames of a nerfstudio / instant-ngp transforms.json, with per-frame intrinsics resolved.

    Paths in the file must resolve inside its folder or one of `roots` (NeroicError otherwise);
    they are not opened. `sizes` (stem -> (width, height)) supplies the image size when the file
    lacks w/h. Intrinsics are those of the file's w x h; use `Frame.scaled` for resized photos.
    Rotations are kept as given (the user's world must survive exactly) unless they drift from
    orthonormal by more than 1e-6 (float32 files), then they are snapped to the nearest rotation.
    """
    path = Path(path)
    try:
        top = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise NeroicError(f"cannot read {path}: {e}") from None
    except ValueError as e:
        raise NeroicError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(top, dict) or not isinstance(top.get("frames"), list) or not top["frames"]:
        raise NeroicError(f"{path} has no frames", hint="expected a nerfstudio / instant-ngp transforms.json")
    model = top.get("camera_model", "OPENCV")
    if model not in PERSPECTIVE_MODELS:
        raise NeroicError(f"{path}: camera model {model!r} is not supported",
                          hint=f"use one of {', '.join(PERSPECTIVE_MODELS)} (perspective, k1 k2 p1 p2)")
    roots = [path.parent.resolve(), *roots]
    frames = []
    for i, raw in enumerate(top["frames"]):
        what = f"{path.name} frame {i}"
        if not isinstance(raw, dict):
            raise NeroicError(f"{what} is not an object")
        for key in PATH_KEYS:
            if key in raw:
                safe_path(path.parent, raw[key], roots, what)
        if "file_path" not in raw:
            raise NeroicError(f"{what} has no file_path")
        stem = frame_stem(raw["file_path"])
        c2w = _matrix(raw.get("transform_matrix"), what)
        U, S, Vt = np.linalg.svd(c2w[:3, :3])
        if np.abs(S - 1.0).max() > 1e-2 or np.linalg.det(U @ Vt) < 0:
            raise NeroicError(f"{what}: transform_matrix's 3x3 part is not a rotation (scaled or mirrored)")
        if np.abs(S - 1.0).max() > 1e-6:  # float32 drift: snap to the nearest rotation
            c2w[:3, :3] = U @ Vt
        intr = _frame_intrinsics(raw, top, (sizes or {}).get(stem), what)
        frames.append(Frame(stem=stem, c2w=c2w, file_path=raw["file_path"], mask_path=raw.get("mask_path"),
                            **intr))
    return frames


def write_transforms(path: Path, frames: list[Frame], camera_model: str) -> None:
    """Write frames as transforms.json with per-frame intrinsics and distortion (OpenGL c2w)."""
    out_frames = []
    for f in frames:
        entry = {"file_path": f.file_path}
        if f.mask_path is not None:
            entry["mask_path"] = f.mask_path
        entry.update({"stem": f.stem, "fl_x": f.fl_x, "fl_y": f.fl_y, "cx": f.cx, "cy": f.cy,
                      "w": int(f.w), "h": int(f.h), "k1": f.k1, "k2": f.k2, "p1": f.p1, "p2": f.p2,
                      "transform_matrix": np.asarray(f.c2w, dtype=float).tolist()})
        out_frames.append(entry)
    data = {"camera_model": camera_model, "frames": out_frames}
    Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
