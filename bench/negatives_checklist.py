"""An annotator's checklist for hard negatives, written apart from the engines (it imports none of their code).

A negative of a referring expression is acceptable when a person reading both would say:

1. **well formed**: plain words, no list marker, symbol, emoji or text in parentheses, no negation
   ("not a dog", "zero dogs", "a dog without a collar"), not the expression itself;
2. **same object**: the object the expression is about (the [bracketed] head of the test set) is
   still what the negative is about, in the singular or plural, not turned into a part or a modifier
   ("a chair leg"), and the words of a proper name are left as they are;
3. **false for the region**: at least one change that a picture of the expression cannot also show:
   another colour, material, pattern or shape; the opposite size, age or state; another pose,
   action, spatial relation or object of the relation; another count (one for two, three for five,
   one for "dogs" - never "three" for "dogs" or "several"); or an added state that no ordinary
   picture of the object has ("a broken chair", "a rotten apple"). An added colour, size or pose
   alone ("a gray dog" for "a dog") does not count: the dog may be gray. Synonyms never count;
4. **plausible English**: no repeated or contradicting words ("a hot hot dog", "sandy sand", "dead
   green grass"), count and noun agree ("three dog", "a dogs"), "a"/"an" fits, no invented plural
   ("lyings"), colours an animal or person can have, no material on a living thing, a body part
   counted as a body has it.

``judge(positive, negative)`` returns ``(reason or None, kind)`` where kind is the change that makes
the negative false: ``swap`` (an attribute the expression states), ``relation`` (an action, spatial
relation or the object of one), ``count``, ``insert`` (an added marked state), or ``none``.
"""
from __future__ import annotations

import difflib
import re
import unicodedata
from typing import Optional

COLOURS = {"red", "orange", "yellow", "green", "blue", "purple", "violet", "pink", "brown", "black", "white", "gray",
           "grey", "silver", "gold", "golden", "beige", "tan", "turquoise", "teal", "blonde", "blond", "navy", "maroon"}
COLOUR_SAME = [{"gray", "grey"}, {"gold", "golden"}, {"beige", "tan"}, {"blonde", "blond"}, {"purple", "violet"},
               {"turquoise", "teal"}]
MATERIALS = {"wooden", "wood", "metal", "metallic", "steel", "iron", "plastic", "glass", "leather", "stone", "ceramic",
             "porcelain", "paper", "cardboard", "wicker", "rubber", "concrete", "brick", "woolen", "wool", "knitted",
             "denim", "cotton", "silk", "marble", "bamboo", "straw"}
MATERIAL_SAME = [{"wooden", "wood"}, {"metal", "metallic", "steel", "iron"}, {"ceramic", "porcelain"},
                 {"paper", "cardboard"}, {"woolen", "wool", "knitted"}]
PATTERNS = {"striped", "stripy", "spotted", "dotted", "polka-dot", "checkered", "checked", "plaid", "plain", "solid",
            "floral", "flowered", "zigzag"}
PATTERN_SAME = [{"striped", "stripy"}, {"spotted", "dotted", "polka-dot"}, {"checkered", "checked", "plaid"},
                {"plain", "solid"}, {"floral", "flowered"}]
SHAPES = {"round", "circular", "square", "rectangular", "oval", "triangular", "curved", "straight"}
OPPOSITES = [({"small", "little", "tiny", "mini"}, {"large", "big", "huge", "giant"}), ({"tall"}, {"short"}),
             ({"long"}, {"short"}), ({"wide"}, {"narrow", "thin"}), ({"young"}, {"old", "elderly", "aged"}),
             ({"new", "brand-new"}, {"old", "antique", "vintage"}), ({"open"}, {"closed", "shut"}),
             ({"empty"}, {"full"}), ({"wet"}, {"dry"}), ({"clean"}, {"dirty", "muddy"}), ({"hot"}, {"cold", "iced"}),
             ({"whole"}, {"sliced", "half-eaten", "cut", "eaten"}), ({"raw"}, {"cooked", "burnt", "burned", "fried"}),
             ({"ripe"}, {"rotten", "unripe", "green"}), ({"parked"}, {"moving"}), ({"calm"}, {"rough", "choppy"}),
             ({"busy", "crowded"}, {"empty", "deserted"}), ({"cloudy"}, {"clear"}), ({"lit"}, {"dark"}),
             ({"alive"}, {"dead", "withered"}), ({"shiny"}, {"rusty"}), ({"green"}, {"dead", "withered", "dry"}), ({"left"}, {"right"}),
             ({"bald"}, {"curly", "long"}), ({"fresh"}, {"rotten", "stale", "moldy"}), ({"frozen"}, {"melted"})]
MARKED = {"broken", "cracked", "torn", "ripped", "rotten", "dead", "withered", "burnt", "burned", "half-eaten",
          "rusty", "sliced", "shattered", "crushed", "upside-down", "melted", "frozen", "wilted", "overturned",
          "damaged", "moldy", "deflated", "bent", "smashed", "ruined"}
POSES = {"standing", "sitting", "seated", "lying", "running", "sleeping", "walking", "jumping", "kneeling", "flying",
         "perched", "swimming", "crawling", "grazing", "leaning", "resting", "eating", "drinking"}
VERB_SAME = [{"holding", "carrying", "grasping", "gripping"}, {"sitting", "seated"}, {"lying", "resting", "laying"},
             {"leading", "walking"}, {"eating", "munching", "chewing"}, {"looking", "watching", "viewing"},
             {"pulling", "dragging", "towing"}, {"talking", "speaking", "chatting"}, {"sleeping", "resting"}]
PREP_OPPOSITES = [({"on", "atop", "on top of"}, {"under", "underneath", "beneath", "below"}), ({"above", "over"}, {"below", "under"}),
                  ({"in front of"}, {"behind"}), ({"inside", "in"}, {"outside"}), ({"left"}, {"right"}),
                  ({"near", "next", "beside"}, {"far"})]
NOUN_SAME = [{"sofa", "couch"}, {"bike", "bicycle"}, {"tv", "television"}, {"car", "automobile"}, {"kid", "child"},
             {"cellphone", "phone", "smartphone"}, {"plane", "airplane", "aeroplane", "jet"}, {"donut", "doughnut"},
             {"motorcycle", "motorbike"}, {"burger", "hamburger"}, {"rock", "stone", "boulder"}, {"cab", "taxi"},
             {"mug", "cup"}, {"pants", "trousers"}, {"puppy", "dog"}, {"kitten", "cat"}, {"pony", "horse"},
             {"t-shirt", "shirt", "tee"}, {"sidewalk", "pavement"}, {"street", "road"}, {"lawn", "grass"},
             {"jacket", "coat"}, {"cap", "hat"}, {"bag", "purse", "handbag"}, {"desk", "table"}, {"stool", "chair"},
             {"sweater", "jumper"}, {"pond", "lake"}, {"sea", "ocean"}, {"hill", "hillside"}, {"shore", "beach"}]
NEGATIONS = {"not", "no", "zero", "none", "never", "without", "non", "nothing", "neither", "nor", "isn't", "aren't",
             "doesn't", "don't", "lacking", "missing"}
NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10,
           "eleven": 11, "twelve": 12, "dozen": 12, "a dozen": 12}
VAGUE = {"several", "many", "multiple", "few", "numerous", "various", "dozens", "lots"}
SINGULAR_DETS = {"a", "an", "one", "this", "that", "each", "every", "another"}
PARTS = {"leg", "legs", "arm", "arms", "seat", "handle", "wheel", "wheels", "door", "doors", "window", "roof", "lid",
         "top", "edge", "corner", "part", "piece", "tail", "face", "hand", "foot", "eye", "ear", "nose", "mouth",
         "collar", "sleeve", "button", "strap", "screen", "cover", "frame", "base", "tire", "engine", "cushion",
         "pocket", "shadow", "reflection", "logo", "label", "bed", "house", "toy", "food", "bowl", "field", "stand",
         "holder", "case", "shop", "store", "pen", "box", "truck", "cart", "park"}
# what the living things of the test set can look like ("a purple dog" no, "a golden dog" yes)
ANIMALS = {"dog", "cat", "horse", "cow", "sheep", "elephant", "giraffe", "bear", "zebra", "retriever", "puppy",
           "kitten", "pony", "goat", "pig", "lion", "tiger", "bird", "duck", "goose", "chicken", "retriever"}
ANIMAL_COLOURS = {"black", "white", "brown", "gray", "grey", "golden", "gold", "beige", "tan", "red", "orange",
                  "spotted", "striped"}
BIRD_COLOURS = ANIMAL_COLOURS | {"yellow", "blue", "green"}
PEOPLE = {"man", "woman", "boy", "girl", "child", "children", "person", "people", "men", "women", "baby", "chef",
          "surfer", "waiter", "policeman", "cyclist", "girls", "boys"}
BODY_PARTS = {"hand", "hands", "foot", "feet", "eye", "eyes", "ear", "ears", "lips", "head", "tail", "beard", "hair"}
PAIRED_PARTS = {"hand", "hands", "foot", "feet", "eye", "eyes", "ear", "ears"}
EYE_COLOURS = {"blue", "brown", "green", "gray", "grey", "black", "hazel"}
HAIR_COLOURS = {"black", "brown", "blonde", "blond", "red", "gray", "grey", "white", "auburn"}
IRREGULAR = {"bookshelf": "bookshelves", "man": "men", "woman": "women", "child": "children", "person": "people", "foot": "feet",
             "tooth": "teeth", "mouse": "mice", "sheep": "sheep", "fish": "fish", "goose": "geese", "leaf": "leaves",
             "knife": "knives", "shelf": "shelves", "policeman": "policemen", "fries": "fries", "jeans": "jeans",
             "people": "people", "scarf": "scarves"}

_WORD = re.compile(r"[A-Za-z0-9]+(?:['-][A-Za-z0-9]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _plural(noun: str) -> str:
    if noun in IRREGULAR:
        return IRREGULAR[noun]
    if re.search(r"(s|x|z|ch|sh)$", noun):
        return noun + "es"
    if re.search(r"[^aeiou]y$", noun):
        return noun[:-1] + "ies"
    return noun + "s"


def _same(groups: list[set[str]], a: str, b: str) -> bool:
    return a == b or any(a in g and b in g for g in groups)


def _opposite(a: str, b: str) -> bool:
    return any((a in x and b in y) or (a in y and b in x) for x, y in OPPOSITES)


def parse_testset(path: str) -> list[tuple[str, str, str]]:
    """(category, expression, head) of each line of a test set file."""
    out, category = [], ""
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line.startswith("## "):
                category = line[3:].strip()
            elif line and not line.startswith("#"):
                head = re.search(r"\[([^\]]+)\]", line)
                if not head:
                    raise ValueError(f"{path}: no [head] in {line!r}")
                out.append((category, line.replace("[", "").replace("]", ""), head.group(1)))
    return out


def _head_forms(head: str) -> tuple[set[str], set[str]]:
    """(singular, plural) forms of the head, lower case; a multi-word head by its last word."""
    last = head.lower().split()[-1]
    irregular_sing = {k for k, v in IRREGULAR.items() if v == last and k != last}
    if irregular_sing:  # "people", "men", "feet"
        return irregular_sing, {last}
    if last in IRREGULAR:  # "man", "sheep"
        return {last}, {IRREGULAR[last]}
    if last.endswith("ies"):
        return {last[:-3] + "y"}, {last}
    if re.search(r"(s|x|z|ch|sh)es$", last):
        return {last[:-2], last[:-1]}, {last}  # "buses", "horses"
    if last.endswith("ves"):
        return {last[:-1], last[:-3] + "f", last[:-3] + "fe"}, {last}
    if last.endswith("s") and not last.endswith(("ss", "us", "is")) and len(last) > 3:
        return {last[:-1]}, {last}
    return {last}, {_plural(last)}


def _count(toks: list[str], at: int, plural: bool) -> object:
    """What the words before the head (back to a preposition or verb) say of how many there are."""
    zone = []
    for t in reversed(toks[:at]):
        if t in ("of", "in", "on", "with", "at", "near", "by") and not (zone == [] and t == "of"):
            break
        zone.append(t)
    zone.reverse()
    nums = [NUMBERS[t] for t in zone if t in NUMBERS] + [int(t) for t in zone if t.isdigit()]
    if "pair" in zone:
        nums.append(2)
    if "dozen" in zone:
        return 12 * (nums[0] if nums and nums[0] != 12 else 1)
    if nums:
        return nums[-1]
    if any(t in VAGUE for t in zone):
        return "several"
    return "plural" if plural else 1


def _count_differs(a: object, b: object) -> bool:
    if a == b:
        return False
    if isinstance(a, int) and isinstance(b, int):
        return True
    pair = {a, b}
    return 1 in pair  # one against any plural; "plural" or "several" against a number may be the same


STATED = COLOURS | MATERIALS | PATTERNS | SHAPES | MARKED | POSES | {w for x, y in OPPOSITES for w in x | y}


def states_an_attribute(positive: str) -> bool:
    """The expression states a colour, material, pattern, shape, size, state or pose (something to swap)."""
    return any(w.lower() in STATED for w in words(positive))


def judge(positive: str, negative: str, head: str) -> tuple[Optional[str], str]:
    """(why not acceptable, or None; which change makes it false)."""
    if not negative.strip():
        return "missing", "none"
    if re.search(r"[#()\[\]{}*_|<>]", negative) or any(unicodedata.category(c)[0] in "SC" and c not in "'-&"
                                                        for c in negative):
        return "symbols", "none"
    if re.match(r"^\s*(?:\d+|[a-j]|[ivx]+)[.)]\s", negative):
        return "list_marker", "none"
    pos_w, neg_w = words(positive), words(negative)
    pl, nl = [w.lower() for w in pos_w], [w.lower() for w in neg_w]
    if any(t in NEGATIONS and t not in pl for t in nl):
        return "negation", "none"
    strip = lambda ws: [w for w in ws if w not in ("a", "an", "the")]  # noqa: E731
    if strip(pl) == strip(nl):
        return "same_as_expression", "none"
    # 2. the same object
    sing, plur = _head_forms(head)
    head_words = head.lower().split()
    n_head = len(head_words)

    def find(ws: list[str]) -> Optional[int]:
        for i, w in enumerate(ws):
            if (w in sing or w in plur) and ws[max(0, i - n_head + 1):i] == head_words[:-1]:
                return i
        return None

    at_p, at_n = find(pl), find(nl)
    if at_n is None:
        return "object_changed", "none"
    names = [w for w in pos_w[1:] if w[:1].isupper()] + ([pos_w[0]] if pos_w and pos_w[0][:1].isupper()
                                                           and pos_w[0] not in ("A", "An", "The") else [])
    if names:
        seq = " ".join(names)
        if seq not in " ".join(w for w in neg_w if w[:1].isupper()):
            return "name_edited", "none"
        first = next(i for i, w in enumerate(neg_w) if w == names[0])
        last = max(i for i, w in enumerate(neg_w) if w == names[-1])
        if any(not w[:1].isupper() for w in neg_w[first:last + 1]):
            return "name_edited", "none"
    after_p = pl[at_p + 1] if at_p is not None and at_p + 1 < len(pl) else ""
    after_n = nl[at_n + 1] if at_n + 1 < len(nl) else ""
    if after_n != after_p and after_n in PARTS:
        return "part_instead_of_object", "none"
    # 4. plausible English
    for i in range(1, len(nl)):
        if nl[i] == nl[i - 1] and nl[i] not in ("very",):
            return "repeated_word", "none"
        stem = nl[i - 1].removesuffix("-covered").removesuffix("y")
        if len(stem) >= 3 and nl[i].startswith(stem) and nl[i - 1] != nl[i] and nl[i - 1] in (
                stem + "y", stem + "-covered"):
            return "repeated_word", "none"  # "sandy sand", "snowy snow"
    new_words = [w for w in nl if w not in pl]
    for a in nl:
        for b in nl:
            if a != b and _opposite(a, b) and (a in new_words or b in new_words) and not (
                    {a, b} == {"left", "right"}) and not ({a, b} <= {"short", "long", "tall"}):
                return "contradicting_words", "none"
    neg_plural = nl[at_n] in plur and nl[at_n] not in sing
    count_n = _count(nl, at_n, neg_plural)
    if not neg_plural and (count_n == "several" or (isinstance(count_n, int) and count_n >= 2)) and \
            not (plur & sing):
        return "count_without_plural", "none"
    zone_n = nl[max(0, at_n - 4):at_n]
    if neg_plural and not (plur & sing) and zone_n and zone_n[-1] in SINGULAR_DETS:
        return "article_before_plural", "none"
    for i in range(len(nl) - 1):
        if nl[i] in ("a", "an") and nl[i + 1][:1].isalpha():
            vowel = nl[i + 1][0] in "aeiou" and not nl[i + 1].startswith(("uni", "use", "one", "eu"))
            vowel = vowel or nl[i + 1].startswith(("hour", "honest", "8", "11", "18"))
            if (nl[i] == "an") != vowel:
                return "wrong_article", "none"
    if any(w.endswith("ings") and w not in pl and w[:-1] not in pl for w in nl):
        return "bad_plural", "none"
    head_last = head_words[-1]
    if head_last in ANIMALS or nl[at_n] in {_plural(a) for a in ANIMALS}:
        allowed = BIRD_COLOURS if (sing | {head_last}) & {"bird", "duck", "goose", "chicken"} else ANIMAL_COLOURS
        if any(w in COLOURS and w not in allowed and w not in pl for w in nl[:at_n]):
            return "implausible_colour", "none"
        if any(w in MATERIALS and w not in pl for w in nl[:at_n]):
            return "material_on_living", "none"
    if head_last in PEOPLE or nl[at_n] in PEOPLE:
        if any(w in COLOURS | MATERIALS | PATTERNS and w not in pl for w in nl[max(0, at_n - 3):at_n]):
            return "implausible_for_a_person", "none"
    if head_last in BODY_PARTS:
        if head_last in ("hair", "beard") and any(w in COLOURS and w not in HAIR_COLOURS for w in nl[:at_n]):
            return "implausible_colour", "none"
        fits = EYE_COLOURS if head_last in ("eye", "eyes") else {"red", "pink"} if head_last == "lips" else set()
        if head_last not in ("hair", "beard") and any(w in COLOURS and w not in pl and w not in fits
                                                     for w in nl[:at_n]):
            return "implausible_colour", "none"
        if head_last in PAIRED_PARTS and (isinstance(count_n, int) and count_n > 2 or
                                          (neg_plural and ("left" in nl or "right" in nl))):
            return "impossible_count", "none"
    # 3. false for the region: the changes
    kinds = []
    pos_plural = at_p is not None and pl[at_p] in plur and pl[at_p] not in sing
    count_p = _count(pl, at_p, pos_plural) if at_p is not None else 1
    if at_p is not None and not (plur & sing) and _count_differs(count_p, count_n):
        kinds.append("count")
    elif at_p is not None and plur & sing and _count_differs(count_p, count_n) and count_n != "plural":
        kinds.append("count")
    a_toks = [t for t in pl if t not in ("a", "an", "the")]
    b_toks = [t for t in nl if t not in ("a", "an", "the")]
    matcher = difflib.SequenceMatcher(a=a_toks, b=b_toks, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        old, new = a_toks[i1:i2], b_toks[j1:j2]
        if op == "insert":
            if any(w in MARKED for w in new):
                kinds.append("insert")
            if " ".join(new) in ("behind", "under", "underneath"):
                kinds.append("relation")
        elif op == "replace":
            kinds += _replacement(old, new, sing, plur)
    kinds = [k for k in kinds if k]
    if not kinds:
        return "could_still_match", "none"
    for k in ("swap", "relation", "count", "insert"):
        if k in kinds:
            return None, k
    return None, kinds[0]


def _replacement(old: list[str], new: list[str], sing: set[str], plur: set[str]) -> list[str]:
    """The kinds of contradiction in replacing ``old`` words by ``new`` ones."""
    out = []
    o = [w for w in old if w not in NUMBERS and w not in VAGUE and w not in sing and w not in plur]
    n = [w for w in new if w not in NUMBERS and w not in VAGUE and w not in sing and w not in plur]
    phrase_o, phrase_n = " ".join(o), " ".join(n)
    for x, y in PREP_OPPOSITES:
        if (phrase_o in x and phrase_n in y) or (phrase_o in y and phrase_n in x):
            return ["relation"]
    if "in front of" in " ".join(old) and "behind" in new:
        return ["relation"]
    for a, b in ((a, b) for a in o for b in n):
        if a == b or a in n or b in o:
            continue
        if a in COLOURS and b in COLOURS:
            out.append("" if _same(COLOUR_SAME, a, b) else "swap")
        elif a in MATERIALS and b in MATERIALS:
            out.append("" if _same(MATERIAL_SAME, a, b) else "swap")
        elif a in PATTERNS and b in PATTERNS:
            out.append("" if _same(PATTERN_SAME, a, b) else "swap")
        elif a in SHAPES and b in SHAPES:
            out.append("" if {a, b} == {"round", "circular"} else "swap")
        elif _opposite(a, b):
            out.append("swap")
        elif a in POSES and b in POSES:
            out.append("" if _same(VERB_SAME, a, b) else "swap")
        elif a.endswith("ing") and b.endswith("ing"):
            out.append("" if _same(VERB_SAME, a, b) else "relation")
        elif a in MARKED or b in MARKED:
            out.append("swap" if b in MARKED or _opposite(a, b) else "")
        elif a.replace("-", "").isalpha() and b.replace("-", "").isalpha() and a not in COLOURS | MATERIALS and \
                b not in COLOURS | MATERIALS:
            sa, sb = a.rstrip("s"), b.rstrip("s")
            out.append("" if sa == sb or _same(NOUN_SAME, a, b) or _same(NOUN_SAME, sa, sb) else "relation")
    return out
