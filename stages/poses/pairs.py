"""Which photo pairs the (slow) learned matcher compares: each photo's most similar others.

LightGlue costs about as much per pair as extracting a photo's features, so comparing every pair
of a few dozen photos takes many minutes on a CPU. A cheap similarity ranks the pairs first: the
number of distinctive mutual nearest neighbours between two photos' descriptors (one distance
matrix per pair), which is high when the photos see the same side of the object whatever its light.
"""
from __future__ import annotations

import numpy as np

RATIO = 0.9  # Lowe's ratio test: the nearest neighbour must be this much nearer than the second


def mutual_neighbours(a, b) -> int:
    """Distinctive mutual nearest neighbours between descriptor sets a [N, D] and b [M, D] (torch,
    unit rows): pairs that are each other's nearest and pass Lowe's ratio test (chance neighbours
    between unrelated descriptors are many, but rarely distinctive)."""
    import torch

    if len(a) < 2 or len(b) < 2:
        return 0
    distance = torch.cdist(a.float(), b.float())
    nearest, index = distance.topk(2, dim=1, largest=False)  # [N, 2] the two nearest b of each a
    backward = distance.argmin(0)  # [M] the nearest a of each b
    mutual = backward[index[:, 0]] == torch.arange(len(a), device=a.device)
    distinct = nearest[:, 0] < RATIO * nearest[:, 1]
    return int((mutual & distinct).sum())


def similar_pairs(descriptors: list, neighbours: int) -> list[tuple[int, int]]:
    """Pairs (i < j) to match: every pair when each photo may have `neighbours` or more partners
    (or neighbours <= 0), else the union of each photo's `neighbours` most similar photos."""
    n = len(descriptors)
    every = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if neighbours <= 0 or neighbours >= n - 1:
        return every
    score = np.zeros((n, n))
    for i, j in every:
        score[i, j] = score[j, i] = mutual_neighbours(descriptors[i], descriptors[j])
    np.fill_diagonal(score, -1)
    chosen = set()
    for i in range(n):
        for j in np.argsort(-score[i], kind="stable")[:neighbours]:
            chosen.add((min(i, int(j)), max(i, int(j))))
    return sorted(chosen)
