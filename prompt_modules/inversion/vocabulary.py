"""The multi-label vocabulary of the inverter: the most frequent content words of a prompt corpus.

The paper keeps the 1000 most frequent adjectives, nouns and verbs (stop words removed). We ship no
part-of-speech tagger, so the filter is a heuristic over lower-cased word tokens (letters, inner hyphens):

* drop the stop words below (articles, pronouns, prepositions, conjunctions, auxiliaries and modal verbs,
  determiners, quantifiers, common adverbs) -- these are exactly the closed word classes;
* drop adverbs by the ``-ly`` suffix (unless the word is in :data:`LY_KEEP`, e.g. "family", "curly");
* drop tokens shorter than 2 letters and numbers.

What remains is almost only nouns, adjectives and verbs (the open classes besides adverbs).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

import torch

STOP_WORDS = frozenset(
    """
    a an the this that these those there here some any each every no none all both either neither few many much
    more most less least other another such own same so than too very just only also even still yet quite rather
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs myself
    itself themselves what which who whom whose when where why how whether
    and or but nor if then else because as while until unless although though since
    of in on at by for with without within from to into onto upon over under above below between among through
    during before after about against along across around behind beside besides beyond near off out up down
    via per like unlike toward towards inside outside
    is am are was were be been being have has had having do does did doing done
    will would shall should can could may might must ought
    not nt s t d ll m re ve
    one two three four five six seven eight nine ten
    again ever never always often sometimes now then once
    """.split()
)
#: ``-ly`` words that are nouns or adjectives, not adverbs.
LY_KEEP = frozenset(
    "family fly butterfly dragonfly lily holy ugly curly jelly belly bully silly hilly woolly lovely lonely "
    "friendly early daily italy july sly ally rely reply supply apply jolly wobbly".split()
)
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
DEFAULT_VOCAB_SIZE = 1000


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (letters with inner hyphens)."""
    return _WORD.findall(text.lower())


def is_content_word(word: str) -> bool:
    """The adjective/noun/verb heuristic described in the module docstring."""
    if len(word) < 2 or word in STOP_WORDS:
        return False
    return not (word.endswith("ly") and word not in LY_KEEP)


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if is_content_word(w)]


class Vocabulary:
    """An ordered list of keywords with multi-hot encoding of texts."""

    def __init__(self, words_: Sequence[str]) -> None:
        self.words = list(words_)
        self.index = {w: i for i, w in enumerate(self.words)}
        if len(self.index) != len(self.words):
            raise ValueError("vocabulary words must be unique")

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    @classmethod
    def build(cls, corpus: Iterable[str], size: int = DEFAULT_VOCAB_SIZE, min_count: int = 1) -> Vocabulary:
        """The ``size`` most frequent content words of ``corpus`` (ties broken alphabetically)."""
        if size < 1:
            raise ValueError(f"vocabulary size must be at least 1, got {size}")
        counts: Counter[str] = Counter()
        for text in corpus:
            counts.update(content_words(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if not ranked:
            raise ValueError("the prompt corpus has no content words to build a vocabulary from")
        return cls(ranked[:size])

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Multi-hot labels ``[N, V]`` (float): which vocabulary words each text contains."""
        out = torch.zeros(len(texts), len(self.words))
        for row, text in enumerate(texts):
            for w in words(text):
                j = self.index.get(w)
                if j is not None:
                    out[row, j] = 1.0
        return out
