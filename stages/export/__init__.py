"""Stage 7, export: the trained fields -> what users take away: a textured, relightable model at
detail levels, as GLB and USDZ, and a viewer page to relight it in.

Inputs   ingest/ (the photos), geometry/ (the trained field, occupancy grid with the masks' visual
         hull, refined cameras.json whose mask_path entries lead to the masks), material/ (material.pt +
         material.json: albedo, specular, glossiness, refined normal at any point;
         lighting.json: the learned per-photo SH lights), poses/normalization.json (the frame).
Method   1. the geometry field on a lattice of `resolution`^3 nodes over the occupied box: its
            signed distance (an SDF field) or its density;
         2. the surface: for an SDF, the level near zero (-1 to +4 grid spacings) whose mesh's
            silhouettes best match the masks (a soft VolSDF density covers a little more than its
            zero level, silhouette.choose_sdf_offset); for a density, the level `threshold` (or,
            when 0, the one whose marching-cubes mesh best matches the masks' silhouettes);
         3. clean-up: solid pieces smaller than `min_component_fraction` of the largest, or
            centred outside the visual hull, dropped; for a density also the inside no photo saw
            into filled (depth maps at `visibility_opacity`) and thin tunnels and bridges removed
            (`morphology_nodes`); marching cubes, small surface pieces dropped, Taubin smoothing
            (`taubin_iterations`), quadric decimation below the most detailed level's triangle
            limit (and `face_budget`, when set): the clean mesh;
         4. the reference: the clean mesh's UV atlas (xatlas, `padding_px` texels between charts)
            for its level's texture size; ambient occlusion per vertex (`occlusion_rays`
            hemisphere rays, occlusion.py); every texel's surface point -> the material field ->
            roughness (from glossiness, bake.roughness_from_glossiness), specular strength,
            refined normal; albedo read from the training photos that see the point, each de-lit
            by its learned light (specular and cast shadows included) and fused robustly
            (photo_texture.py), blended into the material field's albedo where few photos see it
            (`photo_texture`);
         5. every detail level of `levels` (levels.py: Apple's names and limits, preview < 25k,
            reduced < 50k, medium < 100k, full < 250k triangles): the most detailed is the
            reference; the others are decimated from the clean mesh, unwrapped anew and take the
            reference's maps by closest point. Texture side: `texture_size` (0: `texels_per_pixel`
            texels per photo pixel on the surface, up to `max_texture_size`), capped per level;
         6. maps encoded for glTF (bake.encode_textures): base colour, ORM (occlusion, roughness,
            metallic 0), tangent-space normals, and the specular strength as
            KHR_materials_specular's F0 (bake.specular_colour_texture has the derivation);
         7. the model frame (placement.py, `placement`, `scale_to`, `scale_points`,
            `scale_length`): +Y up, resting on y = 0, centred on x = z = 0 for SfM poses; the
            user's frame kept for theirs; scaled to metres when told how;
         8. per level a GLB and (`usdz`) a USDZ with the same maps (usdz.py: UsdPreviewSurface,
            upAxis Y, metersPerUnit 1);
         9. checks: Khronos glTF validator on every GLB and usd-core's validators on every USDZ
            (0 errors required), silhouette IoU against the masks, turntable renders of the main
            GLB under the mean learned light (preview.py: the material model on the exported
            maps), a three.js screenshot in Chromium; viewer.html (`viewer`, viewer.py).
Outputs  export/model.glb        the most detailed level: glTF 2.0 binary, POSITION, NORMAL,
                                 TANGENT, TEXCOORD_0, one PBR metallic-roughness material with
                                 embedded PNGs (base colour, ORM, normal, specular colour)
         export/model.NAME.glb   each other level (e.g. model.preview.glb)
         export/model.usdz, model.NAME.usdz   the same levels as USDZ
         export/viewer.html      the model in a browser, offline: every level, every learned light,
                                 built-in environments, a dropped HDR, turntable, measuring
         export/lighting.json    the learned lights (shared SH format), copied from material/
         export/model.obj + model.mtl (using textures/base_colour.png) with `write_obj`;
         export/model.ply (geometry only) with `write_ply`
         export/textures/        the main level's maps: base_colour.png (sRGB), orm.png,
                                 normal.png, specular.png (sRGB-encoded k_s)
         export/turntable/NNN.png  `turntable_frames` views (sRGB, RGBA) under the mean light
         export/turntable.png    the same views on one sheet (the report shows it)
         export/screenshot.png   three.js in headless Chromium (when chromium is installed), seen
                                 from the first photo's side
         export/export.json      threshold (an SDF's offset) and its table, IoU per photo, mesh statistics, model_from_world
                                 (4x4, model <- pipeline world), per level: files, faces, texture
                                 size, bytes, validator counts; deliverables (what `neroic run`
                                 copies beside --out); timings
Config   [export] resolution 256      lattice nodes per axis for marching cubes
         threshold 0.0                density iso-level (per world unit; density fields only); 0 = choose
                                      by silhouette IoU
         levels ["preview", "medium"] detail levels written (the most detailed is model.glb)
         face_budget 0                at most this many triangles in the clean mesh (0: the most
                                      detailed level's limit)
         taubin_iterations 5          Taubin smoothing passes (0: none)
         min_component_fraction 0.05  keep extra solid parts at least this fraction of the largest
         visibility_opacity 0.3       a photo's ray stops seeing at this accumulated opacity; nodes
                                      no photo saw before its stop are filled (the hidden inside)
         visibility_size 96           longer side (pixels) of the depth maps used for that
         morphology_nodes 1           close then open the solid by this many lattice nodes: removes
                                      the noise tunnels and bridges that fragment the UV atlas
         texture_size 0, max_texture_size 2048 [quality 4096]   texture side (0: from the photos)
         texels_per_pixel 1 [quality 2]  texels per photo pixel (side) when the size is from the photos
         photo_texture true           albedo from the de-lit photos where they see the surface
         padding_px 4                 texels between atlas charts
         occlusion_rays 64            hemisphere rays per vertex for ambient occlusion (0: none)
         normal_map true              bake and embed the tangent-space normal map
         placement "auto", scale_to 0.0, scale_points [], scale_length 0.0   the model frame
         usdz true, viewer true       also write the USDZs and viewer.html
         write_obj false, write_ply false  also write OBJ/MTL (+ PNGs) and PLY of the main level
         turntable_frames 8, turntable_size 256   preview renders (0 frames: none)
         screenshot true              three.js screenshot when chromium is installed
         validate true                run the Khronos validator when node tools are installed
Cache    reruns when poses, geometry, material or the [export] section change.
Failures NeroicError when the density never reaches the threshold (geometry stage failed to
         find the object), the inputs are missing, or a level name or scale option is bad;
         RuntimeError if a validator finds errors in a GLB or USDZ (a bug, not the user's doing).
         Missing node/chromium tools: a warning, the models are still written.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from stages.context import StageContext
from stages.errors import NeroicError

if TYPE_CHECKING:  # the modules themselves load only when the stage runs
    from stages.export.bake import SurfaceMaps, TangentFrames, UVRaster
    from stages.export.uv_atlas import UVMesh


def _material_function(material_dir: Path, device: str):
    """The material stage's field as bake.MaterialFn (numpy in, numpy out)."""
    import torch

    from stages.export.bake import roughness_from_glossiness
    from stages.material.material_field import load_material

    field = load_material(material_dir, device)

    def material_fn(positions: np.ndarray, normals: np.ndarray) -> dict:
        with torch.no_grad():
            p = torch.as_tensor(positions, dtype=torch.float32, device=device)
            n = torch.as_tensor(normals, dtype=torch.float32, device=device)
            albedo, specular, glossiness, refined = field.query(p, n)
        glossiness = glossiness.cpu().double().numpy()
        return {"albedo": albedo.cpu().double().numpy(), "roughness": roughness_from_glossiness(glossiness),
                "normal": refined.cpu().double().numpy(), "specular": specular.cpu().double().numpy(),
                "glossiness": glossiness}

    return material_fn


def _density_function(trained):
    """Field density (per world unit) at points [N, 3] world -> [N]; 0 where the occupancy grid is empty."""
    import torch

    def density_fn(points: torch.Tensor) -> torch.Tensor:
        keep = trained.grid.lookup(points)
        return torch.where(keep, trained.field.density(points)[0], 0.0)

    return density_fn


def _mesh_of_density(density, lo, hi, frames, masks, inside_hull, cfg, ctx, lap):
    """A density field's mesh: the threshold (given, or chosen by silhouette IoU against the masks),
    the inside no photo saw filled, clean-up -> (mesh, threshold, threshold table, stats)."""
    from stages.export.mesh import mesh_from_density
    from stages.export.silhouette import choose_threshold
    from stages.export.visibility import depth_maps, hidden_from_cameras

    lap("density")
    depths = depth_maps(density, lo, hi, frames, int(cfg["visibility_size"]), float(cfg["visibility_opacity"]))
    hidden = hidden_from_cameras(density, lo, hi, depths)
    lap("visibility")
    threshold_table: list = []
    threshold = float(cfg["threshold"])
    if threshold <= 0.0:
        try:
            threshold, threshold_table = choose_threshold(density, lo, hi, frames, masks, inside_hull=inside_hull,
                                                          hidden=hidden, morphology_nodes=int(cfg["morphology_nodes"]))
        except ValueError as e:
            raise NeroicError(f"cannot find a surface in the density field: {e}",
                              hint="the geometry stage did not converge; check its held-out renders") from None
        ctx.log.info("export: density threshold %.3g chosen by silhouette IoU", threshold)
    lap("threshold")
    try:
        mesh, stats = mesh_from_density(density, lo, hi, threshold, inside_hull, int(cfg["face_budget"]),
                                        int(cfg["taubin_iterations"]), float(cfg["min_component_fraction"]),
                                        hidden=hidden, morphology_nodes=int(cfg["morphology_nodes"]))
    except ValueError as e:
        raise NeroicError(f"no surface at density threshold {threshold:g}: {e}",
                          hint="lower [export] threshold, or set it to 0 to choose it automatically") from None
    return mesh, threshold, threshold_table, stats


def _photo_views(ctx: StageContext, trained, masks: list[np.ndarray], material_dir: Path) -> list:
    """The training photos with their cameras, masks and learned lights, for reading the albedo."""
    from stages.common.cameras import frame_stem
    from stages.common.inputs import PhotoSet
    from stages.common.sh import read_lighting
    from stages.export.photo_texture import PhotoView
    from stages.material.lighting import read_response

    photos = PhotoSet.load(ctx.input("ingest"))
    lights = {frame_stem(fp): coeffs for fp, coeffs in read_lighting(material_dir / "lighting.json") if fp}
    gammas = read_response(material_dir / "camera_response.json")
    return [PhotoView(frame, photos.rgb(frame.stem, (frame.w, frame.h)), mask, lights[frame.stem],
                      gammas.get(frame.stem, 1.0))
            for frame, mask in zip(trained.frames, masks) if frame.stem in lights and frame.stem in photos]


def _hull_function(grid):
    """points [N, 3] world -> bool [N]: inside the masks' visual hull (the occupancy grid's hull)."""
    import torch

    def inside(points: np.ndarray) -> np.ndarray:
        p = torch.as_tensor(points, dtype=torch.float32, device=grid.device)
        idx, in_box = grid.cell_index(p)
        return (in_box & grid.hull[idx.clamp(0, grid.hull.numel() - 1)]).cpu().numpy()

    return inside


def _write_obj(out: Path, positions: np.ndarray, uvs: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> None:
    """model.obj + model.mtl referencing textures/base_colour.png (OBJ's v runs upwards: 1 - v)."""
    lines = ["mtllib model.mtl", "usemtl neroic_material"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in positions]
    lines += [f"vt {u:.6f} {1.0 - v:.6f}" for u, v in uvs]
    lines += [f"vn {x:.5f} {y:.5f} {z:.5f}" for x, y, z in normals]
    lines += ["f " + " ".join(f"{i}/{i}/{i}" for i in face + 1) for face in faces]
    (out / "model.obj").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "model.mtl").write_text("newmtl neroic_material\nKd 1 1 1\nKa 0 0 0\nKs 0 0 0\n"
                                   "map_Kd textures/base_colour.png\n", encoding="utf-8")


class _Clock:
    """Wall time per step, for export.json."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self._last, 2)
        self._last = now


def _clean_mesh(ctx: StageContext, trained, frames, masks, cfg: dict, face_budget: int, lap):
    """The geometry field's surface, cleaned and decimated to face_budget -> (mesh, threshold,
    threshold table, stats); see steps 1-3 of the module docstring."""
    from stages.export.mesh import mesh_from_sdf
    from stages.export.silhouette import choose_sdf_offset
    from stages.field.grids import evaluate_on_grid

    lo, hi = (v.cpu().numpy().astype(np.float64) for v in trained.grid.occupied_aabb())
    if np.any(hi <= lo):
        raise NeroicError("the geometry stage's occupancy grid is empty: there is no object to export",
                          hint="check the masks and poses, then rerun the geometry stage")
    res = int(cfg["resolution"])
    inside_hull = _hull_function(trained.grid)
    box = trained.grid.aabb_min.new_tensor(lo), trained.grid.aabb_min.new_tensor(hi)
    progress = lambda it, total: ctx.progress(it, total=total, desc="sampling the field", unit="slab")  # noqa: E731
    if trained.field.is_sdf:
        sdf = evaluate_on_grid(lambda p: trained.field.sdf(p)[0], *box, res, nodes=True, progress=progress).cpu().numpy()
        lap("density")
        offset, table = choose_sdf_offset(sdf, lo, hi, frames, masks)
        ctx.log.info("export: surface %.3g outside the SDF's zero level, chosen by silhouette IoU", offset)
        lap("threshold")
        mesh, stats = mesh_from_sdf(sdf - offset, lo, hi, inside_hull, face_budget, int(cfg["taubin_iterations"]),
                                    float(cfg["min_component_fraction"]))
        return mesh, offset, table, stats
    density = evaluate_on_grid(_density_function(trained), *box, res, nodes=True, progress=progress).cpu().numpy()
    return _mesh_of_density(density, lo, hi, frames, masks, inside_hull, {**cfg, "face_budget": face_budget}, ctx, lap)


@dataclass
class _Reference:
    """The most detailed level's surface, atlas and baked maps: what every level's textures come from."""

    atlas: UVMesh
    frames: TangentFrames
    raster: UVRaster
    maps: SurfaceMaps
    photo_albedo_share: float


def _bake_reference(ctx: StageContext, mesh, size: int, trained, masks, cfg: dict, lap) -> _Reference:
    """Unwrap the clean mesh, bake ambient occlusion, the material field and the photos' albedo into its maps."""
    from stages.export.bake import bake_surface_maps, rasterize_uv, tangent_frames
    from stages.export.occlusion import vertex_occlusion
    from stages.export.photo_texture import PhotoAlbedo
    from stages.export.uv_atlas import unwrap

    atlas = unwrap(mesh, size, int(cfg["padding_px"]))
    lap("uv_atlas")
    rays = int(cfg["occlusion_rays"])
    occlusion = vertex_occlusion(mesh, rays)[atlas.source_vertex] if rays > 0 else None
    lap("occlusion")
    frames = tangent_frames(atlas, mesh.vertex_normals[atlas.source_vertex])
    raster = rasterize_uv(atlas, size)
    photos = _photo_views(ctx, trained, masks, ctx.input("material")) if cfg["photo_texture"] else None
    maps = bake_surface_maps(atlas, frames, raster, _material_function(ctx.input("material"), ctx.device),
                             PhotoAlbedo(mesh, photos) if photos else None, occlusion,
                             progress=lambda it, total: ctx.progress(it, total=total, desc="baking", unit="chunk"))
    lap("bake")
    share = float(maps.photo_confidence[maps.coverage].mean()) if maps.coverage.any() else 0.0
    return _Reference(atlas, frames, raster, maps, share)


def _write_level(out: Path, level, main, mesh, reference: _Reference, size: int, model_from_world: np.ndarray,
                 cfg: dict, extras: dict, ctx: StageContext, lap) -> dict:
    """One detail level: its mesh, atlas and maps (the reference's own, or carried over), its GLB
    and USDZ, both validated -> the level's entry of export.json."""
    from stages.common.images import write_png
    from stages.export.bake import encode_textures, rasterize_uv, tangent_frames
    from stages.export.gltf import TexturedMesh, png_bytes, write_glb
    from stages.export.levels import level_file, level_mesh, transfer_maps
    from stages.export.placement import apply
    from stages.export.uv_atlas import unwrap

    if level == main:
        atlas, frames, raster, maps = reference.atlas, reference.frames, reference.raster, reference.maps
    else:
        decimated = level_mesh(mesh, level)
        atlas = unwrap(decimated, size, int(cfg["padding_px"]))
        frames = tangent_frames(atlas, decimated.vertex_normals[atlas.source_vertex])
        raster = rasterize_uv(atlas, size)
        maps = transfer_maps(reference.maps, reference.atlas, atlas, raster)
    textures = encode_textures(maps, atlas, frames, raster)
    lap(f"level_{level.name}")
    if level == main:
        (out / "textures").mkdir()
        for name in ("base_colour", "orm", "specular", "normal"):
            write_png(out / "textures" / f"{name}.png", getattr(textures, name))
    model = TexturedMesh(apply(model_from_world, atlas.vertices), frames.normals, frames.tangents, atlas.uvs,
                         atlas.faces, png_bytes(textures.base_colour), png_bytes(textures.orm),
                         png_bytes(textures.normal) if cfg["normal_map"] else None, png_bytes(textures.specular))
    glb = level_file(level, main)
    entry = {"name": level.name, "glb": glb, "faces": int(len(atlas.faces)), "vertices": int(len(atlas.vertices)),
             "max_triangles": level.max_triangles, "texture_size": size, "atlas_utilization": atlas.utilization,
             "glb_bytes": write_glb(out / glb, model, extras={**extras, "level": level.name})}
    entry["validator"] = _validate_glb(out / glb, cfg, ctx)
    if cfg["usdz"]:
        from stages.export.usdz import validate_usdz, write_usdz

        entry["usdz"] = level_file(level, main, suffix=".usdz")
        entry["usdz_bytes"] = write_usdz(out / entry["usdz"], model, meters_per_unit=1.0)
        usd = validate_usdz(out / entry["usdz"])
        entry["usd_validator"] = {"errors": usd.errors, "warnings": usd.warnings, "validators": usd.validators,
                                  "messages": usd.messages[:20]}
        if usd.errors:
            raise RuntimeError(f"usd-core's validators found {usd.errors} error(s) in {entry['usdz']}: "
                               + "; ".join(usd.messages[:5]))
    if level == main and (cfg["write_obj"] or cfg["write_ply"]):
        _write_mesh_files(out, model, cfg)
    lap(f"write_{level.name}")
    return entry


def _validate_glb(path: Path, cfg: dict, ctx: StageContext) -> dict:
    """The Khronos validator's counts for the GLB (None when not run); RuntimeError on any error."""
    from stages.export.validate import ToolMissing, validate_gltf

    if not cfg["validate"]:
        return {"errors": None, "warnings": None, "messages": []}
    try:
        v = validate_gltf(path)
    except ToolMissing as e:
        ctx.log.warning("export: not validating %s: %s", path.name, e)
        return {"errors": None, "warnings": None, "messages": []}
    if v.errors:
        raise RuntimeError(f"the Khronos glTF validator found {v.errors} error(s) in {path.name}: " + "; ".join(v.messages[:5]))
    return {"errors": v.errors, "warnings": v.warnings, "infos": v.infos, "messages": v.messages[:20]}


def _write_mesh_files(out: Path, model, cfg: dict) -> None:
    """OBJ/MTL and PLY copies of the main level (model frame)."""
    if cfg["write_obj"]:
        _write_obj(out, model.positions, model.uvs, model.faces, model.normals)
    if cfg["write_ply"]:
        import open3d as o3d

        ply = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(model.positions),
                                        o3d.utility.Vector3iVector(model.faces.astype(np.int32)))
        ply.remove_duplicated_vertices()  # the atlas splits seam vertices; PLY has no UVs to keep apart
        ply.compute_vertex_normals()
        o3d.io.write_triangle_mesh(str(out / "model.ply"), ply)


def _turntable(out: Path, glb: Path, lights, cfg: dict) -> None:
    """turntable/NNN.png and turntable.png: the main GLB under the mean learned light, from around it."""
    from stages.common.cameras import orbit_frames, square_frame
    from stages.common.colour import linear_to_srgb
    from stages.common.images import write_png
    from stages.common.sheets import contact_sheet
    from stages.export.bake import to_uint8
    from stages.export.gltf import read_glb
    from stages.export.preview import render_mesh_sh

    n_turn = int(cfg["turntable_frames"])
    (out / "turntable").mkdir()
    mean_light = np.mean([sh for _, sh in lights], axis=0)
    model = read_glb(glb)
    centre = 0.5 * (model.positions.min(0) + model.positions.max(0))
    radius = float(np.linalg.norm(model.positions - centre, axis=1).max())
    tiles = []
    for k, frame in enumerate(orbit_frames(n_turn, square_frame(int(cfg["turntable_size"]), 40.0), 3.0 * radius,
                                           centre, stem="turntable")):
        rgb, alpha = render_mesh_sh(model, frame, mean_light)
        write_png(out / "turntable" / f"{k:03d}.png", np.dstack([to_uint8(linear_to_srgb(rgb)), to_uint8(alpha)]))
        tiles.append(to_uint8(linear_to_srgb(rgb) * alpha[..., None] + 0.25 * (1.0 - alpha[..., None])))
    write_png(out / "turntable.png", contact_sheet(tiles, [f"{360 * k // n_turn} deg" for k in range(n_turn)],
                                                  tile_height=int(cfg["turntable_size"]), columns=min(n_turn, 4)))


def _browser_views(out: Path, entries: list[dict], lights, model_from_world, view: tuple[float, float],
                   cfg: dict, ctx: StageContext) -> None:
    """screenshot.png (three.js, the main GLB) and viewer.html (every level, every light); missing
    node or chromium tools are a warning."""
    from stages.export.validate import ToolMissing, screenshot_glb

    if cfg["screenshot"]:
        try:
            screenshot_glb(out / entries[0]["glb"], out / "screenshot.png", yaw=view[0], pitch=view[1])
        except ToolMissing as e:
            ctx.log.warning("export: no screenshot: %s", e)
        except (RuntimeError, OSError) as e:
            ctx.log.warning("export: the three.js screenshot failed: %s", e)
    if cfg["viewer"]:
        from stages.export.viewer import ViewerLevel, write_viewer

        try:
            write_viewer(out / "viewer.html", [ViewerLevel(e["name"], out / e["glb"], e["faces"]) for e in entries],
                         lights, entries[0]["name"], model_from_world, view)
        except ToolMissing as e:
            ctx.log.warning("export: no viewer.html: %s", e)


def deliverables(export_dir: Path) -> list[str]:
    """The files a user takes away (every level's GLB and USDZ, viewer.html), main GLB first, as
    export.json lists them; what `neroic run` copies beside --out."""
    summary = json.loads((Path(export_dir) / "export.json").read_text(encoding="utf-8"))
    return summary["deliverables"]


def run(ctx: StageContext) -> dict:
    import torch

    from stages.common.sh import read_lighting
    from stages.export.levels import parse_levels
    from stages.export.photo_texture import texture_size_for
    from stages.export.placement import placement
    from stages.export.silhouette import silhouette_iou
    from stages.field.trained import frame_masks, load_trained_field

    cfg = ctx.config
    try:
        levels = parse_levels(cfg["levels"])
    except ValueError as e:
        raise NeroicError(str(e)) from None
    main = levels[0]
    out, clock = ctx.out, _Clock()
    trained = load_trained_field(ctx.input("geometry"), ctx.device)
    frames = trained.frames
    masks = frame_masks(ctx.input("geometry"), frames)
    budget = min(int(cfg["face_budget"]) or main.max_triangles, main.max_triangles - 1)
    mesh, threshold, threshold_table, mesh_stats = _clean_mesh(ctx, trained, frames, masks, cfg, budget, clock.lap)
    iou = silhouette_iou(mesh, frames, masks)
    clock.lap("mesh")

    normalization = json.loads((ctx.input("poses") / "normalization.json").read_text(encoding="utf-8"))
    model_from_world = placement(mesh.vertices, normalization.get("source"), cfg["placement"], float(cfg["scale_to"]),
                                 cfg["scale_points"], float(cfg["scale_length"]))
    size = int(cfg["texture_size"]) or texture_size_for(mesh, frames, float(cfg["texels_per_pixel"]),
                                                        largest=int(cfg["max_texture_size"]))
    sizes = {level.name: min(size, level.max_texture) for level in levels}
    reference = _bake_reference(ctx, mesh, sizes[main.name], trained, masks, cfg, clock.lap)
    extras = {"pose_source": normalization.get("source"), "density_threshold": threshold,
              "model_from_world": model_from_world.tolist()}
    entries = [_write_level(out, level, main, mesh, reference, sizes[level.name], model_from_world, cfg, extras,
                            ctx, clock.lap) for level in levels]
    lights = read_lighting(ctx.input("material") / "lighting.json")
    shutil.copyfile(ctx.input("material") / "lighting.json", out / "lighting.json")

    if int(cfg["turntable_frames"]) > 0:
        _turntable(out, out / entries[0]["glb"], lights, cfg)
    clock.lap("turntable")
    # Seen from where the first photo was taken, so it shows the side the user photographed.
    towards = frames[0].centre - 0.5 * (mesh.vertices.min(0) + mesh.vertices.max(0))
    view = (float(np.degrees(np.arctan2(towards[0], towards[2]))),
            float(np.degrees(np.arcsin(towards[1] / np.linalg.norm(towards)))))
    _browser_views(out, entries, lights, model_from_world, view, cfg, ctx)
    clock.lap("browser")

    files = [e["glb"] for e in entries] + [e["usdz"] for e in entries if "usdz" in e]
    files += ["viewer.html"] if (out / "viewer.html").exists() else []
    main_entry = entries[0]
    summary = {
        "threshold": threshold, "threshold_table": threshold_table,
        "silhouette_iou_mean": float(iou.mean()), "silhouette_iou": {f.stem: round(float(x), 4) for f, x in zip(frames, iou)},
        "mesh": mesh_stats, "model_from_world": model_from_world.tolist(), "levels": entries, "deliverables": files,
        "atlas": {"vertices": main_entry["vertices"], "utilization": main_entry["atlas_utilization"],
                  "texture_size": main_entry["texture_size"],
                  "texel_coverage": float(reference.maps.coverage.mean()),
                  "photo_albedo_share": reference.photo_albedo_share},
        "glb_bytes": main_entry["glb_bytes"], "validator": main_entry["validator"], "timings_s": clock.timings,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "export.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    errors = [e["validator"]["errors"] for e in entries]
    validated = "not validated" if None in errors else "0 validator errors"
    level_text = ", ".join(f"{e['name']} {e['faces']:,}" for e in entries)
    return {"figure": f"{level_text} faces, IoU {iou.mean():.3f}, {main_entry['glb_bytes'] / 1e6:.1f} MB GLB, {validated}",
            "faces": main_entry["faces"], "silhouette_iou": float(iou.mean()), "threshold": threshold,
            "validator_errors": main_entry["validator"]["errors"], "glb_bytes": main_entry["glb_bytes"],
            "levels": {e["name"]: e["faces"] for e in entries}}
