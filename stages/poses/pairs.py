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


def upright_turns(turned: list[list]) -> tuple[list[int], np.ndarray]:
    """Turns that bring every photo to a common 'up', for descriptors that are not rotation
    invariant (photos circling an object seen from above turn in the image; one taken upside
    down matches nothing), and the pair scores [n, n] at those turns. `turned[i][t]`: photo i's
    descriptors [N, D] after t of T equal turns (a full circle). Each pair votes for the
    relative turn with the most distinctive mutual neighbours;
    the turns follow the strongest votes out from the best-connected photo (a maximum spanning
    tree), so an upright capture stays at 0 everywhere."""
    n, quarter = len(turned), len(turned[0])
    counts = np.zeros((n, n, quarter))  # counts[i, j, r]: photo i unturned against j turned r times
    for i in range(n):
        for j in range(i + 1, n):
            for r in range(quarter):
                counts[i, j, r] = mutual_neighbours(turned[i][0], turned[j][r])
                counts[j, i, (-r) % quarter] = counts[i, j, r]
    best = counts.max(2)
    turns = {int(np.argmax(best.sum(1))): 0}
    while len(turns) < n:
        inside, outside = list(turns), [j for j in range(n) if j not in turns]
        sub = best[np.ix_(inside, outside)]
        a, b = np.unravel_index(np.argmax(sub), sub.shape)
        i, j = inside[a], outside[b]
        turns[j] = (turns[i] + int(np.argmax(counts[i, j]))) % quarter
    chosen = [turns[i] for i in range(n)]
    score = np.array([[counts[i, j, (chosen[j] - chosen[i]) % quarter] for j in range(n)] for i in range(n)])
    return chosen, score


def similarity(descriptors: list) -> np.ndarray:
    """[n, n] distinctive mutual neighbours between every two photos' descriptors."""
    n = len(descriptors)
    score = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            score[i, j] = score[j, i] = mutual_neighbours(descriptors[i], descriptors[j])
    return score


def similar_pairs(score: np.ndarray, neighbours: int) -> list[tuple[int, int]]:
    """Pairs (i < j) to match: every pair when each photo may have `neighbours` or more partners
    (or neighbours <= 0), else the union of each photo's `neighbours` most similar photos by
    `score` [n, n]."""
    n = len(score)
    if neighbours <= 0 or neighbours >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    score = score.astype(float).copy()
    np.fill_diagonal(score, -1)
    chosen = set()
    for i in range(n):
        for j in np.argsort(-score[i], kind="stable")[:neighbours]:
            chosen.add((min(i, int(j)), max(i, int(j))))
    return sorted(chosen)
