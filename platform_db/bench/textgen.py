"""Real-looking text for the seed: words with a natural (Zipf-like) frequency, per industry.

Full-text search only behaves as it does in production when some words are everywhere
and most are rare, and when tenants of one industry share a vocabulary. Every word here
is plain lower-case ASCII without quotes or backslashes, so generated text can go into
COPY text format and hand-written JSON without escaping.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


COMMON = _words(
    "the of and to a in for is on that with as it at by from this be are or your our we "
    "you an will can all more about new not have has which their they more most also any "
    "when what how one two three first best every each time year day team work help make "
    "get find need use know see take way well only just other over into after before "
    "here there then than them these those very many much such good great right free "
    "simple clear local small large full open fast easy real long next last own same "
    "people service services client clients customer customers business company office "
    "plan plans price prices offer offers quality support contact call visit start today "
    "online booking appointment question questions answer answers guide tips experience "
    "information details update updates news story stories case study results process "
    "step steps option options choice choose compare review reviews trust safe care "
    "value cost costs budget quote schedule hours location area city community family"
)

INDUSTRIES: dict[str, tuple[str, ...]] = {
    "real_estate": _words(
        "home homes house houses apartment apartments condo property properties listing "
        "listings mortgage rent rental buyer buyers seller sellers agent broker realtor "
        "neighborhood square feet bedroom bathroom kitchen garden garage renovation "
        "inspection appraisal closing escrow deposit downtown suburb lease tenant landlord "
        "investment valuation staging viewing loft townhouse duplex"
    ),
    "healthcare": _words(
        "patient patients doctor doctors clinic dental dentist teeth cleaning whitening "
        "orthodontics implant implants checkup therapy treatment diagnosis prescription "
        "nurse pediatric surgery recovery wellness insurance vaccination allergy "
        "physiotherapy cardiology dermatology vision hearing screening symptoms "
        "prevention nutrition chronic emergency referral specialist"
    ),
    "legal": _words(
        "lawyer lawyers attorney counsel contract contracts litigation dispute court "
        "settlement divorce custody estate probate will trust compliance regulation "
        "liability claim claims injury employment immigration patent trademark copyright "
        "merger acquisition arbitration mediation defense prosecution appeal filing "
        "consultation retainer notary affidavit"
    ),
    "fitness": _words(
        "gym workout workouts training trainer coach class classes yoga pilates cardio "
        "strength weights membership nutrition protein running cycling swimming "
        "stretching mobility endurance marathon bootcamp crossfit kettlebell squat "
        "deadlift recovery sauna locker program progress goals fatloss muscle"
    ),
    "restaurant": _words(
        "menu dinner lunch breakfast brunch chef kitchen reservation reservations table "
        "wine cocktail dessert pasta pizza seafood steak vegan vegetarian gluten "
        "catering takeaway delivery tasting seasonal ingredients farm organic bakery "
        "bread coffee espresso patio terrace private event banquet sommelier"
    ),
    "education": _words(
        "course courses student students teacher teachers tutoring lesson lessons "
        "curriculum exam exams certificate diploma enrollment semester classroom "
        "online learning language languages math science history reading writing "
        "workshop seminar scholarship admission campus library homework grade grades "
        "mentor bootcamp university college"
    ),
    "automotive": _words(
        "car cars vehicle vehicles repair repairs mechanic garage tires brakes engine "
        "oil change transmission inspection dealership lease financing warranty "
        "electric hybrid battery charging diagnostics bodywork paint detailing "
        "alignment suspension exhaust rental fleet trucks parts accessories"
    ),
    "software": _words(
        "software platform integration integrations api dashboard analytics cloud "
        "security deployment automation workflow workflows subscription pricing trial "
        "onboarding migration database performance uptime monitoring reporting "
        "developer developers release roadmap feature features plugin mobile app "
        "enterprise compliance encryption backup"
    ),
}

FIRST_NAMES = _words(
    "ada grace linus barbara ken margaret dennis frances alan edsger donald john leslie "
    "radia shafi tim vint whitfield ivan niklaus bjarne guido james yukihiro anders rasmus "
    "sophie emma olivia noah liam mia lucas chloe hugo lea nina omar sara yusuf amara "
    "kenji aiko mateo lucia diego valentina pierre camille jonas freya lars ingrid "
    "priya arjun ravi meera chen wei li na kwame abena tunde ngozi"
)
LAST_NAMES = _words(
    "lovelace hopper torvalds liskov thompson hamilton ritchie allen turing dijkstra knuth "
    "backus lamport perlman goldwasser berners cerf diffie sutherland wirth stroustrup "
    "rossum gosling matsumoto hejlsberg lerdorf martin garcia rossi muller schmidt dubois "
    "moreau jensen nilsen larsen novak kowalski horvat silva santos costa okafor mensah "
    "kim park tanaka sato wang zhang patel sharma singh khan ali haddad cohen levi "
    "fischer weber wagner becker hoffmann"
)
COMPANY_WORDS = _words(
    "north south blue green river stone oak pine summit harbor bright clear swift true "
    "prime core nova apex vista metro urban coastal alpine golden silver iron maple cedar "
    "delta orbit pixel quantum lumen atlas beacon bridge crest forge grove haven ridge"
)
COMPANY_SUFFIXES = ("group", "labs", "studio", "partners", "works", "co", "systems", "media")
ADJECTIVES = _words(
    "modern trusted friendly professional complete practical essential expert personal "
    "flexible affordable premium proven reliable independent certified experienced "
    "innovative sustainable responsive comprehensive tailored transparent dedicated"
)

USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36 Edg/126.0",
    "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
)
REFERRERS = (
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://duckduckgo.com/",
    "https://www.facebook.com/",
    "https://www.linkedin.com/",
    "https://t.co/",
    "https://www.instagram.com/",
    "https://news.ycombinator.com/",
)
LEAD_SOURCES = ("website", "referral", "ads", "social", "email", "event", "partner")
LOST_REASONS = (
    "chose a competitor",
    "no budget this year",
    "no response after three follow ups",
    "timing not right",
    "requirements out of scope",
    "went with an in house solution",
)


def zipf_weights(n: int, s: float = 1.05) -> list[float]:
    """Cumulative weights of a Zipf law over n ranks (for random.choices(cum_weights=...))."""
    return list(itertools.accumulate(1.0 / (rank + 1) ** s for rank in range(n)))


class TextGenerator:
    """Sentences and titles for one industry, deterministic for a given random.Random."""

    def __init__(self, industry: str) -> None:
        words = list(INDUSTRIES[industry])
        other = [w for ind, ws in INDUSTRIES.items() if ind != industry for w in ws[:8]]
        # Interleave so that industry words rank high, a few other-industry words appear
        # rarely, and the common words dominate: a realistic long tail.
        ranked: list[str] = []
        for common, special in itertools.zip_longest(COMMON, words):
            if common:
                ranked.append(common)
            if special:
                ranked.append(special)
        ranked.extend(ADJECTIVES)
        ranked.extend(other)
        self.industry = industry
        self.words: Sequence[str] = tuple(dict.fromkeys(ranked))
        self.cum = zipf_weights(len(self.words))
        self.nouns: Sequence[str] = INDUSTRIES[industry]

    def sentence(self, rng: random.Random, lo: int = 8, hi: int = 20) -> str:
        words = rng.choices(self.words, cum_weights=self.cum, k=rng.randint(lo, hi))
        return " ".join(words).capitalize() + "."

    def paragraph(self, rng: random.Random) -> str:
        return " ".join(self.sentence(rng) for _ in range(rng.randint(3, 7)))

    def title(self, rng: random.Random) -> str:
        adj = rng.choice(ADJECTIVES)
        a, b = rng.sample(list(self.nouns), 2)
        pattern = rng.randrange(4)
        if pattern == 0:
            return f"{adj.capitalize()} {a} and {b}"
        if pattern == 1:
            return f"How to choose the right {a}"
        if pattern == 2:
            return f"{a.capitalize()} {b}: a {adj} guide"
        return f"Our {adj} {a} services"

    def body(self, rng: random.Random, paragraphs: int) -> list[str]:
        return [self.paragraph(rng) for _ in range(paragraphs)]


def slugify(text: str) -> str:
    """Lower-case words joined by hyphens (the page and form slug format)."""
    out = []
    for word in text.lower().split():
        cleaned = "".join(ch for ch in word if ch.isalnum())
        if cleaned:
            out.append(cleaned)
    return "-".join(out)
