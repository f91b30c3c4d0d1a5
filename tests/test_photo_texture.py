"""The albedo read from the photos: with the true surface and the true lights, de-lighting each
photo and fusing them gives back the true albedo, shadows and highlights included; a photo with
an occluder in front is outvoted."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import trimesh

from stages.common.cameras import read_transforms
from stages.common.colour import linear_to_srgb
from stages.common.images import read_rgb
from stages.common.sh import read_lighting
from stages.export.photo_texture import PhotoAlbedo, PhotoView, fuse
from tests.synthetic.spot_capture import load_spot, make_spot_capture, sample_texture


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    return make_spot_capture(tmp_path_factory.mktemp("photo_texture"), size=128, n_train=12, n_heldout=0,
                             lighting="random", specular=0.15, glossiness=20.0, shadows=True, seed=5,
                             supersample=1, nthreads=1)


def _views(capture, occluded: str | None = None) -> list[PhotoView]:
    lights = dict(read_lighting(capture / "lighting.json"))
    views = []
    for frame in read_transforms(capture / "transforms.json"):
        rgba = read_rgb(capture / frame.file_path)
        from PIL import Image

        with Image.open(capture / frame.file_path) as im:
            mask = np.asarray(im.convert("RGBA"))[..., 3] > 127
        if frame.stem == occluded:  # a grey post across the middle of the photo
            rgba = rgba.copy()
            rgba[:, 54:74] = 128
        views.append(PhotoView(frame, rgba, mask, lights[frame.file_path]))
    return views


def _surface_points(n: int = 4000):
    """Points on the true surface with their smooth normals and true albedo (linear RGB)."""
    spot = load_spot()
    split = trimesh.Trimesh(spot.vertices, spot.faces, process=False)
    points, face = trimesh.sample.sample_surface(split, n, seed=1)
    bary = trimesh.triangles.points_to_barycentric(split.triangles[face], points)
    corners = spot.faces[face]
    normals = np.einsum("nk,nkc->nc", bary, spot.normals[corners])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    albedo = sample_texture(spot.texture, np.einsum("nk,nkc->nc", bary, spot.uvs[corners]))
    return spot, points, normals, albedo


def test_de_lit_photos_give_back_the_true_albedo(capture):
    spot, points, normals, truth = _surface_points()
    mesh = trimesh.Trimesh(spot.mesh_vertices, spot.mesh_faces, process=False)
    photos = PhotoAlbedo(mesh, _views(capture))
    n = len(points)
    albedo, confidence = photos.estimate(points, normals, normals, np.full(n, 0.15), np.full(n, 20.0))
    seen = confidence > 0.75  # at least two photos agree
    assert seen.mean() > 0.7  # 12 photos around and above the cow see most of it
    error = linear_to_srgb(torch.from_numpy(albedo[seen])) - linear_to_srgb(torch.from_numpy(truth[seen]))
    psnr = -10 * np.log10(float((error ** 2).mean()))
    assert psnr > 27.0, psnr  # exact up to 8-bit dark pixels and filtering at the texture's patch edges

    # a post in front of one photo: where two photos see a point and disagree, the confidence says
    # so (the material field's albedo takes over there); where more agree, the post is outvoted
    occluded = PhotoAlbedo(mesh, _views(capture, occluded="r_003"))
    albedo_occluded, confidence = occluded.estimate(points, normals, normals, np.full(n, 0.15), np.full(n, 20.0))
    trusted = confidence > 0.75
    assert trusted.mean() > 0.65
    error = linear_to_srgb(torch.from_numpy(albedo_occluded[trusted])) - linear_to_srgb(torch.from_numpy(truth[trusted]))
    assert -10 * np.log10(float((error ** 2).mean())) > psnr - 1.0


def test_points_that_some_photos_do_not_see_raise_no_warning(capture):
    """The bake asks in chunks; a photo that sees none of a chunk's points gives no estimate and
    no numpy warning on the user's terminal (the skull's export printed "Mean of empty slice")."""
    spot, points, normals, _ = _surface_points()
    mesh = trimesh.Trimesh(spot.mesh_vertices, spot.mesh_faces, process=False)
    photos = PhotoAlbedo(mesh, _views(capture))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, confidence = photos.estimate(points[:1], normals[:1], normals[:1], np.full(1, 0.15), np.full(1, 20.0))
    assert confidence.shape == (1,)


def test_fusion_keeps_the_consensus_and_drops_outliers():
    rng = np.random.default_rng(0)
    truth = np.array([0.6, 0.4, 0.2], dtype=np.float32)
    samples = np.tile(truth, (7, 100, 1)) * (1 + 0.02 * rng.standard_normal((7, 100, 1))).astype(np.float32)
    samples[0] *= 0.3  # a cast shadow the light model missed
    samples[1] *= 2.5  # a highlight
    weights = np.ones((7, 100), dtype=np.float32)
    weights[6, :50] = 0  # the last photo does not see half the points
    albedo, confidence = fuse(samples, weights)
    assert np.allclose(albedo, truth, rtol=0.03)
    assert (confidence == 1.0).all()


def test_each_point_is_de_lit_from_its_best_views_only(capture, monkeypatch):
    """De-lighting costs most of the bake: a point seen by many photos is de-lit only from the
    `max_views` with the highest geometric weight (head-on, close, inside the mask)."""
    spot, points, normals, _ = _surface_points(1500)
    mesh = trimesh.Trimesh(spot.mesh_vertices, spot.mesh_faces, process=False)
    photos = PhotoAlbedo(mesh, _views(capture), max_views=2)
    sightings = np.zeros((len(photos.views), len(points)))
    for j, view in enumerate(photos.views):
        idx, weight = photos._sightings(j, view, points, normals)
        sightings[j, idx] = weight
    de_lit = np.zeros_like(sightings, dtype=bool)
    original = PhotoAlbedo._delit

    def recording(self, view, pts, *rest):
        j = next(k for k, v in enumerate(self.views) if v is view)
        de_lit[j, [int(np.flatnonzero((points == p).all(1))[0]) for p in pts]] = True
        return original(self, view, pts, *rest)

    monkeypatch.setattr(PhotoAlbedo, "_delit", recording)
    n = len(points)
    photos.estimate(points, normals, normals, np.full(n, 0.15), np.full(n, 20.0))
    seen_by = (sightings > 0).sum(0)
    assert (seen_by > 2).mean() > 0.5  # most points have more views than are de-lit
    assert (de_lit.sum(0) == np.minimum(seen_by, 2)).all()
    best = np.argsort(-sightings, axis=0)[:2]
    for point in np.flatnonzero(seen_by >= 2)[:200]:
        assert set(np.flatnonzero(de_lit[:, point])) == set(best[:, point])


def test_texture_side_follows_the_photos_pixel_footprint():
    """The side is the power of two nearest to what the photos carry: a sphere of radius 1 seen
    from 4 units by a 1000-px focal has pixels 0.004 wide there, so its area 4 pi at 70 % atlas
    use needs ~1060 texels a side -> 1024 (rounding up gave 2048); twice the texels per pixel -> 2048."""
    from stages.common.cameras import orbit_frames, square_frame
    from stages.export.photo_texture import texture_size_for

    sphere = trimesh.creation.icosphere(subdivisions=5)
    template = square_frame(1000, 2 * np.degrees(np.arctan(0.5)))  # focal 1000 px
    frames = orbit_frames(8, template, distance=4.0)
    assert texture_size_for(sphere, frames) == 1024
    assert texture_size_for(sphere, frames, texels_per_pixel=2.0) == 2048
    assert texture_size_for(sphere, frames, texels_per_pixel=2.0, largest=1024) == 1024
    assert texture_size_for(sphere, frames, texels_per_pixel=0.1) == 512  # never below `smallest`
