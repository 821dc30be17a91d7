"""Domain-adaptive kernel learning (DAKL), the refinement step of Reverse Stable Diffusion's early version.

1. k-means over the (normalised) training predictions of a trained inverter (spherical k-means: cosine);
2. each centroid is labelled with the target of the training sample whose prediction is nearest to it;
3. the kernel ``k(a, b) = exp(-gamma * (1 - cos(a, b)) / 2)`` (gamma 0.01 as the paper) between the centroids
   and the test predictions (transductive: computed on the test batch at prediction time);
4. kernel ridge regression from centroids to their labels (ridge ``alpha``, 10 as the paper).

The paper's gamma makes the kernel almost flat, so the ridge output is a smoothed, prediction-dependent mean of
the centroid labels; as in the paper's ensembling we blend it with the inverter's own prediction
(``mix``, default 0.5) and re-normalise. Usable on any trained inverter (it only needs its predictions).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def kmeans(x: torch.Tensor, k: int, *, iters: int = 25, seed: int = 0, spherical: bool = True) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; ``[N, D]`` -> centroids ``[k, D]`` (``k`` clipped to ``N``).

    With ``spherical`` the points and centroids are L2-normalised and assignment uses cosine similarity.
    """
    x = x.detach().float()
    if spherical:
        x = F.normalize(x, dim=-1)
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=g))
    centroids = [x[first]]
    dist = ((x - x[first]) ** 2).sum(-1)
    for _ in range(1, k):  # k-means++: sample proportional to squared distance to the nearest centroid
        probs = dist.clamp_min(0)
        nxt = int(torch.multinomial(probs / probs.sum(), 1, generator=g)) if probs.sum() > 0 else int(
            torch.randint(n, (1,), generator=g)
        )
        centroids.append(x[nxt])
        dist = torch.minimum(dist, ((x - x[nxt]) ** 2).sum(-1))
    c = torch.stack(centroids)
    for _ in range(iters):
        assign = (x @ c.T).argmax(1) if spherical else torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()
        empty = counts == 0
        new = sums / counts.clamp_min(1)[:, None]
        new[empty] = c[empty]  # keep a centroid that lost all its points
        new = F.normalize(new, dim=-1) if spherical else new
        if torch.allclose(new, c, atol=1e-6):
            c = new
            break
        c = new
    return c


def cosine_kernel(a: torch.Tensor, b: torch.Tensor, gamma: float = 0.01) -> torch.Tensor:
    """``exp(-gamma * (1 - cos(a_i, b_j)) / 2)``, ``[len(a), len(b)]``."""
    cos = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T
    return torch.exp(-gamma * (1.0 - cos) / 2.0)


@dataclass
class DAKL:
    """A fitted DAKL refiner: centroids, their ridge weights and the blend factor."""

    centroids: torch.Tensor
    weights: torch.Tensor
    gamma: float = 0.01
    mix: float = 0.5

    @classmethod
    def fit(
        cls, train_pred: torch.Tensor, train_target: torch.Tensor, *, clusters: int = 10_000,
        gamma: float = 0.01, alpha: float = 10.0, mix: float = 0.5, seed: int = 0,
    ) -> DAKL:
        if train_pred.shape[0] != train_target.shape[0] or train_pred.shape[0] == 0:
            raise ValueError("DAKL needs as many (non-zero) training predictions as targets")
        pred = F.normalize(train_pred.detach().float(), dim=-1)
        centroids = kmeans(pred, clusters, seed=seed)
        nearest = (centroids @ pred.T).argmax(1)
        labels = train_target.detach().float()[nearest]
        kcc = cosine_kernel(centroids, centroids, gamma).double()
        eye = torch.eye(kcc.shape[0], dtype=torch.float64)
        weights = torch.linalg.solve(kcc + alpha * eye, labels.double()).float()
        return cls(centroids, weights, gamma, mix)

    def refine(self, pred: torch.Tensor) -> torch.Tensor:
        """Refined, L2-normalised predictions ``[B, D]``."""
        pred = F.normalize(pred.float(), dim=-1)
        krr = cosine_kernel(pred, self.centroids, self.gamma) @ self.weights
        return F.normalize((1.0 - self.mix) * pred + self.mix * F.normalize(krr, dim=-1), dim=-1)

    def state(self) -> dict[str, torch.Tensor]:
        return {"dakl.centroids": self.centroids, "dakl.weights": self.weights,
                "dakl.params": torch.tensor([self.gamma, self.mix])}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor]) -> DAKL | None:
        if "dakl.centroids" not in tensors:
            return None
        gamma, mix = tensors["dakl.params"].tolist()
        return cls(tensors["dakl.centroids"].float(), tensors["dakl.weights"].float(), gamma, mix)
