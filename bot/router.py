"""Keyword routing: which command a message is, tolerant of case, aliases and typos.

Each command is declared once with its contract keywords; each catalog may add aliases
(the msgid ``keywords:<name>`` holds a comma-separated list in that language). Matching
is answered without side effects ("is this mine?"); running it is the engine's business.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bot.i18n import aliases

if TYPE_CHECKING:
    from bot.engine import Context, Handled, Next

Handler = Callable[["Context"], "Next | None"]

_WORD_RE = re.compile(r"\S+")


@dataclass(frozen=True)
class Command:
    """A keyword command: its words, who may use it and what handles it."""

    name: str
    keywords: tuple[str, ...]
    handler: Handler
    roles: frozenset[str] | None = None  # None: every member
    global_: bool = False  # also works from inside a step-by-step flow
    fuzzy: bool = True  # tolerate a typo (never for words that erase or opt out)
    needs_member: bool = True  # False: usable before a chat is linked (DAFTAR)
    needs_consent: bool = True  # False: works for a child before a guardian agreed
    keeps_flow: bool = False  # used inside a flow, leaves the flow where it was
    help_msgid: str | None = None
    menu_order: int = 100


@dataclass
class Flow:
    """A step-by-step conversation: named steps, each with its handler."""

    name: str
    steps: dict[str, Handler]
    start: str
    roles: frozenset[str] | None = None


@dataclass(frozen=True)
class Match:
    """A routed message: the command and the words after the keyword."""

    command: Command
    keyword: str
    args: str
    exact: bool


def normalise(word: str) -> str:
    """Fold a keyword for comparison: case, accents, Telegram's /cmd@bot form."""
    word = unicodedata.normalize("NFKC", word).strip().lower()
    if word.startswith("/"):
        word = word[1:].split("@", 1)[0]
    word = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    return word.strip(".,!?:;'\"()")


def distance(a: str, b: str, limit: int = 3) -> int:
    """Return the optimal-string-alignment distance (a swap counts as one edit)."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cost = 0 if ca == cb else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def typo_budget(word: str) -> int:
    """How many edits a keyword of this length tolerates."""
    if len(word) >= 7:
        return 2
    if len(word) >= 4:
        return 1
    return 0


@dataclass
class Registry:
    """Every command and flow the bot knows; handler modules add themselves here."""

    commands: dict[str, Command] = field(default_factory=dict)
    flows: dict[str, Flow] = field(default_factory=dict)
    interceptors: list[Callable[[Context], Handled | None]] = field(default_factory=list)
    _table: dict[str, Command] | None = None

    def command(self, name: str, *keywords: str, **options: Any) -> Callable[[Handler], Handler]:
        """Declare a command handled by the decorated function."""

        def deco(fn: Handler) -> Handler:
            if name in self.commands:
                raise ValueError(f"command {name} declared twice")
            self.commands[name] = Command(name, tuple(k.lower() for k in keywords), fn, **options)
            self._table = None
            return fn

        return deco

    def flow(self, flow: Flow) -> Flow:
        """Declare a step-by-step flow."""
        if flow.name in self.flows:
            raise ValueError(f"flow {flow.name} declared twice")
        if flow.start not in flow.steps:
            raise ValueError(f"flow {flow.name}: start step {flow.start} is not declared")
        self.flows[flow.name] = flow
        return flow

    def intercept(
        self, fn: Callable[[Context], Handled | None], *, first: bool = False
    ) -> Callable[[Context], Handled | None]:
        """Declare a check run on every message before routing (consent, safety words).

        ``first`` puts it ahead of the others: safety comes before consent, so a child
        whose family has not agreed yet can still be heard when in danger.
        """
        if first:
            self.interceptors.insert(0, fn)
        else:
            self.interceptors.append(fn)
        return fn

    def table(self) -> dict[str, Command]:
        """Return every keyword and alias, folded, mapped to its command."""
        if self._table is None:
            table: dict[str, Command] = {}
            for cmd in self.commands.values():
                words: list[str] = list(cmd.keywords)
                for text in aliases(f"keywords:{cmd.name}").values():
                    words.extend(w for w in (normalise(x) for x in text.split(",")) if w)
                for w in words:
                    table.setdefault(normalise(w), cmd)
            self._table = table
        return self._table

    def reset_cache(self) -> None:
        """Forget the keyword table (after catalogs change)."""
        self._table = None

    def match(self, text: str, *, allow: Callable[[Command], bool] | None = None,
              fuzzy: bool = True) -> Match | None:
        """Route text to a command by its first word, or None."""
        first = _WORD_RE.search(text)
        if first is None:
            return None
        raw_word = first.group(0)
        word = normalise(raw_word)
        args = text[first.end():].strip()
        if "@" in raw_word and raw_word.startswith("/"):
            word = normalise(raw_word.split("@", 1)[0])
        table = self.table()
        cmd = table.get(word)
        if cmd is not None and (allow is None or allow(cmd)):
            return Match(cmd, word, args, exact=True)
        if not fuzzy or typo_budget(word) == 0:
            return None
        best: list[tuple[int, Command, str]] = []
        for kw, candidate in table.items():
            if not candidate.fuzzy or (allow is not None and not allow(candidate)):
                continue
            budget = min(typo_budget(kw), typo_budget(word))
            if budget == 0:
                continue
            d = distance(word, kw, budget)
            if d <= budget:
                best.append((d, candidate, kw))
        if not best:
            return None
        best.sort(key=lambda x: x[0])
        top = best[0][0]
        winners = {c.name for d, c, _ in best if d == top}
        if len(winners) > 1:
            return None  # "dama" could be DANA or DATA: ask with the menu instead of guessing
        _, cmd, kw = best[0]
        return Match(cmd, kw, args, exact=False)

    def menu_commands(self, role: str) -> Iterable[Command]:
        """Return the commands shown in a role's menu, in order."""
        cmds = [c for c in self.commands.values()
                if c.help_msgid and (c.roles is None or role in c.roles)]
        return sorted(cmds, key=lambda c: (c.menu_order, c.name))


registry = Registry()
