"""The neural field shared by the geometry, normals, material and export stages.

One file per concept (nerfstudio style); how the pieces fit together in one training step:

    cams = Cameras.from_frames(frames)                                # rays.py
    grid = OccupancyGrid(lo, hi, carve_visual_hull(cams, masks, lo, hi))   # occupancy.py
    field = NerfWField(lo, hi, n_images)                              # nerfw_field.py: encodings.py
                                                                      #   (hash grid, SH), mlp.py,
                                                                      #   embedding.py (per-photo codes)
    origins, dirs = cams.rays(image_idx, px, py, refinement)          # [R, 3] world
    samples = march_rays(origins, dirs, grid, step)                   # sampling.py: packed samples
    sigma, geo = field.density(samples.positions)
    w, w_t = nerfw_weights(sigma, samples.deltas, samples.ray_idx, R, sigma_t)   # rendering.py
    normals = field.surface_normals(samples.positions, step / 2)      # an SDF field's colour sees its normal
    rgb = composite(w, field.colour(geo, dirs, codes, samples.ray_idx, normals), samples.ray_idx, R)
    loss = nerfw_colour_loss(rgb, target, beta) + silhouette_loss(acc, mask)     # losses.py

`rendering.render_rays` does the middle part, `training.train_field` the whole loop, and
`trained.load_trained_field(geometry_dir, device)` gives later stages the trained field, its
occupancy grid and the (refined) cameras.
"""
from stages.field.trained import TrainedField, load_trained_field

__all__ = ["TrainedField", "load_trained_field"]
