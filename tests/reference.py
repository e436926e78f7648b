"""Independent reference implementations used by several test files."""

import math


def naive_distance(u: list[float], v: list[float], distance: str) -> float:
    if distance == "cosine":
        dot = sum(a * b for a, b in zip(u, v))
        nu, nv = math.sqrt(sum(a * a for a in u)), math.sqrt(sum(b * b for b in v))
        return 1.0 - dot / (nu * nv)
    sq = sum((a - b) ** 2 for a, b in zip(u, v))
    return sq if distance == "sqeuclidean" else math.sqrt(sq)


def naive_eq4(f1, f2, distance="l2", temperature=1.0, symmetric=True) -> float:
    """Algorithm 1 of the paper, literally: loops, python floats, a softmax written out by hand.

    Uses the log-sum-exp shift (subtracting the smallest distance), which does not change the value.
    """
    rows1, rows2 = f1.tolist(), f2.tolist()
    n = len(rows1)

    def one_direction(a, b):
        total = 0.0
        for i in range(n):
            d = [naive_distance(a[i], b[k], distance) / temperature for k in range(n)]
            m = min(d)
            total += -((-d[i] + m) - math.log(sum(math.exp(-dk + m) for dk in d)))
        return total / n

    if not symmetric:
        return one_direction(rows1, rows2)
    # The column direction: positives as anchors, scored against all anchors.
    return 0.5 * (one_direction(rows1, rows2) + one_direction(rows2, rows1))
