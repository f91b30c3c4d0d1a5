"""A clean triangle mesh (trimesh.Trimesh) from the geometry field: marching cubes, clean-up, decimation.

    sdf = evaluate_on_grid(sdf_fn, aabb_min, aabb_max, 256, nodes=True)           # stages.field.grids
    mesh, stats = mesh_from_sdf(sdf, aabb_min, aabb_max, inside_hull=hull_fn)    # an SDF field
    mesh, stats = mesh_from_density(density, aabb_min, aabb_max, threshold=25.0,  # a density field
                                    inside_hull=hull_fn, face_budget=80_000, taubin_iterations=5)
    mesh.vertices [V, 3] world, mesh.faces [F, 3] int, counter-clockwise seen from outside

An SDF's zero level is the surface and its inside is solid, so only stray pieces are dropped.

For a density field there is more to do. The density grid holds samples at the nodes of a regular lattice spanning the box exactly
(node (i, j, k) at aabb_min + (i, j, k) * (aabb_max - aabb_min) / (R - 1), axis 0 = x).
Cleaning happens in the volume, before marching cubes, because there it is exact and cheap:
connected solid regions (26-connected voxels above the threshold) that are small or outside the
masks' visual hull are floaters and are emptied; the inside (what no outside viewer sees
through less than half opacity) is filled, so the mesh has no inner shells and pinholes in a
porous shell are sealed. Marching cubes on a zero-padded grid then yields a closed surface.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import trimesh


def lattice_points(aabb_min, aabb_max, resolution: int) -> list[np.ndarray]:
    """The node coordinates along x, y, z: three arrays [R] spanning the box ends inclusive."""
    lo, hi = np.asarray(aabb_min, dtype=np.float64), np.asarray(aabb_max, dtype=np.float64)
    return [np.linspace(lo[a], hi[a], resolution) for a in range(3)]


def clean_volume(density: np.ndarray, threshold: float, node_points: list[np.ndarray],
                 inside_hull: Callable[[np.ndarray], np.ndarray] | None = None,
                 min_component_fraction: float = 0.05, opacity: float = 0.5,
                 hidden: np.ndarray | None = None, morphology_nodes: int = 1) -> tuple[np.ndarray, dict]:
    """Remove floaters and fill the inside of a density grid [R, R, R]; returns (grid, stats).

    Solid = nodes with density >= threshold, split into 26-connected components. Kept: the
    largest component, and any other with at least `min_component_fraction` of its node count
    whose centroid lies in the visual hull (`inside_hull`: points [N, 3] -> bool [N]; None keeps
    them by size only). Emptied components are set to 0.
    Then the inside is filled (raised to 2 x threshold): the nodes in `hidden` [R, R, R] bool
    (from the photos: visibility.hidden_from_cameras), or without it every node hidden behind at
    least `opacity` of accumulated opacity along all 26 lattice directions (hidden_from_outside).
    A NeRF's interior is often low-density foam behind a porous shell; no camera sees in there,
    and left alone it becomes hundreds of thousands of inner faces.
    Last, a morphological closing then opening of the solid by `morphology_nodes` (0: none)
    removes tunnels and bridges that thin: a noisy field gives the surface hundreds of tiny
    handles, each of which forces the UV atlas to cut (thousands of charts, minutes of xatlas).
    Nodes added are raised to 2 x threshold, nodes removed lowered to threshold / 2.
    """
    from scipy import ndimage

    solid = density >= threshold
    kept, stats = keep_main_components(solid, node_points, inside_hull, min_component_fraction)
    out = np.where(solid & ~kept, 0.0, density).astype(np.float32)
    if not stats["components"]:
        return density, {**stats, "filled_nodes": 0}

    # The inside: nodes seen through at least `opacity` of matter from every direction.
    if hidden is None:
        hidden = hidden_from_outside(out, [p[1] - p[0] for p in node_points], opacity)
    inside = hidden & ~kept
    out[inside] = np.maximum(out[inside], 2.0 * threshold)
    morphed = 0
    if morphology_nodes > 0:
        cross = ndimage.generate_binary_structure(3, 1)
        solid = np.pad(out >= threshold, morphology_nodes + 1)
        smoothed = ndimage.binary_opening(ndimage.binary_closing(solid, cross, morphology_nodes), cross, morphology_nodes)
        crop = (slice(morphology_nodes + 1, -morphology_nodes - 1),) * 3
        solid, smoothed = solid[crop], smoothed[crop]
        out[smoothed & ~solid] = 2.0 * threshold
        out[solid & ~smoothed] = 0.5 * threshold
        morphed = int((smoothed != solid).sum())
    return out, {**stats, "filled_nodes": int(inside.sum()), "morphology_changed_nodes": morphed}


def keep_main_components(solid: np.ndarray, node_points: list[np.ndarray],
                         inside_hull: Callable[[np.ndarray], np.ndarray] | None = None,
                         min_component_fraction: float = 0.05) -> tuple[np.ndarray, dict]:
    """The solid nodes [R, R, R] bool worth keeping: split into 26-connected components, the
    largest, and any other with at least `min_component_fraction` of its node count whose centroid
    lies in the visual hull (`inside_hull`: points [N, 3] -> bool [N]; None keeps them by size)."""
    from scipy import ndimage

    labels, n = ndimage.label(solid, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        return solid, {"components": 0, "kept_components": 0}
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    largest = int(np.argmax(sizes))
    keep = sizes >= min_component_fraction * sizes[largest]
    if inside_hull is not None and keep.sum() > 1:
        centroid_idx = np.asarray(ndimage.center_of_mass(solid, labels, np.arange(1, n + 1)))  # [n, 3] node indices
        step = np.array([p[1] - p[0] for p in node_points])
        origin = np.array([p[0] for p in node_points])
        keep &= np.asarray(inside_hull(origin + centroid_idx * step), dtype=bool)
    keep[largest] = True
    return np.concatenate([[False], keep])[labels], {"components": int(n), "kept_components": int(keep.sum())}


def hidden_from_outside(density: np.ndarray, spacing, opacity: float = 0.5) -> np.ndarray:
    """bool [R, R, R]: nodes that a viewer outside the grid sees only through more than `opacity`
    of accumulated opacity 1 - exp(-sum sigma * step), whichever of the 26 lattice directions
    (steps in {-1, 0, 1}^3) it looks along.

    density [R, R, R] per world unit; spacing [3] world distance between nodes along x, y, z.
    Transmittance is carried slab by slab along each direction (T(x) = T(x - d) exp(-sigma(x - d) |d|)),
    so each direction costs R small 2-D updates. Like a visual hull, concavities visible only
    obliquely between lattice directions may be counted as hidden; the iso-surface still decides
    the visible surface, this only fills behind it.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    best = np.zeros(density.shape, dtype=np.float32)  # highest transmittance over directions
    sigma = density.astype(np.float32)
    for d in np.array(np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")).reshape(3, -1).T:
        if not d.any():
            continue
        a = int(np.flatnonzero(d)[0])  # march along axis a, one slab per step
        others = [b for b in range(3) if b != a]
        order = [a] + others
        att = np.exp(-sigma * np.float32(np.linalg.norm(d * spacing))).transpose(order)
        trans = np.empty_like(att)
        slabs = range(att.shape[0]) if d[a] > 0 else range(att.shape[0] - 1, -1, -1)
        previous = None
        for i in slabs:
            t = np.ones(att.shape[1:], dtype=np.float32)  # rays entering the grid: nothing in front
            if previous is not None:
                shifted = trans[previous] * att[previous]
                sb, sc = int(d[others[0]]), int(d[others[1]])
                dst = (slice(max(sb, 0), shifted.shape[0] + min(sb, 0)), slice(max(sc, 0), shifted.shape[1] + min(sc, 0)))
                src = (slice(max(-sb, 0), shifted.shape[0] + min(-sb, 0)), slice(max(-sc, 0), shifted.shape[1] + min(-sc, 0)))
                t[dst] = shifted[src]
            trans[i] = t
            previous = i
        np.maximum(best, trans.transpose(np.argsort(order)), out=best)
    return best < 1.0 - opacity


def marching_cubes(volume: np.ndarray, level: float, aabb_min, aabb_max, outside: float = 0.0) -> trimesh.Trimesh:
    """Iso-surface volume == level of a node grid [R, R, R] -> closed mesh in world units, the
    solid being where volume >= level (a density, or a negated signed distance).

    The grid is padded with one layer of `outside` (below the level), so matter touching the box
    still gives a closed surface. Faces wind counter-clockwise seen from outside.
    """
    from skimage.measure import marching_cubes as skimage_mc

    if not (volume >= level).any():
        raise ValueError(f"no value reaches the level {level} (max {float(volume.max()):.3g})")
    lo, hi = np.asarray(aabb_min, dtype=np.float64), np.asarray(aabb_max, dtype=np.float64)
    step = (hi - lo) / (np.asarray(volume.shape) - 1)
    padded = np.pad(volume, 1, mode="constant", constant_values=outside)
    verts, faces, _, _ = skimage_mc(padded, level=level, spacing=tuple(step), gradient_direction="descent")
    mesh = trimesh.Trimesh(verts - step + lo, faces.astype(np.int64), process=False)  # undo the padding layer
    if mesh.volume < 0:  # skimage's winding depends on its conventions
        mesh.invert()
    return mesh


def simplify(mesh: trimesh.Trimesh, face_budget: int, taubin_iterations: int = 0,
             min_component_fraction: float = 0.0) -> trimesh.Trimesh:
    """Drop surface pieces with fewer than min_component_fraction of the largest piece's faces,
    optional Taubin smoothing (shrink-free), then quadric decimation to at most face_budget faces.

    Small pieces appear where solid nodes touch only along an edge or corner: one solid
    component in the volume can give several surfaces.

    Quadric error decimation moves vertices least where the surface bends most, so the outline
    (silhouette) survives far better than under uniform remeshing.
    """
    import open3d as o3d

    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices),
                                  o3d.utility.Vector3iVector(mesh.faces.astype(np.int32)))
    m.remove_duplicated_vertices()
    m.remove_degenerate_triangles()
    m.remove_unreferenced_vertices()
    if min_component_fraction > 0.0 and len(m.triangles):
        clusters, counts, _ = m.cluster_connected_triangles()
        clusters, counts = np.asarray(clusters), np.asarray(counts)
        m.remove_triangles_by_mask(counts[clusters] < min_component_fraction * counts.max())
        m.remove_unreferenced_vertices()
    if taubin_iterations > 0:
        m = m.filter_smooth_taubin(number_of_iterations=taubin_iterations)
    if len(m.triangles) > face_budget:
        m = m.simplify_quadric_decimation(target_number_of_triangles=face_budget)
    m.remove_degenerate_triangles()
    m.remove_unreferenced_vertices()
    return trimesh.Trimesh(np.asarray(m.vertices, dtype=np.float64), np.asarray(m.triangles, dtype=np.int64),
                           process=False)


def mesh_from_density(density: np.ndarray, aabb_min, aabb_max, threshold: float,
                      inside_hull: Callable[[np.ndarray], np.ndarray] | None = None,
                      face_budget: int = 80_000, taubin_iterations: int = 5,
                      min_component_fraction: float = 0.05, opacity: float = 0.5,
                      hidden: np.ndarray | None = None, morphology_nodes: int = 1) -> tuple[trimesh.Trimesh, dict]:
    """The whole chain on a density node grid [R, R, R]: clean, marching cubes, smooth, decimate -> (mesh, stats)."""
    nodes = lattice_points(aabb_min, aabb_max, density.shape[0])
    cleaned, stats = clean_volume(density, threshold, nodes, inside_hull, min_component_fraction, opacity, hidden,
                                  morphology_nodes)
    raw = marching_cubes(cleaned, threshold, aabb_min, aabb_max)
    mesh = simplify(raw, face_budget, taubin_iterations, min_component_fraction)
    stats.update(marching_cubes_faces=int(len(raw.faces)), faces=int(len(mesh.faces)), vertices=int(len(mesh.vertices)))
    return mesh, stats


def mesh_from_sdf(sdf: np.ndarray, aabb_min, aabb_max,
                  inside_hull: Callable[[np.ndarray], np.ndarray] | None = None, face_budget: int = 80_000,
                  taubin_iterations: int = 5, min_component_fraction: float = 0.05) -> tuple[trimesh.Trimesh, dict]:
    """An SDF field's surface from its signed distance on a node grid [R, R, R] (negative inside):
    stray solid pieces dropped, the zero level by marching cubes, smoothed, decimated -> (mesh,
    stats). A distance needs no threshold and has no hidden foam to fill: its inside is solid."""
    nodes = lattice_points(aabb_min, aabb_max, sdf.shape[0])
    kept, stats = keep_main_components(sdf <= 0, nodes, inside_hull, min_component_fraction)
    level = -sdf
    far = float(np.abs(sdf).max()) + 1.0
    level[(sdf <= 0) & ~kept] = -far  # emptied pieces
    raw = marching_cubes(level.astype(np.float32), 0.0, aabb_min, aabb_max, outside=-far)
    mesh = simplify(raw, face_budget, taubin_iterations, min_component_fraction)
    stats.update(marching_cubes_faces=int(len(raw.faces)), faces=int(len(mesh.faces)), vertices=int(len(mesh.vertices)))
    return mesh, stats


def chamfer_distance(a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 100_000, seed: int = 0) -> float:
    """Symmetric Chamfer distance: mean of the two directions' mean nearest-point distances
    (points sampled on one mesh, exact distance to the other's surface), in world units."""
    import open3d as o3d

    total = 0.0
    for src, dst in ((a, b), (b, a)):
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(dst.vertices.astype(np.float32)), o3d.core.Tensor(dst.faces.astype(np.uint32)))
        pts = trimesh.sample.sample_surface(src, n, seed=seed)[0].astype(np.float32)
        total += float(scene.compute_distance(o3d.core.Tensor(pts)).numpy().mean())
    return total / 2.0
