"""Where the appliance's CPU goes: a summary of py-spy's raw (collapsed-stack) samples."""

from __future__ import annotations

import re
from collections import Counter

# Inclusive buckets along the enrollment path (a sample counts for every bucket on its stack);
# a bucket with a second needle is the first minus the second (the layer around an inner one).
BUCKETS: tuple[tuple[str, str, str | None], ...] = (
    ("cheroot: connection manager thread (select, hand-off)", "ConnectionManager._run (", None),
    (
        "cheroot: TLS, HTTP read/parse/write around the app",
        "communicate (cheroot/server.py",
        "EstWsgi.__call__ (",
    ),
    ("  keep-alive linger (waiting for the next request)", "_next_request_arrives (", None),
    (
        "WSGI adapter around the handler (est_wsgi)",
        "EstWsgi.__call__ (",
        "handle (appliance/web.py",
    ),
    ("EST handler (web.EstApplication.handle), all of it", "handle (appliance/web.py", None),
    ("  authentication (RA certificate / Basic)", "authenticate (appliance/auth.py", None),
    ("  reading the body + CSR decode/verify", "_read_csr (appliance/web.py", None),
    ("  enrollment service (policy, issue, record)", "enroll (appliance/service.py", None),
    ("    certificate build + CA signature", "issue_pump_certificate (appliance/issuer", None),
    ("    ledger (group commit, SQLite)", "record_issuance (appliance/ledger.py", None),
    ("  PKCS#7 encoding", "encode_certs_only (appliance/codec.py", None),
    ("  audit record", "AuditLog.record (appliance/audit.py", None),
    ("logging (request line + issuance line)", "Logger._log (", None),
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
        for label, needle, minus in BUCKETS:
            if any(needle in frame for frame in frames) and not (
                minus and any(minus in frame for frame in frames)
            ):
                inclusive[label] += samples
        own[_short(frames[-1])] += samples
    lines = [
        f"## profile: {total:,} py-spy samples of the thread holding the GIL in each worker",
        "",
        "| along the enrollment path (inclusive) | share of samples |",
        "|---|--:|",
    ]
    lines += [f"| {label} | {inclusive[label] / total:.1%} |" for label, _n, _m in BUCKETS]
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
