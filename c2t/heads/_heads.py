"""kNN, logistic-regression and MLP heads over cell embeddings (``adata.obsm``)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from c2t._atomic import atomic_path, staged_dir
from c2t._errors import C2TInputError
from c2t._manifest import read_manifest, write_manifest

UNKNOWN = "unknown"
KIND = "embedding_head"


def _check_xy(X, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] == 0:
        msg = f"embeddings must be a non-empty 2-D array (cells x dim), got shape {X.shape}"
        raise C2TInputError(msg)
    if not np.isfinite(X).all():
        msg = "embeddings contain NaN or infinite values"
        raise C2TInputError(msg)
    if y is None:
        return X, None
    y = np.asarray(y, dtype=object)
    if len(y) != len(X):
        msg = f"{len(y)} labels for {len(X)} cells"
        raise C2TInputError(msg)
    if pd.isna(y).any():  # None, NaN and pd.NA (pandas string columns)
        msg = "labels contain missing values; drop unlabelled cells first"
        raise C2TInputError(msg)
    y = y.astype(str)
    if len(np.unique(y)) < 2:
        msg = f"need at least two classes to train a head, got {np.unique(y).tolist()}"
        raise C2TInputError(msg)
    return X, y


class EmbeddingHead:
    """Base class: ``fit(X, y)``, ``predict_proba(X)``, ``predict(X, unknown_threshold=)``, ``save``/``load``."""

    method: ClassVar[str] = ""
    classes_: np.ndarray
    dim_: int

    def fit(self, X, y) -> EmbeddingHead:
        X, y = _check_xy(X, y)
        self.classes_ = np.unique(y)
        self.dim_ = X.shape[1]
        self._fit(X, y)
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        X, _ = _check_xy(X)
        if X.shape[1] != self.dim_:
            msg = f"embeddings have {X.shape[1]} dimensions; this head was trained on {self.dim_}"
            raise C2TInputError(msg)
        return self._proba(X)

    def _proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _confidence(self, X: np.ndarray, proba: np.ndarray) -> np.ndarray:
        return proba.max(axis=1)

    def predict(self, X, *, unknown_threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Labels and confidences; a cell whose confidence is below ``unknown_threshold`` is ``"unknown"``."""
        proba = self.predict_proba(X)
        confidence = self._confidence(np.asarray(X, dtype=np.float32), proba)
        labels = self.classes_[proba.argmax(axis=1)].astype(object)
        if unknown_threshold is not None:
            labels[confidence < unknown_threshold] = UNKNOWN
        return labels, confidence

    def save(self, path: str | os.PathLike) -> Path:
        """Save to a folder (``head.pkl`` + ``manifest.json``), atomically."""
        path = Path(path)
        with staged_dir(path) as staging:
            with atomic_path(staging / "head.pkl") as tmp, open(tmp, "wb") as f:
                pickle.dump(self, f)
            write_manifest(staging, {"kind": KIND, "method": self.method, "classes": self.classes_.tolist(),
                                     "dim": self.dim_, **getattr(self, "info_", {})})
        return path


class KNNHead(EmbeddingHead):
    """k nearest neighbours by cosine distance (GenePT's evaluation: 10-NN).

    ``predict_proba`` is the neighbours' vote share. The confidence used for ``"unknown"`` also asks whether
    the cell is as close to its predicted type as that type's own cells are: p is the fraction of reference
    cells of the predicted type whose mean distance to their k nearest same-type cells is at least the
    query's (an empirical p-value). Cells with p below ``novelty_alpha`` get the vote share times
    ``p / novelty_alpha``; the others keep the vote share. A cell of a type missing from the reference finds
    unanimous but unusually distant neighbours, and its confidence drops.
    """

    method = "knn"

    def __init__(self, n_neighbors: int = 10, novelty_alpha: float = 0.1) -> None:
        self.n_neighbors = n_neighbors
        self.novelty_alpha = novelty_alpha

    def _fit(self, X, y) -> None:
        from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

        self.model_ = KNeighborsClassifier(n_neighbors=min(self.n_neighbors, len(X)), metric="cosine").fit(X, y)
        self.class_index_, self.class_distances_ = {}, {}
        for label in self.classes_:
            cells = X[y == label]
            k = min(self.n_neighbors, len(cells) - 1)
            if k < 1:
                continue  # a one-cell class: no spread to compare with
            index = NearestNeighbors(n_neighbors=k, metric="cosine").fit(cells)
            distances, _ = index.kneighbors()  # leave-one-out: each cell's k nearest other cells of its type
            self.class_index_[label] = index
            self.class_distances_[label] = np.sort(distances.mean(axis=1))

    def _proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(X)

    def _confidence(self, X: np.ndarray, proba: np.ndarray) -> np.ndarray:
        confidence = proba.max(axis=1).astype(np.float64)
        if self.novelty_alpha <= 0:
            return confidence.astype(np.float32)
        predicted = self.classes_[proba.argmax(axis=1)]
        for label, index in self.class_index_.items():
            rows = np.flatnonzero(predicted == label)
            if len(rows) == 0:
                continue
            distances, _ = index.kneighbors(X[rows])
            reference = self.class_distances_[label]
            p_value = 1.0 - np.searchsorted(reference, distances.mean(axis=1), side="left") / len(reference)
            confidence[rows] *= np.minimum(1.0, p_value / self.novelty_alpha)
        return confidence.astype(np.float32)


class LogisticHead(EmbeddingHead):
    """Standardised features + multinomial logistic regression (scikit-learn)."""

    method = "logistic"

    def __init__(self, C: float = 1.0, max_iter: int = 2000, seed: int = 0) -> None:
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def _fit(self, X, y) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model_ = make_pipeline(
            StandardScaler(), LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        ).fit(X, y)

    def _proba(self, X) -> np.ndarray:
        return self.model_.predict_proba(X)


class MLPHead(EmbeddingHead):
    """scELMo's fine-tuning head: a learned projection of the embedding, trained with cross-entropy plus a
    batch-hard triplet loss on the projected vectors (same-label cells close, other labels at a margin).

    Parameters
    ----------
    hidden
        Size of the projection.
    triplet_weight
        Weight of the triplet term (0 gives a plain MLP classifier).
    epochs, batch_size, learning_rate, seed
        Training settings (torch, CPU is fine).
    """

    method = "mlp"

    def __init__(self, hidden: int = 128, triplet_weight: float = 1.0, margin: float = 0.5, epochs: int = 30,
                 batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0) -> None:
        self.hidden = hidden
        self.triplet_weight = triplet_weight
        self.margin = margin
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.seed = seed

    def _network(self, n_in: int, n_out: int):
        import torch

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.project = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.LayerNorm(hidden),
                                                   torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
                self.classify = torch.nn.Linear(hidden, n_out)

            def forward(self, x):
                z = self.project(x)
                return z, self.classify(torch.nn.functional.gelu(z))

        hidden = self.hidden
        return Net()

    def _fit(self, X, y) -> None:
        import torch

        torch.manual_seed(self.seed)
        codes = np.searchsorted(self.classes_, y)
        self.mean_, self.scale_ = X.mean(axis=0), X.std(axis=0) + 1e-6
        xs = torch.from_numpy((X - self.mean_) / self.scale_)
        ys = torch.from_numpy(codes.astype(np.int64))
        net = self._network(X.shape[1], len(self.classes_))
        optimiser = torch.optim.AdamW(net.parameters(), lr=self.learning_rate)
        generator = torch.Generator().manual_seed(self.seed)
        losses = []
        for _ in range(self.epochs):
            order = torch.randperm(len(xs), generator=generator)
            total = 0.0
            for start in range(0, len(xs), self.batch_size):
                batch = order[start : start + self.batch_size]
                z, logits = net(xs[batch])
                loss = torch.nn.functional.cross_entropy(logits, ys[batch])
                if self.triplet_weight:
                    loss = loss + self.triplet_weight * _batch_hard_triplet(z, ys[batch], self.margin)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)  # float(loss) warns on a tensor that requires grad
            losses.append(total / len(xs))
        self.state_ = {k: v.detach().clone() for k, v in net.state_dict().items()}
        self.info_ = {"train_loss_first": losses[0], "train_loss_last": losses[-1]}

    def _proba(self, X) -> np.ndarray:
        import torch

        net = self._network(self.dim_, len(self.classes_))
        net.load_state_dict(self.state_)
        net.eval()
        with torch.no_grad():
            _, logits = net(torch.from_numpy(((X - self.mean_) / self.scale_).astype(np.float32)))
            return torch.softmax(logits, dim=1).numpy()


def _batch_hard_triplet(z, labels, margin: float):
    import torch

    z = torch.nn.functional.normalize(z, dim=1)
    dist = torch.cdist(z, z)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    hardest_positive = torch.where(same & ~eye, dist, torch.zeros_like(dist)).max(dim=1).values
    hardest_negative = torch.where(~same, dist, torch.full_like(dist, float("inf"))).min(dim=1).values
    valid = torch.isfinite(hardest_negative) & (same & ~eye).any(dim=1)
    if not valid.any():
        return dist.sum() * 0.0
    return torch.relu(hardest_positive - hardest_negative + margin)[valid].mean()


HEADS: dict[str, type[EmbeddingHead]] = {"knn": KNNHead, "logistic": LogisticHead, "mlp": MLPHead}


def _rep(adata, use_rep: str) -> np.ndarray:
    if use_rep not in adata.obsm:
        msg = f"{use_rep!r} not found in adata.obsm; keys are: {', '.join(adata.obsm) or '(none)'}"
        raise C2TInputError(msg)
    return np.asarray(adata.obsm[use_rep])


def fit_head(adata, *, use_rep: str, label_key: str, method: str = "knn", **options: Any) -> EmbeddingHead:
    """Train a head on a labelled reference AnnData (cells with a missing label are left out).

    Parameters
    ----------
    adata
        The reference.
    use_rep
        The ``obsm`` key of the embedding.
    label_key
        The ``obs`` column with the labels.
    method
        ``"knn"``, ``"logistic"`` or ``"mlp"``.
    **options
        Passed to the head's constructor.
    """
    if method not in HEADS:
        msg = f"unknown head {method!r}; choose one of {', '.join(HEADS)}"
        raise C2TInputError(msg)
    if label_key not in adata.obs:
        msg = f"{label_key!r} not found in adata.obs; columns are: {', '.join(adata.obs.columns)}"
        raise C2TInputError(msg)
    labels = adata.obs[label_key]
    keep = labels.notna().to_numpy()
    if not keep.any():
        msg = f"no cell has a label in adata.obs[{label_key!r}] (all {adata.n_obs} are missing)"
        raise C2TInputError(msg)
    head = HEADS[method](**options).fit(_rep(adata, use_rep)[keep], labels[keep].astype(str).to_numpy())
    head.info_ = {**getattr(head, "info_", {}), "use_rep": use_rep, "label_key": label_key, "n_reference": int(keep.sum())}
    return head


def annotate(adata, head: EmbeddingHead, *, use_rep: str, key_added: str = "c2t_label",
             unknown_threshold: float | None = None, copy: bool = False):
    """Label query cells with a trained head.

    Returns
    -------
    None or anndata.AnnData
        Writes ``adata.obs[key_added]`` (labels, ``"unknown"`` below the threshold) and
        ``adata.obs[key_added + "_confidence"]``.
    """
    adata = adata.copy() if copy else adata
    labels, confidence = head.predict(_rep(adata, use_rep), unknown_threshold=unknown_threshold)
    adata.obs[key_added] = labels.astype(str)
    adata.obs[f"{key_added}_confidence"] = confidence.astype(np.float32)
    return adata if copy else None


def load_head(path: str | os.PathLike) -> EmbeddingHead:
    """Load a head saved with :meth:`EmbeddingHead.save` (only load folders you trust: it is a pickle)."""
    path = Path(path)
    manifest = read_manifest(path, kind=KIND)
    with open(path / "head.pkl", "rb") as f:
        head = pickle.load(f)  # c2t's own artifact
    if head.method != manifest["method"] or head.classes_.tolist() != manifest["classes"]:
        msg = f"{path}: head.pkl does not match its manifest"
        raise C2TInputError(msg)
    return head
