"""glTF 2.0 binary (GLB) writing and reading for one textured PBR mesh, with numpy, json and struct.

    write_glb(path, TexturedMesh(positions, normals, tangents, uvs, faces,
                                 base_colour_png, orm_png, normal_png, specular_png))
    model = read_glb(path)      # the same arrays back, textures decoded

Written: one scene, one node (no transform: vertices are in the model's frame, +Y up as glTF
expects), one mesh primitive (triangles) with POSITION, NORMAL, TANGENT, TEXCOORD_0 and
uint32 (or uint16) indices, and one material: pbrMetallicRoughness with baseColorTexture (sRGB),
one ORM texture (R ambient occlusion, G roughness, B metallic, all linear) serving as both
occlusionTexture and metallicRoughnessTexture, normalTexture (tangent space, per the frames in
bake.py), and KHR_materials_specular's specularColorTexture with specularColorFactor 25 (the
learned specular strength as F0: bake.specular_colour_texture). Textures are PNGs embedded in
the binary chunk, sampled with trilinear filtering and clamped at the edges (an atlas does not
tile). The extension is used, not required: a viewer without it shows F0 0.04.
Writing the file ourselves keeps every byte accounted for: the Khronos validator runs on it in
the tests.
"""
from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.export.bake import F0_DEFAULT_IOR, SPECULAR_COLOUR_FACTOR

GLB_MAGIC = 0x46546C67  # "glTF"
CHUNK_JSON = 0x4E4F534A  # "JSON"
CHUNK_BIN = 0x004E4942  # "BIN\0"

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
FLOAT, UNSIGNED_SHORT, UNSIGNED_INT = 5126, 5123, 5125
LINEAR, LINEAR_MIPMAP_LINEAR, CLAMP_TO_EDGE = 9729, 9987, 33071
COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
DTYPES = {FLOAT: np.float32, UNSIGNED_SHORT: np.uint16, UNSIGNED_INT: np.uint32, 5121: np.uint8}


@dataclass
class TexturedMesh:
    """What goes into the GLB: positions [V, 3] model frame, normals [V, 3] unit, tangents [V, 4]
    (xyz unit, w = +-1), uvs [V, 2] (glTF: v down), faces [F, 3]; textures as PNG bytes (see
    bake.Textures: base colour, ORM, tangent-space normals, specular colour)."""

    positions: np.ndarray
    normals: np.ndarray
    tangents: np.ndarray
    uvs: np.ndarray
    faces: np.ndarray
    base_colour_png: bytes
    orm_png: bytes
    normal_png: bytes | None = None
    specular_png: bytes | None = None


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a uint8 image [H, W, 3] (or [H, W, 4]) as PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class _BinBuilder:
    """Appends 4-byte-aligned blobs to the binary chunk and records their bufferViews/accessors."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.length = 0
        self.buffer_views: list[dict] = []
        self.accessors: list[dict] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        pad = (-self.length) % 4
        if pad:
            self.parts.append(b"\x00" * pad)
            self.length += pad
        entry = {"buffer": 0, "byteOffset": self.length, "byteLength": len(data)}
        if target is not None:
            entry["target"] = target
        self.parts.append(data)
        self.length += len(data)
        self.buffer_views.append(entry)
        return len(self.buffer_views) - 1

    def accessor(self, array: np.ndarray, kind: str, component: int, target: int, bounds: bool = False) -> int:
        array = np.ascontiguousarray(array, dtype=DTYPES[component])
        entry = {"bufferView": self.view(array.tobytes(), target), "componentType": component,
                 "count": int(array.shape[0]), "type": kind}
        if bounds:  # required for POSITION
            entry["min"] = array.reshape(len(array), -1).min(axis=0).tolist()
            entry["max"] = array.reshape(len(array), -1).max(axis=0).tolist()
        self.accessors.append(entry)
        return len(self.accessors) - 1

    def data(self) -> bytes:
        blob = b"".join(self.parts)
        return blob + b"\x00" * ((-len(blob)) % 4)


def _unit32(v: np.ndarray) -> np.ndarray:
    """Normalise in float64 then store float32, so the validator's unit-length check holds."""
    v = np.asarray(v, dtype=np.float64)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def glb_bytes(model: TexturedMesh, generator: str = "neroic", extras: dict | None = None) -> bytes:
    """The complete GLB file for one textured mesh (see the module docstring for its layout)."""
    n_vertices = len(model.positions)
    if np.any(~np.isfinite(model.positions)) or np.any(~np.isfinite(model.uvs)):
        raise ValueError("mesh has non-finite positions or UVs")
    b = _BinBuilder()
    attributes = {
        "POSITION": b.accessor(model.positions, "VEC3", FLOAT, ARRAY_BUFFER, bounds=True),
        "NORMAL": b.accessor(_unit32(model.normals), "VEC3", FLOAT, ARRAY_BUFFER),
        "TANGENT": b.accessor(np.concatenate([_unit32(model.tangents[:, :3]),
                                              np.sign(model.tangents[:, 3:4]).astype(np.float32)], axis=1),
                              "VEC4", FLOAT, ARRAY_BUFFER),
        "TEXCOORD_0": b.accessor(model.uvs, "VEC2", FLOAT, ARRAY_BUFFER),
    }
    index_type = UNSIGNED_SHORT if n_vertices < 65535 else UNSIGNED_INT
    indices = b.accessor(np.asarray(model.faces).reshape(-1), "SCALAR", index_type, ELEMENT_ARRAY_BUFFER)

    pngs = [model.base_colour_png, model.orm_png]
    material = {
        "name": "neroic_material",
        "pbrMetallicRoughness": {
            "baseColorTexture": {"index": 0},
            "metallicRoughnessTexture": {"index": 1},
            "metallicFactor": 1.0,  # scales the texture's B channel, which holds the metallic value
            "roughnessFactor": 1.0,
        },
        "occlusionTexture": {"index": 1},
    }
    if model.normal_png:
        material["normalTexture"] = {"index": len(pngs)}
        pngs.append(model.normal_png)
    extensions = []
    if model.specular_png:
        material["extensions"] = {"KHR_materials_specular": {
            "specularColorTexture": {"index": len(pngs)}, "specularColorFactor": [SPECULAR_COLOUR_FACTOR] * 3}}
        pngs.append(model.specular_png)
        extensions.append("KHR_materials_specular")
    images = [{"bufferView": b.view(p), "mimeType": "image/png"} for p in pngs]
    doc = {
        "asset": {"version": "2.0", "generator": generator},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "object"}],
        "meshes": [{"name": "object", "primitives": [{"attributes": attributes, "indices": indices,
                                                       "material": 0, "mode": 4}]}],
        "materials": [material],
        "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR_MIPMAP_LINEAR,
                      "wrapS": CLAMP_TO_EDGE, "wrapT": CLAMP_TO_EDGE}],
        "images": images,
        "textures": [{"sampler": 0, "source": i} for i in range(len(images))],
        "accessors": b.accessors,
        "bufferViews": b.buffer_views,
        "buffers": [{"byteLength": 0}],
    }
    if extensions:
        doc["extensionsUsed"] = extensions
    if extras:
        doc["asset"]["extras"] = extras
    binary = b.data()
    doc["buffers"][0]["byteLength"] = len(binary)
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * ((-len(text)) % 4)
    total = 12 + 8 + len(text) + 8 + len(binary)
    return b"".join([struct.pack("<III", GLB_MAGIC, 2, total),
                     struct.pack("<II", len(text), CHUNK_JSON), text,
                     struct.pack("<II", len(binary), CHUNK_BIN), binary])


def write_glb(path: str | Path, model: TexturedMesh, generator: str = "neroic", extras: dict | None = None) -> int:
    """Write the GLB to path; returns its size in bytes."""
    data = glb_bytes(model, generator, extras)
    Path(path).write_bytes(data)
    return len(data)


@dataclass
class GLBModel:
    """A GLB's first primitive read back: arrays as in TexturedMesh, textures decoded to uint8
    images [H, W, C] (None where absent; occlusion may be the metallic-roughness image itself),
    and KHR_materials_specular's factors (the extension's defaults when it is absent: F0 0.04)."""

    positions: np.ndarray
    normals: np.ndarray | None
    tangents: np.ndarray | None
    uvs: np.ndarray | None
    faces: np.ndarray
    base_colour: np.ndarray | None
    metallic_roughness: np.ndarray | None
    normal: np.ndarray | None
    document: dict
    occlusion: np.ndarray | None = None
    specular_colour: np.ndarray | None = None
    specular_colour_factor: float = 1.0
    specular_factor: float = 1.0
    f0_ior: float = F0_DEFAULT_IOR


def read_glb(path: str | Path) -> GLBModel:
    """Parse a GLB with one mesh primitive (as write_glb makes; tightly packed accessors)."""
    from PIL import Image

    data = Path(path).read_bytes()
    magic, version, total = struct.unpack_from("<III", data, 0)
    if magic != GLB_MAGIC or version != 2 or total != len(data):
        raise ValueError(f"{path} is not a glTF 2.0 binary")
    json_len, json_type = struct.unpack_from("<II", data, 12)
    doc = json.loads(data[20:20 + json_len])
    bin_start = 20 + json_len + 8
    binary = data[bin_start:bin_start + struct.unpack_from("<I", data, 20 + json_len)[0]]

    def view_bytes(index: int) -> bytes:
        v = doc["bufferViews"][index]
        return binary[v.get("byteOffset", 0):v.get("byteOffset", 0) + v["byteLength"]]

    def accessor(index: int | None) -> np.ndarray | None:
        if index is None:
            return None
        a = doc["accessors"][index]
        raw = view_bytes(a["bufferView"])[a.get("byteOffset", 0):]
        width = COMPONENTS[a["type"]]
        arr = np.frombuffer(raw, dtype=DTYPES[a["componentType"]], count=a["count"] * width)
        return arr.reshape(a["count"], width) if width > 1 else arr

    decoded: dict[int, np.ndarray] = {}

    def texture(info: dict | None) -> np.ndarray | None:
        if info is None:
            return None
        source = doc["textures"][info["index"]]["source"]
        if source not in decoded:
            decoded[source] = np.asarray(Image.open(io.BytesIO(view_bytes(doc["images"][source]["bufferView"]))))
        return decoded[source]

    prim = doc["meshes"][0]["primitives"][0]
    attrs = prim["attributes"]
    material = doc["materials"][prim["material"]] if "material" in prim else {}
    pbr = material.get("pbrMetallicRoughness", {})
    specular = material.get("extensions", {}).get("KHR_materials_specular", {})
    ior = material.get("extensions", {}).get("KHR_materials_ior", {}).get("ior", 1.5)
    colour_factor = specular.get("specularColorFactor", [1.0, 1.0, 1.0])
    if len(set(colour_factor)) > 1 or "specularTexture" in specular:
        raise ValueError(f"{path}: a coloured specularColorFactor or a specularTexture is not what neroic writes")
    return GLBModel(
        positions=accessor(attrs["POSITION"]).astype(np.float64),
        normals=None if "NORMAL" not in attrs else accessor(attrs["NORMAL"]).astype(np.float64),
        tangents=None if "TANGENT" not in attrs else accessor(attrs["TANGENT"]).astype(np.float64),
        uvs=None if "TEXCOORD_0" not in attrs else accessor(attrs["TEXCOORD_0"]).astype(np.float64),
        faces=accessor(prim["indices"]).astype(np.int64).reshape(-1, 3),
        base_colour=texture(pbr.get("baseColorTexture")),
        metallic_roughness=texture(pbr.get("metallicRoughnessTexture")),
        normal=texture(material.get("normalTexture")),
        document=doc,
        occlusion=texture(material.get("occlusionTexture")),
        specular_colour=texture(specular.get("specularColorTexture")),
        specular_colour_factor=float(colour_factor[0]),
        specular_factor=float(specular.get("specularFactor", 1.0)),
        f0_ior=((ior - 1.0) / (ior + 1.0)) ** 2,
    )
