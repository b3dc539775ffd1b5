"""pysd.distributed: distilling a language model whose output head is split over the vocabulary across a
tensor-parallel group (Megatron-style), on a tiny randomly initialised model (gloo on CPU, no download).

    torchrun --nproc-per-node 2 examples/tensor_parallel_distillation.py   # or: python ... (spawns 2)
"""

import os
import socket

import torch
import torch.distributed as dist

import pysd

V, H, HT, N, STEPS = 1000, 32, 48, 64, 20


def shard_range(rank, world):
    """Uneven contiguous vocabulary shards: rank r holds classes [lo, hi)."""
    bounds = [0, 600, V] if world == 2 else [r * V // world for r in range(world + 1)]
    return bounds[rank], bounds[rank + 1]


def main():
    dist.init_process_group("gloo")               # "nccl" with CUDA tensors (dense or hidden-state teachers)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)                          # the same full tensors on every rank; each keeps its shard
    tokens = torch.randint(0, V, (N + 1,))
    embed = torch.nn.Embedding(V, H)              # the replicated body of the student (a one-layer "LM")
    head = torch.randn(V, H) / H ** 0.5
    teacher_hidden, teacher_head = torch.randn(N, HT), torch.randn(V, HT) / HT ** 0.5
    target = tokens[1:].clone()
    target[:4] = -100                             # ignored positions (padding)

    lo, hi = shard_range(rank, world)
    w_shard = torch.nn.Parameter(head[lo:hi].clone())  # (V_r, H): this rank's rows of the LM head
    t_shard = teacher_head[lo:hi]                       # (V_r, H_t): the teacher's head, same rows
    opt = torch.optim.SGD([*embed.parameters(), w_shard], lr=0.5)
    for step in range(STEPS):
        h = embed(tokens[:-1])                          # (N, H), the same on every rank
        loss = pysd.distributed.fused_linear_kd_loss(h, w_shard, teacher_hidden, target, vocab_start=lo,
                                                     teacher_weight=t_shard, divergence="jsd", beta=0.5)
        opt.zero_grad()
        loss.backward()                                 # h's gradient is all-reduced, as ColumnParallelLinear does
        opt.step()                                      # so the replicated body stays identical on every rank
        if step == 0:
            first = loss.item()

    # offline teacher: the global top-k of the sharded teacher logits (global ids, the same on every rank)
    sparse = pysd.distributed.topk_teacher(teacher_hidden @ t_shard.T, 16, vocab_start=lo, tail="uniform")
    h = embed(tokens[:-1]).detach()
    topk_loss = pysd.distributed.fused_linear_kd_loss(h, w_shard.detach(), sparse, target, vocab_start=lo)

    # check: the same losses as the single-process ops on the whole head
    full_head = torch.zeros(V, H)
    full_head[lo:hi] = w_shard.detach()
    dist.all_reduce(full_head)                          # the trained head assembled from its shards
    ref = pysd.fused_linear_kd_loss(h, full_head, teacher_hidden, target, teacher_weight=teacher_head,
                                    divergence="jsd", beta=0.5)
    ref_topk = pysd.fused_linear_kd_loss(h, full_head, pysd.topk_teacher(teacher_hidden @ teacher_head.T, 16,
                                                                         tail="uniform"), target)
    final = pysd.distributed.fused_linear_kd_loss(h, w_shard.detach(), teacher_hidden, target, vocab_start=lo,
                                                  teacher_weight=t_shard, divergence="jsd", beta=0.5)
    assert abs(final.item() - ref.item()) <= 1e-5 * ref.item() and final.item() < first
    assert abs(topk_loss.item() - ref_topk.item()) <= 1e-5 * ref_topk.item()
    if rank == 0:
        print(f"{world} ranks: jsd loss {first:.4f} -> {final.item():.4f} in {STEPS} steps "
              f"(single-process {ref.item():.4f}); top-16 uniform-tail loss {topk_loss.item():.4f}")
    # a rank that returns from a collective first must not tear its connections down while a peer is
    # still finishing that collective's last transfer (gloo then aborts the process at exit)
    dist.barrier()
    dist.destroy_process_group()


def _spawned(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    main()


if __name__ == "__main__":
    if "RANK" in os.environ:       # under torchrun
        main()
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        torch.multiprocessing.spawn(_spawned, args=(2, port), nprocs=2, join=True)
