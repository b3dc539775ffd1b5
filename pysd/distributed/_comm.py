"""Process-group helpers of :mod:`pysd.distributed`: ranks, agreement on options and errors before any
data collective, point-to-point exchanges, and the halo plan of a row-sharded array."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor


def world(group) -> Tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def peer(group, rank: int) -> int:
    """Global rank of ``rank`` in ``group`` (point-to-point calls take global ranks)."""
    return rank if group is None else dist.get_global_rank(group, rank)


def agree(op: str, group, config: tuple, error: Optional[str], extra=None) -> list:
    """All-gathers ``(config, error, extra)``; raises ValueError on every rank if any rank failed its
    local checks or the configurations differ.  Returns every rank's ``extra``."""
    items: List = [None] * dist.get_world_size(group)
    dist.all_gather_object(items, (config, error, extra), group=group)
    for r, (_, err, _) in enumerate(items):
        if err is not None:
            raise ValueError(f"pysd.distributed.{op}: rank {r}: {err}")
    for r, (cfg, _, _) in enumerate(items):
        if cfg != items[0][0]:
            raise ValueError(f"pysd.distributed.{op}: configuration differs across ranks: rank 0 has {items[0][0]}, "
                             f"rank {r} has {cfg}")
    return [e for _, _, e in items]


def exchange(group, sends: Sequence[Optional[Tensor]], recvs: Sequence[Optional[Tensor]], tag: int = 0) -> None:
    """Point-to-point exchange: ``sends[r]`` goes to rank r and ``recvs[r]`` is filled from it (None or
    empty: nothing; both sides derive the same sizes, so empty messages are never posted)."""
    ops = [dist.P2POp(dist.isend, t, peer(group, r), group=group, tag=tag)
           for r, t in enumerate(sends) if t is not None and t.numel()]
    ops += [dist.P2POp(dist.irecv, t, peer(group, r), group=group, tag=tag)
            for r, t in enumerate(recvs) if t is not None and t.numel()]
    if ops:
        for req in dist.batch_isend_irecv(ops):
            req.wait()


def count_matrix(group, counts: Tensor) -> Tensor:
    """``(P, P)`` int64 on the CPU: entry ``[s, d]`` is rank s's ``counts[d]``."""
    _, p = world(group)
    out = [torch.empty_like(counts) for _ in range(p)]
    dist.all_gather(out, counts, group=group)
    return torch.stack(out).cpu()


def owners(cols: Tensor, offsets: Tensor) -> Tensor:
    """Rank owning each global row id in ``cols`` (``offsets``: ``(P + 1,)`` block starts)."""
    return torch.searchsorted(offsets[1:].to(cols.device), cols, right=True)


class Halo:
    """Exchange plan for the rows of a row-sharded array that the global ids ``cols`` reference.

    Built once (one all-gather of counts, one point-to-point round of requests); each
    :meth:`gather` then moves only the referenced remote rows.  The extended array is
    ``[remote rows before row_start; local rows; remote rows after]``, so the column map
    :meth:`local_ids` preserves the order of the sorted global ids.
    """

    def __init__(self, cols: Tensor, offsets: Tensor, group):
        self.group = group
        rank, p = world(group)
        self.rank, self.p = rank, p
        starts = offsets.tolist()
        self.row_start, self.n_local = starts[rank], starts[rank + 1] - starts[rank]
        need = torch.unique(cols)
        own = owners(need, offsets)
        self.remote = need[own != rank]
        remote_owner = own[own != rank]
        self.n_before = int((remote_owner < rank).sum())
        recv_counts = torch.bincount(remote_owner, minlength=p).to(torch.int64)
        counts = count_matrix(group, recv_counts.to(cols.device))
        self.recv_counts = counts[rank].tolist()
        self.send_counts = counts[:, rank].tolist()
        requests = list(torch.split(self.remote - offsets[remote_owner.cpu()].to(cols.device), self.recv_counts))
        self.send_rows = [torch.empty(c, dtype=torch.int64, device=cols.device) for c in self.send_counts]
        exchange(group, requests, self.send_rows)

    def local_ids(self, cols: Tensor) -> Tensor:
        """Positions of the global ids ``cols`` (each local or in the plan) in the extended array."""
        local = (cols >= self.row_start) & (cols < self.row_start + self.n_local)
        pos = torch.searchsorted(self.remote, cols)
        return torch.where(local, cols - self.row_start + self.n_before,
                           torch.where(pos < self.n_before, pos, pos + self.n_local))

    def gather(self, local: Tensor) -> Tensor:
        """``(n_before + num_rows + n_after, ...)``: ``local`` with the referenced remote rows around it."""
        sends = [local[rows] if rows.numel() else None for rows in self.send_rows]
        recvs = [local.new_empty((c,) + tuple(local.shape[1:])) for c in self.recv_counts]
        exchange(self.group, sends, recvs)
        return torch.cat(recvs[:self.rank] + [local] + recvs[self.rank + 1:])

    def bytes_per_gather(self, row_bytes: int) -> int:
        """Bytes this rank receives per :meth:`gather` of rows of ``row_bytes`` bytes."""
        return int(self.remote.numel()) * row_bytes
