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


def message(op: str, exc: Exception) -> str:
    """The text a rank shares about its failed local checks (other error types keep their name)."""
    if isinstance(exc, (TypeError, ValueError)):
        return str(exc)
    return f"{op}: {type(exc).__name__}: {exc}"


def flag_device(group) -> torch.device:
    """Where a small collective tensor of ``group`` lives (NCCL reduces only CUDA tensors)."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree_flag(op: str, group, error: Optional[str]) -> None:
    """One small all-reduce of an error flag (the lowest failing rank); on failure every rank raises
    ValueError with that rank's message (gathered only then).  Reading the flag back is a host sync on an
    NCCL group."""
    rank, p = world(group)
    flag = torch.tensor([rank if error is not None else p], dtype=torch.int64, device=flag_device(group))
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=group)
    first = int(flag)
    if first < p:
        messages: List = [None] * p
        dist.all_gather_object(messages, error, group=group)
        raise ValueError(f"pysd.distributed.{op}: rank {first}: {messages[first]}")


def agree(op: str, group, config: tuple, error: Optional[str], extra=None) -> list:
    """All-gathers ``(config, error, extra)``; raises ValueError on every rank if any rank failed its
    local checks or the configurations differ.  Returns every rank's ``extra``."""
    items: List = [(config, error, extra)]
    if dist.get_world_size(group) > 1:
        items *= dist.get_world_size(group)
        dist.all_gather_object(items, (config, error, extra), group=group)
    for r, (_, err, _) in enumerate(items):
        if err is not None:
            raise ValueError(f"pysd.distributed.{op}: rank {r}: {err}")
    for r, (cfg, _, _) in enumerate(items):
        if cfg != items[0][0]:
            raise ValueError(f"pysd.distributed.{op}: configuration differs across ranks: rank 0 has {items[0][0]}, "
                             f"rank {r} has {cfg}")
    return [e for _, _, e in items]


def all_gather_rows(out: Tensor, t: Tensor, group) -> None:
    """``out (P * n, ...)`` <- every rank's ``t (n, ...)`` in rank order (``all_gather_single`` where
    torch has it: ``all_gather_into_tensor`` is deprecated there)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, t, group=group)


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

    Built once (one all-gather of counts, one point-to-point round of requests; only the remote ids are
    sorted, so a rank whose columns are all local pays O(nnz)); each :meth:`fill` / :meth:`gather` then
    moves only the referenced remote rows.  The extended array is ``[n_before remote rows before
    row_start; the n_local local rows; n_after remote rows after]``, so the column map :meth:`local_ids`
    preserves the order of the sorted global ids.
    """

    def __init__(self, cols: Tensor, offsets: Tensor, group):
        self.group = group
        rank, p = world(group)
        self.rank, self.p = rank, p
        starts = offsets.tolist()
        self.row_start, self.n_local = starts[rank], starts[rank + 1] - starts[rank]
        if p == 1:  # every column is local: nothing to plan or exchange
            self.remote = torch.zeros(0, dtype=torch.int64, device=cols.device)
            self.recv_counts, self.send_counts, self.send_rows = [0], [0], [self.remote]
        else:
            self._plan(cols, offsets)
        self.n_before = sum(self.recv_counts[:rank])
        self.n_after = sum(self.recv_counts[rank + 1:])

    def _plan(self, cols: Tensor, offsets: Tensor) -> None:
        outside = (cols < self.row_start) | (cols >= self.row_start + self.n_local)
        self.remote = torch.unique(cols[outside].to(torch.int64))
        remote_owner = owners(self.remote, offsets)
        recv_counts = torch.bincount(remote_owner, minlength=self.p).to(torch.int64)
        counts = count_matrix(self.group, recv_counts.to(cols.device))
        self.recv_counts = counts[self.rank].tolist()
        self.send_counts = counts[:, self.rank].tolist()
        requests = list(torch.split(self.remote - offsets[remote_owner.cpu()].to(cols.device), self.recv_counts))
        self.send_rows = [torch.empty(c, dtype=torch.int64, device=cols.device) for c in self.send_counts]
        exchange(self.group, requests, self.send_rows)

    def local_ids(self, cols: Tensor) -> Tensor:
        """Positions of the global ids ``cols`` (each local or in the plan) in the extended array, in the
        dtype of ``cols``."""
        shift = self.n_before - self.row_start
        if not self.remote.numel():  # every column is local
            return cols if shift == 0 else cols + shift
        local = (cols >= self.row_start) & (cols < self.row_start + self.n_local)
        pos = torch.searchsorted(self.remote, cols.to(torch.int64))
        ids = torch.where(local, cols + shift, torch.where(pos < self.n_before, pos, pos + self.n_local))
        return ids.to(cols.dtype)

    def fill(self, ext: Tensor) -> None:
        """Completes the remote rows of an extended ``(n_before + n_local + n_after, ...)`` contiguous array
        from its local rows, in place (collective: every rank of the group calls it)."""
        if not (any(self.send_counts) or self.remote.numel()):
            return
        local = ext[self.n_before:self.n_before + self.n_local]
        sends = [local[rows] if rows.numel() else None for rows in self.send_rows]
        before = ext[:self.n_before].split(self.recv_counts[:self.rank])
        after = ext[self.n_before + self.n_local:].split(self.recv_counts[self.rank + 1:])
        exchange(self.group, sends, list(before) + [None] + list(after))

    def gather(self, local: Tensor) -> Tensor:
        """``(n_before + num_rows + n_after, ...)``: ``local`` with the referenced remote rows around it."""
        ext = local.new_empty((self.n_before + self.n_local + self.n_after,) + tuple(local.shape[1:]))
        ext[self.n_before:self.n_before + self.n_local] = local
        self.fill(ext)
        return ext

    def bytes_per_gather(self, row_bytes: int) -> int:
        """Bytes this rank receives per :meth:`fill` / :meth:`gather` of rows of ``row_bytes`` bytes."""
        return int(self.remote.numel()) * row_bytes
