"""Where the appliance's CPU goes: a summary of py-spy's raw (collapsed-stack) samples."""

from __future__ import annotations

import re
from collections import Counter

# Inclusive buckets along the enrollment path (a sample counts for every bucket on its stack).
BUCKETS = (
    ("whole request in the EST handler (web.default)", "default (appliance/web.py"),
    ("  authentication (RA certificate / Basic)", "authenticate (appliance/auth.py"),
    ("  CSR decode + signature check (codec.decode_csr)", "decode_csr (appliance/codec.py"),
    ("  policy checks", "appliance/policy.py"),
    ("  certificate build + CA signature (issuer)", "issue_pump_certificate (appliance/issuer"),
    ("  ledger insert + commit (SQLite)", "record_issuance (appliance/ledger.py"),
    ("  ledger record fields (service._record)", "_record (appliance/service.py"),
    ("  PKCS#7 encoding (codec.encode_certs_only)", "encode_certs_only (appliance/codec.py"),
    ("  the request's log line", "_log_request (appliance/web.py"),
    ("TLS handshake", "do_handshake ("),
    ("cheroot: reading/parsing requests, writing answers", "communicate (cheroot/server.py"),
    ("cheroot: connection manager (select/accept)", "cheroot/connections.py"),
)
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def profile_summary(raw: str, top: int = 15) -> str:
    stacks: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    total = sum(stacks.values())
    if not total:
        return "profile: no samples (was the appliance busy?)"
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for stack, samples in stacks.items():
        frames = stack.split(";")
        for label, needle in BUCKETS:
            if any(needle in frame for frame in frames):
                inclusive[label] += samples
        own[_short(frames[-1])] += samples
    lines = [
        f"## profile: {total:,} py-spy samples of the appliance's workers (active threads)",
        "",
        "| along the enrollment path (inclusive) | share of samples |",
        "|---|--:|",
    ]
    lines += [f"| {label} | {inclusive[label] / total:.1%} |" for label, _n in BUCKETS]
    lines += ["", "| hottest functions (self) | share of samples |", "|---|--:|"]
    lines += [f"| `{name}` | {count / total:.1%} |" for name, count in own.most_common(top)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = match.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('func')} ({path})"
