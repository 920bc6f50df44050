"""DNS messages byte by byte, and what the answer reader must find in them.

:func:`reference` is how ``probes.dnsmessage`` read every answer before it had a walk of its
own: dnspython's full parse. :func:`read` is how it reads one now. The two must agree on
every message: the same facts and texts, or the same exception with the same text (a
probe's failure detail is that text).

    assert read(wire) == reference(wire)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from probes.connection import Memo
from probes.dnsmessage import DNSAnswer, rr_texts

#: what a reader found: its facts and texts, or ("raised", exception type, text)
Outcome = tuple[Any, ...]


def reference(wire: bytes) -> Outcome:
    """What dnspython's parse of ``wire`` says, as the reader used to take it.

    With the ID read as 0, as the reader always has: an answer is memoised by the bytes
    after its ID, so a pointer into the ID must not make two answers of one.
    """
    try:
        message = dns.message.from_wire(b"\0\0" + wire[2:])
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    serials = [
        rd.serial for rrset in message.answer if rrset.rdtype == dns.rdatatype.SOA for rd in rrset
    ]
    rcode = message.rcode()
    return (
        int(message.flags),
        bool(message.flags & dns.flags.TC),
        _enum(message.opcode()),
        _enum(rcode),
        tuple(
            (rrset.name.to_digestable(), _enum(rrset.rdtype), _enum(rrset.rdclass))
            for rrset in message.question
        ),
        tuple(
            sum(len(rrset) for rrset in section)
            for section in (message.answer, message.authority, message.additional)
        ),
        serials[-1] if serials else 0,
        dns.rcode.to_text(rcode),
        dns.flags.to_text(message.flags),
        tuple(rr_texts(message.answer)),
        tuple(rr_texts(message.authority)),
        tuple(rr_texts(message.additional)),
    )


def read(wire: bytes) -> Outcome:
    """What ``DNSAnswer.from_wire`` says of ``wire`` (read afresh)."""
    try:
        answer = DNSAnswer.from_wire(wire, Memo())
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    texts = answer.texts()
    return (
        answer.flags,
        answer.truncated,
        _enum(answer.opcode),
        _enum(answer.rcode),
        tuple((name, _enum(rdtype), _enum(rdclass)) for name, rdtype, rdclass in answer.question),
        answer.counts,
        answer.serial,
        texts.rcode,
        texts.flags,
        texts.answer,
        texts.authority,
        texts.additional,
    )


def _enum(value: int) -> tuple[type, int, str]:
    # dnspython makes a new member for a value it has no name for: compare by value and name
    return (type(value), int(value), str(value))


# -- building messages by hand, for what dnspython will not render -----------------------------


def name(text: str) -> bytes:
    """``text``'s uncompressed wire form, in its case."""
    wire = dns.name.from_text(text).to_wire()
    assert wire is not None  # with no file given, to_wire returns the bytes
    return wire


def rr(
    owner: bytes,
    rdtype: str | int,
    rdata: bytes,
    ttl: int = 300,
    rdclass: int = 1,
    rdlen: int | None = None,
) -> bytes:
    """One RR in wire form; ``rdlen`` overrides the length field."""
    code = rdtype if isinstance(rdtype, int) else dns.rdatatype.from_text(rdtype)
    size = len(rdata) if rdlen is None else rdlen
    return owner + struct.pack("!HHIH", code, rdclass, ttl, size) + rdata


def message(
    question: Sequence[bytes] | None = None,
    answer: Sequence[bytes] = (),
    authority: Sequence[bytes] = (),
    additional: Sequence[bytes] = (),
    *,
    flags: int = 0x8180,
    counts: tuple[int, int, int, int] | None = None,
    qid: int = 0x1234,
) -> bytes:
    """A message from wire parts; the question defaults to ``www.demo.test. A IN``.

    ``counts`` overrides the header's four counts.
    """
    if question is None:
        question = [name("www.demo.test.") + struct.pack("!HH", 1, 1)]
    sections = (question, answer, authority, additional)
    qd, an, ns, ar = counts if counts is not None else tuple(len(s) for s in sections)
    head = struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)
    return head + b"".join(b"".join(s) for s in sections)


def pointer(offset: int) -> bytes:
    """A compression pointer to ``offset``."""
    return struct.pack("!H", 0xC000 | offset)


#: where the default question's name starts: right after the header
QNAME = 12
