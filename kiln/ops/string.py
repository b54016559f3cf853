"""Strings: StringConcat, StringSplit, RegexFullMatch, StringNormalizer, TfIdfVectorizer.

String tensors are numpy object arrays of Python str; these ops run on the host with
Python's string functions, and numeric results come back as torch tensors.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import torch

from kiln.ops.registry import register


def strings(x: Any, op: str) -> np.ndarray:
    """`x` as an object array of str; a clear error for a numeric tensor."""
    if isinstance(x, np.ndarray) and x.dtype.kind in ("O", "U", "S"):
        return x.astype(object)
    kind = x.dtype if isinstance(x, torch.Tensor | np.ndarray) else type(x).__name__
    raise TypeError(f"{op} takes string tensors, got {kind}")


def _host_tensor(array: np.ndarray, device: torch.device | None) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device or "cpu")


@register("StringConcat", 20)
def string_concat(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    a, b = strings(x, "StringConcat"), strings(y, "StringConcat")
    joined = np.frompyfunc(lambda s, t: str(s) + str(t), 2, 1)(a, b)
    return np.asarray(joined, dtype=object)  # a 0-d result comes back as a bare str


@register("StringSplit", 20)
def string_split(x: np.ndarray, *, delimiter: str | None = None, maxsplit: int | None = None,
                 device: torch.device | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Splits each string; pads with "" to the longest split, counts the parts."""
    flat = strings(x, "StringSplit").reshape(-1)
    parts = [_split(str(s), delimiter or None, maxsplit) for s in flat]
    width = max((len(p) for p in parts), default=0)
    out = np.full((len(parts), width), "", dtype=object)
    for row, pieces in enumerate(parts):
        out[row, :len(pieces)] = pieces
    counts = np.array([len(p) for p in parts], dtype=np.int64).reshape(x.shape)
    return out.reshape(*x.shape, width), _host_tensor(counts, device)


def _split(text: str, delimiter: str | None, maxsplit: int | None) -> list[str]:
    """One string's parts, as ONNX Runtime splits them: an empty string has none, and
    without a delimiter, runs of spaces separate and the ends are trimmed first."""
    if delimiter is None:
        text = text.strip(" ")
    if not text:
        return []
    if delimiter is None:
        return [text] if maxsplit == 0 else _SPACES.split(text, maxsplit=maxsplit or 0)
    return text.split(delimiter, -1 if maxsplit is None else maxsplit)


_SPACES = re.compile(" +")


@register("RegexFullMatch", 20)
def regex_full_match(x: np.ndarray, *, pattern: str,
                     device: torch.device | None = None) -> torch.Tensor:
    # ONNX specifies RE2 syntax; Python's re accepts the RE2 patterns models use
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"RegexFullMatch: invalid pattern {pattern!r}: {exc}") from None
    texts = strings(x, "RegexFullMatch")
    matched = np.array([regex.fullmatch(str(s)) is not None for s in texts.reshape(-1)],
                       dtype=bool).reshape(texts.shape)
    return _host_tensor(matched, device)


@register("StringNormalizer", 10)
def string_normalizer(x: np.ndarray, *, case_change_action: str = "NONE",
                      is_case_sensitive: int = 0, locale: str = "",
                      stopwords: list[str] | None = None) -> np.ndarray:
    """Drops stop words, then changes case; [C] or [1, C] in, same rank out."""
    texts = strings(x, "StringNormalizer")
    if texts.ndim not in (1, 2) or (texts.ndim == 2 and texts.shape[0] != 1):
        raise ValueError(f"StringNormalizer takes shape [C] or [1, C], got {list(texts.shape)}")
    stops = set(stopwords or [])
    if not is_case_sensitive:
        stops = {s.lower() for s in stops}
    kept = [str(s) for s in texts.reshape(-1)
            if (str(s) if is_case_sensitive else str(s).lower()) not in stops]
    if case_change_action == "LOWER":
        kept = [s.lower() for s in kept]
    elif case_change_action == "UPPER":
        kept = [s.upper() for s in kept]
    elif case_change_action != "NONE":
        raise ValueError(f"StringNormalizer: case_change_action must be LOWER, UPPER or NONE, "
                         f"got {case_change_action!r}")
    out = np.array(kept or [""], dtype=object)  # all dropped: one empty string
    return out.reshape(1, -1) if texts.ndim == 2 else out


def _ngram_table(pool: list[Any], ngram_counts: list[int], ngram_indexes: list[int],
                 min_n: int, max_n: int) -> dict[tuple[Any, ...], int]:
    """n-gram (as a tuple) -> output column, for the n-grams of lengths min_n..max_n."""
    table: dict[tuple[Any, ...], int] = {}
    ngram_id = 0
    bounds = list(ngram_counts) + [len(pool)]
    for n, (start, end) in enumerate(itertools.pairwise(bounds), start=1):
        for offset in range(start, end, n):
            gram = tuple(pool[offset:offset + n])
            if gram in table:
                raise ValueError(f"TfIdfVectorizer: the n-gram {gram} appears twice in the pool")
            if min_n <= n <= max_n:
                table[gram] = ngram_indexes[ngram_id]
            ngram_id += 1
    return table


def _count_row(row: list[Any], table: dict[tuple[Any, ...], int], counts: np.ndarray,
               min_n: int, max_n: int, max_skip: int) -> None:
    for skip in range(max_skip + 1):
        step = skip + 1
        # unigrams are the same at every skip distance: count them only once
        lowest = min_n if skip == 0 else max(min_n, 2)
        for start in range(len(row)):
            for n in range(lowest, max_n + 1):
                last = start + (n - 1) * step
                if last >= len(row):
                    break
                column = table.get(tuple(row[start:last + 1:step]))
                if column is not None:
                    counts[column] += 1


@register("TfIdfVectorizer", 9)
def tfidf_vectorizer(x: Any, *, mode: str, min_gram_length: int, max_gram_length: int,
                     max_skip_count: int, ngram_counts: list[int], ngram_indexes: list[int],
                     pool_int64s: list[int] | None = None, pool_strings: list[str] | None = None,
                     weights: list[float] | None = None,
                     device: torch.device | None = None) -> torch.Tensor:
    """Counts pool n-grams (with up to max_skip_count skipped items) per row of [C] or [B, C]."""
    if isinstance(x, torch.Tensor):
        items = x.cpu().numpy()
        pool: list[Any] = list(pool_int64s or [])
    else:
        items = strings(x, "TfIdfVectorizer")
        pool = list(pool_strings or [])
    if mode not in ("TF", "IDF", "TFIDF"):
        raise ValueError(f"TfIdfVectorizer: mode must be TF, IDF or TFIDF, got {mode!r}")
    if items.ndim > 2:
        raise ValueError(f"TfIdfVectorizer takes shape [C] or [B, C], got {list(items.shape)}")
    rows = items.reshape(1, -1) if items.ndim < 2 else items
    width = max(ngram_indexes) + 1
    table = _ngram_table(pool, ngram_counts, ngram_indexes, min_gram_length, max_gram_length)
    counts = np.zeros((rows.shape[0], width), dtype=np.float32)
    for row, out in zip(rows, counts):
        values = [v.item() if isinstance(v, np.generic) else v for v in row]
        _count_row(values, table, out, min_gram_length, max_gram_length, max_skip_count)
    if mode == "IDF":
        counts = (counts > 0).astype(np.float32)
    if mode != "TF" and weights:
        # weights[i] belongs to the i-th pool n-gram, which counts into column ngram_indexes[i]
        per_column = np.zeros(width, dtype=np.float32)
        per_column[np.asarray(ngram_indexes)] = np.asarray(weights, dtype=np.float32)
        counts = counts * per_column
    return _host_tensor(counts if items.ndim == 2 else counts[0], device)
