"""Which photo pairs the (slow) learned matcher compares: each photo's most similar others.

LightGlue costs about as much per pair as extracting a photo's features, so comparing every pair
of a few dozen photos takes many minutes on a CPU. A cheap similarity ranks the pairs first: the
number of distinctive mutual nearest neighbours between two photos' descriptors (one distance
matrix per pair), which is high when the photos see the same side of the object whatever its light.
"""
from __future__ import annotations

import numpy as np

RATIO = 0.9  # Lowe's ratio test: the nearest neighbour must be this much nearer than the second
TURN_PARTNERS = 5  # a photo's turn is judged by its matches with this many most similar photos
TURN_GAIN, TURN_MIN_EXTRA = 1.5, 10  # a turn must give this many times the matches, and 10 more


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


def upright_turns(turned: list[list]) -> tuple[list[int], np.ndarray]:
    """Quarter turns that bring photos taken sideways or upside down to the others' 'up', for
    descriptors that are not rotation invariant, and the pair scores [n, n] at those turns.
    `turned[i][t]`: photo i's descriptors [N, D] after t of 4 quarter turns. Every photo starts
    unturned and is turned only where that is clearly better (TURN_GAIN times the distinctive
    mutual neighbours with its best partners, at their turns): an upright capture stays as it is
    (a consensus that could also move upright photos by 45 degrees made a rendered capture's
    cameras 50 % less accurate)."""
    n, quarter = len(turned), len(turned[0])
    counts = np.zeros((n, n, quarter))  # counts[i, j, r]: photo i unturned against j turned r times
    for i in range(n):
        for j in range(i + 1, n):
            for r in range(quarter):
                counts[i, j, r] = mutual_neighbours(turned[i][0], turned[j][r])
                counts[j, i, (-r) % quarter] = counts[i, j, r]
    partners = np.argsort(-counts.max(2), axis=1)[:, :TURN_PARTNERS]
    turns = [0] * n
    for _ in range(3):
        changed = False
        for i in range(n):
            support = [sum(counts[i, j, (turns[j] - t) % quarter] for j in partners[i] if j != i)
                       for t in range(quarter)]
            best = int(np.argmax(support))
            if support[best] >= TURN_GAIN * support[turns[i]] + TURN_MIN_EXTRA and best != turns[i]:
                turns[i], changed = best, True
        if not changed:
            break
    score = np.array([[counts[i, j, (turns[j] - turns[i]) % quarter] for j in range(n)] for i in range(n)])
    return turns, score


def similarity(descriptors: list) -> np.ndarray:
    """[n, n] distinctive mutual neighbours between every two photos' descriptors."""
    n = len(descriptors)
    score = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            score[i, j] = score[j, i] = mutual_neighbours(descriptors[i], descriptors[j])
    return score


def similar_pairs(score: np.ndarray, neighbours: int, share: float = 0.0) -> list[tuple[int, int]]:
    """Pairs (i < j) to match: every pair when each photo may have `neighbours` or more partners
    (or neighbours <= 0), else the union of each photo's `neighbours` most similar photos by
    `score` [n, n], the photos at least `share` times as similar to it as its most similar one,
    and the maximum spanning tree of `score` (so no group of photos is cut off from the rest by
    the choice alone)."""
    n = len(score)
    if neighbours <= 0 or neighbours >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    score = score.astype(float).copy()
    np.fill_diagonal(score, -1)
    chosen = set(spanning_tree(score))
    for i in range(n):
        alike = np.flatnonzero(score[i] >= share * score[i].max()) if share > 0 else []
        for j in [*np.argsort(-score[i], kind="stable")[:neighbours], *alike]:
            chosen.add((min(i, int(j)), max(i, int(j))))
    return sorted(chosen)


def neighbourhood(score: np.ndarray, focus: list[int], neighbours: int) -> list[int]:
    """The indices (sorted) of the `focus` photos and of each one's `neighbours` most similar
    photos by `score` [n, n]: what a second kind of features must match to pose the photos a first
    model lacks, with enough posed photos around them to tie its cameras to that model's."""
    score = score.astype(float).copy()
    np.fill_diagonal(score, -1)
    chosen = set(focus)
    for i in focus:
        chosen.update(int(j) for j in np.argsort(-score[i], kind="stable")[:neighbours])
    return sorted(chosen)


def spanning_tree(score: np.ndarray) -> list[tuple[int, int]]:
    """The pairs (i < j) of a maximum spanning tree of the symmetric `score` [n, n] (Prim)."""
    n = len(score)
    inside = np.zeros(n, dtype=bool)
    inside[0] = True
    best, link = score[0].astype(float).copy(), np.zeros(n, dtype=int)
    edges = []
    for _ in range(n - 1):
        j = int(np.argmax(np.where(inside, -np.inf, best)))
        edges.append((min(j, int(link[j])), max(j, int(link[j]))))
        inside[j] = True
        better = score[j] > best
        best[better], link[better] = score[j][better], j
    return edges
