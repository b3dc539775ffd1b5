"""pysd.distributed: the kNN graph, label propagation and the loss normaliser over row shards of a
torch.distributed process group (gloo on CPU).

    torchrun --nproc-per-node 2 examples/distributed.py   # or: python examples/distributed.py (spawns 2)
"""

import os
import socket

import numpy as np
import torch
import torch.distributed as dist

import pysd

N, C, D = 400, 4, 16


def load_my_rows(rank):
    """Rank ``rank``'s contiguous block of rows of a seeded blobs data set with 30% label noise."""
    g = np.random.default_rng(0)
    centres = g.normal(size=(C, D)) * 3
    clean = g.integers(0, C, N)
    x = (centres[clean] + g.normal(size=(N, D))).astype(np.float32)
    noisy = np.where(g.random(N) < 0.3, (clean + g.integers(1, C, N)) % C, clean)
    rows = np.array_split(np.arange(N), dist.get_world_size())[rank]
    return torch.from_numpy(x[rows]), torch.from_numpy(noisy[rows]), clean[rows]


def main():
    dist.init_process_group("gloo")               # "nccl" with CUDA tensors
    feats, labels, clean = load_my_rows(dist.get_rank())  # (n_r, d) and (n_r,) for rows [row_start, row_start + n_r)
    graph = pysd.distributed.knn_graph(feats, k=10)                 # ShardedGraph: local rows, global column ids
    result = pysd.distributed.propagate(graph, labels, alpha=0.99)  # Propagation of the local rows

    # DDP: exact single-process gradients over the union of the batches, whatever each rank ignores
    student = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(D, C))
    x, teacher_logits, target = feats, torch.randn(len(feats), C), result.labels
    norm = pysd.distributed.global_normalizer(target, ignore_index=-100) / dist.get_world_size()
    loss = pysd.kd_loss(student(x), teacher_logits, target, hard_weight=0.5, normalizer=norm)
    loss.backward()

    acc = torch.tensor([float((result.labels.numpy() == clean).sum()), float(len(clean))])
    dist.all_reduce(acc)
    if dist.get_rank() == 0:
        print(f"{dist.get_world_size()} ranks: propagated labels agree with the clean ones on "
              f"{acc[0] / acc[1]:.3f}; loss {loss.item():.3f}")
        assert acc[0] / acc[1] > 0.9
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
