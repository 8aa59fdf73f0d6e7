"""Weighted k-nearest-neighbour classification with faiss (cosine similarity)."""
from __future__ import annotations

import numpy as np
import torch


def gpu_index(device: torch.device | None) -> int | None:
    """The CUDA ordinal faiss should use for ``device`` (``cuda`` alone: the current one), or None."""
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return None
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def knn_classify(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
    """Temperature-weighted kNN vote (as in DINO / InstDisc).

    Args:
        bank: [N, D] L2-normalised memory-bank features; bank_labels: [N] long.
        queries: [Q, D] L2-normalised features.
        k: neighbours; temperature: vote weight exp(cos / T).
        device: the process's GPU, where faiss-gpu is installed (None or a CPU: faiss on the CPU).
    Returns:
        [Q] long predicted classes.
    """
    import faiss

    bank_np = np.ascontiguousarray(bank.float().numpy())
    query_np = np.ascontiguousarray(queries.float().numpy())
    index = faiss.IndexFlatIP(bank_np.shape[1])  # inner product of unit vectors = cosine
    gpu = gpu_index(device)
    if gpu is not None and hasattr(faiss, "StandardGpuResources"):
        # This process's own GPU: on GPU 0, every rank of a node would search there.
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), gpu, index)
    index.add(bank_np)
    k = min(k, bank_np.shape[0])
    similarity, neighbours = index.search(query_np, k)
    num_classes = num_classes or int(bank_labels.max()) + 1
    votes = torch.zeros(len(query_np), num_classes, dtype=torch.float64)
    # exp((cos - the query's best cos) / T): the same vote up to a factor per query, which the argmax
    # ignores, and finite at any temperature (exp(cos / 0.001) overflowed to inf for every neighbour).
    similarity = torch.from_numpy(similarity).double()
    weights = (similarity - similarity.max(1, keepdim=True).values).div(temperature).exp()
    votes.scatter_add_(1, bank_labels[torch.from_numpy(neighbours)], weights)
    return votes.argmax(1)
