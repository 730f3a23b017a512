"""Scores of the cheap selection baselines; the select stage ranks or samples rows by them.

- random: a uniform sample without replacement.
- length / perplexity / IFD: keep one end of a score, ties broken by row order.
- IFD (Li et al. 2024): s(A|Q) / s(A), s = mean answer NLL; rows with IFD > 1 are dropped first.
- DSIR (Xie et al. 2023): hashed unigram+bigram counts; log importance weight = sum over buckets of
  count x (log p_target - log p_raw), add-one smoothed; resampled without replacement by Gumbel top-k.
- QuRating-style: sample without replacement with p proportional to exp(score / temperature).
"""
from collections.abc import Iterable

import numpy as np


def ranked(scores, highest: bool) -> np.ndarray:
    """All indices from the best end of `scores`; equal scores keep row order."""
    scores = np.asarray(scores, dtype=float)
    return np.lexsort((np.arange(len(scores)), -scores if highest else scores))


def ifd(conditional_logp, unconditional_logp) -> np.ndarray:
    """Instruction-following difficulty from mean log-probs of the answer with and without the question."""
    return np.asarray(conditional_logp, dtype=float) / np.asarray(unconditional_logp, dtype=float)


def dsir_log_weights(raw_texts: Iterable[str], target_texts: Iterable[str], buckets: int) -> np.ndarray:
    from sklearn.feature_extraction.text import HashingVectorizer

    vectorizer = HashingVectorizer(n_features=buckets, ngram_range=(1, 2), alternate_sign=False, norm=None)
    raw, target = vectorizer.transform(raw_texts), vectorizer.transform(target_texts)

    def log_probs(counts):
        totals = np.asarray(counts.sum(axis=0)).ravel() + 1.0
        return np.log(totals / totals.sum())
    return np.asarray(raw @ (log_probs(target) - log_probs(raw))).ravel()
