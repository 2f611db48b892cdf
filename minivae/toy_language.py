"""A toy language whose sentences carry known sentence-level factors: topic, sentiment, tense.

`toy_corpus` draws sentences from a small grammar (documented there) over a fixed lexicon of
English function words and synthetic, pronounceable content words. Local syntax is learnable by
an autoregressive decoder without any latent code, while the three factors are shared by all
words of a sentence: a sentence VAE can only name them if its latent code z carries them.
Reading order: the word lists and `_toy_lexicon`, `_zipf_pick`, `_toy_sentence`, `ToyCorpus`,
`toy_corpus`.
"""
import functools
import itertools
import operator
import random
from dataclasses import dataclass, field

# Function words are English so samples read like sentences; content words are synthetic.
_DET_SG = ["the", "a", "this", "that", "every", "one", "my", "our"]
_DET_PL = ["the", "some", "these", "those", "many", "two", "few", "our"]
_PREPS = ["in", "on", "near", "under", "with", "behind", "beyond", "without", "across", "from"]
_CONJS = ["and", "but", "while", "because", "so", "although"]
_CODAS = [["and", "it", "BE"], ["which", "FEEL"], ["and", "everyone", "SAY", "it", "BE"]]
_TENSED = {"BE": ("is", "was"), "FEEL": ("feels", "felt"), "SAY": ("says", "said")}
_FUNCTION_WORDS = set(_DET_SG + _DET_PL + _PREPS + _CONJS + ["an", "it", "which", "everyone", ",", "."]
                      + [w for forms in _TENSED.values() for w in forms])
_ONSETS = "b d f g k l m n p r s t v z br kr tr st pl gl sh ch".split()
_VOWELS = "a e i o u ai ou".split()
_ENDS = ["", "", "n", "r", "l", "k", "m", "t"]


def _plural(stem):
    return stem + ("es" if stem.endswith(("s", "sh", "ch")) else "s")


@functools.lru_cache(maxsize=None)
def _toy_lexicon(n_topics):
    """The toy language's word lists: fixed (seed-independent), topic k's words never depend on n_topics."""
    rng, taken = random.Random(20160101), set(_FUNCTION_WORDS)

    def words(n, n_syllables, make_forms):
        out = []
        while len(out) < n:
            stem = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syllables))
            forms = make_forms(stem + rng.choice(_ENDS))
            if len(set(forms)) == len(forms) and not taken.intersection(forms):
                taken.update(forms)
                out.append(forms)
        return tuple(out)

    noun = lambda s: (s, _plural(s))                                              # (singular, plural)
    verb = lambda s: (s, _plural(s), s + ("d" if s.endswith("e") else "ed"))      # (base, 3rd sg, past)
    adj = lambda s: (s + rng.choice(["ic", "ous", "al", "ive", "ish"]),)
    adv = lambda s: (s + rng.choice(["ously", "ically", "fully"]),)
    lex = {"shared_nouns": words(60, 2, noun), "shared_verbs": words(30, 2, verb),
           "adjs": (words(40, 2, adj), words(40, 2, adj)), "advs": (words(15, 2, adv), words(15, 2, adv))}
    lex["topics"] = tuple({"nouns": words(250, 2, noun), "verbs": words(100, 2, verb),
                           "adjs": words(60, 2, adj)} for _ in range(n_topics))
    return lex


def _zipf_pick(rng, pool):
    """Draw pool[r] with probability proportional to 1/(r+1) (Zipf's law with exponent 1)."""
    cum = _zipf_cum_weights(len(pool))
    return pool[rng.choices(range(len(pool)), cum_weights=cum)[0]]


@functools.lru_cache(maxsize=None)
def _zipf_cum_weights(n):
    # 1/(r+1) is one correctly rounded IEEE division, so the weights are bit-identical everywhere.
    return list(itertools.accumulate(1.0 / (r + 1) for r in range(n)))


def _toy_sentence(rng, lex, topic, positive, past):
    """One sentence of the toy grammar (see `toy_corpus`); retried by the caller if too short/long."""
    tpc = lex["topics"][topic]
    n_sentiment = 0

    def pick_noun():
        u = rng.random()
        pool = (tpc["nouns"] if u < 0.8 else lex["shared_nouns"] if u < 0.95
                else lex["topics"][rng.randrange(len(lex["topics"]))]["nouns"])
        return _zipf_pick(rng, pool)

    def noun_phrase():
        nonlocal n_sentiment
        plural = rng.random() < 0.35
        words = [rng.choice(_DET_PL if plural else _DET_SG)]
        if rng.random() < 0.4:
            sentiment_adj = rng.random() < 0.5
            n_sentiment += sentiment_adj
            words.append(_zipf_pick(rng, lex["adjs"][positive] if sentiment_adj else tpc["adjs"])[0])
        words.append(pick_noun()[plural])
        if words[0] == "a" and words[1][0] in "aeiou":
            words[0] = "an"
        return words, plural

    words = []
    for c in range(rng.choices((1, 2, 3), cum_weights=(0.45, 0.85, 1.0))[0]):
        if c > 0:
            words.append(rng.choice(_CONJS))
        subject, plural = noun_phrase()
        words += subject
        if rng.random() < 0.25:
            words += [rng.choice(_PREPS)] + noun_phrase()[0]
        verb = _zipf_pick(rng, tpc["verbs"] if rng.random() < 0.9 else lex["shared_verbs"])
        words.append(verb[2] if past else verb[0] if plural else verb[1])
        if rng.random() < 0.6:
            words += noun_phrase()[0]
        if rng.random() < 0.3:
            words.append(_zipf_pick(rng, lex["advs"][positive])[0])
            n_sentiment += 1
        if rng.random() < 0.3:
            words += [rng.choice(_PREPS)] + noun_phrase()[0]
    # Every sentence shows its sentiment at least once, so the factor is a property of the text.
    if n_sentiment == 0 or rng.random() < 0.4:
        coda = [_TENSED[w][past] if w in _TENSED else w for w in rng.choice(_CODAS)]
        words += [","] + coda + [_zipf_pick(rng, lex["adjs"][positive])[0]]
    return words + ["."]


@dataclass
class ToyCorpus:
    """Sentences (token lists) with their factor labels: factors[name][i] belongs to sentences[i]."""
    sentences: list
    factors: dict
    factor_names: tuple = ("topic", "sentiment", "tense")
    factor_levels: dict = field(default_factory=dict)


def toy_corpus(n_sentences, seed=0, n_topics=6, length_range=(5, 25)):
    """Generate a synthetic corpus whose sentences carry known sentence-level factors.

    Generative process, per sentence (all randomness from random.Random(seed), so the corpus is
    identical on every machine and Python >= 3.9; the word lists are fixed and seed-independent):
      1. factors: topic ~ Uniform{0..n_topics-1}, sentiment ~ Uniform{0=negative, 1=positive},
         tense ~ Uniform{0=present, 1=past}.
      2. 1, 2 or 3 clauses (prob. 0.45/0.40/0.15) joined by conjunctions ("and", "but", ...).
         clause = subject-NP [PP] verb [object-NP] [adverb] [PP];  NP = det [adj] noun;
         PP = preposition NP. Subjects are plural with prob. 0.35: the determiner ("a"/"an"/"this"
         vs "some"/"these") and, in the present tense, the verb ("-s" or not) agree with it.
      3. Words: nouns come from the topic's 250 nouns (prob. 0.8), 60 shared nouns (0.15) or a
         random topic's nouns (0.05); verbs from the topic's 100 verbs (0.9) or 30 shared ones;
         adjectives (prob. 0.4 per NP) are half topic adjectives, half sentiment adjectives
         (40 positive or 40 negative); adverbs (prob. 0.3) are sentiment adverbs. Within every
         pool the word of rank r is drawn with probability proportional to 1/(r+1) (Zipf).
      4. Tense sets every verb form (base / 3rd-person "-s" / past "-ed") and the coda; with
         prob. 0.4, or always when no sentiment word was drawn, a coda such as
         ", and it was <sentiment adj>" is added; the sentence ends with ".".
      5. Sentences outside length_range (tokens, inclusive) are redrawn with the same factors.
    Content words are synthetic but pronounceable, with English-like morphology: seed 0 starts
    with "my maloul routrired some bremouks , and it was kridatish ." (topic 3, negative, past).
    With 6 topics the language has 5,522 word types; 20k sentences use about 5,400 of them, most
    of those rarely (Zipf).
    Local syntax is learnable by an autoregressive decoder without any latent code; topic,
    sentiment and tense are sentence-level, shared by all words of the sentence.
    Returns a ToyCorpus(sentences, factors={"topic": [...], "sentiment": [...], "tense": [...]}).
    """
    lo, hi = length_range
    if not 4 <= lo <= hi <= 40:
        raise ValueError(f"length_range={length_range!r}: the toy grammar makes sentences of 4 to 40 "
                         "tokens; need 4 <= low <= high <= 40")
    if not 2 <= n_topics <= 10 or int(n_sentences) != n_sentences or n_sentences < 1:
        raise ValueError(f"need n_sentences >= 1 and 2 <= n_topics <= 10, got {n_sentences}, {n_topics}")
    rng, lex = random.Random(operator.index(seed)), _toy_lexicon(n_topics)
    sentences, labels = [], []
    for _ in range(int(n_sentences)):
        topic, positive, past = rng.randrange(n_topics), int(rng.random() < 0.5), int(rng.random() < 0.5)
        words = _toy_sentence(rng, lex, topic, positive, past)
        while not lo <= len(words) <= hi:
            words = _toy_sentence(rng, lex, topic, positive, past)
        sentences.append(words)
        labels.append((topic, positive, past))
    names = ("topic", "sentiment", "tense")
    levels = {"topic": [f"topic{k}" for k in range(n_topics)], "sentiment": ["negative", "positive"],
              "tense": ["present", "past"]}
    return ToyCorpus(sentences, {name: list(column) for name, column in zip(names, zip(*labels))}, names, levels)
