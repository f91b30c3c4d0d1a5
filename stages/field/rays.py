"""Cameras and pixel rays, in the project's transforms.json convention.

    cams = Cameras.from_frames(read_transforms(Path("poses/transforms.json")))
    origins, directions = cams.rays(image_idx, px, py, refinement)  # [K] each -> [K, 3], [K, 3]

Camera-to-world matrices are OpenGL style (the camera looks along -Z, +Y up, +X right).
Pixel (px, py) is the integer pixel index; its centre is at (px + 0.5, py + 0.5). Lens
distortion (OpenCV radial-tangential k1 k2 p1 p2) is removed from the pixel coordinates by a
fixed-point iteration before the ray is formed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor, nn

from stages.common.cameras import Frame, distort, undistort


@dataclass
class Cameras:
    """P cameras: c2w [P, 4, 4], focal/principal [P, 4] (fx, fy, cx, cy) pixels, size [P, 2] (w, h), distortion [P, 4]."""

    c2w: Tensor
    intrinsics: Tensor
    size: Tensor
    distortion: Tensor

    def __post_init__(self):
        # known once, on the host: asking the tensor every step would wait for the GPU
        self.distorted = bool(self.distortion.any())

    @staticmethod
    def from_frames(frames: Sequence[Frame]) -> "Cameras":
        """From `stages.common.cameras.Frame`s (as `read_transforms` returns them)."""
        c2w = torch.tensor(np.stack([np.asarray(f.c2w, dtype=np.float64) for f in frames]), dtype=torch.float32)
        intr = torch.tensor([[f.fl_x, f.fl_y, f.cx, f.cy] for f in frames], dtype=torch.float32)
        size = torch.tensor([[int(f.w), int(f.h)] for f in frames], dtype=torch.long)
        dist = torch.tensor([[f.k1, f.k2, f.p1, f.p2] for f in frames], dtype=torch.float32)
        return Cameras(c2w, intr, size, dist)

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def to(self, device: str | torch.device) -> "Cameras":
        return Cameras(self.c2w.to(device), self.intrinsics.to(device), self.size.to(device), self.distortion.to(device))

    def subset(self, index: Tensor | list[int]) -> "Cameras":
        index = torch.as_tensor(index, dtype=torch.long, device=self.c2w.device)
        return Cameras(self.c2w[index], self.intrinsics[index], self.size[index], self.distortion[index])

    def rays(self, image_idx: Tensor, px: Tensor, py: Tensor,
             refinement: "CameraRefinement | None" = None) -> tuple[Tensor, Tensor]:
        """image_idx, px, py: [K] -> origins [K, 3], unit directions [K, 3], world frame."""
        fx, fy, cx, cy = self.intrinsics[image_idx].unbind(-1)
        x = (px.float() + 0.5 - cx) / fx
        y = (py.float() + 0.5 - cy) / fy
        if self.distorted:
            x, y = undistort(x, y, *self.distortion[image_idx].unbind(-1))
        c2w = self.c2w[image_idx]
        rot, origins = c2w[:, :3, :3], c2w[:, :3, 3]
        if refinement is not None:
            scale = torch.exp(-refinement.log_focal[image_idx])
            x, y = x * scale, y * scale
            rot = axis_angle_to_matrix(refinement.rotation[image_idx]) @ rot
            origins = origins + refinement.translation[image_idx] * refinement.translation_scale
        dirs_cam = torch.stack((x, -y, -torch.ones_like(x)), dim=-1)  # OpenGL: image y down = camera -Y
        dirs = (rot @ dirs_cam[:, :, None])[:, :, 0]
        return origins, dirs / dirs.norm(dim=-1, keepdim=True)

    def project(self, points: Tensor, index: int) -> tuple[Tensor, Tensor]:
        """points [N, 3] world -> (pixel coordinates [N, 2] (x right, y down; continuous, pixel
        centres at +0.5), depth [N] along the viewing axis; <= 0 means behind the camera)."""
        c2w = self.c2w[index]
        cam = (points - c2w[:3, 3]) @ c2w[:3, :3]  # world -> camera: R^T (p - t)
        depth = -cam[:, 2]
        safe = torch.where(depth.abs() > 1e-9, depth, torch.full_like(depth, 1e-9))
        x, y = cam[:, 0] / safe, -cam[:, 1] / safe
        x, y = distort(x, y, *self.distortion[index].unbind(-1))
        fx, fy, cx, cy = self.intrinsics[index]
        return torch.stack((x * fx + cx, y * fy + cy), dim=-1), depth

    def to_frames(self, like: Sequence[Frame]) -> list[Frame]:
        """These cameras as Frames, with stems and paths taken from `like` (same order)."""
        out = []
        for i, f in enumerate(like):
            fx, fy, cx, cy = self.intrinsics[i].tolist()
            k1, k2, p1, p2 = self.distortion[i].tolist()
            out.append(replace(f, c2w=self.c2w[i].double().cpu().numpy(), fl_x=fx, fl_y=fy, cx=cx, cy=cy,
                               k1=k1, k2=k2, p1=p1, p2=p2))
        return out


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues: [K, 3] axis * angle (radians) -> [K, 3, 3]; smooth at zero."""
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[:, :, None]  # [K, 1, 1]
    theta = torch.sqrt(theta2 + 1e-12)
    # sin(t)/t and (1-cos(t))/t^2 with series near zero, so the gradient at the identity is exact
    small = theta2 < 1e-6
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-12))
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=-1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device).expand_as(skew)
    return eye + a * skew + b * (skew @ skew)


class CameraRefinement(nn.Module):
    """Per-photo pose and focal corrections (the paper's camera refinement), all starting at zero.

    rotation [P, 3] axis-angle (radians) applied on the world side, translation [P, 3] in units of
    `translation_scale` (the scene radius, so the regulariser does not depend on scene units),
    log_focal [P] (focal multiplied by exp(log_focal); for distorted cameras the scale is applied
    after undistortion, a first-order approximation).
    """

    def __init__(self, n_images: int, translation_scale: float = 1.0):
        super().__init__()
        self.rotation = nn.Parameter(torch.zeros(n_images, 3))
        self.translation = nn.Parameter(torch.zeros(n_images, 3))
        self.log_focal = nn.Parameter(torch.zeros(n_images))
        self.translation_scale = translation_scale

    def apply_to(self, cameras: Cameras) -> Cameras:
        """The refined cameras (detached), e.g. to save or to render with."""
        with torch.no_grad():
            rot = axis_angle_to_matrix(self.rotation.to(cameras.c2w.device))
            c2w = cameras.c2w.clone()
            c2w[:, :3, :3] = rot @ c2w[:, :3, :3]
            c2w[:, :3, 3] += self.translation.to(c2w.device) * self.translation_scale
            intr = cameras.intrinsics.clone()
            intr[:, :2] *= torch.exp(self.log_focal.to(intr.device))[:, None]
        return Cameras(c2w, intr, cameras.size.clone(), cameras.distortion.clone())
