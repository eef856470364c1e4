"""A procedural English grammar for the embedded corpus and its zero-shot probes.

`Grammar(rng).sentence()` draws one sentence from a dozen shapes (intransitive, transitive with
prepositional phrase, copula, existential, questions, relative clauses, coordination, past tense,
imperatives) with number agreement. Every sentence knows the minimal edits that make it
ungrammatical (agreement flip, determiner/noun number clash, adjective/noun order swap) and the
number flips that keep it grammatical (a noun nothing agrees with); `Sentence.twins()` combines
them into ungrammatical twins, among which the corpus picks one as long as the sentence (the
sBLIMP-like syntactic pairs). `nonword(word)` gives the sWUGGY-like lexical foil.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

NOUNS = """
dog cat bird horse cow sheep goat pig duck chicken rabbit mouse fox wolf bear lion tiger monkey
frog snake fish whale turtle bee spider teacher doctor farmer baker driver singer painter
student child man woman boy girl friend neighbour king queen soldier sailor pilot nurse
lawyer writer player cook captain house garden window door table chair bed lamp clock
book letter picture bottle cup plate bowl basket box bag hat coat shoe shirt ball kite
boat train car bus bicycle road bridge river lake mountain hill forest tree flower
apple orange banana cake bread cookie sandwich candle key ring phone computer camera
piano guitar drum song story village city market school church castle island beach
""".split()
IRREGULAR_PLURALS = {
    "sheep": "sheep",
    "fish": "fish",
    "mouse": "mice",
    "child": "children",
    "man": "men",
    "woman": "women",
    "wolf": "wolves",
    "knife": "knives",
    "shoe": "shoes",
}
ANIMATE = set(NOUNS[: NOUNS.index("house")])

ADJECTIVES = """
big small tall short old young new happy sad angry quiet loud brave clever lazy busy
hungry sleepy friendly gentle strong weak famous rich poor kind proud shy calm wild
red blue green yellow purple orange brown black white golden silver pink grey
bright dark heavy light soft hard warm cold hot wet dry clean dirty empty full
round square tiny huge strange simple beautiful ugly funny lucky
""".split()

# base form, third person singular, past
TRANSITIVE = """
see:sees:saw find:finds:found take:takes:took bring:brings:brought carry:carries:carried
watch:watches:watched follow:follows:followed help:helps:helped like:likes:liked love:loves:loved
hate:hates:hated open:opens:opened close:closes:closed paint:paints:painted draw:draws:drew
push:pushes:pushed pull:pulls:pulled catch:catches:caught throw:throws:threw hold:holds:held
keep:keeps:kept buy:buys:bought sell:sells:sold build:builds:built break:breaks:broke
fix:fixes:fixed wash:washes:washed clean:cleans:cleaned visit:visits:visited call:calls:called
need:needs:needed want:wants:wanted remember:remembers:remembered forget:forgets:forgot
touch:touches:touched kick:kicks:kicked chase:chases:chased feed:feeds:fed meet:meets:met
greet:greets:greeted hide:hides:hid show:shows:showed cook:cooks:cooked eat:eats:ate
borrow:borrows:borrowed drop:drops:dropped lift:lifts:lifted count:counts:counted
""".split()
INTRANSITIVE = """
run:runs:ran sleep:sleeps:slept walk:walks:walked jump:jumps:jumped sing:sings:sang dance:dances:danced
laugh:laughs:laughed cry:cries:cried swim:swims:swam fly:flies:flew wait:waits:waited smile:smiles:smiled
shout:shouts:shouted whisper:whispers:whispered sit:sits:sat stand:stands:stood fall:falls:fell
arrive:arrives:arrived leave:leaves:left rest:rests:rested play:plays:played work:works:worked
listen:listens:listened travel:travels:travelled climb:climbs:climbed hurry:hurries:hurried
""".split()
ADVERBS = """
quickly slowly quietly loudly happily sadly carefully gently suddenly often always never
today yesterday again early late soon together outside inside everywhere finally
""".split()
PREPOSITIONS = "near behind under over beside inside with without from into across along".split()
NAMES = """
anna ben clara david emma frank grace henry iris jack kate leo mary nina oscar paul
rose sam tom vera will zoe lucy max ella adam alice oliver sophie hugo
""".split()
NUMBERS = "two three four five six seven eight nine ten".split()
SINGULAR_DETS = ["the", "a", "this", "that", "every", "my", "your", "his", "her", "our", "their"]
PLURAL_DETS = ["the", "these", "those", "some", "many", "my", "your", "our", "their"] + NUMBERS
FUNCTION_WORDS = "is are was were does do did who which and but please there very".split()
# the determiner of the other number, of about the same sound: "this dog" -> "these dog"
DETERMINER_SWAPS = {"this": "these", "these": "this", "that": "those", "those": "that"}
DETERMINER_SWAPS |= {"every": "many", "many": "every"}
# determiners that do not mark number ("the dog", "the dogs")
UNMARKED_DETS = ("the", "my", "your", "our", "their", "his", "her")
NEUTRAL = "number"  # the kind of an edit that keeps the sentence grammatical (see `Sentence`)


def plural(noun: str) -> str:
    if noun in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "sh", "ch", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _verbs(spec: list[str]) -> list[tuple[str, str, str]]:
    return [tuple(v.split(":")) for v in spec]


TRANSITIVE_VERBS = _verbs(TRANSITIVE)
INTRANSITIVE_VERBS = _verbs(INTRANSITIVE)


def vocabulary() -> set[str]:
    """Every surface form the grammar can produce."""
    words = (
        set(NOUNS) | {plural(n) for n in NOUNS} | set(ADJECTIVES) | set(ADVERBS) | set(PREPOSITIONS)
    )
    words |= set(NAMES) | set(NUMBERS) | set(SINGULAR_DETS) | set(PLURAL_DETS) | set(FUNCTION_WORDS)
    for forms in TRANSITIVE_VERBS + INTRANSITIVE_VERBS:
        words |= set(forms)
    return words


@dataclass(frozen=True)
class Twin:
    """An ungrammatical twin: its text, the kind of its breaking edit, and how many edits made it
    (1, or 2 when a grammatical number flip elsewhere was added to even out the length)."""

    text: str
    kind: str
    edits: int


@dataclass
class Sentence:
    """words: the sentence; edits: (kind, position, replacement words). Each edit breaks the sentence
    minimally, except those of kind `NEUTRAL`: the number flip of a noun nothing agrees with
    ("sees the cat" -> "sees the cats"), which keeps it grammatical."""

    words: list[str]
    edits: list[tuple[str, int, list[str]]] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def breakable(self) -> bool:
        return any(kind != NEUTRAL for kind, _, _ in self.edits)

    def twins(self) -> list[Twin]:
        """Every ungrammatical twin with the same number of words: each breaking edit alone, then
        each with one number flip at another position (so "the dog sees the cat" also gives "the
        dog see the cats", whose length in letters and phones matches "the dog sees the cat")."""
        breaking = [e for e in self.edits if e[0] != NEUTRAL]
        neutral = [e for e in self.edits if e[0] == NEUTRAL]
        twins = [Twin(self._apply([edit]), edit[0], 1) for edit in breaking]
        for edit in breaking:
            spanned = range(edit[1], edit[1] + len(edit[2]))
            twins += [
                Twin(self._apply([edit, flip]), edit[0], 2)
                for flip in neutral
                if flip[1] not in spanned
            ]
        return twins

    def _apply(self, edits: list[tuple[str, int, list[str]]]) -> str:
        words = list(self.words)
        for _, pos, replacement in edits:
            words[pos : pos + len(replacement)] = replacement
        return " ".join(words)


class Grammar:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # -- phrases: each returns (words, edits relative to the phrase start, is_plural) --------------
    def noun_phrase(self, animate: bool | None = None, allow_adjective: bool = True):
        r = self.rng
        pool = [n for n in NOUNS if animate is None or (n in ANIMATE) == animate]
        noun = r.choice(pool)
        is_plural = r.random() < 0.4
        det = r.choice(PLURAL_DETS if is_plural else SINGULAR_DETS)
        # a determiner that marks number clashes with the other form of the noun ("a dogs", "two dog")
        marks_number = det not in UNMARKED_DETS
        words, edits = [det], []
        if det in DETERMINER_SWAPS:
            edits.append(("determiner_number", 0, [DETERMINER_SWAPS[det]]))
        if allow_adjective and r.random() < 0.5:
            adjective = r.choice(ADJECTIVES)
            edits.append(
                ("adjective_order", len(words), [plural(noun) if is_plural else noun, adjective])
            )
            words.append(adjective)
        if plural(noun) != noun:
            other_number = [noun if is_plural else plural(noun)]
            edits.append(
                ("determiner_number" if marks_number else NEUTRAL, len(words), other_number)
            )
        words.append(plural(noun) if is_plural else noun)
        if det == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return words, edits, is_plural

    def _subject(self, agrees: bool = True):
        """A name or an animate noun phrase; `agrees`: a verb agrees with it, so its number is fixed."""
        if self.rng.random() < 0.25:
            return [self.rng.choice(NAMES)], [], False
        words, edits, is_plural = self.noun_phrase(animate=True)
        return words, _fixed_number(edits) if agrees else edits, is_plural

    def _prepositional(self):
        words, edits, _ = self.noun_phrase(animate=False)
        return [self.rng.choice(PREPOSITIONS)] + words, [(k, p + 1, w) for k, p, w in edits]

    # -- sentence shapes ---------------------------------------------------------------------------
    def sentence(self) -> Sentence:
        shape = self.rng.choice(
            [
                self._intransitive,
                self._transitive,
                self._copula,
                self._existential,
                self._question,
                self._relative,
                self._coordination,
                self._past,
                self._imperative,
            ]
        )
        return shape()

    def _build(self, parts) -> Sentence:
        """parts: list of (words, edits) joined left to right, edit positions shifted."""
        words, edits = [], []
        for part_words, part_edits in parts:
            edits += [(k, p + len(words), w) for k, p, w in part_edits]
            words += part_words
        return Sentence(words, edits)

    def _verb(self, verbs, is_plural: bool):
        base, third, _ = self.rng.choice(verbs)
        right, wrong = (base, third) if is_plural else (third, base)
        return [right], [("agreement", 0, [wrong])]

    def _intransitive(self) -> Sentence:
        subj, subj_edits, is_plural = self._subject()
        parts = [(subj, subj_edits), self._verb(INTRANSITIVE_VERBS, is_plural)]
        if self.rng.random() < 0.6:
            parts.append(([self.rng.choice(ADVERBS)], []))
        return self._build(parts)

    def _transitive(self) -> Sentence:
        subj, subj_edits, is_plural = self._subject()
        obj, obj_edits, _ = self.noun_phrase()
        parts = [(subj, subj_edits), self._verb(TRANSITIVE_VERBS, is_plural), (obj, obj_edits)]
        if self.rng.random() < 0.5:
            parts.append(self._prepositional())
        return self._build(parts)

    def _copula(self) -> Sentence:
        subj, subj_edits, is_plural = self.noun_phrase(allow_adjective=self.rng.random() < 0.5)
        subj_edits = _fixed_number(subj_edits)
        verb = ("are", "is") if is_plural else ("is", "are")
        adjective = ([self.rng.choice(["very", "so"])] if self.rng.random() < 0.3 else []) + [
            self.rng.choice(ADJECTIVES)
        ]
        return self._build(
            [(subj, subj_edits), ([verb[0]], [("agreement", 0, [verb[1]])]), (adjective, [])]
        )

    def _existential(self) -> Sentence:
        noun = self.rng.choice(NOUNS)
        if self.rng.random() < 0.5:
            head = ["there", "is", "a" if noun[0] not in "aeiou" else "an", noun]
            edits = [("agreement", 1, ["are"])] + (
                [("determiner_number", 3, [plural(noun)])] if plural(noun) != noun else []
            )
        else:
            head = ["there", "are", self.rng.choice(NUMBERS), plural(noun)]
            edits = [("agreement", 1, ["is"])] + (
                [("determiner_number", 3, [noun])] if plural(noun) != noun else []
            )
        return self._build([(head, edits), self._prepositional()])

    def _question(self) -> Sentence:
        subj, subj_edits, is_plural = self._subject()
        aux = ("do", "does") if is_plural else ("does", "do")
        base, _, _ = self.rng.choice(TRANSITIVE_VERBS)
        obj, obj_edits, _ = self.noun_phrase()
        return self._build(
            [
                ([aux[0]], [("agreement", 0, [aux[1]])]),
                (subj, subj_edits),
                ([base], []),
                (obj, obj_edits),
            ]
        )

    def _relative(self) -> Sentence:
        head, head_edits, is_plural = self.noun_phrase(animate=True)
        head_edits = _fixed_number(head_edits)
        _, _, past = self.rng.choice(TRANSITIVE_VERBS)
        obj, obj_edits, _ = self.noun_phrase(allow_adjective=False)
        # the object stands right before the verb: a twin must not make the verb agree with it
        obj_edits = _fixed_number(obj_edits)
        return self._build(
            [
                (head, head_edits),
                (["who", past], []),
                (obj, obj_edits),
                self._verb(INTRANSITIVE_VERBS, is_plural),
            ]
        )

    def _coordination(self) -> Sentence:
        first, second = self._intransitive(), self._intransitive()
        conj = self.rng.choice(["and", "but"])
        return self._build([(first.words, first.edits), ([conj], []), (second.words, second.edits)])

    def _past(self) -> Sentence:
        subj, subj_edits, is_plural = self._subject(agrees=False)
        _, _, past = self.rng.choice(TRANSITIVE_VERBS)
        obj, obj_edits, _ = self.noun_phrase()
        parts = [(subj, subj_edits), ([past], []), (obj, obj_edits)]
        if self.rng.random() < 0.5:
            parts.append(([self.rng.choice(["yesterday", "again", "finally", "today"])], []))
        return self._build(parts)

    def _imperative(self) -> Sentence:
        base, _, _ = self.rng.choice(TRANSITIVE_VERBS)
        obj, obj_edits, _ = self.noun_phrase()
        return self._build([(["please", base], []), (obj, obj_edits), self._prepositional()])


def _fixed_number(edits: list[tuple[str, int, list[str]]]) -> list[tuple[str, int, list[str]]]:
    """The edits of a noun phrase whose number is not free (a verb agrees with it, or follows it)."""
    return [edit for edit in edits if edit[0] != NEUTRAL]


_CONSONANT_SWAPS = {
    "b": "dg",
    "d": "bg",
    "g": "bd",
    "p": "tk",
    "t": "pk",
    "k": "pt",
    "m": "n",
    "n": "m",
    "l": "r",
    "r": "l",
    "f": "v",
    "v": "f",
    "s": "z",
    "z": "s",
}
_VOWEL_SWAPS = {"a": "eio", "e": "aiou", "i": "aeo", "o": "aeiu", "u": "aeio"}


def nonword(word: str, rng: random.Random, known: set[str]) -> str | None:
    """A pronounceable non-word of the same length: one consonant and one vowel letter swapped for
    phonetically close ones (sWUGGY pairs differ similarly). None if every try is a known word."""
    consonants = [i for i, c in enumerate(word) if c in _CONSONANT_SWAPS]
    vowels = [i for i, c in enumerate(word) if c in _VOWEL_SWAPS and word[i - 1 : i] != "q"]
    if not consonants or not vowels:
        return None
    for _ in range(20):
        chars = list(word)
        ci, vi = rng.choice(consonants), rng.choice(vowels)
        chars[ci] = rng.choice(_CONSONANT_SWAPS[chars[ci]])
        chars[vi] = rng.choice(_VOWEL_SWAPS[chars[vi]])
        candidate = "".join(chars)
        if candidate not in known and candidate != word:
            return candidate
    return None
