"""Multinomial logistic regression on frozen embeddings (torch, full-batch L-BFGS).

The loss is convex and optimised from zero, so a fit is deterministic: seeds do
not change a linear probe (its interval comes from the test-set bootstrap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearProbe:
    weight: np.ndarray  # (dim, classes)
    bias: np.ndarray  # (classes,)
    mean: np.ndarray  # feature standardisation learnt on the train set
    scale: np.ndarray
    iterations: int

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = ((features - self.mean) / self.scale) @ self.weight + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)


def fit_linear_probe(
    features: np.ndarray, targets: np.ndarray, n_classes: int, l2: float = 1.0, max_iter: int = 300, seed: int = 0
) -> LinearProbe:
    """L2 strength `l2` is sklearn's 1/C: loss = mean cross-entropy + l2 / (2 n) * |W|^2."""
    import torch

    torch.manual_seed(seed)
    mean = features.mean(axis=0)
    scale = features.std(axis=0) + 1e-6
    x = torch.from_numpy(((features - mean) / scale).astype(np.float64))
    y = torch.from_numpy(targets.astype(np.int64))
    weight = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe"
    )
    penalty = l2 / (2 * len(y))

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    iterations = int(optimizer.state[optimizer._params[0]].get("n_iter", 0))
    return LinearProbe(weight.detach().numpy(), bias.detach().numpy(), mean, scale, iterations)
