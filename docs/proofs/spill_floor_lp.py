#!/usr/bin/env python3
"""The smallest possible excess when one backend goes down in the spill regime.

Companion to docs/policies.md, section 10 ("A floor no table can beat").
Region A has n equal backends ahead of a healthy region B; overprovisioning
c = 1.4. A table family is any assignment of the slot space, for each set H
of A's healthy backends, to a backend of H or to B, such that A's share is
min(1, c |H| / n) (and, with --balance, each backend of H has an equal part
of it). For every H and j in H, the excess of j going down is

    moved(H -> H - {j}) - own share of j under H.

This linear program, over the mass of every possible per-slot pattern,
finds the smallest worst excess any family can have. The states are the
healthy sets of size <= K (K = 2 by default: the proof only uses pairs and
single backends). It needs scipy (pip install scipy); it is documentation,
not part of the build or the test suite.

    python3 docs/proofs/spill_floor_lp.py

prints, on 2026-12-02:

    n=3 K=2 balance=False: 216 patterns, min worst excess 6.667 %, proof 6.667 %
    n=3 K=2 balance=True: 216 patterns, min worst excess 6.667 %, proof 6.667 %
    n=3 K=3 balance=False: 864 patterns, min worst excess 6.667 %, proof 6.667 %
    n=3 K=3 balance=True: 864 patterns, min worst excess 6.667 %, proof 6.667 %
    n=4 K=2 balance=False: 11664 patterns, min worst excess 3.333 %, proof 3.333 %
    n=4 K=2 balance=True: 11664 patterns, min worst excess 3.333 %, proof 3.333 %
"""
import itertools

import numpy as np
from scipy.optimize import linprog

C = 1.4


def min_worst_excess(n, max_k, balance):
    states = [
        frozenset(s)
        for k in range(1, max_k + 1)
        for s in itertools.combinations(range(n), k)
    ]
    options = [sorted(h) + ["B"] for h in states]
    patterns = list(itertools.product(*options))
    p = len(patterns)

    def load(h):
        return min(1.0, C * len(h) / n)

    # Variables: the mass of each pattern, then the worst excess `a`.
    a_eq, b_eq = [np.append(np.ones(p), 0.0)], [1.0]
    for si, h in enumerate(states):
        if balance:
            for i in sorted(h):
                row = np.zeros(p + 1)
                for pi, pat in enumerate(patterns):
                    row[pi] = pat[si] == i
                a_eq.append(row)
                b_eq.append(load(h) / len(h))
        else:
            row = np.zeros(p + 1)
            for pi, pat in enumerate(patterns):
                row[pi] = pat[si] != "B"
            a_eq.append(row)
            b_eq.append(load(h))
    index = {h: i for i, h in enumerate(states)}
    a_ub, b_ub = [], []
    for h in states:
        for j in h:
            g = h - {j}
            if g not in index:
                continue
            before, after = index[h], index[g]
            # moved - own = the mass of slots not j's that change owner.
            row = np.zeros(p + 1)
            for pi, pat in enumerate(patterns):
                row[pi] = pat[before] != j and pat[before] != pat[after]
            row[-1] = -1.0
            a_ub.append(row)
            b_ub.append(0.0)
    cost = np.zeros(p + 1)
    cost[-1] = 1.0
    r = linprog(
        cost,
        A_ub=np.array(a_ub),
        b_ub=b_ub,
        A_eq=np.array(a_eq),
        b_eq=b_eq,
        bounds=[(0, None)] * (p + 1),
        method="highs",
    )
    assert r.status == 0, r.message
    return r.fun, p


def main():
    for n, max_k in [(3, 2), (3, 3), (4, 2)]:
        for balance in (False, True):
            v, p = min_worst_excess(n, max_k, balance)
            proof = (C - 1) / (n * (n - 1))
            print(
                f"n={n} K={max_k} balance={balance}: {p} patterns, "
                f"min worst excess {v * 100:.3f} %, proof {proof * 100:.3f} %"
            )


if __name__ == "__main__":
    main()
