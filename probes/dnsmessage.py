"""The dns probe's messages: a query built once per config, an answer read once per wire form.

A probe of a check sends the same query every time but for its ID, and a DNS server mostly
sends the same answer every time but for that ID. So both are kept as their wire form after
the 2-byte ID:

- :class:`DNSQuery` parses a module's query (name, type, class, RD, valid rcodes) and builds its
  wire form once (with dnspython, no EDNS, as blackbox); :meth:`DNSQuery.wire` puts a fresh ID
  in front of it.
- :class:`DNSAnswer` holds what the probe reads from an answer: flags, rcode, question, RR
  counts, the SOA serial and (:meth:`DNSAnswer.texts`) each section's RRs in blackbox's text
  form. :meth:`DNSAnswer.from_wire` reads each distinct answer once: the Connector's
  :class:`probes.connection.Memo` maps the bytes after the ID to the answer.

An answer whose TTLs count down (a caching resolver) differs from one second to the next and
is read again, so reading is cheap too. A plain answer (a QUERY; RRs of class IN and of type
A, AAAA, CNAME, NS, PTR, MX, SOA or TXT; at most an OPT without options) is *walked*: the
header, the question and each RR's bounds, names followed through their pointers, each
rdata checked as dnspython checks it, with no dnspython objects built. The walk finds what
dnspython's parse would (its RRsets: duplicates dropped, the least TTL, one SOA or CNAME per
RRset; the rcode's upper bits from the OPT) and its texts come later, on demand, from
dnspython's own name and rdata formatting. Anything else, malformed answers included, is
parsed by dnspython as before, so its checks, errors and texts are unchanged.

The ID is compared by the caller, on the wire: ``wire[:2] == qid``.

    query = DNSQuery.from_config(module.dns, connector.memo)
    qid = new_id()
    send(query.wire(qid))
    answer = DNSAnswer.from_wire(reply, connector.memo)
    ok = reply[:2] == qid and query.is_answered_by(answer)
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import dns.exception
import dns.flags
import dns.ipv4
import dns.ipv6
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from probes.connection import Memo
from probes.modules import DNSProbe

__all__ = ["DNSAnswer", "DNSQuery", "new_id", "rr_texts"]

_T = TypeVar("_T")
#: a question: the name in canonical (lowercase) wire form, the type and the class
Question = tuple[bytes, dns.rdatatype.RdataType, dns.rdataclass.RdataClass]

#: the largest UDP answer to a query without EDNS (RFC 1035 §4.2.1); bigger answers (over
#: TCP or DoH) are parsed every time, so a cache entry is small
_CACHED_ANSWER_SIZE = 512
# plain ints: an int & a dns.flags.Flag goes through the enum machinery on every probe
_QR = int(dns.flags.QR)
_TC = int(dns.flags.TC)
#: rcodes that may come with no question section (dnspython's ``Message.is_response``)
_MAY_OMIT_QUESTION = frozenset(
    {dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED}
)


def new_id() -> bytes:
    """A fresh query ID: two unpredictable bytes, so a forged answer must guess them (RFC 5452)."""
    return os.urandom(2)


@dataclass(frozen=True, slots=True)
class DNSQuery:
    """A module's query, parsed once: what to ask, its wire form, and how to judge the rcode.

    ``question`` is the question as :attr:`DNSAnswer.question` holds it; ``wire_tail`` is the
    query's wire form after its ID (the flags, the counts and the question).

        query = DNSQuery.from_config(module.dns)
        wire = query.wire(new_id())
    """

    name: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    rdclass: dns.rdataclass.RdataClass
    recursion_desired: bool
    valid_rcodes: frozenset[dns.rcode.Rcode]
    question: Question
    wire_tail: bytes

    @classmethod
    def from_config(cls, cfg: DNSProbe, memo: Memo) -> DNSQuery:
        """Parse ``cfg`` (memoised); ``ValueError`` names the key and the value."""
        return memo(
            _query,
            cfg.query_name,
            cfg.query_type,
            cfg.query_class,
            cfg.recursion_desired,
            tuple(cfg.valid_rcodes),
        )

    def wire(self, qid: bytes) -> bytes:
        """The query as sent, with the 2-byte ID ``qid``."""
        return qid + self.wire_tail

    def is_answered_by(self, answer: DNSAnswer) -> bool:
        """Whether ``answer`` (whose ID matched) answers this query.

        dnspython's ``Message.is_response`` rules for a QUERY, without building the query
        message: QR set, the same opcode and the same question (names compared case-blind);
        FORMERR, SERVFAIL, NOTIMP and REFUSED may come with no question.
        """
        if not answer.flags & _QR or answer.opcode != dns.opcode.QUERY:
            return False
        if not answer.question:
            return answer.rcode in _MAY_OMIT_QUESTION
        return all(question == self.question for question in answer.question)


# Every run of a check parses the same config again: a pure function of hashable config
# values, memoised on the Connector. A bad value raises every time.
def _query(
    query_name: str,
    query_type: str,
    query_class: str,
    recursion_desired: bool,
    valid_rcodes: tuple[str, ...],
) -> DNSQuery:
    try:
        name = dns.name.from_text(query_name)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"dns.query_name {query_name!r} is not a name: {exc}") from exc
    rdtype = _parse(dns.rdatatype.from_text, "query_type", query_type or "ANY")
    rdclass = _parse(dns.rdataclass.from_text, "query_class", query_class or "IN")
    rcodes = frozenset(_parse(dns.rcode.from_text, "valid_rcodes", r) for r in valid_rcodes)
    # no EDNS, as blackbox: a big answer over UDP then comes back truncated
    message = dns.message.make_query(name, rdtype, rdclass, use_edns=False, id=0)
    if not recursion_desired:
        message.flags &= ~dns.flags.RD
    question = (name.to_digestable(), rdtype, rdclass)
    wire_tail = message.to_wire()[2:]
    return DNSQuery(name, rdtype, rdclass, recursion_desired, rcodes, question, wire_tail)


def _parse(parse: Callable[[str], _T], key: str, value: str) -> _T:
    try:
        return parse(value.upper())
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"dns.{key}: {value!r} is not a known name") from exc


@dataclass(frozen=True, slots=True)
class RRTexts:
    """An answer as text: its rcode and flags as dnspython prints them (``"NOERROR"``,
    ``"QR AA RD"``), and each section's RRs in blackbox's form (see :func:`rr_texts`)."""

    rcode: str
    flags: str
    answer: tuple[str, ...]
    authority: tuple[str, ...]
    additional: tuple[str, ...]


class DNSAnswer:
    """What the probe reads from a DNS answer, its ID aside.

    ``flags`` is the header's flags field (``truncated``: TC is set). ``counts`` are the RRs of
    the answer, authority and additional sections (blackbox's ``probe_dns_*_rrs``).
    ``serial`` is the last SOA serial of the answer section, 0 without one (blackbox's
    ``probe_dns_serial``). ``question`` holds each question's name in canonical (lowercase)
    wire form, with its type and class. All are as dnspython's parse of the message has them
    (RRs merged into RRsets, duplicates dropped), whichever reader built the answer.

        answer = DNSAnswer.from_wire(wire, connector.memo)
        answer.rcode, answer.counts, answer.texts().answer
    """

    __slots__ = (
        "_source",
        "_texts",
        "counts",
        "flags",
        "opcode",
        "question",
        "rcode",
        "serial",
        "truncated",
    )

    def __init__(
        self,
        flags: int,
        opcode: dns.opcode.Opcode,
        rcode: dns.rcode.Rcode,
        question: tuple[Question, ...],
        counts: tuple[int, int, int],
        serial: int,
        source: dns.message.Message | _Walked,
    ) -> None:
        self.flags = flags
        self.truncated = bool(flags & _TC)
        self.opcode = opcode
        self.rcode = rcode
        self.question = question
        self.counts = counts
        self.serial = serial
        # what the texts are made from, until they are
        self._source: dns.message.Message | _Walked | None = source
        self._texts: RRTexts | None = None

    @classmethod
    def from_message(cls, message: dns.message.Message) -> DNSAnswer:
        """The answer that dnspython's ``message`` holds."""
        sections = (message.answer, message.authority, message.additional)
        answer, authority, additional = (sum(len(rrset) for rrset in s) for s in sections)
        serials = [
            rd.serial
            for rrset in message.answer
            if rrset.rdtype == dns.rdatatype.SOA
            for rd in rrset
        ]
        return cls(
            int(message.flags),
            message.opcode(),
            message.rcode(),
            tuple(
                (rrset.name.to_digestable(), rrset.rdtype, rrset.rdclass)
                for rrset in message.question
            ),
            (answer, authority, additional),
            serials[-1] if serials else 0,
            message,
        )

    @classmethod
    def from_wire(cls, wire: bytes, memo: Memo) -> DNSAnswer:
        """Read the DNS message ``wire``; ``dns.exception.DNSException`` if it is not one.

        A server sends the same answer to every run of a check, so each distinct answer (up
        to 512 bytes: at most ~4 KiB with its text) is read once, in ``memo``: its facts
        never change. Bytes that do not parse raise every time.
        """
        if len(wire) <= _CACHED_ANSWER_SIZE:
            return memo(_read, wire[2:])
        return _read(wire[2:])

    def texts(self) -> RRTexts:
        """The answer as text, formatted on first use and then kept.

        Not in ``__init__``: reading the answer is inside the timed ``request`` phase, and
        formatting is not part of it. Once formatted, the parsed message (or the walked
        wire) is let go (a cached answer then holds its text only).
        """
        if self._texts is None:
            source = self._source
            assert source is not None  # kept until the texts exist
            if isinstance(source, _Walked):
                answer, authority, additional = source.texts()
            else:
                answer, authority, additional = (
                    tuple(rr_texts(section))
                    for section in (source.answer, source.authority, source.additional)
                )
            self._texts = RRTexts(
                dns.rcode.to_text(self.rcode),
                dns.flags.to_text(self.flags),
                answer,
                authority,
                additional,
            )
            self._source = None
        return self._texts


def _read(after_id: bytes) -> DNSAnswer:
    wire = b"\0\0" + after_id
    answer = _walk(wire)
    if answer is None:
        # anything the walk does not take: dnspython reads it, and raises what it raises
        answer = DNSAnswer.from_message(dns.message.from_wire(wire))
    return answer


# -- the walk: dnspython's reading of a plain answer, without its objects --------------------
#
# The walk accepts only what dnspython accepts, and then finds what dnspython would: each
# rule below is one of dnspython 2.x's (dns.message._WireReader, dns.name.from_wire_parser,
# the rdata classes). Whatever it does not know, it leaves to dnspython (returns None):
# another opcode (UPDATE has other sections), a type outside _RDATA or a class other than
# IN, an OPT with options, a TSIG, and every error. tests/probes/test_dnsmessage.py
# compares both readers over real and broken messages.

_HEADER = struct.Struct("!HHHHHH")
_QUESTION_TAIL = struct.Struct("!HH")
_RR_HEAD = struct.Struct("!HHIH")
_OPCODE_BITS = 0x7800
_IN = int(dns.rdataclass.IN)
_OPT = int(dns.rdatatype.OPT)
_SOA = int(dns.rdatatype.SOA)
_A = int(dns.rdatatype.A)
_AAAA = int(dns.rdatatype.AAAA)
#: dnspython's bounds on a name: 255 bytes in wire form, and in newer versions (2.9 here, not
#: 2.6) 16 pointers followed; where the walk is stricter than the dnspython installed, that
#: dnspython reads the answer, so being as strict as the newest is safe
_MAX_NAME = 255
_MAX_POINTERS = 16
#: dnspython reads a TTL above 2**31 - 1 as 0 (RFC 2181 §8)
_MAX_TTL = 0x7FFFFFFF
_ROOT = b"\0"


def _name(wire: bytes, pos: int, end: int) -> tuple[bytes, int] | None:
    """The name at ``pos``: its labels in wire form, case kept and pointers followed, and
    the offset after it; ``None`` where dnspython would not read it.

    dnspython's rules: the name's own bytes end by ``end`` (the message's, or its rdata's);
    a pointer points before the start of the bytes it was found in (so the walk always ends)
    and those bytes, from where it points, end before that start; at most 16 pointers; at
    most 255 bytes; a label length of 64 to 191 is no label type.
    """
    parts: list[bytes] = []
    size = 1  # the root label
    after = 0  # where the name ends in place: after its first pointer
    start = pos
    pointers = 0
    while True:
        if pos >= end:
            return None
        count = wire[pos]
        if count == 0:
            break
        if count < 64:
            label_end = pos + 1 + count
            size += 1 + count
            if label_end > end or size > _MAX_NAME:
                return None
            parts.append(wire[pos:label_end])
            pos = label_end
        elif count >= 192:
            if pos + 2 > end:
                return None
            target = (count & 0x3F) << 8 | wire[pos + 1]
            pointers += 1
            if target >= start or pointers > _MAX_POINTERS:
                return None
            if not after:
                after = pos + 2
            end = start
            start = pos = target
        else:
            return None
    parts.append(_ROOT)
    return b"".join(parts), after or pos + 1


# Each rdata check returns the rdata's identity as dnspython compares rdatas (their
# canonical wire form: names lowercased and uncompressed), or None where dnspython would
# reject the rdata. An SOA's is its five numbers (serial first): an SOA RRset holds one.


def _fixed(size: int) -> Callable[[bytes, int, int], bytes | None]:
    def check(wire: bytes, pos: int, end: int) -> bytes | None:
        return wire[pos:end] if end - pos == size else None

    return check


def _target(wire: bytes, pos: int, end: int) -> bytes | None:
    name = _name(wire, pos, end)
    return name[0].lower() if name is not None and name[1] == end else None


def _mx(wire: bytes, pos: int, end: int) -> bytes | None:
    exchange = _target(wire, pos + 2, end) if end - pos > 2 else None
    return wire[pos : pos + 2] + exchange if exchange is not None else None


def _soa(wire: bytes, pos: int, end: int) -> bytes | None:
    mname = _name(wire, pos, end)
    rname = _name(wire, mname[1], end) if mname is not None else None
    if rname is None or rname[1] + 20 != end:
        return None
    return wire[rname[1] : end]


def _txt(wire: bytes, pos: int, end: int) -> bytes | None:
    # one character-string or more, filling the rdata
    at = pos
    while at < end:
        at += 1 + wire[at]
    return wire[pos:end] if at == end and end > pos else None


_RDATA: dict[int, Callable[[bytes, int, int], bytes | None]] = {
    _A: _fixed(4),
    _AAAA: _fixed(16),
    int(dns.rdatatype.NS): _target,
    int(dns.rdatatype.CNAME): _target,
    int(dns.rdatatype.PTR): _target,
    int(dns.rdatatype.MX): _mx,
    _SOA: _soa,
    int(dns.rdatatype.TXT): _txt,
}
#: an RRset of these types keeps only its last rdata (dns.rdatatype.is_singleton)
_SINGLETONS = frozenset(t for t in _RDATA if dns.rdatatype.is_singleton(dns.rdatatype.RdataType(t)))
_TYPE_TEXTS = {t: dns.rdatatype.to_text(dns.rdatatype.RdataType(t)) for t in _RDATA}
_IN_TEXT = dns.rdataclass.to_text(dns.rdataclass.IN)


class _RRset:
    """An RRset as dnspython would build it: the owner as first seen, the least TTL, and
    each distinct rdata's offset and length, by identity, in order."""

    __slots__ = ("owner", "rdatas", "rdtype", "ttl")

    def __init__(self, owner: bytes, rdtype: int, ttl: int) -> None:
        self.owner = owner
        self.rdtype = rdtype
        self.ttl = ttl
        self.rdatas: dict[bytes, tuple[int, int]] = {}


class _Walked:
    """A walked message: its wire and each section's RRsets, to format on demand."""

    __slots__ = ("sections", "wire")

    def __init__(self, wire: bytes, sections: tuple[list[_RRset], ...]) -> None:
        self.wire = wire
        self.sections = sections

    def texts(self) -> tuple[tuple[str, ...], ...]:
        """Each section's RRs as :func:`rr_texts` prints dnspython's RRsets."""
        return tuple(tuple(self._section_texts(section)) for section in self.sections)

    def _section_texts(self, section: list[_RRset]) -> list[str]:
        wire = self.wire
        texts: list[str] = []
        for rrset in section:
            owner = dns.name.Name(_labels(rrset.owner)).to_text()
            rdtype = rrset.rdtype
            head = f"{owner}\t{rrset.ttl}\t{_IN_TEXT}\t{_TYPE_TEXTS[rdtype]}\t"
            for pos, size in rrset.rdatas.values():
                # the text dnspython's rdata gives: an address straight from its bytes (as
                # dnspython's A and AAAA make it), any other type from the rdata itself
                if rdtype == _A:
                    text = dns.ipv4.inet_ntoa(wire[pos : pos + size])
                elif rdtype == _AAAA:
                    text = dns.ipv6.inet_ntoa(wire[pos : pos + size])
                else:
                    rdata = dns.rdata.from_wire(
                        dns.rdataclass.IN, dns.rdatatype.RdataType(rdtype), wire, pos, size
                    )
                    text = rdata.to_text()
                texts.append(head + text)
        return texts


def _labels(name: bytes) -> tuple[bytes, ...]:
    labels: list[bytes] = []
    pos = 0
    while count := name[pos]:
        labels.append(name[pos + 1 : pos + 1 + count])
        pos += 1 + count
    labels.append(b"")
    return tuple(labels)


def _questions(wire: bytes, count: int) -> tuple[tuple[Question, ...], int] | None:
    """The ``count`` questions after the header, and the offset after them."""
    end = len(wire)
    pos = _HEADER.size
    questions: list[Question] = []
    for _ in range(count):
        name = _name(wire, pos, end)
        if name is None or name[1] + _QUESTION_TAIL.size > end:
            return None
        qname, pos = name
        qtype, qclass = _QUESTION_TAIL.unpack_from(wire, pos)
        pos += _QUESTION_TAIL.size
        questions.append(
            (qname.lower(), dns.rdatatype.RdataType(qtype), dns.rdataclass.RdataClass(qclass))
        )
    return tuple(questions), pos


def _walk(wire: bytes) -> DNSAnswer | None:
    """Read ``wire`` as dnspython would, or ``None`` to leave it to dnspython."""
    end = len(wire)
    if end < _HEADER.size:
        return None
    _, flags, qdcount, *rrcounts = _HEADER.unpack_from(wire)
    if flags & _OPCODE_BITS:
        return None  # not a QUERY
    read = _questions(wire, qdcount)
    if read is None:
        return None
    question, pos = read
    sections: list[list[_RRset]] = []
    counts: list[int] = []
    ednsflags = 0
    opt = False
    for section, rrcount in enumerate(rrcounts):
        rrsets: dict[tuple[bytes, int], _RRset] = {}
        for _ in range(rrcount):
            name = _name(wire, pos, end)
            if name is None or name[1] + _RR_HEAD.size > end:
                return None
            owner, pos = name
            rdtype, rdclass, ttl, rdlen = _RR_HEAD.unpack_from(wire, pos)
            pos += _RR_HEAD.size
            rdend = pos + rdlen
            if rdend > end:
                return None
            if rdtype == _OPT:
                # one OPT, owned by the root, in the additional section; its TTL carries the
                # rcode's upper bits. One with options (rare: queries carry no EDNS) is left
                # to dnspython, which parses each option.
                if section != 2 or opt or owner != _ROOT or rdlen:
                    return None
                opt = True
                ednsflags = ttl
                continue
            check = _RDATA.get(rdtype)
            key = check(wire, pos, rdend) if check is not None and rdclass == _IN else None
            if key is None:
                return None
            rrset_key = (owner.lower(), rdtype)
            rrset = rrsets.get(rrset_key)
            if ttl > _MAX_TTL:
                ttl = 0
            if rrset is None:
                rrset = rrsets[rrset_key] = _RRset(owner, rdtype, ttl)
            elif ttl < rrset.ttl:
                rrset.ttl = ttl
            if rdtype in _SINGLETONS:
                rrset.rdatas.clear()
            rrset.rdatas.setdefault(key, (pos, rdlen))
            pos = rdend
        sections.append(list(rrsets.values()))
        counts.append(sum(len(rrset.rdatas) for rrset in rrsets.values()))
    if pos != end:
        return None  # trailing bytes
    serial = 0
    for rrset in sections[0]:
        if rrset.rdtype == _SOA:
            for key in rrset.rdatas:
                serial = int.from_bytes(key[:4], "big")
    answer, authority, additional = counts
    return DNSAnswer(
        flags,
        dns.opcode.QUERY,
        dns.rcode.from_flags(flags, ednsflags),
        question,
        (answer, authority, additional),
        serial,
        _Walked(wire, tuple(sections)),
    )


def rr_texts(section: Sequence[dns.rrset.RRset]) -> list[str]:
    """Each RR as miekg/dns prints it: ``name\\tttl\\tclass\\ttype\\trdata``.

    >>> rr_texts([dns.rrset.from_text("www.prometheus.io.", 300, "IN", "A", "127.0.0.1")])
    ['www.prometheus.io.\\t300\\tIN\\tA\\t127.0.0.1']
    """
    texts: list[str] = []
    for rrset in section:
        head = "\t".join(
            (
                rrset.name.to_text(),
                str(rrset.ttl),
                dns.rdataclass.to_text(rrset.rdclass),
                dns.rdatatype.to_text(rrset.rdtype),
            )
        )
        texts.extend(f"{head}\t{rdata.to_text()}" for rdata in rrset)
    return texts
