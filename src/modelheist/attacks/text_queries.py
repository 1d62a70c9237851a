"""The queries of Krishna et al. (ICLR '20, "Thieves on Sesame Street!", §3.1) for a text API.

RANDOM: each query is a sequence of words drawn uniformly from a vocabulary, its length drawn
uniformly from 1 to ``max_words`` (the authors' ``preprocess_random.py`` for single-sentence
tasks: ``random_uniform`` words, ``uniform_random`` lengths up to 60). The authors' vocabulary
(``full_corpus_top_10000``) is WikiText-103's 10,000 most frequent whitespace tokens;
WikiText-103 is not on this machine, so the default vocabulary is the 10,000 most frequent
words of ``wordfreq``'s English counts (:func:`modelheist.data.text.frequent_words`), and
:func:`encoder_vocabulary` keeps those the encoder's WordPiece vocabulary holds whole (nearly
all of them; of a plain word list such as Debian's, the filter keeps the frequent words, which
WordPiece holds whole). Deviation: the authors' tokens include punctuation and capitalised
forms; ours are lower-case alphabetic words (the encoder is uncased).

NATURAL (the paper's WIKI): sentences of another text source, at most ``max_words`` words
(the authors: WikiText-103 sentences of at most 50). Here the source is the attacker's own text
(its pool of quotations), each text and each of its sentences a candidate, drawn without
replacement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from modelheist.errors import ModelheistError

RANDOM_MAX_WORDS = 60
NATURAL_MAX_WORDS = 50
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])")


def random_word_queries(
    vocabulary: Sequence[str], n: int, rng: np.random.Generator, max_words: int = RANDOM_MAX_WORDS
) -> np.ndarray:
    """``n`` RANDOM queries: uniform words, uniform lengths in [1, ``max_words``]."""
    if len(vocabulary) == 0:
        raise ModelheistError("RANDOM queries need a non-empty vocabulary")
    if max_words < 1:
        raise ModelheistError("max_words must be at least 1")
    words = np.asarray(list(vocabulary), dtype=object)
    lengths = rng.integers(1, max_words + 1, size=n)
    queries = np.empty(n, dtype=object)
    queries[:] = [" ".join(words[rng.integers(0, len(words), size=k)]) for k in lengths]
    return queries


def sentences_of(text: str) -> list[str]:
    """A text's sentences (split after ``.``, ``!`` or ``?`` before a capital or digit)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def natural_candidates(texts: Sequence[str], max_words: int = NATURAL_MAX_WORDS) -> np.ndarray:
    """Every distinct text of the source and every distinct sentence of one, of at most
    ``max_words`` words, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for candidate in (str(text), *sentences_of(str(text))):
            if 0 < len(candidate.split()) <= max_words:
                seen.setdefault(candidate, None)
    out = np.empty(len(seen), dtype=object)
    out[:] = list(seen)
    return out


def natural_queries(
    texts: Sequence[str], n: int, rng: np.random.Generator, max_words: int = NATURAL_MAX_WORDS
) -> np.ndarray:
    """Up to ``n`` NATURAL queries drawn without replacement from :func:`natural_candidates`."""
    candidates = natural_candidates(texts, max_words)
    if len(candidates) == 0:
        raise ModelheistError("the text source holds no sentence to query with")
    return candidates[rng.permutation(len(candidates))[:n]]


def encoder_vocabulary(words: Sequence[str]) -> list[str]:
    """The ``words`` the text encoder's WordPiece vocabulary holds whole (see the module
    docstring), in their order."""
    from modelheist.models.text import tokenizer

    known = tokenizer().get_vocab()
    return [w for w in words if w in known]
