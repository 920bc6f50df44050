"""probes.dnsmessage reads every answer as dnspython's full parse does, walked or not.

The answer reader walks a plain answer itself and leaves the rest to dnspython. Each test
here holds messages to the same bar: :func:`read` (the reader) equals :func:`reference`
(dnspython's parse, as the reader used to take it), facts, texts and failures alike; and it
says which path each message takes, so the walk is known to be the one tested.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from probes.connection import Memo
from probes.dnsmessage import DNSAnswer, _walk
from tests.probes.dns_wire import QNAME, message, name, pointer, read, reference, rr


def response(
    qname: str = "www.demo.test.",
    qtype: str = "A",
    *,
    answer: tuple[dns.rrset.RRset, ...] = (),
    authority: tuple[dns.rrset.RRset, ...] = (),
    additional: tuple[dns.rrset.RRset, ...] = (),
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    flags: int = 0,
    qclass: str = "IN",
) -> dns.message.Message:
    """dnspython's answer to a query for ``qname``/``qtype`` holding these RRsets."""
    query = dns.message.make_query(qname, qtype, qclass, use_edns=False, id=0x1234)
    reply = dns.message.make_response(query)
    reply.answer.extend(answer)
    reply.authority.extend(authority)
    reply.additional.extend(additional)
    reply.set_rcode(rcode)
    reply.flags |= flags
    return reply


def rrs(owner: str, ttl: int, rdtype: str, *rdatas: str, rdclass: str = "IN") -> dns.rrset.RRset:
    return dns.rrset.from_text_list(owner, ttl, rdclass, rdtype, list(rdatas))


SOA = rrs(
    "demo.test.", 3600, "SOA", "ns.demo.test. hostmaster.demo.test. 2024010101 3600 600 86400 60"
)


def with_edns(reply: dns.message.Message, **kwargs: Any) -> dns.message.Message:
    reply.use_edns(0, **kwargs)
    return reply


def notify() -> dns.message.Message:
    query = dns.message.make_query("demo.test.", "SOA", use_edns=False)
    query.set_opcode(dns.opcode.NOTIFY)
    return dns.message.make_response(query)


def badvers() -> dns.message.Message:
    # an extended rcode: its upper bits ride in the OPT's TTL
    reply = with_edns(response(), payload=1232)
    reply.set_rcode(dns.rcode.BADVERS)
    return reply


def no_question(rcode: dns.rcode.Rcode) -> dns.message.Message:
    reply = response(rcode=rcode)
    reply.question = []
    return reply


#: real answers, as dnspython renders them (names compressed): the walk reads them all
WALKED: dict[str, bytes] = {
    label: reply.to_wire(want_shuffle=False)
    for label, reply in {
        "one A": response(answer=(rrs("www.demo.test.", 300, "A", "127.0.0.1"),)),
        "two A": response(answer=(rrs("www.demo.test.", 300, "A", "127.0.0.1", "10.0.0.2"),)),
        "AAAA": response(
            qtype="AAAA",
            answer=(
                rrs(
                    "www.demo.test.",
                    60,
                    "AAAA",
                    "::1",
                    "::",
                    "2001:db8::1:0:0:1",
                    "::ffff:192.0.2.1",
                    "fe80:0:0:1::",
                    "1:2:3:4:5:6:7:8",
                ),
            ),
        ),
        "CNAME chain": response(
            answer=(
                rrs("www.demo.test.", 300, "CNAME", "edge.cdn.example."),
                rrs("edge.cdn.example.", 60, "CNAME", "pop7.edge.cdn.example."),
                rrs("pop7.edge.cdn.example.", 20, "A", "192.0.2.7", "192.0.2.8"),
            ),
        ),
        "MX with NS and glue": response(
            "demo.test.",
            "MX",
            answer=(rrs("demo.test.", 300, "MX", "10 mail.demo.test.", "20 MX2.Demo.Test."),),
            authority=(rrs("demo.test.", 3600, "NS", "ns1.demo.test.", "ns2.elsewhere."),),
            additional=(
                rrs("mail.demo.test.", 300, "A", "192.0.2.25"),
                rrs("ns1.demo.test.", 300, "AAAA", "2001:db8::53"),
            ),
        ),
        "TXT": response(
            "txt.demo.test.",
            "TXT",
            answer=(
                rrs(
                    "txt.demo.test.",
                    60,
                    "TXT",
                    '"hello world"',
                    '"a" "b" "c"',
                    '""',
                    '"say \\"hi\\" \\\\ there"',
                    '"\\000\\255\\195\\188 bytes"',
                    '"' + "x" * 255 + '"',
                ),
            ),
        ),
        "SOA in the answer": response("demo.test.", "SOA", answer=(SOA,)),
        "NXDOMAIN with SOA": response(
            "nope.demo.test.", authority=(SOA,), rcode=dns.rcode.NXDOMAIN, flags=dns.flags.AA
        ),
        "NODATA with SOA": response(authority=(SOA,), flags=dns.flags.AA),
        "empty": response(),
        "SERVFAIL": response(rcode=dns.rcode.SERVFAIL),
        "REFUSED without question": no_question(dns.rcode.REFUSED),
        "truncated (TC)": response(
            answer=(rrs("www.demo.test.", 300, "A", "127.0.0.1"),), flags=dns.flags.TC
        ),
        "EDNS": with_edns(response(answer=(rrs("www.demo.test.", 1, "A", "127.0.0.1"),))),
        "EDNS with DO": with_edns(response(), ednsflags=dns.flags.DO, payload=4096),
        "EDNS BADVERS": badvers(),
        "0x20 case": response(
            "WwW.DeMo.TeSt.", answer=(rrs("WwW.DeMo.TeSt.", 300, "A", "127.0.0.1"),)
        ),
        "escaped names": response(
            "we\\.ird\\032name.demo.test.",
            "PTR",
            answer=(
                rrs("we\\.ird\\032name.demo.test.", 5, "PTR", "\\@\\$\\(x\\).\\001\\255.demo."),
            ),
        ),
        "PTR": response(
            "1.0.0.127.in-addr.arpa.",
            "PTR",
            answer=(rrs("1.0.0.127.in-addr.arpa.", 86400, "PTR", "localhost."),),
        ),
        "root NS": response(".", "NS", answer=(rrs(".", 518400, "NS", "a.root-servers.net."),)),
        "ANY": response(
            "demo.test.",
            "ANY",
            answer=(SOA, rrs("demo.test.", 300, "MX", "0 ."), rrs("demo.test.", 60, "TXT", '"v"')),
        ),
        "an unknown qtype and class CH asked": response("x.test.", "TYPE65280", qclass="CH"),
        "Z AD CD flags": response(flags=0x0040 | dns.flags.AD | dns.flags.CD),
        "TTLs 0 and 2**31-1": response(
            answer=(
                rrs("a.demo.test.", 0, "A", "192.0.2.1"),
                rrs("b.demo.test.", 0x7FFFFFFF, "A", "192.0.2.2"),
            ),
        ),
    }.items()
}

A = bytes([127, 0, 0, 1])
WWW = name("www.demo.test.")
QTAIL = struct.pack("!HH", 1, 1)
#: the message offset right after the default question
AFTER_QUESTION = QNAME + len(WWW) + 4


def soa_rdata(serial: int, mname: bytes = name("ns."), rname: bytes = name("host.")) -> bytes:
    return mname + rname + struct.pack("!IIIII", serial, 3600, 600, 86400, 60)


def pointer_chain(hops: int) -> bytes:
    """An answer whose owner name is reached through ``hops`` pointers.

    A TXT rdata holds the chain: each pointer points at the one before it, the first at
    the question's name.
    """
    chain = pointer(QNAME)
    first = AFTER_QUESTION + len(WWW) + 10 + 1  # this TXT's rdata, after its length byte
    for hop in range(1, hops - 1):
        chain += pointer(first + 2 * (hop - 1))
    txt = bytes([len(chain)]) + chain
    last = pointer(first + 2 * (hops - 2)) if hops > 1 else pointer(QNAME)
    return message(answer=[rr(WWW, "TXT", txt), rr(last, "A", A)])


def long_name(size: int) -> bytes:
    """A name of ``size`` bytes in wire form (labels of 63 bytes and less)."""
    labels: list[bytes] = []
    left = size - 1
    while left:
        length = min(63, left - 1)
        labels.append(bytes([length]) + b"a" * length)
        left -= length + 1
    return b"".join(labels) + b"\0"


#: hand-built answers that dnspython does not render, all valid: the walk reads them too
WALKED_BY_HAND: dict[str, bytes] = {
    "a duplicate A is one RR": message(answer=[rr(WWW, "A", A), rr(pointer(QNAME), "A", A)]),
    "an RRset's TTL is its least": message(
        answer=[
            rr(WWW, "A", A, ttl=300),
            rr(WWW, "A", bytes([10, 0, 0, 1]), ttl=20),
            rr(WWW, "A", A, ttl=10),
        ]
    ),
    "owners in another case share an RRset": message(
        answer=[
            rr(name("www.demo.test."), "A", A),
            rr(name("WWW.DEMO.TEST."), "A", bytes([10, 0, 0, 2])),
            rr(name("other.test."), "A", A),
            rr(name("Www.Demo.Test."), "A", bytes([10, 0, 0, 3])),
        ]
    ),
    "NS targets equal but for case are one RR": message(
        authority=[rr(WWW, "NS", name("ns.demo.test.")), rr(WWW, "NS", name("NS.Demo.Test."))]
    ),
    "MX equal but for case; another preference": message(
        answer=[
            rr(WWW, "MX", b"\0\x0a" + name("mx.test.")),
            rr(WWW, "MX", b"\0\x0a" + name("MX.TEST.")),
            rr(WWW, "MX", b"\0\x14" + name("mx.test.")),
        ]
    ),
    "TXT equal are one, in another case two": message(
        answer=[rr(WWW, "TXT", b"\x02ab"), rr(WWW, "TXT", b"\x02ab"), rr(WWW, "TXT", b"\x02AB")]
    ),
    "an SOA RRset keeps its last SOA": message(
        answer=[
            rr(name("demo.test."), "SOA", soa_rdata(1)),
            rr(name("other.test."), "SOA", soa_rdata(2)),
            rr(name("DEMO.test."), "SOA", soa_rdata(3), ttl=5),
        ]
    ),
    "a CNAME RRset keeps its last CNAME": message(
        answer=[rr(WWW, "CNAME", name("a.test.")), rr(WWW, "CNAME", name("b.test."), ttl=9)]
    ),
    "a TTL above 2**31-1 is 0": message(
        answer=[
            rr(WWW, "A", A, ttl=0x80000000),
            rr(name("b.test."), "A", A, ttl=0xFFFFFFFF),
            rr(name("b.test."), "A", bytes([1, 2, 3, 4]), ttl=7),
        ]
    ),
    "an owner compressed into a previous rdata": message(
        answer=[
            rr(WWW, "CNAME", name("edge.cdn.test.")),
            rr(pointer(AFTER_QUESTION + len(WWW) + 10), "A", A),
        ]
    ),
    "names compressed inside SOA and MX rdata": message(
        answer=[
            rr(pointer(QNAME), "SOA", soa_rdata(9, pointer(QNAME), b"\x04host" + pointer(QNAME))),
            rr(pointer(QNAME), "MX", b"\0\x01" + b"\x02mx" + pointer(QNAME + 4)),
        ]
    ),
    "16 pointers in a row": pointer_chain(16),
    "a name of 255 bytes": message(answer=[rr(long_name(255), "A", A)]),
    "a root owner reached through a pointer into the header": message(
        # the header's QDCOUNT is 0x0001: its first byte, at offset 4, reads as the root
        additional=[rr(pointer(4), "OPT", b"", ttl=0, rdclass=1232)]
    ),
    "OPT before another additional RR": message(
        additional=[rr(b"\0", "OPT", b"", ttl=0x01000000, rdclass=512), rr(WWW, "A", A)]
    ),
    "no question at all": message(question=[], answer=[rr(WWW, "A", A)]),
    "two questions": message(question=[WWW + QTAIL, pointer(QNAME) + struct.pack("!HH", 28, 1)]),
    "a query, not a response": message(flags=0x0100),
}


def txt_owner_pointer_crossing() -> bytes:
    # the owner points 3 bytes back, into the TXT before it: a label of length 4 would run
    # through the pointer itself
    txt = rr(WWW, "TXT", b"\x03\x04ab")
    start = AFTER_QUESTION + len(txt)
    return message(answer=[txt, rr(pointer(start - 3), "A", A)])


#: valid answers the walk leaves to dnspython (other classes, types, opcodes, EDNS options)
LEFT_TO_DNSPYTHON: dict[str, bytes] = {
    "TXT in class CH": response(
        "version.bind.",
        "TXT",
        qclass="CH",
        answer=(rrs("version.bind.", 0, "TXT", '"9.18"', rdclass="CH"),),
    ).to_wire(want_shuffle=False),
    "SRV": response(
        "_x._tcp.demo.test.",
        "SRV",
        answer=(rrs("_x._tcp.demo.test.", 60, "SRV", "0 5 443 www.demo.test."),),
    ).to_wire(want_shuffle=False),
    "CAA and an unknown type": response(
        "demo.test.",
        "ANY",
        answer=(
            rrs("demo.test.", 60, "CAA", '0 issue "ca.example"'),
            rrs("demo.test.", 60, "TYPE65280", "\\# 2 abcd"),
        ),
    ).to_wire(want_shuffle=False),
    "DNAME": response(
        "x.demo.test.", answer=(rrs("demo.test.", 60, "DNAME", "demo.example."),)
    ).to_wire(want_shuffle=False),
    "EDNS with a cookie": with_edns(
        response(), options=[dns.edns.CookieOption(b"12345678", b"")]
    ).to_wire(want_shuffle=False),
    "NOTIFY": notify().to_wire(want_shuffle=False),
    "UPDATE": dns.update.UpdateMessage("demo.test.", id=7).to_wire(want_shuffle=False),
}


def tsig_signed() -> bytes:
    reply = response(answer=(rrs("www.demo.test.", 300, "A", "127.0.0.1"),))
    reply.use_tsig(dns.tsigkeyring.from_text({"key.": "c2VjcmV0c2VjcmV0"}))
    return reply.to_wire(want_shuffle=False)


#: malformed answers: dnspython rejects each, and so must the reader, with the same error
MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "a short header": message()[:11],
    "a truncated question": message()[:20],
    "a truncated RR head": message(answer=[rr(WWW, "A", A)])[:-8],
    "a truncated rdata": message(answer=[rr(WWW, "A", A)])[:-1],
    "more RRs counted than sent": message(answer=[rr(WWW, "A", A)], counts=(1, 2, 0, 0)),
    "more questions counted than sent": message(counts=(2, 0, 0, 0)),
    "trailing bytes": message(answer=[rr(WWW, "A", A)]) + b"\0",
    "a pointer to itself": message(answer=[rr(pointer(AFTER_QUESTION), "A", A)]),
    "a pointer forward": message(answer=[rr(pointer(AFTER_QUESTION + 2), "A", A)]),
    "a pointer out of the message": message(answer=[rr(pointer(0x3FFF), "A", A)]),
    "two pointers at each other": message(
        answer=[
            rr(pointer(AFTER_QUESTION + 16), "A", A),
            rr(pointer(AFTER_QUESTION), "A", A),
        ]
    ),
    "a pointer target running into the name": txt_owner_pointer_crossing(),
    "17 pointers in a row": pointer_chain(17),
    "a name of 256 bytes": message(answer=[rr(long_name(256), "A", A)]),
    "label type 0x40": message(answer=[rr(b"\x41" + b"x" * 1 + b"\0", "A", A)]),
    "label type 0x80": message(answer=[rr(b"\x80\0", "A", A)]),
    "a question name pointing forward": message(question=[pointer(20) + QTAIL + b"\0"]),
    "an A of 3 bytes": message(answer=[rr(WWW, "A", A[:3])]),
    "an A of 5 bytes": message(answer=[rr(WWW, "A", A + b"\0")]),
    "an AAAA of 4 bytes": message(answer=[rr(WWW, "AAAA", A)]),
    "an empty TXT": message(answer=[rr(WWW, "TXT", b"")]),
    "a TXT string past its rdata": message(answer=[rr(WWW, "TXT", b"\x05abc")]),
    "a CNAME with a byte after its name": message(answer=[rr(WWW, "CNAME", name("a.") + b"x")]),
    "a CNAME name past its rdata": message(
        answer=[rr(WWW, "CNAME", name("a.test."), rdlen=3)], counts=(1, 1, 0, 0)
    )[:-5],
    "an MX without its name": message(answer=[rr(WWW, "MX", b"\0\x0a")]),
    "an SOA a byte short": message(answer=[rr(WWW, "SOA", soa_rdata(1)[:-1])]),
    "an SOA a byte long": message(answer=[rr(WWW, "SOA", soa_rdata(1) + b"\0")]),
    "an rdlength past the message": message(answer=[rr(WWW, "A", A, rdlen=40)]),
    "an OPT in the answer section": message(answer=[rr(b"\0", "OPT", b"")]),
    "two OPTs": message(additional=[rr(b"\0", "OPT", b""), rr(b"\0", "OPT", b"")]),
    "an OPT not owned by the root": message(additional=[rr(WWW, "OPT", b"")]),
    "an OPT option past its rdata": message(additional=[rr(b"\0", "OPT", b"\0\x0a\0\x09abc")]),
    "a TSIG without a key": tsig_signed(),
    "a TSIG that is not last": message(
        additional=[rr(b"\0", "TSIG", b"", rdclass=255), rr(WWW, "A", A)]
    ),
}


@pytest.mark.parametrize("wire", list(WALKED.values()), ids=list(WALKED))
def test_the_walk_reads_real_answers_as_dnspython(wire: bytes) -> None:
    assert _walk(wire) is not None
    assert read(wire) == reference(wire)


@pytest.mark.parametrize("wire", list(WALKED_BY_HAND.values()), ids=list(WALKED_BY_HAND))
def test_the_walk_builds_rrsets_as_dnspython(wire: bytes) -> None:
    assert reference(wire)[0] != "raised"
    assert _walk(wire) is not None
    assert read(wire) == reference(wire)


@pytest.mark.parametrize("wire", list(LEFT_TO_DNSPYTHON.values()), ids=list(LEFT_TO_DNSPYTHON))
def test_what_the_walk_does_not_know_is_left_to_dnspython(wire: bytes) -> None:
    assert reference(wire)[0] != "raised"
    assert _walk(wire) is None
    assert read(wire) == reference(wire)


@pytest.mark.parametrize("wire", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_answer_fails_as_with_dnspython(wire: bytes) -> None:
    assert reference(wire)[0] == "raised"
    assert _walk(wire) is None
    assert read(wire) == reference(wire)


def test_the_extended_rcode_comes_from_the_opt() -> None:
    answer = DNSAnswer.from_wire(WALKED["EDNS BADVERS"], Memo())
    assert answer.rcode == dns.rcode.BADVERS
    assert answer.texts().rcode == "BADVERS"


def test_the_serial_and_counts_follow_dnspythons_rrsets() -> None:
    answer = DNSAnswer.from_wire(WALKED_BY_HAND["an SOA RRset keeps its last SOA"], Memo())
    # demo.test.'s RRset (serial 1, then 3) comes first, other.test.'s (serial 2) last
    assert (answer.counts, answer.serial) == ((2, 0, 0), 2)
    assert answer.texts().answer == (
        "demo.test.\t5\tIN\tSOA\tns. host. 3 3600 600 86400 60",
        "other.test.\t300\tIN\tSOA\tns. host. 2 3600 600 86400 60",
    )


def test_every_prefix_of_an_answer_fails_or_reads_as_with_dnspython() -> None:
    for wire in (WALKED["MX with NS and glue"], WALKED["EDNS BADVERS"], WALKED["CNAME chain"]):
        for end in range(len(wire)):
            assert read(wire[:end]) == reference(wire[:end]), end


def test_mutated_answers_read_as_with_dnspython() -> None:
    rng = random.Random(1035)
    corpus = [*WALKED.values(), *WALKED_BY_HAND.values(), *MALFORMED.values()]
    corpus = [wire for wire in corpus if len(wire) >= 12]
    walked = rejected = 0
    for _ in range(5000):
        wire = bytearray(rng.choice(corpus))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(wire))
            match rng.randrange(4):
                case 0:
                    wire[at] = rng.randrange(256)
                case 1:
                    del wire[at]
                case 2:
                    wire.insert(at, rng.randrange(256))
                case _:  # a count, a length or a pointer off by a little
                    wire[at] = (wire[at] + rng.choice((-1, 1, 0xC0))) % 256
        mutated = bytes(wire)
        expected = reference(mutated)
        assert read(mutated) == expected, mutated.hex()
        walked += _walk(b"\0\0" + mutated[2:]) is not None
        rejected += expected[0] == "raised"
    # the mutations reach both the walk and dnspython's errors
    assert walked > 250, walked
    assert rejected > 4000, rejected


def test_the_texts_are_made_once_and_the_wire_let_go() -> None:
    answer = DNSAnswer.from_wire(WALKED["two A"], Memo())
    texts = answer.texts()
    assert texts.answer == (  # the wire's order (the fixtures are written unshuffled)
        "www.demo.test.\t300\tIN\tA\t127.0.0.1",
        "www.demo.test.\t300\tIN\tA\t10.0.0.2",
    )
    assert answer.texts() is texts
    assert answer._source is None


def test_a_walked_answer_is_memoised_per_wire_form() -> None:
    memo = Memo()
    wire = WALKED["one A"]
    first = DNSAnswer.from_wire(wire, memo)
    # another ID, the same answer
    assert DNSAnswer.from_wire(b"\xff\xff" + wire[2:], memo) is first
