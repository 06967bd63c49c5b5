"""Writes the labelled PII corpus of the guardrails benchmark (JSON lines: text and gold spans).

Deterministic (seeded): every kind the gateway's guardrails detect, in the formats people
write them, inside sentences, plus hard negatives (numbers that look like PII and are not:
failed checksums, dates, versions, order numbers, ISBNs). ASCII only, so character offsets
(Python) and byte offsets (Rust) agree.

    python corpus.py OUT.jsonl
"""

import json
import random
import string
import sys

R = random.Random(20261204)


def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix]
    while len(digits) < length - 1:
        digits.append(R.randrange(10))
    for check in range(10):
        total = 0
        for i, d in enumerate(reversed(digits + [check])):
            if i % 2 == 1:
                d *= 2
                if d > 9:
                    d -= 9
            total += d
        if total % 10 == 0:
            return "".join(map(str, digits + [check]))
    raise AssertionError


def luhn_broken(prefix, length):
    good = luhn_complete(prefix, length)
    last = (int(good[-1]) + R.randrange(1, 10)) % 10
    return good[:-1] + str(last)


def group(s, sizes, sep):
    out, at = [], 0
    for n in sizes:
        out.append(s[at : at + n])
        at += n
    if at < len(s):
        out.append(s[at:])
    return sep.join(out)


def card():
    kind = R.choice(["visa", "mc", "amex", "discover"])
    if kind == "amex":
        number = luhn_complete(R.choice(["34", "37"]), 15)
        return R.choice([number, group(number, [4, 6, 5], " "), group(number, [4, 6, 5], "-")])
    prefix = {"visa": "4", "mc": str(R.randint(51, 55)), "discover": "6011"}[kind]
    number = luhn_complete(prefix, 16)
    return R.choice([number, group(number, [4, 4, 4, 4], " "), group(number, [4, 4, 4, 4], "-")])


IBAN_SHAPES = {"DE": "n18", "GB": "a4n14", "FR": "n10a11n2", "ES": "n20", "NL": "a4n10", "IT": "a1n10a12"}


def iban():
    country = R.choice(sorted(IBAN_SHAPES))
    shape, bban = IBAN_SHAPES[country], ""
    i = 0
    while i < len(shape):
        kind = shape[i]
        j = i + 1
        while j < len(shape) and shape[j].isdigit():
            j += 1
        n = int(shape[i + 1 : j])
        pool = string.digits if kind == "n" else string.ascii_uppercase
        bban += "".join(R.choice(pool) for _ in range(n))
        i = j
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    value = f"{country}{check:02d}{bban}"
    return R.choice([value, " ".join(value[k : k + 4] for k in range(0, len(value), 4))])


def bad_iban():
    value = iban().replace(" ", "")
    check = (int(value[2:4]) + R.randrange(1, 90)) % 100
    return f"{value[:2]}{check:02d}{value[4:]}"


def ssn():
    area = R.choice([a for a in range(1, 900) if a != 666])
    value = f"{area:03d}-{R.randint(1, 99):02d}-{R.randint(1, 9999):04d}"
    return value if R.random() < 0.8 else value.replace("-", " ")


def email():
    first = R.choice(["jane", "john", "maria", "wei", "olu", "anna", "li", "sam"])
    last = R.choice(["doe", "smith", "garcia", "chen", "okafor", "muller", "rossi"])
    user = R.choice([f"{first}.{last}", f"{first}{R.randint(1, 99)}", f"{first}+{last}", f"{first[0]}{last}"])
    domain = R.choice(["example.com", "mail.example.org", "corp.example.co.uk", "uni.example.edu", "example.io", "my-shop.example.net"])
    value = f"{user}@{domain}"
    return value.upper() if R.random() < 0.1 else value


def phone():
    return R.choice([
        lambda: f"({R.randint(201, 989)}) {R.randint(201, 989)}-{R.randint(0, 9999):04d}",
        lambda: f"{R.randint(201, 989)}-{R.randint(201, 989)}-{R.randint(0, 9999):04d}",
        lambda: f"{R.randint(201, 989)}.{R.randint(201, 989)}.{R.randint(0, 9999):04d}",
        lambda: f"+1 {R.randint(201, 989)} {R.randint(201, 989)} {R.randint(0, 9999):04d}",
        lambda: f"+44 20 {R.randint(7000, 8999)} {R.randint(0, 9999):04d}",
        lambda: f"020 {R.randint(7000, 8999)} {R.randint(0, 9999):04d}",
        lambda: f"+49 30 {R.randint(100000, 99999999)}",
        lambda: f"+33 1 {R.randint(10, 99)} {R.randint(10, 99)} {R.randint(10, 99)} {R.randint(10, 99)}",
        # Forms the detector was not written for.
        lambda: f"+1-{R.randint(201, 989)}-{R.randint(201, 989)}-{R.randint(0, 9999):04d}",
        lambda: f"1-800-{R.randint(201, 989)}-{R.randint(0, 9999):04d}",
        lambda: f"+49 (0)30 {R.randint(100000, 9999999)}",
    ])()


def ip():
    if R.random() < 0.7:
        return ".".join(str(R.randint(1, 254)) for _ in range(4))
    groups = [f"{R.randint(0, 0xFFFF):x}" for _ in range(8)]
    if R.random() < 0.5:
        return ":".join(groups)
    return "2001:db8::" + ":".join(groups[:3])


KINDS = {
    "EMAIL_ADDRESS": (email, ["Please write to {} about the refund.", "Contact: {}", "cc {} and me", "my email is {}."]),
    "PHONE_NUMBER": (phone, ["Call me at {} tomorrow.", "phone: {}", "You can reach the desk on {}.", "Tel {} (office)"]),
    "CREDIT_CARD": (card, ["My card number is {}.", "charge {} for the order", "Card: {} exp 09/28", "use {} please"]),
    "IBAN_CODE": (iban, ["Transfer it to IBAN {} by Friday.", "IBAN: {}", "account {} at our bank", "pay into {} thanks"]),
    "US_SSN": (ssn, ["My SSN is {}.", "social security number {}", "SSN: {} for the form", "ssn {}"]),
    "IP_ADDRESS": (ip, ["The request came from {} last night.", "host {} is down", "Server IP: {}", "blocked {} at the firewall"]),
}

NEGATIVES = [
    lambda: f"Order #{R.randint(10**8, 10**9 - 1)} ships on {R.randint(2020, 2026)}-{R.randint(1, 12):02d}-{R.randint(1, 28):02d}.",
    lambda: f"Version {R.randint(1, 9)}.{R.randint(0, 20)}.{R.randint(0, 30)} fixed the bug.",
    lambda: f"The invoice total is ${R.randint(1, 9)},{R.randint(100, 999)}.{R.randint(0, 99):02d}.",
    lambda: f"Reference {luhn_broken('4', 16)} is not a card.",
    lambda: f"Wrong account {bad_iban()} was rejected.",
    lambda: f"Case {R.choice(['000', '666', '900'])}-{R.randint(10, 99)}-{R.randint(1000, 9999)} closed.",
    lambda: f"ISBN 978-{R.randint(0, 9)}-{R.randint(10, 99)}-{R.randint(100000, 999999)}-{R.randint(0, 9)}",
    lambda: f"We sold {R.randint(1000, 99999)} units, up {R.randint(1, 99)}% on {R.randint(1, 12)}/{R.randint(1, 28)}.",
    lambda: f"Meeting at {R.randint(1, 12)}:{R.randint(0, 59):02d} in room {R.randint(100, 999)}.",
    lambda: f"Ticket {R.randint(1000000, 9999999)} was escalated.",
]


def main(out):
    rows = []
    for kind, (make, templates) in KINDS.items():
        for i in range(80):
            value = make()
            template = templates[i % len(templates)]
            before, after = template.split("{}")
            text = before + value + after
            rows.append({"text": text, "spans": [{"kind": kind, "start": len(before), "end": len(before) + len(value)}]})
    for i in range(60):
        a, b = R.sample(sorted(KINDS), 2)
        va, vb = KINDS[a][0](), KINDS[b][0]()
        text = f"Details: {va}; also {vb}."
        sa = text.index(va)
        sb = text.index(vb, sa + len(va))
        rows.append({"text": text, "spans": [{"kind": a, "start": sa, "end": sa + len(va)}, {"kind": b, "start": sb, "end": sb + len(vb)}]})
    for i in range(200):
        rows.append({"text": NEGATIVES[i % len(NEGATIVES)](), "spans": []})
    R.shuffle(rows)
    with open(out, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
