"""USDZ for AR Quick Look and USD tools: the GLB's mesh and maps as a UsdPreviewSurface, packaged.

    size = write_usdz("model.usdz", textured_mesh, meters_per_unit=1.0)
    report = validate_usdz("model.usdz")      # usd-core's own validators: errors, warnings, messages

Written with Pixar's usd-core (pxr): a stage with upAxis Y and metersPerUnit (the model's unit:
glTF's metre, placement.py), default prim /object (kind component) holding one Mesh (triangles,
subdivisionScheme none, vertex normals, st from the glTF UVs with v turned upwards: USD's st
origin is the bottom-left) bound to one Material. Its UsdPreviewSurface reads the same PNGs
the GLB embeds: diffuseColor from the base colour (sRGB), occlusion / roughness / metallic
from the ORM texture's R / G / B (raw), normal from the normal map (raw, scale 2, bias -1, as
the shading validator requires), and specularColor from the specular texture (sRGB) with
useSpecularWorkflow 1: UsdPreviewSurface's specular workflow takes F0 from specularColor, and
that texture decodes to the learned specular strength itself (bake.specular_colour_texture: in
glTF its factor 25 times the 0.04 of ior 1.5 is 1); the diffuse
compensation of the base colour holds for it too. Metallic is 0 everywhere, so the specular
workflow loses nothing; a renderer that ignores it falls back to F0 0.04.
The .usdc layer and textures are written to a temporary folder and packaged by
UsdUtils.CreateNewUsdzPackage (uncompressed, 64-byte aligned, as the format requires).

The `usdchecker` command is not in the usd-core wheel; validate_usdz runs every validator of
pxr.UsdValidation's registry (usdz packaging, encapsulation, shading, geometry, stage metadata,
composition, ...) on the opened package.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stages.export.gltf import TexturedMesh

TEXTURES = {"base_colour": "base_colour_png", "orm": "orm_png", "normal": "normal_png", "specular": "specular_png"}


@dataclass
class UsdReport:
    """usd-core validators' findings on a package: counts by severity, "validator: message" lines."""

    errors: int
    warnings: int
    validators: int
    messages: list[str] = field(default_factory=list)


def _texture_reader(stage, material_path: str, name: str, file: str, colour_space: str, st_output):
    """A UsdUVTexture shader reading textures/FILE through the st reader."""
    from pxr import Sdf, UsdShade

    reader = UsdShade.Shader.Define(stage, f"{material_path}/{name}")
    reader.CreateIdAttr("UsdUVTexture")
    reader.CreateInput("file", Sdf.ValueTypeNames.Asset).Set(f"./textures/{file}")
    reader.CreateInput("sourceColorSpace", Sdf.ValueTypeNames.Token).Set(colour_space)
    reader.CreateInput("wrapS", Sdf.ValueTypeNames.Token).Set("clamp")
    reader.CreateInput("wrapT", Sdf.ValueTypeNames.Token).Set("clamp")
    reader.CreateInput("st", Sdf.ValueTypeNames.Float2).ConnectToSource(st_output)
    return reader


def write_usdz(path: str | Path, model: TexturedMesh, meters_per_unit: float = 1.0) -> int:
    """Write the textured mesh as a USDZ package at path (see the module docstring); returns its size in bytes."""
    from pxr import Gf, Kind, Sdf, Usd, UsdGeom, UsdShade, UsdUtils, Vt

    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="neroic-usdz-") as tmp:
        folder = Path(tmp)
        (folder / "textures").mkdir()
        files = {}
        for name, attribute in TEXTURES.items():
            data = getattr(model, attribute)
            if data:
                files[name] = f"{name}.png"
                (folder / "textures" / files[name]).write_bytes(data)
        layer = folder / f"{path.stem}.usdc"
        stage = Usd.Stage.CreateNew(str(layer))
        UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
        UsdGeom.SetStageMetersPerUnit(stage, float(meters_per_unit))
        root = UsdGeom.Xform.Define(stage, "/object")
        stage.SetDefaultPrim(root.GetPrim())
        Usd.ModelAPI(root.GetPrim()).SetKind(Kind.Tokens.component)

        mesh = UsdGeom.Mesh.Define(stage, "/object/mesh")
        points = np.asarray(model.positions, dtype=np.float32)
        mesh.CreatePointsAttr(Vt.Vec3fArray.FromNumpy(points))
        mesh.CreateFaceVertexCountsAttr(Vt.IntArray.FromNumpy(np.full(len(model.faces), 3, dtype=np.int32)))
        mesh.CreateFaceVertexIndicesAttr(Vt.IntArray.FromNumpy(np.asarray(model.faces, dtype=np.int32).ravel()))
        normals = np.asarray(model.normals, dtype=np.float64)
        mesh.CreateNormalsAttr(Vt.Vec3fArray.FromNumpy((normals / np.linalg.norm(normals, axis=1, keepdims=True))
                                                       .astype(np.float32)))
        mesh.SetNormalsInterpolation(UsdGeom.Tokens.vertex)
        mesh.CreateSubdivisionSchemeAttr(UsdGeom.Tokens.none)
        mesh.CreateExtentAttr(Vt.Vec3fArray([Gf.Vec3f(*points.min(axis=0).tolist()),
                                             Gf.Vec3f(*points.max(axis=0).tolist())]))
        st = np.stack([model.uvs[:, 0], 1.0 - model.uvs[:, 1]], axis=1).astype(np.float32)
        UsdGeom.PrimvarsAPI(mesh).CreatePrimvar("st", Sdf.ValueTypeNames.TexCoord2fArray,
                                                UsdGeom.Tokens.vertex).Set(Vt.Vec2fArray.FromNumpy(st))

        material_path = "/object/materials/neroic_material"
        material = UsdShade.Material.Define(stage, material_path)
        surface = UsdShade.Shader.Define(stage, f"{material_path}/surface")
        surface.CreateIdAttr("UsdPreviewSurface")
        material.CreateSurfaceOutput().ConnectToSource(surface.ConnectableAPI(), "surface")
        st_reader = UsdShade.Shader.Define(stage, f"{material_path}/st_reader")
        st_reader.CreateIdAttr("UsdPrimvarReader_float2")
        st_reader.CreateInput("varname", Sdf.ValueTypeNames.String).Set("st")
        st_output = st_reader.CreateOutput("result", Sdf.ValueTypeNames.Float2)

        def connect(input_name: str, type_name, reader, output: str) -> None:
            out_type = Sdf.ValueTypeNames.Float3 if output == "rgb" else Sdf.ValueTypeNames.Float
            surface.CreateInput(input_name, type_name).ConnectToSource(reader.CreateOutput(output, out_type))

        base = _texture_reader(stage, material_path, "base_colour", files["base_colour"], "sRGB", st_output)
        connect("diffuseColor", Sdf.ValueTypeNames.Color3f, base, "rgb")
        orm = _texture_reader(stage, material_path, "orm", files["orm"], "raw", st_output)
        connect("occlusion", Sdf.ValueTypeNames.Float, orm, "r")
        connect("roughness", Sdf.ValueTypeNames.Float, orm, "g")
        connect("metallic", Sdf.ValueTypeNames.Float, orm, "b")
        if "normal" in files:
            normal = _texture_reader(stage, material_path, "normal", files["normal"], "raw", st_output)
            normal.CreateInput("scale", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(2.0, 2.0, 2.0, 1.0))
            normal.CreateInput("bias", Sdf.ValueTypeNames.Float4).Set(Gf.Vec4f(-1.0, -1.0, -1.0, 0.0))
            connect("normal", Sdf.ValueTypeNames.Normal3f, normal, "rgb")
        if "specular" in files:
            specular = _texture_reader(stage, material_path, "specular", files["specular"], "sRGB", st_output)
            connect("specularColor", Sdf.ValueTypeNames.Color3f, specular, "rgb")
            surface.CreateInput("useSpecularWorkflow", Sdf.ValueTypeNames.Int).Set(1)
        UsdShade.MaterialBindingAPI.Apply(mesh.GetPrim()).Bind(material)
        stage.GetRootLayer().Save()
        del stage
        tmp_usdz = path.with_name(f".{path.name}.tmp")
        if not UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(layer)), str(tmp_usdz)):
            raise RuntimeError(f"usd-core could not package {path}")
    tmp_usdz.replace(path)
    return path.stat().st_size


def validate_usdz(path: str | Path) -> UsdReport:
    """Every validator in usd-core's registry on the opened package -> counts and messages."""
    from pxr import Usd, UsdValidation

    stage = Usd.Stage.Open(str(path))
    if stage is None:
        return UsdReport(1, 0, 0, [f"usd-core cannot open {path}"])
    validators = UsdValidation.ValidationRegistry().GetOrLoadAllValidators()
    found = [e for e in UsdValidation.ValidationContext(validators).Validate(stage) if not e.HasNoError()]
    kinds = [e.GetType() for e in found]
    messages = [f"{e.GetIdentifier()}: {e.GetMessage()}" for e in found]
    return UsdReport(sum(k == UsdValidation.ValidationErrorType.Error for k in kinds),
                     sum(k == UsdValidation.ValidationErrorType.Warn for k in kinds), len(validators), messages)
