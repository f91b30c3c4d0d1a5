"""Order-2 real spherical-harmonic lighting, in the convention every stage shares (docs/method.md).

One light is 9 coefficients per colour channel, an array [9, 3] (linear RGB), in the basis order
Y00, Y1-1, Y10, Y11, Y2-2, Y2-1, Y20, Y21, Y22. Directions are unit vectors in world coordinates.
Incoming radiance is L(w) = sum_i c_i Y_i(w); irradiance E(n) = sum_i A_l(i) c_i Y_i(n) with the
cosine-lobe factors A = (pi, 2pi/3, pi/4); a Lambertian surface reflects albedo / pi * E(n).

The shading functions take torch tensors and are differentiable and batched, because training
optimises the coefficients through them; numpy callers wrap with torch.from_numpy. File I/O,
environment projection and the helpers for synthetic data work on numpy.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

N_COEFFS = 9

# Band l of each coefficient, in basis order.
SH_BANDS = (0, 1, 1, 1, 2, 2, 2, 2, 2)

# Cosine-lobe convolution factor A_l per coefficient: turns radiance coefficients into irradiance.
COSINE_LOBE = (math.pi,) + (2.0 * math.pi / 3.0,) * 3 + (math.pi / 4.0,) * 5


def sh_basis(dirs: torch.Tensor) -> torch.Tensor:
    """Real SH basis Y_0..Y_8 at unit directions: dirs [..., 3] (x, y, z) -> [..., 9]."""
    x, y, z = dirs.unbind(-1)
    return torch.stack(
        [
            torch.full_like(x, 0.282095),
            0.488603 * y,
            0.488603 * z,
            0.488603 * x,
            1.092548 * x * y,
            1.092548 * y * z,
            0.315392 * (3.0 * z * z - 1.0),
            1.092548 * x * z,
            0.546274 * (x * x - y * y),
        ],
        dim=-1,
    )


def _weighted_sum(coeffs: torch.Tensor, weighted_basis: torch.Tensor) -> torch.Tensor:
    """sum_i w_i Y_i c_i: coeffs [9, 3] or [..., 9, 3], weighted_basis [..., 9] -> [..., 3]."""
    if coeffs.shape[-2:] != (N_COEFFS, 3):
        raise ValueError(f"SH coefficients must have shape [..., 9, 3], got {tuple(coeffs.shape)}")
    if coeffs.dim() == 2:  # one light for every point: a matrix product, not an [..., 9, 3] temporary
        dtype = torch.promote_types(weighted_basis.dtype, coeffs.dtype)
        return weighted_basis.to(dtype) @ coeffs.to(dtype)
    return (weighted_basis.unsqueeze(-1) * coeffs).sum(dim=-2)


def sh_radiance(coeffs: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Incoming radiance L(w) from direction w, linear RGB.

    coeffs [9, 3] (one light) or [..., 9, 3] (broadcast against dirs' batch), dirs [..., 3] -> [..., 3].
    """
    return _weighted_sum(coeffs, sh_basis(dirs))


def sh_irradiance(coeffs: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Irradiance E(n) = integral of L(w) max(n.w, 0) dw, linear RGB.

    Exact for the band-limited (order-2) radiance the coefficients describe.
    coeffs [9, 3] or [..., 9, 3], normals [..., 3] unit -> [..., 3]. Diffuse colour is albedo / pi * E.
    """
    lobe = torch.tensor(COSINE_LOBE, dtype=normals.dtype, device=normals.device)
    return _weighted_sum(coeffs, sh_basis(normals) * lobe)


def sh_specular(coeffs: torch.Tensor, reflect_dirs: torch.Tensor, glossiness) -> torch.Tensor:
    """Phong-style glossy reflection: sum_l exp(-l^2 / (2 s)) sum_m c_lm Y_lm(r), linear RGB.

    This is NeROIC's specular term: the light convolved with a lobe around the reflection direction
    whose width shrinks as the glossiness s grows (s -> inf gives the radiance L(r)).
    coeffs [9, 3] or [..., 9, 3]; reflect_dirs [..., 3] unit; glossiness a float or a positive
    tensor of shape [...] or [..., 1] -> [..., 3]. Multiply by the specular strength outside.
    """
    s = torch.as_tensor(glossiness, dtype=reflect_dirs.dtype, device=reflect_dirs.device)
    if s.dim() > 0 and s.shape == reflect_dirs.shape[:-1]:
        s = s.unsqueeze(-1)
    bands = torch.tensor(SH_BANDS, dtype=reflect_dirs.dtype, device=reflect_dirs.device)
    attenuation = torch.exp(-(bands * bands) / (2.0 * s))  # [..., 9]
    return _weighted_sum(coeffs, sh_basis(reflect_dirs) * attenuation)


def _check_coeffs(sh, where: str) -> np.ndarray:
    """Validate one light as a finite [9, 3] float array; `where` names it in the error."""
    try:
        arr = np.asarray(sh, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: SH coefficients are not numeric ({exc})") from None
    if arr.shape != (N_COEFFS, 3):
        raise ValueError(f"{where}: SH coefficients must be 9 rows of [r, g, b] (shape [9, 3]), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where}: SH coefficients contain NaN or infinity")
    return arr


def read_lighting(path: str | Path) -> list[tuple[str | None, np.ndarray]]:
    """Read a lighting file: JSON list of {"file_path"?, "sh": [[r, g, b] x 9]} -> [(file_path or None, [9, 3])].

    A bare object {"sh": ...} is accepted as a single light. Coefficients are linear RGB radiance.
    """
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: a lighting file must hold a JSON list of lights, got {type(data).__name__}")
    out = []
    for k, entry in enumerate(data):
        where = f"{path} entry {k}"
        if not isinstance(entry, dict) or "sh" not in entry:
            raise ValueError(f"{where}: each light must be an object with an 'sh' key")
        file_path = entry.get("file_path")
        if file_path is not None and not isinstance(file_path, str):
            raise ValueError(f"{where}: 'file_path' must be a string")
        out.append((file_path, _check_coeffs(entry["sh"], where)))
    return out


def write_lighting(path: str | Path, entries: Iterable[tuple[str | None, Sequence]]) -> None:
    """Write lights [(file_path or None, [9, 3] linear RGB)] as the shared JSON lighting format."""
    records = []
    for k, (file_path, sh) in enumerate(entries):
        arr = _check_coeffs(sh, f"light {k}")
        record = {} if file_path is None else {"file_path": str(file_path)}
        record["sh"] = [[float(v) for v in row] for row in arr]
        records.append(record)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
        f.write("\n")


def equirect_directions(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre directions and exact solid angles of an equirectangular (lat-long) image.

    Orientation: +Y is up; row 0 is the zenith (+Y), the last row the nadir (-Y). With polar angle
    theta from +Y and longitude phi = 2 pi (col + 0.5) / width, the direction is
    (sin theta sin phi, cos theta, -sin theta cos phi): the left and right edges look along -Z, the
    quarter column along +X, the centre column along +Z and the three-quarter column along -X, so
    the image reads unmirrored as seen from inside the sphere.
    Returns dirs [H, W, 3] unit and solid angles [H, W] (steradians; they sum to 4 pi).
    """
    theta_edges = np.linspace(0.0, np.pi, height + 1)
    theta = 0.5 * (theta_edges[:-1] + theta_edges[1:])
    phi = 2.0 * np.pi * (np.arange(width) + 0.5) / width
    st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
    sp, cp = np.sin(phi)[None, :], np.cos(phi)[None, :]
    dirs = np.stack(np.broadcast_arrays(st * sp, ct, -st * cp), axis=-1)
    row_solid_angle = (np.cos(theta_edges[:-1]) - np.cos(theta_edges[1:])) * (2.0 * np.pi / width)
    solid_angle = np.broadcast_to(row_solid_angle[:, None], (height, width)).copy()
    return dirs, solid_angle


def project_env_to_sh(equirect_linear_rgb: np.ndarray) -> np.ndarray:
    """Project an equirectangular environment (orientation: see equirect_directions) to SH.

    equirect_linear_rgb [H, W, 3] linear RGB radiance -> coefficients [9, 3] (float64), the
    least-squares order-2 fit c_i = integral L(w) Y_i(w) dw with per-pixel solid-angle weights.
    """
    env = np.asarray(equirect_linear_rgb, dtype=np.float64)
    if env.ndim != 3 or env.shape[2] != 3:
        raise ValueError(f"environment must be an [H, W, 3] image, got shape {env.shape}")
    dirs, solid_angle = equirect_directions(env.shape[0], env.shape[1])
    basis = sh_basis(torch.from_numpy(dirs)).numpy()  # [H, W, 9]
    return np.einsum("hwi,hwc,hw->ic", basis, env, solid_angle)


def fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly uniform unit directions [n, 3] on the sphere (golden-angle spiral), deterministic."""
    k = np.arange(n) + 0.5
    y = 1.0 - 2.0 * k / n
    r = np.sqrt(np.clip(1.0 - y * y, 0.0, None))
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), y, r * np.sin(phi)], axis=-1)


def rotate_sh(coeffs: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The light [9, 3] turned by a rotation [3, 3] (world directions d -> R d): L'(d) = L(R^T d).
    Rotations keep each band, so a least-squares refit on many directions is exact."""
    dirs = fibonacci_sphere(512)
    turned = dirs @ np.asarray(rotation, dtype=np.float64)  # rows: R^T d
    basis = sh_basis(torch.from_numpy(dirs)).numpy()
    radiance = sh_basis(torch.from_numpy(turned)).numpy() @ np.asarray(coeffs, dtype=np.float64)
    return np.linalg.lstsq(basis, radiance, rcond=None)[0]


def sh_dominant_direction(coeffs: np.ndarray) -> np.ndarray:
    """Unit direction [3] where the light's order-1 (linear) part is brightest, by luminance.

    Used to aim cast-shadow rays; coeffs [9, 3] linear RGB. Falls back to +Y for a light with no
    directional part.
    """
    c = np.asarray(coeffs, dtype=np.float64)
    lum = c @ np.array([0.2126, 0.7152, 0.0722])
    d = np.array([lum[3], lum[1], lum[2]])  # Y11 ~ x, Y1-1 ~ y, Y10 ~ z
    norm = np.linalg.norm(d)
    return d / norm if norm > 1e-12 else np.array([0.0, 1.0, 0.0])


def ambient_sh(radiance_rgb: Sequence[float]) -> np.ndarray:
    """Constant light [9, 3] with the given linear radiance per channel (E = pi L everywhere)."""
    c = np.zeros((N_COEFFS, 3))
    c[0] = np.asarray(radiance_rgb, dtype=np.float64) / 0.282095
    return c


def random_sh_light(
    rng: np.random.Generator,
    ambient: tuple[float, float] = (0.15, 0.35),
    directional: tuple[float, float] = (0.45, 0.75),
    sharpness: tuple[float, float] = (1.0, 3.0),
    tint: float = 0.12,
    elevation_deg: tuple[float, float] = (10.0, 80.0),
    min_radiance: float = 0.02,
) -> np.ndarray:
    """A plausible random light [9, 3] (linear RGB radiance) for synthetic captures.

    A tinted constant ambient plus one tinted lobe from a random direction above the horizon.
    `ambient` is the range of the ambient radiance (a white surface shows it as its colour);
    `directional` the range of what the lobe adds to a white surface facing it (E_lobe / pi);
    the lobe's band weights are exp(-l^2 / (2 s)) with s drawn from `sharpness` (higher: harder light).
    The truncated lobe dips below zero behind itself, so the radiance is sampled over the sphere and
    the ambient raised until every direction gets at least `min_radiance`.
    """
    def tinted():
        colour = np.clip(1.0 + tint * rng.standard_normal(3), 0.5, 1.5)
        return colour / colour.mean()

    elevation = math.radians(rng.uniform(*elevation_deg))
    azimuth = rng.uniform(0.0, 2.0 * math.pi)
    direction = np.array([
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
        math.cos(elevation) * math.cos(azimuth),
    ])
    s = rng.uniform(*sharpness)
    band_weight = np.exp(-np.asarray(SH_BANDS, dtype=np.float64) ** 2 / (2.0 * s))
    basis_at_light = sh_basis(torch.from_numpy(direction)).numpy()  # [9]
    zonal = band_weight * basis_at_light
    # Scale so that the lobe's irradiance at a normal facing it equals pi * directional.
    irradiance_facing = float(np.sum(np.asarray(COSINE_LOBE) * zonal * basis_at_light))
    strength = rng.uniform(*directional) * math.pi / irradiance_facing
    coeffs = np.outer(zonal * strength, tinted()) + ambient_sh(rng.uniform(*ambient) * tinted())

    samples = torch.from_numpy(fibonacci_sphere(2000))
    lowest = sh_radiance(torch.from_numpy(coeffs), samples).numpy().min(axis=0)  # [3]
    coeffs[0] += np.maximum(min_radiance - lowest, 0.0) / 0.282095
    return coeffs


def render_lit_sphere(coeffs, size: int, albedo: Sequence[float] = (0.8, 0.8, 0.8),
                      rotation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A Lambertian sphere lit by the light, seen orthographically from +Z with +Y up, or by a
    camera whose camera-to-world rotation [3, 3] (OpenGL axes) is `rotation`: the hemisphere of
    the light that camera's photo shows.

    coeffs [9, 3] (numpy or torch) linear RGB; albedo linear RGB. Returns (image [size, size, 3]
    linear RGB, unclipped, zero outside the disc; alpha [size, size] in [0, 1], anti-aliased edge).
    """
    c = coeffs.detach().double().cpu() if torch.is_tensor(coeffs) else torch.from_numpy(np.asarray(coeffs, dtype=np.float64))
    t = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(t, -t)  # row 0 is the top (+Y)
    r = np.sqrt(x * x + y * y)
    alpha = np.clip((1.0 - r) * size / 2.0 + 0.5, 0.0, 1.0)
    z = np.sqrt(np.clip(1.0 - r * r, 0.0, None))
    normals = np.stack([x, y, z], axis=-1) / np.maximum(r, 1.0)[..., None]
    if rotation is not None:
        normals = normals @ np.asarray(rotation, dtype=np.float64).T
    irradiance = sh_irradiance(c, torch.from_numpy(normals)).numpy()
    image = np.asarray(albedo, dtype=np.float64) / math.pi * irradiance * (alpha > 0)[..., None]
    return image, alpha
