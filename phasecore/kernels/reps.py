"""Per-sample gradient representations of one parameter group, and their Gram products.

A chunk of C samples and M output probes yields, for every parameter group (a layer's weight, its
bias, ...), the per-(probe, sample) gradients ``g_i^m`` in one of two forms:

- ``Dense``: materialised, ``g (M, C, P_L)``.
- ``Factored``: the "ghost" form of a layer applied at T positions (tokens, or calls of a shared
  layer): ``g_i^m = Σ_t gy_{m,i,t} ⊗ x_{i,t}``, stored as ``x (Tok, a)`` (or integer ``ids (Tok,)``
  for an embedding table, where ``x`` would be one-hot) and ``gy (M, Tok, b)`` with ``seg (Tok,)`` the
  sample row of each position. Then ``⟨g_i^m, g_j^m'⟩ = Σ_{t∈i, s∈j} (x_t·x_s)(gy_{m,t}·gy_{m',s})``,
  so the Gram costs ``Tok² (a + b)`` instead of ``N² a b`` and the gradient is never formed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Dense:
    g: torch.Tensor  # (M, C, P_L)

    def nbytes(self) -> int:
        return self.g.numel() * self.g.element_size()

    def batch_sum(self) -> torch.Tensor:
        """Σ_i g_i^m, shape (M, P_L): what ``param.grad`` holds after probe m's batched backward."""
        return self.g.sum(dim=1)

    def sample(self, i: int) -> torch.Tensor:
        """g_i^m for one sample, shape (M, P_L)."""
        return self.g[:, i]


@dataclass
class Factored:
    gy: torch.Tensor  # (M, Tok, b)
    seg: torch.Tensor  # (Tok,) long, the sample row (chunk-local until ``offset``)
    x: torch.Tensor | None = None  # (Tok, a)
    ids: torch.Tensor | None = None  # (Tok,) long, rows of an embedding table of width b
    table_rows: int = 0  # number of rows of the table (ids form)

    def nbytes(self) -> int:
        total = self.gy.numel() * self.gy.element_size() + self.seg.numel() * 8
        if self.x is not None:
            total += self.x.numel() * self.x.element_size()
        if self.ids is not None:
            total += self.ids.numel() * 8
        return total

    def offset(self, start: int) -> Factored:
        return Factored(self.gy, self.seg + start, self.x, self.ids, self.table_rows)

    def densify(self, n_rows: int) -> torch.Tensor:
        """The materialised gradients (M, n_rows, P_L), one sample at a time (memory M × n_rows × P_L)."""
        m, _, b = self.gy.shape
        width = b * (self.table_rows if self.ids is not None else self.x.shape[1])  # type: ignore[union-attr]  # x is set when ids is not
        out = self.gy.new_zeros(m, n_rows, width)
        for i in range(n_rows):
            mask = self.seg == i
            if not bool(mask.any()):
                continue
            gy_i = self.gy[:, mask]  # (M, t, b)
            if self.ids is not None:
                g = self.gy.new_zeros(m, self.table_rows, b)
                g.index_add_(1, self.ids[mask], gy_i)
            else:
                g = gy_i.transpose(1, 2) @ self.x[mask]  # type: ignore[index]  # (M, b, a); x is set when ids is not
            out[:, i] = self._order(g).reshape(m, -1)
        return out

    def _order(self, g: torch.Tensor) -> torch.Tensor:
        """Layout of one sample's gradient (M, b, a) as the parameter stores it."""
        return g

    def sample(self, i: int) -> torch.Tensor:
        """g_i^m for one sample, shape (M, P_L)."""
        mask = self.seg == i
        sub = type(self)(
            self.gy[:, mask],
            self.seg[mask] * 0,
            None if self.x is None else self.x[mask],
            None if self.ids is None else self.ids[mask],
            self.table_rows,
        )
        return sub.densify(1)[:, 0]

    def batch_sum(self) -> torch.Tensor:
        """Σ_i g_i^m, shape (M, P_L), without forming per-sample gradients."""
        if self.ids is not None:
            m, _, b = self.gy.shape
            out = self.gy.new_zeros(m, self.table_rows, b)
            out.index_add_(1, self.ids, self.gy)
            return out.reshape(m, -1)
        assert self.x is not None
        return torch.einsum("mtb,ta->mba", self.gy, self.x).reshape(self.gy.shape[0], -1)


def concat_factored(parts: list[Factored]) -> Factored:
    first = parts[0]
    return Factored(
        gy=torch.cat([p.gy for p in parts], dim=1),
        seg=torch.cat([p.seg for p in parts]),
        x=None if first.x is None else torch.cat([p.x for p in parts if p.x is not None]),
        ids=None if first.ids is None else torch.cat([p.ids for p in parts if p.ids is not None]),
        table_rows=first.table_rows,
    )


def dense_gram(g: torch.Tensor, *, cross_probe: bool) -> torch.Tensor:
    """Gram of materialised gradients ``g (M, N, P)``: (M, N, M, N) if cross_probe else (M, N, N), float64.

    Products run in float64: a float32 GEMM rounds entry (i, j) and (j, i) differently (relative asymmetry
    about 1e-7), which would fail the Gram validity check of METRICS §0 (1e-8)."""
    m, n, _ = g.shape
    g = g.to(torch.float64)
    if cross_probe:
        flat = g.reshape(m * n, -1)
        return (flat @ flat.T).reshape(m, n, m, n)
    return torch.bmm(g, g.transpose(1, 2))


def factored_gram(rep: Factored, n_rows: int, *, cross_probe: bool, block: int = 4096) -> torch.Tensor:
    """Gram of a factored representation, by blocks of positions (memory O(block²)).

    ``K[m,i,m',j] = Σ_{t∈i, s∈j} Kx[t,s] · Kg^{m m'}[t,s]`` with ``Kx = x xᵀ`` (or ``[ids_t == ids_s]``)
    and ``Kg^{m m'} = gy_m gy_m'ᵀ``; the position sums are segment sums over ``seg``.
    """
    m = rep.gy.shape[0]
    dtype = torch.float64  # products in float64, as in dense_gram: symmetric to round-off
    rep = Factored(rep.gy.to(dtype), rep.seg, None if rep.x is None else rep.x.to(dtype), rep.ids, rep.table_rows)
    shape = (m, n_rows, m, n_rows) if cross_probe else (m, n_rows, n_rows)
    out = torch.zeros(shape, dtype=torch.float64, device="cpu")  # the Gram is accumulated on the host
    tok = rep.seg.shape[0]
    for a0 in range(0, tok, block):
        a = slice(a0, min(tok, a0 + block))
        for b0 in range(a0, tok, block):
            b = slice(b0, min(tok, b0 + block))
            if rep.ids is not None:
                assert rep.ids is not None
                kx = (rep.ids[a, None] == rep.ids[None, b]).to(dtype)
            else:
                assert rep.x is not None
                kx = rep.x[a] @ rep.x[b].T
            seg_a, seg_b = rep.seg[a], rep.seg[b]
            blk = _factored_block(rep.gy[:, a], rep.gy[:, b], kx, seg_a, seg_b, n_rows, cross_probe)
            blk = blk.cpu()
            out += blk
            if b0 != a0:  # the mirrored block (s, t): K[m',j,m,i] = blk[m,i,m',j], so swap (m, i) with (m', j)
                out += blk.permute(2, 3, 0, 1) if cross_probe else blk.transpose(1, 2)
    return out


def _factored_block(
    gy_a: torch.Tensor,
    gy_b: torch.Tensor,
    kx: torch.Tensor,
    seg_a: torch.Tensor,
    seg_b: torch.Tensor,
    n_rows: int,
    cross_probe: bool,
) -> torch.Tensor:
    m = gy_a.shape[0]
    if cross_probe:
        kg = torch.einsum("mtb,nsb->mnts", gy_a, gy_b) * kx  # (M, M', ta, tb)
        rows = kg.new_zeros(m, m, n_rows, kg.shape[-1]).index_add_(2, seg_a, kg)
        both = rows.new_zeros(m, m, n_rows, n_rows).index_add_(3, seg_b, rows)
        return both.permute(0, 2, 1, 3).to(torch.float64)  # (M, N, M', N)
    kg = torch.bmm(gy_a, gy_b.transpose(1, 2)) * kx  # (M, ta, tb)
    rows = kg.new_zeros(m, n_rows, kg.shape[-1]).index_add_(1, seg_a, kg)
    both = rows.new_zeros(m, n_rows, n_rows).index_add_(2, seg_b, rows)
    return both.to(torch.float64)
