"""Offline text: Debian's fortune quotations as a topic-classification set, and word lists.

The ``fortunes`` and ``fortunes-min`` packages file some 15,000 quotations under about 40
topics (``/usr/share/games/fortunes/science``, ``.../politics``, ...): human-labelled natural
sentences, the offline stand-in for the text APIs of Krishna et al. (ICLR '20, "Thieves on
Sesame Street!"), whose SST-2 and MNLI are not on this machine. They are not a sentiment set,
some categories are a source rather than a topic (``zippy``, ``knghtbrd``, ``cookie``), and
the labels are noisy: a quotation about computers may sit under ``people``. A category is a
class when it has at least ``MIN_PER_CLASS`` quotations; ``ascii-art`` is dropped (pictures,
not sentences), as is any quotation filed under two categories (its label is ambiguous and it
would leak between splits) and any longer than ``MAX_CHARS`` once its whitespace is collapsed.

The RANDOM queries of Thieves sample words from a vocabulary: by default
(:func:`frequent_words`) the 10,000 most frequent English words of the ``wordfreq`` package, the
stand-in for the authors' 10,000 most frequent words of WikiText-103, or Debian's ``wamerican``
list (:func:`load_words`: ``/usr/share/dict/american-english``, about 100,000 words), in both
cases only the lower-case alphabetic words.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from itertools import islice
from pathlib import Path

import numpy as np

from modelheist.errors import DatasetUnavailableError

FORTUNES_DIR = Path("/usr/share/games/fortunes")
WORDS_FILE = Path("/usr/share/dict/american-english")
MIN_PER_CLASS = 150
MAX_CHARS = 1000
EXCLUDED = frozenset({"ascii-art"})
_SEPARATOR = re.compile(r"^%\s*$", re.MULTILINE)
_WORD = re.compile(r"^[a-z]+$")
FREQUENT_WORDS = 10_000
INSTALL_FORTUNES = (
    "install it with `sudo apt-get install fortunes fortunes-min` (or `make data`), "
    "or set MODELHEIST_FORTUNES to a folder of fortune files"
)


def read_fortune_file(path: Path) -> list[str]:
    """The quotations of one fortune file (separated by lines holding ``%``), each with its
    whitespace collapsed to single spaces."""
    text = Path(path).read_bytes().decode("utf-8", errors="replace")
    quotations = (" ".join(part.split()) for part in _SEPARATOR.split(text))
    return [q for q in quotations if q]


def load_fortunes(
    folder: Path | None = None, min_per_class: int = MIN_PER_CLASS, max_chars: int = MAX_CHARS
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Quotations (an object array of ``str``), integer labels and the class names (the fortune
    files' names, sorted), by the rules of the module docstring."""
    folder = Path(folder or os.environ.get("MODELHEIST_FORTUNES", FORTUNES_DIR))
    files = (
        sorted(
            p
            for p in folder.iterdir()
            if p.is_file() and not p.is_symlink() and not p.suffix and p.name not in EXCLUDED
        )
        if folder.is_dir()
        else []
    )
    if not files:
        raise DatasetUnavailableError(f"no fortune files in {folder}; {INSTALL_FORTUNES}")
    categories: dict[str, set[str]] = defaultdict(set)
    by_category = {}
    for path in files:
        quotations = [q for q in dict.fromkeys(read_fortune_file(path)) if len(q) <= max_chars]
        by_category[path.name] = quotations
        for q in quotations:
            categories[q].add(path.name)
    kept = {
        name: [q for q in quotations if len(categories[q]) == 1]
        for name, quotations in by_category.items()
    }
    classes = tuple(name for name in sorted(kept) if len(kept[name]) >= min_per_class)
    if len(classes) < 2:
        raise DatasetUnavailableError(
            f"fewer than two fortune categories in {folder} hold {min_per_class} quotations"
        )
    texts = [q for name in classes for q in kept[name]]
    labels = [index for index, name in enumerate(classes) for _ in kept[name]]
    return np.array(texts, dtype=object), np.array(labels, dtype=np.int64), classes


def load_words(path: Path | None = None) -> list[str]:
    """The vocabulary of RANDOM queries: the word list's lower-case alphabetic words (no
    possessives, abbreviations or proper nouns), in file order."""
    path = Path(path or os.environ.get("MODELHEIST_WORDS", WORDS_FILE))
    if not path.is_file():
        raise DatasetUnavailableError(
            f"no word list at {path}; install it with `sudo apt-get install wamerican` "
            "(or `make data`), or set MODELHEIST_WORDS to a file of one word per line"
        )
    words = path.read_text(encoding="utf-8", errors="replace").split()
    return list(dict.fromkeys(w for w in words if _WORD.match(w)))


def frequent_words(n: int = FREQUENT_WORDS) -> list[str]:
    """The ``n`` most frequent lower-case alphabetic English words of ``wordfreq`` (Speer's
    blend of Wikipedia, subtitles, news, books, web text and social media), most frequent
    first: the offline stand-in for Krishna et al.'s WikiText-103 vocabulary (§3.1)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    try:
        import wordfreq
    except ImportError as error:
        raise DatasetUnavailableError(
            "the wordfreq package is not installed: `pip install 'modelheist[text]'` "
            "(or draw Debian's word list with --vocabulary wamerican)"
        ) from error
    return list(islice((w for w in wordfreq.iter_wordlist("en") if _WORD.match(w)), n))
