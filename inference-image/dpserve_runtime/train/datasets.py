"""Training data sets: the ``.npz`` file format, its validation, offline exports, splits.

File format (see the shared contracts): ``X`` float [n, d] or [n, c, h, w], ``y`` integer
[n] with labels in ``0..num_classes-1``, optional ``texts`` (1-D array of str): the raw text
records whose verbatim reproduction the serving-side guard must block, optional ``ids``
(1-D array of str, one unique opaque id per row): what an ErasureRequest names, and what the
artifact's training-set manifest (which teacher saw which record) is written in. Files are read with
``allow_pickle=False`` (a mounted data set must not be able to run code in the trainer), so
``texts`` has to be stored as a fixed-width unicode array, not an object array.

``python -m dpserve_runtime.train.datasets export digits|breast_cancer OUT.npz`` writes one
of scikit-learn's bundled data sets (no download), features standardised.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from dpserve_runtime.train.recordids import RecordIdError, check_record_ids

EXPORTABLE = ("digits", "breast_cancer")
Shape = Literal["flat", "image"]


class DatasetError(ValueError):
    """The data set file is missing, unreadable or does not follow the format."""


@dataclass(frozen=True)
class Dataset:
    """Validated training data: features, labels and optional raw text records."""

    X: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    texts: tuple[str, ...] | None = None
    ids: tuple[str, ...] | None = None  # one per row; subsets keep them aligned

    def __post_init__(self) -> None:
        if self.X.shape[0] != self.y.shape[0]:
            raise DatasetError(f"X has {self.X.shape[0]} rows but y has {self.y.shape[0]} labels")
        if self.ids is not None and len(self.ids) != self.X.shape[0]:
            raise DatasetError(f"ids has {len(self.ids)} entries but X has {self.X.shape[0]} rows")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes the labels imply (largest label + 1)."""
        return int(self.y.max()) + 1 if len(self) else 0

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.X.shape[1:])

    @property
    def texts_per_row(self) -> bool:
        """``texts`` has one entry per row (then an erased row's text can be dropped)."""
        return self.texts is not None and len(self.texts) == len(self)

    def subset(self, indices: npt.NDArray[np.int64]) -> Dataset:
        """The rows at ``indices``; ids follow their rows. Texts are records of the whole
        set and are kept as is (they feed the verbatim guard, not the model)."""
        ids = None if self.ids is None else tuple(self.ids[int(i)] for i in indices)
        return Dataset(X=self.X[indices], y=self.y[indices], texts=self.texts, ids=ids)

    def without(self, erased: frozenset[str]) -> tuple[Dataset, int]:
        """The data set without the rows whose id is in ``erased`` (their texts too, which
        requires one text per row); returns it and the number of rows removed."""
        if not erased:
            return self, 0
        if self.ids is None:
            raise DatasetError("the data set has no 'ids' field: records cannot be erased by id")
        keep = np.array([i for i, rid in enumerate(self.ids) if rid not in erased],
                        dtype=np.int64)
        removed = len(self) - int(keep.size)
        if removed == 0:
            return self, 0
        if self.texts is not None and not self.texts_per_row:
            raise DatasetError(
                f"field 'texts' has {len(self.texts)} entries for {len(self)} rows: an erased "
                "record's text (and its verbatim-guard fingerprints) can only be removed when "
                "'texts' has one entry per row")
        texts = None if self.texts is None else tuple(self.texts[int(i)] for i in keep)
        ids = tuple(self.ids[int(i)] for i in keep)
        return Dataset(X=self.X[keep], y=self.y[keep], texts=texts, ids=ids), removed


def load_dataset(path: str | Path, *, num_classes: int | None = None) -> Dataset:
    """Read and validate a data set file; every error names the offending field.

    ``num_classes``, when given, bounds the labels (the model's output size).
    """
    source = Path(path)
    if not source.is_file():
        raise DatasetError(f"dataset {source}: no such file")
    if not zipfile.is_zipfile(source):
        # np.load would try to unpickle anything that is not a zip/.npy file.
        raise DatasetError(f"dataset {source}: not a readable .npz file (not a zip archive)")
    try:
        with np.load(source, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        # numpy raises ValueError for object arrays when pickles are refused.
        raise DatasetError(
            f"dataset {source}: cannot read without pickle ({exc}); store 'texts' as a "
            "unicode array (np.array(texts, dtype=str)), not an object array"
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DatasetError(f"dataset {source}: not a readable .npz file ({exc})") from exc
    return validate_arrays(arrays, source=str(source), num_classes=num_classes)


def check_labels(
    labels: npt.NDArray[np.int64], num_classes: int, *, source: str = "dataset"
) -> None:
    """The labels fit a model with ``num_classes`` outputs (0..num_classes-1)."""
    if labels.size and labels.max() >= num_classes:
        raise DatasetError(
            f"{source}: field 'y' has label {int(labels.max())} but the model has "
            f"{num_classes} classes (labels must be 0..{num_classes - 1})"
        )


def validate_arrays(
    arrays: dict[str, npt.NDArray[np.generic]],
    *,
    source: str = "dataset",
    num_classes: int | None = None,
) -> Dataset:
    """Check the arrays of a data set file and convert them to the canonical dtypes."""
    unknown = sorted(set(arrays) - {"X", "y", "texts", "ids"})
    if unknown:
        raise DatasetError(f"{source}: unknown field(s) {unknown}; allowed: X, y, texts, ids")
    for field in ("X", "y"):
        if field not in arrays:
            raise DatasetError(f"{source}: missing required field '{field}'")
    X, y = arrays["X"], arrays["y"]

    if not np.issubdtype(X.dtype, np.floating):
        raise DatasetError(f"{source}: field 'X' must be a float array, got dtype {X.dtype}")
    if X.ndim not in (2, 4):
        raise DatasetError(
            f"{source}: field 'X' must have shape [n, d] or [n, c, h, w], got {list(X.shape)}"
        )
    if X.shape[0] < 2:
        raise DatasetError(f"{source}: field 'X' needs at least 2 rows, got {X.shape[0]}")
    if any(s == 0 for s in X.shape[1:]):
        raise DatasetError(f"{source}: field 'X' has an empty feature axis: {list(X.shape)}")
    features = X.astype(np.float32)
    if not np.all(np.isfinite(features)):
        raise DatasetError(f"{source}: field 'X' contains NaN or infinite values")

    if not np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.bool_):
        raise DatasetError(f"{source}: field 'y' must be an integer array, got dtype {y.dtype}")
    if y.ndim != 1:
        raise DatasetError(f"{source}: field 'y' must have shape [n], got {list(y.shape)}")
    if y.shape[0] != X.shape[0]:
        raise DatasetError(
            f"{source}: field 'y' has {y.shape[0]} labels but 'X' has {X.shape[0]} rows"
        )
    labels = y.astype(np.int64)
    if labels.min() < 0:
        raise DatasetError(f"{source}: field 'y' has negative label {int(labels.min())}")
    if num_classes is not None:
        check_labels(labels, num_classes, source=source)

    texts: tuple[str, ...] | None = None
    if "texts" in arrays:
        raw = arrays["texts"]
        if raw.ndim != 1 or not np.issubdtype(raw.dtype, np.str_):
            raise DatasetError(
                f"{source}: field 'texts' must be a 1-D unicode string array, "
                f"got dtype {raw.dtype} shape {list(raw.shape)}"
            )
        texts = tuple(str(t) for t in raw.tolist())
    ids: tuple[str, ...] | None = None
    if "ids" in arrays:
        raw_ids = arrays["ids"]
        if raw_ids.ndim != 1 or not np.issubdtype(raw_ids.dtype, np.str_):
            raise DatasetError(
                f"{source}: field 'ids' must be a 1-D unicode string array, "
                f"got dtype {raw_ids.dtype} shape {list(raw_ids.shape)}"
            )
        try:
            ids = check_record_ids([str(i) for i in raw_ids.tolist()], rows=X.shape[0])
        except RecordIdError as exc:
            raise DatasetError(f"{source}: field 'ids': {exc}") from exc
    return Dataset(X=features, y=labels, texts=texts, ids=ids)


def save_dataset(dataset: Dataset, path: str | Path) -> None:
    """Write ``dataset`` in the ``.npz`` format (uncompressed; texts as a unicode array)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, npt.NDArray[np.generic]] = {"X": dataset.X, "y": dataset.y}
    if dataset.texts is not None:
        arrays["texts"] = np.array(dataset.texts, dtype=str)
    if dataset.ids is not None:
        arrays["ids"] = np.array(dataset.ids, dtype=str)
    with target.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def _standardise(X: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    from sklearn.preprocessing import StandardScaler

    # Constant columns (e.g. digits' border pixels) get scale 1 from scikit-learn, not NaN.
    scaled: npt.NDArray[np.float64] = StandardScaler().fit_transform(X)
    return scaled.astype(np.float32)


def _digit_record(index: int, label: int, pixels: npt.NDArray[np.float64]) -> str:
    """A synthetic record description of one digits sample (no real person behind it).

    It carries the sample's 8x8 intensities, so each record is unique and long enough
    (about 90 tokens) to yield verbatim-guard fingerprints at the default 50-token window.
    """
    rows = " ".join(
        f"row {r}: " + " ".join(str(int(v)) for v in pixels[r * 8 : (r + 1) * 8]) for r in range(8)
    )
    return (
        f"Archive record {index:04d}. A handwritten digit {label} scanned from form "
        f"{1000 + index} of the optical recognition collection, filed by writer "
        f"W{(index * 7919) % 997:03d}. Intensity grid follows, {rows}. End of record."
    )


def export_dataset(name: str, path: str | Path, *, shape: Shape = "flat") -> Dataset:
    """Write one of scikit-learn's bundled data sets to ``path`` and return it.

    ``shape="image"`` writes digits as [n, 1, 8, 8] (for the cnn architecture).
    """
    from sklearn.datasets import load_breast_cancer, load_digits

    if name == "digits":
        bunch = load_digits()
        raw = np.asarray(bunch.data, dtype=np.float64)
        labels = np.asarray(bunch.target, dtype=np.int64)
        X = _standardise(raw)
        if shape == "image":
            X = X.reshape(-1, 1, 8, 8)
        texts: tuple[str, ...] | None = tuple(
            _digit_record(i, int(labels[i]), raw[i]) for i in range(len(labels))
        )
    elif name == "breast_cancer":
        if shape != "flat":
            raise DatasetError("breast_cancer has tabular features: only shape 'flat'")
        bunch = load_breast_cancer()
        X = _standardise(np.asarray(bunch.data, dtype=np.float64))
        labels = np.asarray(bunch.target, dtype=np.int64)
        texts = None
    else:
        raise DatasetError(f"unknown data set {name!r}; exportable: {', '.join(EXPORTABLE)}")
    # Opaque record ids, one per row: what an ErasureRequest names.
    ids = tuple(f"{name}-{i:05d}" for i in range(len(labels)))
    dataset = Dataset(X=X, y=labels, texts=texts, ids=ids)
    save_dataset(dataset, path)
    return dataset


def split_indices(n: int, fractions: Sequence[float], *, seed: int) -> list[npt.NDArray[np.int64]]:
    """Deterministic disjoint random split of ``range(n)`` by ``fractions`` (summing to 1).

    Data order is not privacy noise, so a seeded numpy generator is the right tool here.
    """
    if n < len(fractions):
        raise ValueError(f"cannot split {n} rows into {len(fractions)} parts")
    if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be positive and sum to 1, got {list(fractions)}")
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    bounds = np.round(np.cumsum(fractions) * n).astype(int)
    bounds[-1] = n
    parts, start = [], 0
    for end in bounds:
        parts.append(np.sort(order[start:end]))
        start = int(end)
    if any(p.size == 0 for p in parts):
        raise ValueError(f"split of {n} rows by {list(fractions)} leaves an empty part")
    return parts


def train_test_split(
    dataset: Dataset, *, test_fraction: float, seed: int
) -> tuple[Dataset, Dataset]:
    """Deterministic train/test split of ``dataset``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test = split_indices(len(dataset), [1.0 - test_fraction, test_fraction], seed=seed)
    return dataset.subset(train), dataset.subset(test)


def partition_indices(n: int, parts: int, *, seed: int) -> list[npt.NDArray[np.int64]]:
    """``parts`` disjoint, near-equal random partitions of ``range(n)`` (PATE teachers)."""
    if parts < 1 or parts > n:
        raise ValueError(f"cannot partition {n} rows into {parts} parts")
    order = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return [np.sort(chunk) for chunk in np.array_split(order, parts)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dpserve_runtime.train.datasets",
        description="Data set files for the dpserve trainer.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="write a scikit-learn bundled data set")
    export.add_argument("name", choices=EXPORTABLE)
    export.add_argument("output", type=Path)
    export.add_argument("--shape", choices=["flat", "image"], default="flat")
    check = commands.add_parser("check", help="validate a data set file")
    check.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            dataset = export_dataset(args.name, args.output, shape=args.shape)
            verb = f"wrote {args.output}"
        else:
            dataset = load_dataset(args.path)
            verb = f"{args.path} is valid"
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    texts = 0 if dataset.texts is None else len(dataset.texts)
    print(
        f"{verb}: {len(dataset)} rows, features {list(dataset.feature_shape)}, "
        f"{dataset.num_classes} classes, {texts} texts"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
