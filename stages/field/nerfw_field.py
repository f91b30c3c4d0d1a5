"""The NeRF-W style field: static geometry + colour, and a per-photo transient part.

    sigma, geo = field.density(positions)                 # positions [N, 3] world
    d, geo = field.sdf(positions)                         # surface="sdf": signed distance, world units
    rgb = field.colour(geo, directions, field.appearance(image_idx),
                       normals=field.surface_normals(positions, spacing))   # (sdf; density: none)
    sigma_t, rgb_t, beta = field.transient(geo, field.transient_codes(image_idx))

The static geometry is either a free density (surface="density", NeRF-W) or a signed distance
function (surface="sdf", the default) whose density for volume rendering is VolSDF's
sigma = Laplace_cdf(-d / w) / w with a learned surface width w: the zero level is the surface, so
it comes out watertight and smooth where the photos do not say otherwise (an eikonal term in
training keeps d a distance), and its gradient is the surface normal. The SDF starts as the masks'
visual hull: d = hull prior (a signed-distance grid, `set_sdf_prior`) + a learned residual.

Static colour depends on the view direction (SH-encoded) and a per-photo appearance code, so
exposure or lighting changes between photos are explained by the code instead of by geometry.
The transient head (NeRF-W) gives each photo its own extra density, colour and uncertainty beta,
which soaks up per-photo occluders, shadows and highlights; the colour loss is divided by beta^2
so those pixels weigh less. Densities are per world unit; colours are sRGB values in [0, 1] (the
field is trained directly on the photos' encoded values).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from stages.field.embedding import PerImageEmbedding
from stages.field.grids import sample_grid
from stages.field.encodings import HashGridEncoding, sh_encode
from stages.field.mlp import MLP


# Vertices of a regular tetrahedron: sum_k v_k f(x + h v_k) = 4 h^2 grad f(x) + O(h^4) for |v_k|^2 = 3.
_TETRAHEDRON = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient is clamped at exp(15): density grows fast without exploding."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


class NerfWField(nn.Module):
    """Hash-grid NeRF-W field over an axis-aligned box (aabb_min, aabb_max: [3] world)."""

    def __init__(self, aabb_min: Sequence[float], aabb_max: Sequence[float], n_images: int, *,
                 n_levels: int = 12, n_features: int = 2, log2_table: int = 15,
                 base_resolution: int = 16, max_resolution: int = 1024, width: int = 64,
                 colour_layers: int = 2, geo_feat_dim: int = 15, appearance_dim: int = 16,
                 transient_dim: int = 16, sh_degree: int = 4, beta_min: float = 0.1,
                 surface: str = "sdf", prior_resolution: int = 64, surface_width: float = 0.01,
                 min_surface_width: float = 0.002):
        super().__init__()
        if surface not in ("sdf", "density"):
            raise ValueError(f"surface must be 'sdf' or 'density', got {surface!r}")
        self.config = dict(aabb_min=[float(v) for v in aabb_min], aabb_max=[float(v) for v in aabb_max],
                           n_images=n_images, n_levels=n_levels, n_features=n_features,
                           log2_table=log2_table, base_resolution=base_resolution,
                           max_resolution=max_resolution, width=width, colour_layers=colour_layers,
                           geo_feat_dim=geo_feat_dim, appearance_dim=appearance_dim,
                           transient_dim=transient_dim, sh_degree=sh_degree, beta_min=beta_min, surface=surface,
                           prior_resolution=prior_resolution, surface_width=surface_width,
                           min_surface_width=min_surface_width)
        lo, hi = torch.tensor(self.config["aabb_min"]), torch.tensor(self.config["aabb_max"])
        self.register_buffer("aabb_min", lo, persistent=False)
        self.register_buffer("aabb_size", hi - lo, persistent=False)
        # densities are learned per unit of box size, so initial opacity does not depend on scene scale
        self.density_scale = 1.0 / float((hi - lo).max())
        self.sh_degree, self.beta_min = sh_degree, beta_min
        self.encoding = HashGridEncoding(n_levels, n_features, log2_table, base_resolution, max_resolution)
        self.density_net = MLP(self.encoding.out_dim, 1 + geo_feat_dim, width, 1)
        self.is_sdf = surface == "sdf"
        if self.is_sdf:
            # the SDF residual's unit: a tenth of the box, so the MLP's O(1) outputs move the surface
            # by up to ~10% of the object (the hull prior is already close)
            self.residual_scale = 0.1 * float((hi - lo).max())
            self.register_buffer("sdf_prior", torch.zeros(prior_resolution, prior_resolution, prior_resolution, 1))
            self.min_surface_width, self.initial_surface_width = min_surface_width, surface_width
            self.log_surface_width = nn.Parameter(torch.tensor(math.log(max(surface_width - min_surface_width, 1e-6))))
            with torch.no_grad():
                self.density_net.net[-1].weight[0].mul_(0.01)  # the residual starts near zero: d = the hull
                self.density_net.net[-1].bias[0].zero_()
        # colour = MLP([geo, SH(direction), appearance]); the first layer is split so the per-ray
        # part (direction, appearance) is computed once per ray, not once per sample
        # an SDF's colour also sees the surface normal (IDR, NeuS): a photo's shading is a function of
        # the normal, so the appearance code can explain it through the normal instead of bending
        # the surface into bumps that imitate it
        self.colour_net = MLP(geo_feat_dim + (3 if surface == "sdf" else 0), 3, width, colour_layers)
        self.colour_condition = nn.Linear(sh_degree ** 2 + appearance_dim, width, bias=False)
        self.appearance = PerImageEmbedding(n_images, appearance_dim)
        self.transient_codes = self.transient_net = self.transient_condition = None
        if transient_dim > 0:
            self.transient_codes = PerImageEmbedding(n_images, transient_dim)
            self.transient_net = MLP(geo_feat_dim, 5, width // 2, 1)
            self.transient_condition = nn.Linear(transient_dim, width // 2, bias=False)

    @property
    def has_transient(self) -> bool:
        return self.transient_net is not None

    def set_sdf_prior(self, signed_distance: Tensor) -> None:
        """The SDF's starting shape: a cell-centred signed-distance grid [G, G, G] (world units,
        negative inside) over the field's box, resampled to `prior_resolution`."""
        g = self.sdf_prior.shape[0]
        grid = signed_distance.float()[None, None]
        if grid.shape[-1] != g:
            grid = nn.functional.interpolate(grid, size=(g, g, g), mode="trilinear", align_corners=False)
        self.sdf_prior.copy_(grid[0, 0, ..., None])

    @property
    def surface_width(self) -> Tensor:
        """VolSDF's beta (world units): the density rises from 0 to 1/beta over about this distance."""
        return self.min_surface_width + torch.exp(self.log_surface_width)

    @torch.no_grad()
    def bound_surface_width(self, widest: float) -> None:
        """Narrow the learned surface width to at most `widest` (world units; never below the minimum)."""
        room = max(widest - self.min_surface_width, 1e-6 * self.min_surface_width)
        self.log_surface_width.clamp_(max=math.log(room))

    def sdf(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions: [N, 3] world -> (signed distance [N] world units, negative inside; geometry
        features [N, geo_feat_dim]). Only for surface="sdf"."""
        unit = (positions - self.aabb_min) / self.aabb_size
        h = self.density_net(self.encoding(unit))
        prior = sample_grid(self.sdf_prior, positions, self.aabb_min, self.aabb_min + self.aabb_size)[:, 0]
        return prior + self.residual_scale * h[:, 0], h[:, 1:]

    def sdf_gradient(self, positions: Tensor, spacing: float) -> Tensor:
        """The SDF's gradient [N, 3] at positions [N, 3] by finite differences over a tetrahedron of
        half-size `spacing` (world units): four evaluations, no second derivatives through the hash
        grid, and a larger spacing averages the gradient over that scale (smoother normals)."""
        offsets = _TETRAHEDRON.to(positions) * spacing  # [4, 3]
        values, _ = self.sdf((positions[:, None, :] + offsets).reshape(-1, 3))
        return (values.view(-1, 4, 1) * offsets).sum(1) / (4.0 * spacing * spacing)

    def surface_normals(self, positions: Tensor, spacing: float) -> Tensor:
        """Unit normals [N, 3] of an SDF field at positions [N, 3]: its normalised gradient (finite
        differences over `spacing`, world units; differentiable, so the colour loss shapes them)."""
        return nn.functional.normalize(self.sdf_gradient(positions, spacing), dim=-1, eps=1e-8)

    def density(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions: [N, 3] world -> (sigma [N] per world unit, geometry features [N, geo_feat_dim])."""
        if self.is_sdf:
            d, geo = self.sdf(positions)
            width = self.surface_width
            half_tail = 0.5 * torch.exp(-d.abs() / width)  # VolSDF: Laplace CDF of -d at scale `width`
            return torch.where(d > 0, half_tail, 1.0 - half_tail) / width, geo
        unit = (positions - self.aabb_min) / self.aabb_size
        h = self.density_net(self.encoding(unit))
        sigma = _TruncExp.apply(h[:, 0]) * self.density_scale
        return sigma, h[:, 1:]

    def colour(self, geo: Tensor, directions: Tensor, appearance: Tensor, ray_idx: Tensor | None = None,
               normals: Tensor | None = None) -> Tensor:
        """geo [N, G], directions [R, 3] unit world, appearance codes [R, A] -> sRGB [N, 3] in [0, 1];
        an SDF field also needs the unit normals [N, 3] at the samples (`surface_normals`).

        Sample n belongs to ray ray_idx[n] ([N] int64); without ray_idx, R = N (one ray per sample).
        """
        condition = self.colour_condition(torch.cat((sh_encode(directions, self.sh_degree), appearance), dim=-1))
        if ray_idx is not None:
            condition = condition.index_select(0, ray_idx)
        if self.is_sdf:
            if normals is None:
                raise ValueError("an SDF field's colour needs the surface normals at the samples")
            geo = torch.cat((geo, normals), dim=-1)
        return torch.sigmoid(self.colour_net(geo, first_bias=condition))

    def transient(self, geo: Tensor, codes: Tensor, ray_idx: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """geo [N, G], transient codes [R, T] (per ray, see `colour`) -> (sigma_t [N] per world unit,
        sRGB [N, 3], beta [N] >= 0)."""
        condition = self.transient_condition(codes)
        if ray_idx is not None:
            condition = condition.index_select(0, ray_idx)
        h = self.transient_net(geo, first_bias=condition)
        sigma_t = nn.functional.softplus(h[:, 0] - 1.0) * self.density_scale
        return sigma_t, torch.sigmoid(h[:, 1:4]), nn.functional.softplus(h[:, 4])
