"""The dns probe's messages: a query built once per config, an answer read once per wire form.

A probe of a check sends the same query every time but for its ID, and a DNS server mostly
sends the same answer every time but for that ID. So both are kept as their wire form after
the 2-byte ID:

- :class:`DNSQuery` parses a module's query (name, type, class, RD, valid rcodes) and builds its
  wire form once (with dnspython, no EDNS, as blackbox); :meth:`DNSQuery.wire` puts a fresh ID
  in front of it.
- :class:`DNSAnswer` holds what the probe reads from an answer: flags, rcode, question, RR
  counts, the SOA serial and (:meth:`DNSAnswer.texts`) each section's RRs in blackbox's text
  form. :meth:`DNSAnswer.from_wire` parses with dnspython (so its checks and its text forms are
  unchanged) once per distinct answer: the Connector's :class:`probes.connection.Memo` maps
  the bytes after the ID to the answer. An answer whose TTLs count down (a caching
  resolver) differs from one second to the next and is parsed again.

The ID is compared by the caller, on the wire: ``wire[:2] == qid``.

    query = DNSQuery.from_config(module.dns, connector.memo)
    qid = new_id()
    send(query.wire(qid))
    answer = DNSAnswer.from_wire(reply, connector.memo)
    ok = reply[:2] == qid and query.is_answered_by(answer)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
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
    wire form, with its type and class.

        answer = DNSAnswer.from_wire(wire)
        answer.rcode, answer.counts, answer.texts().answer
    """

    __slots__ = (
        "_message",
        "_texts",
        "counts",
        "flags",
        "opcode",
        "question",
        "rcode",
        "serial",
        "truncated",
    )

    def __init__(self, message: dns.message.Message) -> None:
        self.flags = int(message.flags)
        self.truncated = bool(self.flags & _TC)
        self.opcode = message.opcode()
        self.rcode = message.rcode()
        self.question: tuple[Question, ...] = tuple(
            (rrset.name.to_digestable(), rrset.rdtype, rrset.rdclass) for rrset in message.question
        )
        self.counts = tuple(
            sum(len(rrset) for rrset in section)
            for section in (message.answer, message.authority, message.additional)
        )
        serials = [
            rd.serial
            for rrset in message.answer
            if rrset.rdtype == dns.rdatatype.SOA
            for rd in rrset
        ]
        self.serial: int = serials[-1] if serials else 0
        self._message: dns.message.Message | None = message
        self._texts: RRTexts | None = None

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
        formatting is not part of it. Once formatted, the parsed message is let go (a cached
        answer then holds its text only).
        """
        if self._texts is None:
            message = self._message
            assert message is not None  # kept until the texts exist
            self._texts = RRTexts(
                dns.rcode.to_text(self.rcode),
                dns.flags.to_text(message.flags),
                tuple(rr_texts(message.answer)),
                tuple(rr_texts(message.authority)),
                tuple(rr_texts(message.additional)),
            )
            self._message = None
        return self._texts


def _read(after_id: bytes) -> DNSAnswer:
    return DNSAnswer(dns.message.from_wire(b"\0\0" + after_id))


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
