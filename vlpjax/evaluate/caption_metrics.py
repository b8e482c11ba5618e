"""BLEU-4 and CIDEr-D of generated captions against reference captions, as the COCO caption
evaluation computes them (and reports as "Bleu_4" and "CIDEr").

Captions are compared as whitespace-separated tokens. COCO's published figures tokenise with
the Stanford PTB tokenizer (Java), which also splits "'s" and "n't" and keeps hyphens and
decimals; `simple_tokens` (lower case, words only) is a Python approximation: tokenise with the
PTB tokenizer for figures comparable with published ones. Both metrics are corpus-level: their
figures depend on the whole set of candidates, not on each one alone.

- BLEU: clipped n-gram precision summed over the corpus, geometric mean up to order n, times a
  brevity penalty against, for each candidate, the reference length closest to its own
  (ties to the shorter). Zero counts are smoothed by 1e-15 / 1e-9, as the reference code does.
- CIDEr-D: per order n, the cosine-like similarity of TF-IDF n-gram vectors (document
  frequency over the images' reference sets), with the candidate's weights clipped at the
  reference's, a Gaussian length penalty (sigma 6), averaged over orders 1-4 and references,
  times 10.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Sequence

SMALL, TINY = 1e-9, 1e-15  # BLEU's smoothing of empty counts


def simple_tokens(text: str) -> str:
    """Lower case, words only, single spaces: an approximation of COCO's PTB tokenisation."""
    return " ".join(re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower()))


def ngrams(words: Sequence[str], max_n: int) -> Counter:
    """Every n-gram of order 1..max_n with its count."""
    return Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1) for i in range(len(words) - n + 1))


# --- BLEU ------------------------------------------------------------------------------------


def _closest_length(lengths: Sequence[int], length: int) -> int:
    return min((abs(ref - length), ref) for ref in lengths)[1]


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> list[float]:
    """Corpus BLEU-1 .. BLEU-max_n of `candidates[i]` against `references[i]` (lists of strings)."""
    _check_pairs(candidates, references)
    correct, guessed = [0] * max_n, [0] * max_n
    cand_len = ref_len = 0
    for candidate, refs in zip(candidates, references, strict=True):
        words = candidate.split()
        clip = Counter()
        for ref in refs:
            clip |= ngrams(ref.split(), max_n)  # the most times any one reference has each n-gram
        for gram, count in ngrams(words, max_n).items():
            correct[len(gram) - 1] += min(count, clip[gram])
        for n in range(max_n):
            guessed[n] += max(0, len(words) - n)
        cand_len += len(words)
        ref_len += _closest_length([len(r.split()) for r in refs], len(words))
    scores, product = [], 1.0
    for n in range(max_n):
        product *= (correct[n] + TINY) / (guessed[n] + SMALL)
        scores.append(product ** (1.0 / (n + 1)))
    ratio = (cand_len + TINY) / (ref_len + SMALL)
    brevity = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    return [score * brevity for score in scores]


# --- CIDEr-D ---------------------------------------------------------------------------------


class _Tfidf:
    """A caption's n-gram TF-IDF vectors, one per order, their norms, and its length for the
    penalty. The length counts bigrams, as the reference implementation does (it keys the count
    on order index 1). That is the word count minus one for any non-empty caption, so the length
    difference is the same; it differs only against an empty reference, kept for exactness."""

    def __init__(self, caption: str, idf: dict, max_n: int):
        self.vectors = [dict() for _ in range(max_n)]
        self.length = 0
        for gram, count in ngrams(caption.split(), max_n).items():
            self.vectors[len(gram) - 1][gram] = count * idf(gram)
            if len(gram) == 2:
                self.length += count
        self.norms = [math.sqrt(sum(v * v for v in vector.values())) for vector in self.vectors]


def _similarity(candidate: _Tfidf, reference: _Tfidf, sigma: float) -> list[float]:
    penalty = math.exp(-((candidate.length - reference.length) ** 2) / (2 * sigma**2))
    out = []
    for cand, ref, cand_norm, ref_norm in zip(
        candidate.vectors, reference.vectors, candidate.norms, reference.norms, strict=True
    ):
        dot = sum(min(weight, ref.get(gram, 0.0)) * ref.get(gram, 0.0) for gram, weight in cand.items())
        if cand_norm and ref_norm:
            dot /= cand_norm * ref_norm
        out.append(dot * penalty)
    return out


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4, sigma: float = 6.0
) -> tuple[float, list[float]]:
    """(corpus CIDEr-D, per-candidate scores) of `candidates[i]` against `references[i]`."""
    _check_pairs(candidates, references)
    document_frequency = Counter()
    for refs in references:
        document_frequency.update({gram for ref in refs for gram in ngrams(ref.split(), max_n)})
    log_documents = math.log(len(references))

    def idf(gram) -> float:
        return log_documents - math.log(max(1.0, document_frequency[gram]))

    scores = []
    for candidate, refs in zip(candidates, references, strict=True):
        cand = _Tfidf(candidate, idf, max_n)
        orders = [0.0] * max_n
        for ref in refs:
            orders = [a + b for a, b in zip(orders, _similarity(cand, _Tfidf(ref, idf, max_n), sigma), strict=True)]
        scores.append(sum(orders) / max_n / len(refs) * 10.0)
    return sum(scores) / len(scores), scores


def _check_pairs(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(candidates) != len(references) or not candidates:
        raise ValueError(f"need one reference list per candidate, got {len(candidates)} and {len(references)}")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"candidates {empty[:5]} have no reference caption")
