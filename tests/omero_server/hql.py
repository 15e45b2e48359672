"""A small HQL evaluator over the object store: the query forms omero-py and the pusher send.

Why an evaluator and not a table of regular expressions: BlitzGateway composes its queries
(``select obj from Image obj join fetch obj.details.owner as owner ... join obj.datasetLinks dlink
where dlink.parent.id = :did``), so one shape per regex would miss most of them. This module parses
the subset of HQL below and evaluates it in memory over the store's flat objects; anything outside
it raises ``omero.ApiUsageException`` naming the query, so a gap is loud, not a wrong answer.

Supported (keywords case-insensitive)::

    [select [distinct] ITEM, ...] from Class [as] a
        {[left [outer] | inner] join [fetch] a.path [as] b}
        [where COND] [group by PATH, ...] [order by EXPR [asc|desc], ...]

    ITEM : PATH | count([distinct] PATH) | sum(PATH) | min(PATH) | max(PATH)
    COND : COND and COND | COND or COND | not COND | ( COND )
         | EXPR (= | != | <> | < | <= | > | >=) EXPR | EXPR [not] in (EXPR, ...)
         | EXPR [not] like EXPR | EXPR is [not] null | [not] exists (SUBQUERY)
    EXPR : PATH | :param | 'string' | number | lower(EXPR) | upper(EXPR) | (EXPR)
         | index(alias)  (position in a joined ordered collection, e.g. Pixels.channels)

PATH is ``alias.field.field...`` over model fields (``l.child.ns``, ``obj.details.owner.id``,
``mv.name`` over a MapAnnotation's ``mapValue``). Entities compare by id, so ``l.child = an.id``
works. Polymorphism as in HQL: ``from Annotation`` also returns tags and map annotations.
``join fetch`` paths are loaded in the returned objects; details (owner, group, events) always are.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import omero
import omero.model
from omero.rtypes import unwrap

from .store import (
    ObjectStore,
    collection_inverse,
    fields_of,
    is_collection,
    kind_of,
    root_of_kind,
    slice_class,
)

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<str>'(?:[^']|'')*')
    | (?P<num>\d+(?:\.\d+)?)
    | (?P<param>:\w+)
    | (?P<op><>|!=|<=|>=|=|<|>)
    | (?P<punct>[(),*])
    | (?P<word>[A-Za-z_][\w.]*)
    )""", re.VERBOSE)

_KEYWORDS = {"select", "distinct", "from", "as", "join", "left", "right", "outer", "inner", "fetch",
             "where", "and", "or", "not", "in", "like", "is", "null", "exists", "order", "by",
             "asc", "desc", "group", "having"}


_COMPARE = {"=": operator.eq, "!=": operator.ne, "<>": operator.ne, "<": operator.lt,
            "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def like_regex(pattern: str, case_sensitive: bool = True) -> re.Pattern[str]:
    """SQL ``LIKE`` as PostgreSQL reads it: ``%`` any run, ``_`` one character, ``\\`` escapes.

    OMERO's database is PostgreSQL, whose ``LIKE`` takes the backslash as its default escape
    character; ``ILIKE`` (Hibernate's ``Restrictions.ilike``) is the case-insensitive form.
    """
    out, chars = [], iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        elif ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        else:
            out.append(re.escape(ch))
    return re.compile("^" + "".join(out) + "$", re.S | (0 if case_sensitive else re.I))


class QueryError(Exception):
    """The query is outside the supported HQL subset (services answer ApiUsageException)."""


def _tokenize(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise QueryError(f"cannot read the query at {text[pos:pos + 30]!r}")
        pos = m.end()
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "word" and value.lower() in _KEYWORDS:
            out.append(("kw", value.lower()))
        else:
            out.append((kind, value))
    return out


# --------------------------------------------------------------------------- syntax tree

@dataclass
class Join:
    path: list[str]  # alias first
    alias: str
    outer: bool
    fetch: bool


@dataclass
class Query:
    select: list[Any]  # expression nodes; None = select the root alias
    distinct: bool
    kind: str
    alias: str
    joins: list[Join]
    where: Any
    order: list[tuple[Any, bool]]
    group: list[Any] = field(default_factory=list)


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.toks = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> tuple[str, str] | None:
        j = self.i + offset
        return self.toks[j] if j < len(self.toks) else None

    def kw(self, *words: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == "kw" and t[1] in words

    def punct(self, p: str) -> bool:
        t = self.peek()
        return t is not None and t[0] == "punct" and t[1] == p

    def take(self) -> tuple[str, str]:
        t = self.peek()
        if t is None:
            raise QueryError("unexpected end of query")
        self.i += 1
        return t

    def expect_kw(self, word: str) -> None:
        t = self.take()
        if t != ("kw", word):
            raise QueryError(f"expected {word!r}, found {t[1]!r}")

    def expect_punct(self, p: str) -> None:
        t = self.take()
        if t != ("punct", p):
            raise QueryError(f"expected {p!r}, found {t[1]!r}")

    def word(self) -> str:
        t = self.take()
        if t[0] != "word":
            raise QueryError(f"expected a name, found {t[1]!r}")
        return t[1]

    # query := [select items] from Class alias joins [where] [group by] [order by]
    def query(self) -> Query:
        select: list[Any] = []
        distinct = False
        if self.kw("select"):
            self.take()
            if self.kw("distinct"):
                self.take()
                distinct = True
            select.append(self.item())
            while self.punct(","):
                self.take()
                select.append(self.item())
        self.expect_kw("from")
        kind = self.word()
        if self.kw("as"):
            self.take()
        alias = kind
        if self.peek() is not None and self.peek()[0] == "word":
            alias = self.word()
        joins = []
        while self.kw("left", "inner", "join", "right"):
            outer = False
            if self.kw("left", "right"):
                self.take()
                outer = True
                if self.kw("outer"):
                    self.take()
            elif self.kw("inner"):
                self.take()
            self.expect_kw("join")
            fetch = False
            if self.kw("fetch"):
                self.take()
                fetch = True
            path = self.word().split(".")
            jalias = None
            if self.kw("as"):
                self.take()
            if self.peek() is not None and self.peek()[0] == "word":
                jalias = self.word()
            joins.append(Join(path, jalias or f"_j{len(joins)}", outer, fetch))
        where = None
        if self.kw("where"):
            self.take()
            where = self.cond()
        group: list[Any] = []
        if self.kw("group"):
            self.take()
            self.expect_kw("by")
            group.append(self.expr())
            while self.punct(","):
                self.take()
                group.append(self.expr())
        order = []
        if self.kw("order"):
            self.take()
            self.expect_kw("by")
            while True:
                e = self.expr()
                desc = False
                if self.kw("asc", "desc"):
                    desc = self.take()[1] == "desc"
                order.append((e, desc))
                if not self.punct(","):
                    break
                self.take()
        return Query(select or [None], distinct, kind, alias, joins, where, order, group)

    def item(self) -> Any:
        t = self.peek()
        if t and t[0] == "word" and t[1].lower() in ("count", "sum", "min", "max") and \
                self.peek(1) == ("punct", "("):
            fn = self.take()[1].lower()
            self.expect_punct("(")
            distinct = False
            if self.kw("distinct"):
                self.take()
                distinct = True
            if self.punct("*"):
                self.take()
                arg: Any = ("star",)
            else:
                arg = self.expr()
            self.expect_punct(")")
            node = ("agg", fn, distinct, arg)
        else:
            if t and t[0] == "word" and t[1].lower() == "new":
                raise QueryError("'select new ...' is not supported")
            node = self.expr()
        if self.kw("as"):
            self.take()
            self.word()
        return node

    def cond(self) -> Any:
        left = self.cond_and()
        while self.kw("or"):
            self.take()
            left = ("or", left, self.cond_and())
        return left

    def cond_and(self) -> Any:
        left = self.cond_not()
        while self.kw("and"):
            self.take()
            left = ("and", left, self.cond_not())
        return left

    def cond_not(self) -> Any:
        if self.kw("not"):
            self.take()
            return ("not", self.cond_not())
        return self.atom()

    def atom(self) -> Any:
        if self.kw("exists"):
            self.take()
            self.expect_punct("(")
            sub = self.query()
            self.expect_punct(")")
            return ("exists", sub)
        if self.punct("("):
            # a parenthesised condition, or a parenthesised expression starting a comparison
            save = self.i
            self.take()
            try:
                inner = self.cond()
                self.expect_punct(")")
                if not self._at_comparison():
                    return inner
            except QueryError:
                pass
            self.i = save
        left = self.expr()
        negate = False
        if self.kw("not"):
            self.take()
            negate = True
        if self.kw("in"):
            self.take()
            self.expect_punct("(")
            items = [self.expr()]
            while self.punct(","):
                self.take()
                items.append(self.expr())
            self.expect_punct(")")
            node: Any = ("in", left, items)
        elif self.kw("like"):
            self.take()
            node = ("like", left, self.expr())
        elif self.kw("is"):
            self.take()
            if self.kw("not"):
                self.take()
                negate = not negate
            self.expect_kw("null")
            node = ("isnull", left)
        else:
            t = self.take()
            if t[0] != "op":
                raise QueryError(f"expected a comparison, found {t[1]!r}")
            node = ("cmp", t[1], left, self.expr())
        return ("not", node) if negate else node

    def _at_comparison(self) -> bool:
        t = self.peek()
        return t is not None and (t[0] == "op" or (t[0] == "kw" and t[1] in ("in", "like", "is")))

    def expr(self) -> Any:
        t = self.take()
        kind, value = t
        if kind == "param":
            return ("param", value[1:])
        if kind == "str":
            return ("lit", value[1:-1].replace("''", "'"))
        if kind == "num":
            return ("lit", float(value) if "." in value else int(value))
        if kind == "punct" and value == "(":
            inner = self.expr()
            items = [inner]
            while self.punct(","):
                self.take()
                items.append(self.expr())
            self.expect_punct(")")
            return inner if len(items) == 1 else ("list", items)
        if kind == "kw" and value == "null":
            return ("lit", None)
        if kind == "word":
            if self.punct("("):
                fn = value.lower()
                if fn not in ("lower", "upper", "index"):
                    raise QueryError(f"function {value}() is not supported")
                self.take()
                arg = self.expr()
                self.expect_punct(")")
                return ("fn", fn, arg)
            if value.lower() in ("true", "false"):
                return ("lit", value.lower() == "true")
            return ("path", value.split("."))
        raise QueryError(f"unexpected {value!r}")


def parse(text: str) -> Query:
    """Parse one HQL query of the supported subset (raises QueryError otherwise)."""
    p = _Parser(_tokenize(text))
    q = p.query()
    if p.peek() is not None:
        raise QueryError(f"unexpected {p.peek()[1]!r}")
    return q


# --------------------------------------------------------------------------- evaluation

_MISSING = object()


class _Ref:
    """An entity reached during evaluation: its flat stored form (read-only)."""

    __slots__ = ("flat",)

    def __init__(self, flat: Any) -> None:
        self.flat = flat


class Evaluator:
    """Evaluate parsed queries against an :class:`ObjectStore` with bound parameters."""

    def __init__(self, store: ObjectStore, params: dict[str, Any]) -> None:
        self.store = store
        self.params = params

    # --- paths
    def _step(self, value: Any, seg: str) -> Any:
        """One path step; returns a value, an entity, a list (collection) or None."""
        if value is None:
            return None
        if isinstance(value, omero.model.IObject):
            if not value.isLoaded():
                if seg == "id":
                    return value.getId().getValue()
                value = self.store.resolve(value)
                if value is None:
                    return None
            if seg == "id":
                return value.getId().getValue() if value.getId() is not None else None
            if seg == "details":
                return value.getDetails()
            if is_collection(value, seg):
                return self.store.children(kind_of(value), value.getId().getValue(), seg)
            if seg == "mapValue":
                return list(getattr(value, "_mapValue", None) or [])
            attr = getattr(value, "_" + seg, _MISSING)
            if attr is _MISSING:
                if _field_in_hierarchy(kind_of(value), seg):
                    return None  # a subclass's field (HQL: "a.file" on a tag is null)
                raise QueryError(f"{kind_of(value)} has no field {seg!r}")
            return attr
        if isinstance(value, omero.model.Details):
            attr = getattr(value, "_" + seg, _MISSING)
            if attr is _MISSING:
                raise QueryError(f"details have no field {seg!r}")
            return attr
        attr = getattr(value, seg, _MISSING)  # structs such as NamedValue
        if attr is _MISSING:
            attr = getattr(value, "_" + seg, _MISSING)
        if attr is _MISSING:
            raise QueryError(f"cannot follow {seg!r}")
        return attr

    def path(self, row: dict[str, Any], segs: list[str]) -> Any:
        head = segs[0]
        if head not in row and ("#root",) in row:
            # HQL lets properties of the (innermost) root entity go unqualified: "where id = :id"
            segs = [row[("#root",)], *segs]
            head = segs[0]
        if head not in row:
            raise QueryError(f"unknown alias {head!r}")
        value = row[head]
        for seg in segs[1:]:
            value = self._step(value, seg)
            if isinstance(value, list) and seg != segs[-1] and not _is_named_values(value):
                raise QueryError(f"path {'.'.join(segs)} crosses a collection; join it instead")
        return value

    # --- values
    def value(self, row: dict[str, Any], node: Any) -> Any:
        tag = node[0]
        if tag == "lit":
            return node[1]
        if tag == "param":
            if node[1] not in self.params:
                raise QueryError(f"parameter :{node[1]} is not set")
            return self.params[node[1]]
        if tag == "path":
            return _plain(self.path(row, node[1]))
        if tag == "fn" and node[1] == "index":
            arg = node[2]
            if arg[0] != "path" or len(arg[1]) != 1 or ("#index", arg[1][0]) not in row:
                raise QueryError("index() takes the alias of a joined list")
            return row[("#index", arg[1][0])]
        if tag == "fn":
            v = self.value(row, node[2])
            if isinstance(v, str):
                return v.lower() if node[1] == "lower" else v.upper()
            return v
        if tag == "list":
            return [self.value(row, n) for n in node[1]]
        raise QueryError(f"unsupported expression {tag}")

    def test(self, row: dict[str, Any], node: Any) -> bool:
        """Whether *row* satisfies *node* (SQL logic: an unknown result does not satisfy)."""
        return self._truth(row, node) is True

    def _truth(self, row: dict[str, Any], node: Any) -> bool | None:
        """Three-valued truth of a condition: True, False, or None (unknown, from a null)."""
        if node is None:
            return True
        tag = node[0]
        if tag == "and":
            a, b = self._truth(row, node[1]), self._truth(row, node[2])
            if a is False or b is False:
                return False
            return None if a is None or b is None else True
        if tag == "or":
            a, b = self._truth(row, node[1]), self._truth(row, node[2])
            if a is True or b is True:
                return True
            return None if a is None or b is None else False
        if tag == "not":
            a = self._truth(row, node[1])
            return None if a is None else not a
        if tag == "exists":
            return any(True for _ in self.rows(node[1], outer=row))
        if tag == "isnull":
            return self.value(row, node[1]) is None
        if tag == "in":
            left = self.value(row, node[1])
            if left is None:
                return None
            items: list[Any] = []
            for n in node[2]:
                v = self.value(row, n)
                items.extend(v if isinstance(v, (list, tuple, set)) else [v])
            return left in items
        if tag == "like":
            left, pat = self.value(row, node[1]), self.value(row, node[2])
            if left is None or pat is None:
                return None
            return like_regex(str(pat)).match(str(left)) is not None
        if tag == "cmp":
            op, a, b = node[1], self.value(row, node[2]), self.value(row, node[3])
            if isinstance(b, list) and len(b) == 1:
                b = b[0]
            if a is None or b is None:
                return None
            return _COMPARE[op](a, b)
        raise QueryError(f"unsupported condition {tag}")

    # --- rows
    def rows(self, q: Query, outer: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        try:
            slice_class(q.kind)
        except Exception as exc:
            raise QueryError(f"unknown class {q.kind!r}") from exc
        for flat in list(self.store.all(q.kind)):
            base = dict(outer or {})
            base[q.alias] = flat
            base[("#root",)] = q.alias
            for row in self._join(base, q.joins, 0):
                if self.test(row, q.where):
                    yield row

    def _join(self, row: dict[str, Any], joins: list[Join], i: int) -> Iterator[dict[str, Any]]:
        if i == len(joins):
            yield row
            return
        j = joins[i]
        target = self.path(row, j.path)
        if isinstance(target, omero.model.IObject) and not target.isLoaded():
            target = self.store.resolve(target)
        if isinstance(target, list):
            if not target and j.outer:
                yield from self._join({**row, j.alias: None}, joins, i + 1)
            for n, elem in enumerate(target):
                yield from self._join({**row, j.alias: elem, ("#index", j.alias): n}, joins, i + 1)
        elif target is None:
            if j.outer:
                yield from self._join({**row, j.alias: None}, joins, i + 1)
        else:
            yield from self._join({**row, j.alias: target}, joins, i + 1)


_HIERARCHY_FIELDS: dict[tuple[str, str], bool] = {}


def _field_in_hierarchy(kind: str, name: str) -> bool:
    """Whether another class sharing *kind*'s root declares field *name* (polymorphic queries)."""
    key = (kind, name)
    if key not in _HIERARCHY_FIELDS:
        root = root_of_kind(kind)
        base = slice_class(root)
        found = False
        for attr in dir(omero.model):
            if not attr.endswith("I"):
                continue
            cls = getattr(omero.model, attr, None)
            if isinstance(cls, type) and issubclass(cls, base) and name in fields_of(cls):
                found = True
                break
        _HIERARCHY_FIELDS[key] = found
    return _HIERARCHY_FIELDS[key]


def _is_named_values(value: list[Any]) -> bool:
    return bool(value) and isinstance(value[0], omero.model.NamedValue)


def _plain(value: Any) -> Any:
    """Comparable form: rtypes unwrapped, entities as their ids, units as their value."""
    if isinstance(value, omero.model.IObject):
        return value.getId().getValue() if value.getId() is not None else None
    if isinstance(value, omero.RType):
        return unwrap(value)
    if hasattr(value, "getValue") and hasattr(value, "getUnit"):
        return value.getValue()
    return value


def fetch_paths(q: Query, alias: str) -> list[str]:
    """The ``join fetch`` paths of *q* expressed from *alias* (e.g. ``pixels.channels``)."""
    origin: dict[str, list[str]] = {alias: []}
    out = []
    for j in q.joins:
        head = j.path[0]
        if head not in origin:
            continue
        full = origin[head] + j.path[1:]
        origin[j.alias] = full
        if j.fetch and full and full[0] != "details":
            out.append(".".join(full))
    return out


# --------------------------------------------------------------------------- entry points

def run(store: ObjectStore, text: str, params: dict[str, Any], offset: int = 0,
        limit: int | None = None) -> list[Any]:
    """Evaluate a query returning entities: loaded copies, fetched paths loaded, in order."""
    q = parse(text)
    if len(q.select) != 1 or (q.select[0] is not None and q.select[0][0] != "path"):
        raise QueryError("this call returns objects; use projection for values and aggregates")
    ev = Evaluator(store, params)
    rows = list(ev.rows(q))
    rows = _order(ev, q, rows)
    sel = q.select[0]
    alias = q.alias if sel is None else sel[1][0]
    out, seen = [], set()
    for row in rows:
        target = row[q.alias] if sel is None else ev.path(row, sel[1])
        if isinstance(target, omero.model.IObject) and not target.isLoaded():
            target = store.resolve(target)
        if not isinstance(target, omero.model.IObject):
            raise QueryError("the selected path is not an object; use projection")
        key = (kind_of(target), target.getId().getValue())
        if key in seen:
            continue
        seen.add(key)
        out.append(target)
    out = out[offset:offset + limit if limit is not None else None]
    fetch = fetch_paths(q, alias) if (sel is None or len(sel[1]) == 1) else \
        _suffix_paths(fetch_paths(q, sel[1][0]), sel[1][1:])
    return [store.materialize(store.copy(flat), fetch) for flat in out]


def _suffix_paths(paths: list[str], prefix: list[str]) -> list[str]:
    """Fetch paths below a selected path (``select l.child ... join fetch l.child.file``)."""
    p = ".".join(prefix) + "."
    return [x[len(p):] for x in paths if x.startswith(p)]


def project(store: ObjectStore, text: str, params: dict[str, Any], offset: int = 0,
            limit: int | None = None) -> list[list[Any]]:
    """Evaluate a projection: rows of plain values (aggregates give one row, or one per group)."""
    q = parse(text)
    ev = Evaluator(store, params)
    rows = _order(ev, q, list(ev.rows(q)))
    items = [n if n is not None else ("path", [q.alias]) for n in q.select]
    has_agg = any(n[0] == "agg" for n in items)
    if has_agg:
        groups: dict[tuple, list[dict[str, Any]]] = {}
        for row in rows:
            key = tuple(_hashable(ev.value(row, g)) for g in q.group)
            groups.setdefault(key, []).append(row)
        if not q.group and not groups:
            groups[()] = []
        out = [[_aggregate(ev, n, grp) if n[0] == "agg" else ev.value(grp[0], n)
                for n in items] for grp in groups.values()]
    else:
        out = [[ev.value(row, n) for n in items] for row in rows]
        if q.distinct:
            uniq, seen = [], set()
            for r in out:
                k = tuple(_hashable(v) for v in r)
                if k not in seen:
                    seen.add(k)
                    uniq.append(r)
            out = uniq
    return out[offset:offset + limit if limit is not None else None]


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _aggregate(ev: Evaluator, node: Any, rows: list[dict[str, Any]]) -> Any:
    _, fn, distinct, arg = node
    values = [1 if arg == ("star",) else ev.value(r, arg) for r in rows]
    values = [v for v in values if v is not None]
    if distinct:
        values = list(dict.fromkeys(_hashable(v) for v in values))
    if fn == "count":
        return len(values)
    if not values:
        return None
    if fn == "sum":
        return sum(values)
    return min(values) if fn == "min" else max(values)


def _order(ev: Evaluator, q: Query, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for expr, desc in reversed(q.order):
        def key(row: dict[str, Any], expr: Any = expr) -> tuple[int, Any]:
            v = ev.value(row, expr)
            return (v is None, v if v is not None else 0)
        rows.sort(key=key, reverse=desc)
    return rows


def collection_kind(kind: str, field_name: str) -> str | None:
    """The element class of a collection (for callers that need it)."""
    inv = collection_inverse(kind, field_name)
    return inv[0] if inv else None
