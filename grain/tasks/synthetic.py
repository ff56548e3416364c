"""Synthetic tasks the project generates itself, so the pipeline and tests run with no data and no network.

Three tasks in the schemas of sst2, conll2003 and squad, deterministic for a seed, small enough for a
quickstart on 2 CPU cores (2,000 / 500 / 500 rows), and built so that single tokens do not decide the
answer: a pre-trained model has to learn something, and a heavily pruned one can lose it.

- `synth-sst2`: movie-review sentences whose label follows compositional rules: negation flips a
  clause, "but"/"although" hand the verdict to the last clause, three clauses vote. A bag of words
  sees the same polar words in positive and negative sentences.
- `synth-conll`: news-style sentences with PER/ORG/LOC/MISC entities in IOB2 tags, many of them
  multi-word, and words such as "Jordan", "Chelsea" or "Washington" that are a person, a place or a
  club depending on the context.
- `synth-squad`: short paragraphs about two or three invented cities, people and companies, with
  questions worded differently from the text; the answer is a span of the right paragraph, and the
  other paragraphs hold answers of the same type.
"""

from __future__ import annotations

import functools
import os
import random
from dataclasses import dataclass
from pathlib import Path

import datasets

from grain.data import apply_split_spec, split_names, write_jsonl_gz
from grain.errors import GrainError
from grain.tasks.conll import CONLL_TAGS, TokenClassificationTask
from grain.tasks.glue import GLUE_MAX_LENGTH, GlueTask
from grain.tasks.registry import register
from grain.tasks.squad import SQUAD_MAX_LENGTH, QuestionAnsweringTask

SPLIT_SIZES = (("train", 2000), ("validation", 500), ("test", 500))

# ---------------------------------------------------------------------------------------------------
# synth-sst2: sentiment by composition

SUBJECTS = ("the film", "this movie", "the story", "the plot", "the acting", "the script", "the ending",
            "the soundtrack", "the dialogue", "the pacing", "the sequel", "the humor", "the premise",
            "the lead performance", "the direction", "the final act", "the cinematography", "the whole thing")
COPULAS = ("is", "was", "feels", "seems", "remains", "looks")
NEGATIONS = ("not", "never", "hardly", "far from", "not at all", "anything but")
INTENSIFIERS = ("", "", "", "very", "quite", "really", "truly", "rather", "so", "pretty", "genuinely")
POSITIVE = ("good", "great", "charming", "funny", "moving", "brilliant", "delightful", "clever", "gripping",
            "beautiful", "warm", "fresh", "sharp", "elegant", "superb", "entertaining", "wonderful", "touching",
            "smart", "lively", "memorable", "inventive", "satisfying", "stunning")
NEGATIVE = ("bad", "dull", "boring", "awful", "tedious", "clumsy", "bland", "messy", "weak", "flat", "stale",
            "silly", "painful", "lifeless", "dreary", "sloppy", "shallow", "tiresome", "forgettable", "annoying",
            "predictable", "pointless", "confusing", "uneven")
NEUTRAL = ("it runs for about two hours", "it was filmed in the spring", "the screening started late",
           "i saw it on a tuesday", "it is based on a novel", "the director also wrote it",
           "most of the cast is new", "it is the third part of a series", "it opens next week",
           "it was shot in black and white", "the studio released it in march", "it has subtitles",
           "my cousin picked the seats", "the trailer came out in june")
OPENERS = ("", "", "", "honestly , ", "in the end , ", "overall , ", "to be fair , ", "frankly , ")


def _clause(rng: random.Random, polarity: int) -> str:
    """A clause with the given polarity (+1/-1); a negation flips the polar word it governs."""
    negated = rng.random() < 0.4
    word = rng.choice(POSITIVE if polarity * (-1 if negated else 1) > 0 else NEGATIVE)
    parts = [rng.choice(SUBJECTS), rng.choice(COPULAS), rng.choice(NEGATIONS) if negated else "",
             rng.choice(INTENSIFIERS), word]
    return " ".join(p for p in parts if p)


def _review(rng: random.Random, label: int) -> str:
    """One review sentence whose sentiment is `label` (+1/-1) under the composition rules."""
    kind = rng.choice(("single", "but", "although", "vote"))
    if kind == "single":
        clauses = [_clause(rng, label)]
        if rng.random() < 0.5:
            clauses.insert(rng.randrange(2), rng.choice(NEUTRAL))
        body = " , and ".join(clauses)
    elif kind == "but":  # the clause after "but" decides
        body = f"{_clause(rng, -label if rng.random() < 0.8 else label)} , but {_clause(rng, label)}"
    elif kind == "although":  # the main clause decides, not the concession
        body = f"although {_clause(rng, -label if rng.random() < 0.8 else label)} , {_clause(rng, label)}"
    else:  # three clauses vote
        votes = [label, label, -label]
        rng.shuffle(votes)
        body = " , ".join(_clause(rng, v) for v in votes[:2]) + f" , and {_clause(rng, votes[2])}"
    return f"{rng.choice(OPENERS)}{body} ."


def sentiment_rows(n: int, rng: random.Random) -> list[dict]:
    """`n` rows in the sst2 schema (`sentence`, `label` 0 negative / 1 positive, `idx`), balanced."""
    labels = [i % 2 for i in range(n)]
    rng.shuffle(labels)
    return [{"sentence": _review(rng, 1 if y else -1), "label": y, "idx": i} for i, y in enumerate(labels)]


# ---------------------------------------------------------------------------------------------------
# synth-conll: entities that need context

FIRST_NAMES = ("John", "Maria", "Ahmed", "Peter", "Anna", "Carlos", "Yuki", "Olga", "David", "Fatima", "Henrik",
               "Sofia", "Kwame", "Elena", "Rahul", "Ingrid", "Tomas", "Grace", "Marco", "Leila")
LAST_NAMES = ("Smith", "Garcia", "Khan", "Novak", "Rossi", "Tanaka", "Petrov", "Okafor", "Larsen", "Silva",
              "Mueller", "Kowalski", "Haddad", "Nakamura", "Brennan", "Costa", "Lindqvist", "Mensah", "Dubois")
# Words that are a person, a place or a club depending on the sentence around them.
AMBIGUOUS_FIRST = ("Jordan", "Chelsea", "Victoria", "Florence", "Sydney", "Madison", "Charlotte", "Austin", "Paris")
AMBIGUOUS_LAST = ("Washington", "Lincoln", "Kent", "Dallas", "Jordan", "Florence", "Chelsea")
PLACES = ("Berlin", "Tokyo", "Nairobi", "Lima", "Oslo", "Cairo", "Madrid", "Toronto", "Mumbai", "Warsaw", "Brazil",
          "Kenya", "Norway", "Egypt", "Chile", "New York", "Buenos Aires", "Hong Kong", "South Africa",
          "New Zealand", "Jordan", "Washington", "Victoria", "Florence", "Sydney", "Paris", "Dallas", "Kent",
          "Georgia", "Lincoln", "Austin", "Madison", "Charlotte", "Chelsea")
COMPANIES = ("Siemens", "Toyota", "United Nations", "World Bank", "Red Cross", "Barclays", "Nestle", "Interpol",
             "European Union", "General Motors", "Deutsche Bank", "Bank of Japan", "Reuters", "Air France",
             "Lincoln Electric", "Washington Post", "Austin Energy", "Nairobi Stock Exchange")
CLUBS = ("Chelsea", "Arsenal", "Ajax", "Juventus", "Celtic", "Porto", "Lincoln City", "Barcelona", "Real Madrid",
         "Jordan Grand Prix", "Victoria Park Rangers", "Manchester United")
MISC = ("German", "French", "Japanese", "Kenyan", "Brazilian", "Norwegian", "Olympic", "World Cup", "Nobel Prize",
        "Euro 2000", "Tour de France", "Australian Open", "Egyptian", "Chilean", "Dutch", "Davis Cup")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

# Slots: PER, LOC, ORG (companies and bodies), CLUB (tagged ORG), MISC; other fields are plain words.
NER_TEMPLATES = (
    "PER said on DAY that ORG would open an office in LOC .",
    "ORG shares rose NUM percent in LOC on DAY .",
    "PER , who joined ORG in YEAR , will lead the MISC team .",
    "The MISC striker PER scored twice as CLUB beat CLUB SCORE .",
    "LOC and LOC signed a trade deal , PER told reporters .",
    "Police in LOC arrested NUM people , a ORG spokesman said .",
    "PER flew to LOC to meet PER of ORG .",
    "In LOC , the MISC minister PER met ORG officials on DAY .",
    "CLUB beat CLUB SCORE in the MISC final in LOC .",
    "Coach PER praised PER after the win in LOC .",
    "PER told ORG radio that LOC would not attend the MISC talks .",
    "PER ( LOC ) beat PER ( LOC ) SCORE SCORE .",
    "The market in LOC closed higher on DAY .",
    "ORG said profits fell NUM percent in YEAR .",
    "PER , a MISC citizen , was born in LOC in YEAR .",
    "CLUB signed PER from CLUB for NUM million pounds .",
    "The MISC government in LOC denied the report on DAY .",
    "Prices of coffee fell NUM percent on DAY , traders said .",
)


def _person(rng: random.Random) -> list[str]:
    first = rng.choice(AMBIGUOUS_FIRST if rng.random() < 0.25 else FIRST_NAMES)
    last = rng.choice(AMBIGUOUS_LAST if rng.random() < 0.25 else LAST_NAMES)
    return [last] if rng.random() < 0.2 else [first, last]


def _filler(rng: random.Random, slot: str) -> list[str]:
    return {"DAY": lambda: [rng.choice(DAYS)], "NUM": lambda: [str(rng.randint(2, 95))],
            "YEAR": lambda: [str(rng.randint(1960, 1999))],
            "SCORE": lambda: [f"{rng.randint(0, 5)}-{rng.randint(0, 5)}"]}[slot]()


def _entity(rng: random.Random, slot: str) -> tuple[list[str], str]:
    """The words and the entity type for an entity slot."""
    if slot == "PER":
        return _person(rng), "PER"
    pool, kind = {"LOC": (PLACES, "LOC"), "ORG": (COMPANIES, "ORG"), "CLUB": (CLUBS, "ORG"),
                  "MISC": (MISC, "MISC")}[slot]
    return rng.choice(pool).split(), kind


def _ner_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    tokens, tags = [], []
    for slot in rng.choice(NER_TEMPLATES).split():
        if slot in ("PER", "LOC", "ORG", "CLUB", "MISC"):
            words, kind = _entity(rng, slot)
            tokens += words
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1)
        elif slot in ("DAY", "NUM", "YEAR", "SCORE"):
            words = _filler(rng, slot)
            tokens += words
            tags += ["O"] * len(words)
        else:
            tokens.append(slot)
            tags.append("O")
    return tokens, tags


def ner_rows(n: int, rng: random.Random) -> list[dict]:
    """`n` rows in the conll2003 schema (`id`, `tokens`, `ner_tags` as IOB2 names)."""
    rows = []
    for i in range(n):
        tokens, tags = _ner_sentence(rng)
        rows.append({"id": str(i), "tokens": tokens, "ner_tags": tags})
    return rows


# ---------------------------------------------------------------------------------------------------
# synth-squad: find the right paragraph, then the span

SYLLABLES = ("ka", "lor", "ven", "mi", "tas", "dor", "el", "ri", "sun", "bra", "no", "vel", "th", "an", "gor", "li",
             "mar", "os", "te", "quin", "zal", "ur", "pe", "ska")
REGIONS = ("the north", "the south", "the east", "the west", "the central valley", "the coastal plain",
           "the northern highlands", "the southern delta")
INDUSTRIES = ("copper mining", "fishing", "textiles", "shipbuilding", "wine making", "software", "tourism",
              "glass blowing", "coffee trading", "steel", "paper milling", "salt production")
SUBJECTS_STUDIED = ("chemistry", "law", "music", "geology", "economics", "medicine", "architecture", "history",
                    "mathematics", "botany")
PRODUCTS = ("bicycles", "solar panels", "printing presses", "ceramic tiles", "hearing aids", "sailing boats",
            "farm tractors", "pocket watches", "vaccines", "railway signals")
JOBS = ("an engineer", "a translator", "a pilot", "a teacher", "a banker", "a surgeon", "a journalist")


def _name(rng: random.Random, parts: int = 2) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def _person_name(rng: random.Random) -> str:
    return f"{_name(rng)} {_name(rng, rng.choice((2, 3)))}"


class _Paragraph:
    """Sentences with answer spans; `facts` maps a question to its answer text."""

    def __init__(self) -> None:
        self.text, self.facts = "", []

    def say(self, *pieces: str | tuple[str, str]) -> None:
        """Append a sentence; a (question, answer) piece records where the answer starts."""
        for piece in pieces:
            if isinstance(piece, tuple):
                question, answer = piece
                self.facts.append((question, answer, len(self.text)))
                self.text += answer
            else:
                self.text += piece
        self.text += " "


def _city(rng: random.Random) -> _Paragraph:
    city, founder, year = _name(rng, 3), _person_name(rng), str(rng.randint(1200, 1899))
    p = _Paragraph()
    p.say(f"{city} is a city in ", (rng.choice((f"In which part of the country is {city}?",
                                                 f"Where is {city} located?")), rng.choice(REGIONS)), ".")
    p.say("It was founded in ", (rng.choice((f"When was {city} established?",
                                             f"In what year did {city} come into being?")), year),
          " by ", (rng.choice((f"Who established {city}?", f"Which person started the town of {city}?")), founder), ".")
    p.say("Its main industry is ", (rng.choice((f"What is the chief trade of {city}?",
                                                f"What do most people in {city} work in?")), rng.choice(INDUSTRIES)),
          f", and about {rng.randint(2, 900)},000 people live there.")
    p.say("The river ", (f"Which river runs through {city}?", _name(rng)), " flows through its old town.")
    return p


def _biography(rng: random.Random) -> _Paragraph:
    person, born = _person_name(rng), _name(rng, 3)
    first = person.split()[0]
    p = _Paragraph()
    p.say(f"{person} was born in ", (rng.choice((f"Where was {person} born?",
                                                 f"What is the birthplace of {person}?")), born),
          " in ", (rng.choice((f"In which year was {person} born?", f"When was {first} born?")),
                   str(rng.randint(1900, 1999))), ".")
    p.say(f"{first} studied ", (rng.choice((f"Which subject did {person} study?",
                                            f"What was {first}'s field at university?")),
                                rng.choice(SUBJECTS_STUDIED)), f" at the University of {_name(rng, 3)}.")
    p.say(f"Later {first} worked for ", (rng.choice((f"Which company employed {person}?",
                                                     f"For which firm did {first} work?")), _name(rng, 2) + " Works"),
          " as ", (f"What job did {person} have?", rng.choice(JOBS)), ".")
    return p


def _company(rng: random.Random) -> _Paragraph:
    company = f"{_name(rng, 2)} {rng.choice(('Group', 'Industries', 'Limited', 'Company'))}"
    p = _Paragraph()
    p.say(f"{company} was started by ", (rng.choice((f"Who founded {company}?",
                                                    f"Which person set up {company}?")), _person_name(rng)),
          " in ", (f"In which city did {company} begin?", _name(rng, 3)), ".")
    p.say("The company makes ", (rng.choice((f"What does {company} produce?", f"What products come from {company}?")),
                                 rng.choice(PRODUCTS)), f" and employs {rng.randint(20, 9000)} workers.")
    p.say("Its chief executive is ", (rng.choice((f"Who runs {company}?", f"Who leads {company} today?")),
                                      _person_name(rng)), ".")
    return p


def qa_rows(n: int, rng: random.Random, prefix: str = "synth") -> list[dict]:
    """`n` rows in the squad schema, up to three questions per context of two or three paragraphs."""
    rows = []
    while len(rows) < n:
        paragraphs = [rng.choice((_city, _biography, _company))(rng) for _ in range(rng.choice((2, 3)))]
        context, facts = "", []
        for p in paragraphs:
            facts += [(q, a, start + len(context)) for q, a, start in p.facts]
            context += p.text
        context = context.rstrip()
        title = paragraphs[0].text.split(" ")[0]
        for question, answer, start in rng.sample(facts, min(3, len(facts), n - len(rows))):
            assert context[start:start + len(answer)] == answer
            rows.append({"id": f"{prefix}-{len(rows):05d}", "title": title, "context": context, "question": question,
                         "answers": {"text": [answer], "answer_start": [start]}})
    return rows


# ---------------------------------------------------------------------------------------------------
# tasks

GENERATORS = {"synth-sst2": sentiment_rows, "synth-conll": ner_rows, "synth-squad": qa_rows}


def generate(task: str, split: str, seed: int = 0, size: int | None = None) -> list[dict]:
    """The rows of one split of a synthetic task; equal arguments give equal rows on every machine."""
    if task not in GENERATORS:
        raise GrainError(f"unknown synthetic task {task!r}; known: {', '.join(GENERATORS)}")
    sizes = dict(SPLIT_SIZES)
    if size is None and split not in sizes:
        raise GrainError(f"synthetic task {task} has splits {', '.join(sizes)}, not {split!r}")
    rng = random.Random(f"grain/{task}/{split}/{seed}")  # str seeds hash with sha512: stable everywhere
    n = sizes[split] if size is None else size
    if task == "synth-squad":
        return qa_rows(n, rng, prefix=f"{split}-{seed}")
    return GENERATORS[task](n, rng)


@functools.lru_cache(maxsize=16)
def _split(task: str, split: str, seed: int, size: int) -> datasets.Dataset:
    return datasets.Dataset.from_list(generate(task, split, seed, size))


class SyntheticData:
    """Mixin: `load` generates the rows (data_dir is ignored) instead of reading files."""

    def load(self, split_spec: str, data_dir: str | os.PathLike | None = None) -> datasets.Dataset:
        sizes = dict(self.split_sizes)
        names = split_names(split_spec)
        unknown = [n for n in names if n not in sizes]
        if unknown:
            raise GrainError(f"synthetic task {self.name} has splits {', '.join(sizes)}, not {unknown[0]!r}")
        return apply_split_spec({n: _split(self.name, n, self.seed, sizes[n]) for n in dict.fromkeys(names)},
                                split_spec)


@dataclass(frozen=True)
class SyntheticSentimentTask(SyntheticData, GlueTask):
    seed: int = 0
    split_sizes: tuple[tuple[str, int], ...] = SPLIT_SIZES


@dataclass(frozen=True)
class SyntheticNerTask(SyntheticData, TokenClassificationTask):
    seed: int = 0
    split_sizes: tuple[tuple[str, int], ...] = SPLIT_SIZES


@dataclass(frozen=True)
class SyntheticQaTask(SyntheticData, QuestionAnsweringTask):
    seed: int = 0
    split_sizes: tuple[tuple[str, int], ...] = SPLIT_SIZES


SYNTH_SST2 = register(SyntheticSentimentTask(
    name="synth-sst2", head="sequence-classification", num_labels=2, label_names=("negative", "positive"),
    eval_split="validation", train_split="train", main_metric="accuracy", max_length=GLUE_MAX_LENGTH,
    fields=("sentence", "label"), hub=(), metric="glue", metric_config="sst2", text_fields=("sentence",)))
SYNTH_CONLL = register(SyntheticNerTask(
    name="synth-conll", head="token-classification", num_labels=len(CONLL_TAGS), label_names=CONLL_TAGS,
    eval_split="test", train_split="train", main_metric="f1", max_length=128, fields=("tokens", "ner_tags"),
    hub=(), metric="seqeval"))
SYNTH_SQUAD = register(SyntheticQaTask(
    name="synth-squad", head="question-answering", num_labels=2, label_names=(), eval_split="validation",
    train_split="train", main_metric="f1", max_length=SQUAD_MAX_LENGTH, fields=("id", "context", "question", "answers"),
    hub=(), metric="squad"))


def export(data_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write every synthetic split as `{data_dir}/{task}/{split}.jsonl.gz` (the data_dir layout)."""
    return [write_jsonl_gz(generate(task, split, seed), Path(data_dir) / task / f"{split}.jsonl.gz")
            for task in GENERATORS for split, _ in SPLIT_SIZES]
