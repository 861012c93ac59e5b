"""Where per-sample gradient representations go: an exact Gram or a CountSketch.

``ExactSink`` keeps every chunk's representations (factored ones are small) and forms the Gram at the
end, layer by layer, in float64. ``SketchSink`` folds each chunk into ``s_i^m = R g_i^m`` at once, with
one CountSketch R per parameter group (a hash ``h: [P_L] -> [k]`` and signs ``σ: [P_L] -> ±1``, never a
k × P matrix), so memory is bounded by the chunk, not by N × P. Sketches of different groups are
summed: the sketch of the concatenated gradient with independent hashes per group.

A factored layer (``g = Σ_t gy_t ⊗ x_t``, a linear layer over tokens) is sketched without forming g:
its CountSketch uses the product hash ``h(o, i) = h_out(o) + h_in(i) mod k``, ``σ(o, i) = σ_out(o) σ_in(i)``
(TensorSketch, Pham & Pagh 2013), under which the sketch of ``gy ⊗ x`` is the circular convolution of
the two factors' CountSketches: one FFT per factor, a product, and a segment sum over each sample's
tokens. Inner products stay unbiased; the cost is ``Tok · (a + b + k log k)`` instead of ``a · b`` per
sample and no 16-byte hash per parameter.
"""

from __future__ import annotations

import zlib

import torch

from phasecore.kernels.reps import Dense, Factored, concat_factored, dense_gram, factored_gram


class ExactSink:
    def __init__(self, n_rows: int, n_probes: int, *, cross_probe: bool) -> None:
        self.n_rows, self.n_probes, self.cross_probe = n_rows, n_probes, cross_probe
        self._dense: dict[str, list[tuple[int, torch.Tensor]]] = {}
        self._factored: dict[str, list[tuple[int, int, Factored]]] = {}  # (start, rows, chunk-local rep)
        self.nbytes = 0

    def add(self, key: str, start: int, rows: int, rep: Dense | Factored) -> None:
        self.nbytes += rep.nbytes()
        if isinstance(rep, Dense):
            self._dense.setdefault(key, []).append((start, rep.g))
        else:
            self._factored.setdefault(key, []).append((start, rows, rep))

    def finish(self) -> torch.Tensor:
        m, n = self.n_probes, self.n_rows
        # the Gram is accumulated in float64 on the host, whatever device produced the representations
        gram = torch.zeros((m, n, m, n) if self.cross_probe else (m, n, n), dtype=torch.float64, device="cpu")
        for key in list(self._dense):
            parts = self._dense.pop(key)
            # a group given in both forms (the per-sample loop took over after the first chunk): materialise
            parts += [(start, rep.densify(rows)) for start, rows, rep in self._factored.pop(key, [])]
            g = torch.cat([t for _, t in sorted(parts, key=lambda p: p[0])], dim=1)
            gram += dense_gram(g, cross_probe=self.cross_probe).to(torch.float64).cpu()
        for key in list(self._factored):
            rep = concat_factored([rep.offset(start) for start, _, rep in self._factored.pop(key)])
            gram += factored_gram(rep, n, cross_probe=self.cross_probe)
        return gram


class SketchSink:
    def __init__(
        self, n_rows: int, n_probes: int, *, sketch_dim: int, seed: int, cross_probe: bool, token_block: int = 1024
    ) -> None:
        self.n_rows, self.n_probes, self.k = n_rows, n_probes, sketch_dim
        self.seed, self.cross_probe = seed, cross_probe
        self.token_block = token_block
        self.sketch = torch.zeros(n_probes, n_rows, sketch_dim, dtype=torch.float64, device="cpu")  # host, float64
        self._hashes: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._pair_hashes: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]] = {}
        self.nbytes = self.sketch.numel() * 8

    def _draw(self, key: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket (size,) long, sign (size,) ±1) from (seed, key) alone."""
        # drawn on the CPU (the same hashes on every device), moved to the representations' device when used
        gen = torch.Generator(device="cpu").manual_seed((self.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
        bucket = torch.randint(0, self.k, (size,), generator=gen, device="cpu")
        sign = torch.randint(0, 2, (size,), generator=gen, device="cpu").mul_(2).sub_(1)
        return bucket, sign

    def _hash(self, key: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat hash of one parameter group; the product hash expanded when the group was first factored."""
        if key not in self._hashes:
            if key in self._pair_hashes:
                h_out, s_out, h_in, s_in, swapped = self._pair_hashes[key]
                bucket = (h_out[:, None] + h_in[None, :]) % self.k  # (b, a): W stored as (out, in)
                sign = s_out[:, None] * s_in[None, :]
                if swapped:  # transformers' Conv1D stores (in, out)
                    bucket, sign = bucket.T, sign.T
                bucket, sign = bucket.reshape(-1), sign.reshape(-1)
                if bucket.numel() != size:
                    raise ValueError(f"{key}: {size} parameters, but its factored form had {bucket.numel()}")
            else:
                bucket, sign = self._draw(key, size)
            self._hashes[key] = (bucket, sign)
            self.nbytes += size * 16
        return self._hashes[key]

    def _pair_hash(
        self, key: str, b: int, a: int, swapped: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if key not in self._pair_hashes:
            bucket, sign = self._draw(key, b + a)
            self._pair_hashes[key] = (bucket[:b], sign[:b], bucket[b:], sign[b:], swapped)
            self.nbytes += (a + b) * 16
        h_out, s_out, h_in, s_in, _ = self._pair_hashes[key]
        return h_out, s_out, h_in, s_in

    def add(self, key: str, start: int, rows: int, rep: Dense | Factored) -> None:
        if isinstance(rep, Factored) and rep.ids is not None:
            self._add_table(key, start, rows, rep)
            return
        if isinstance(rep, Factored) and key not in self._hashes:
            self._add_factored(key, start, rows, rep)
            return
        g = rep.g if isinstance(rep, Dense) else rep.densify(rows)
        m, c, p = g.shape
        bucket, sign = (t.to(g.device) for t in self._hash(key, p))
        out = torch.zeros(m, c, self.k, dtype=g.dtype, device=g.device)
        out.index_add_(2, bucket, g * sign.to(g.dtype))
        self.sketch[:, start : start + c] += out.to(torch.float64).cpu()

    def _add_factored(self, key: str, start: int, rows: int, rep: Factored) -> None:
        """TensorSketch of ``Σ_t gy_t ⊗ x_t`` per sample (module docstring), by blocks of tokens."""
        assert rep.x is not None
        m, tok, b = rep.gy.shape
        a = rep.x.shape[1]
        dev, dtype = rep.gy.device, rep.gy.dtype
        h_out, s_out, h_in, s_in = (
            t.to(dev) for t in self._pair_hash(key, b, a, swapped=type(rep).__name__ == "_SwappedFactored")
        )
        k, bins = self.k, self.k // 2 + 1
        spectrum = None
        for t0 in range(0, tok, self.token_block):
            t1 = min(tok, t0 + self.token_block)
            cs_gy = torch.zeros(m, t1 - t0, k, dtype=dtype, device=dev)
            cs_gy.index_add_(2, h_out, rep.gy[:, t0:t1] * s_out.to(dtype))
            cs_x = torch.zeros(t1 - t0, k, dtype=dtype, device=dev)
            cs_x.index_add_(1, h_in, rep.x[t0:t1] * s_in.to(dtype))
            f = torch.fft.rfft(cs_gy, dim=-1) * torch.fft.rfft(cs_x, dim=-1)  # (M, t, bins)
            if spectrum is None:
                spectrum = torch.zeros(m, rows, bins, dtype=f.dtype, device=dev)
            spectrum.index_add_(1, rep.seg[t0:t1], f)  # the FFT is linear: sum each sample's tokens first
        if spectrum is None:
            return  # no position carried a gradient in this chunk
        sketch = torch.fft.irfft(spectrum, n=k, dim=-1)
        self.sketch[:, start : start + rows] += sketch.to(torch.float64).cpu()

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
