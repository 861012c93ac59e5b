"""Where per-sample gradient representations go: an exact Gram or a CountSketch.

``ExactSink`` keeps every chunk's representations (factored ones are small) and forms the Gram at the
end, layer by layer, in float64. ``SketchSink`` folds each chunk into ``s_i^m = R g_i^m`` at once, with
one CountSketch R per parameter group (a hash ``h: [P_L] -> [k]`` and signs ``σ: [P_L] -> ±1``, never a
k × P matrix), so memory is bounded by the chunk, not by N × P. Sketches of different groups are
summed: the sketch of the concatenated gradient with independent hashes per group.
"""

from __future__ import annotations

import zlib

import torch

from phasecore.ntk.reps import Dense, Factored, concat_factored, dense_gram, factored_gram


class ExactSink:
    def __init__(self, n_rows: int, n_probes: int, *, cross_probe: bool) -> None:
        self.n_rows, self.n_probes, self.cross_probe = n_rows, n_probes, cross_probe
        self._dense: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self._factored: dict[str, list[Factored]] = {}
        self.nbytes = 0

    def add(self, key: str, start: int, rows: int, rep: Dense | Factored) -> None:
        self.nbytes += rep.nbytes()
        if isinstance(rep, Dense):
            self._dense.setdefault(key, []).append((start, rep.g))
        else:
            self._factored.setdefault(key, []).append(rep.offset(start))

    def finish(self) -> torch.Tensor:
        m, n = self.n_probes, self.n_rows
        gram = torch.zeros((m, n, m, n) if self.cross_probe else (m, n, n), dtype=torch.float64)
        for key in list(self._dense):
            parts = self._dense.pop(key)
            g = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])], dim=1)
            gram += dense_gram(g, cross_probe=self.cross_probe).to(torch.float64).cpu()
        for key in list(self._factored):
            rep = concat_factored(self._factored.pop(key))
            gram += factored_gram(rep, n, cross_probe=self.cross_probe)
        return gram


class SketchSink:
    def __init__(self, n_rows: int, n_probes: int, *, sketch_dim: int, seed: int, cross_probe: bool) -> None:
        self.n_rows, self.n_probes, self.k = n_rows, n_probes, sketch_dim
        self.seed, self.cross_probe = seed, cross_probe
        self.sketch = torch.zeros(n_probes, n_rows, sketch_dim, dtype=torch.float64)
        self._hashes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.nbytes = self.sketch.numel() * 8

    def _hash(self, key: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket (P_L,) long, sign (P_L,) ±1) for one parameter group, from (seed, key) alone."""
        if key not in self._hashes:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
            bucket = torch.randint(0, self.k, (size,), generator=gen)
            sign = torch.randint(0, 2, (size,), generator=gen).mul_(2).sub_(1)
            self._hashes[key] = (bucket, sign)
            self.nbytes += size * 16
        return self._hashes[key]

    def add(self, key: str, start: int, rows: int, rep: Dense | Factored) -> None:
        if isinstance(rep, Factored) and rep.ids is not None:
            self._add_table(key, start, rows, rep)
            return
        g = rep.g if isinstance(rep, Dense) else rep.densify(rows)
        m, c, p = g.shape
        bucket, sign = (t.to(g.device) for t in self._hash(key, p))
        out = torch.zeros(m, c, self.k, dtype=g.dtype, device=g.device)
        out.index_add_(2, bucket, g * sign.to(g.dtype))
        self.sketch[:, start : start + c] += out.to(torch.float64).cpu()

    def _add_table(self, key: str, start: int, rows: int, rep: Factored) -> None:
        """An embedding table's per-sample gradient is gy_t on row ids_t: sketch those entries only."""
        assert rep.ids is not None
        m, tok, b = rep.gy.shape
        bucket, sign = (t.to(rep.gy.device) for t in self._hash(key, rep.table_rows * b))
        flat = rep.ids.unsqueeze(1) * b + torch.arange(b, device=rep.ids.device)  # (Tok, b) indices into the table
        values = rep.gy * sign[flat].to(rep.gy.dtype)  # (M, Tok, b)
        out = torch.zeros(m, rows * self.k, dtype=rep.gy.dtype, device=rep.gy.device)
        target = (rep.seg.unsqueeze(1) * self.k + bucket[flat]).reshape(-1)
        out.index_add_(1, target, values.reshape(m, -1))
        self.sketch[:, start : start + rows] += out.reshape(m, rows, self.k).to(torch.float64).cpu()

    def finish(self) -> torch.Tensor:
        s = self.sketch
        if self.cross_probe:
            flat = s.reshape(-1, self.k)
            return (flat @ flat.T).reshape(self.n_probes, self.n_rows, self.n_probes, self.n_rows)
        return torch.bmm(s, s.transpose(1, 2))
