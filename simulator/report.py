"""Summaries of a fleet or lab run: counts, failures by branch, EAP-TLS verdicts, latency
percentiles; as JSON for machines and as a table for people."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from simulator.fleet import PumpOutcome


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every value reported was really measured)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Summary:
    """One group of pumps (an approach, or a whole fleet)."""

    name: str
    outcomes: list[PumpOutcome]

    @property
    def enrolled(self) -> int:
        return sum(o.enrolled for o in self.outcomes)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.enrolled

    @property
    def failed_by_reason(self) -> dict[str, int]:
        return dict(Counter(o.error.branch.value for o in self.outcomes if o.error is not None))

    @property
    def eap_accepted(self) -> int:
        return sum(1 for o in self.outcomes if o.eap is not None and o.eap.accepted)

    @property
    def eap_rejected(self) -> int:
        return sum(1 for o in self.outcomes if o.eap is not None and not o.eap.accepted)

    def latency_ms(self) -> dict[str, float | None]:
        values = [o.seconds * 1000 for o in self.outcomes if o.seconds is not None]
        return {
            f"p{p}": (round(v, 2) if (v := percentile(values, p)) is not None else None)
            for p in (50, 95, 99)
        }

    def as_dict(self, *, with_pumps: bool = True) -> dict[str, object]:
        data: dict[str, object] = {
            "pumps": len(self.outcomes),
            "enrolled": self.enrolled,
            "failed": self.failed,
            "failed_by_reason": self.failed_by_reason,
            "eap_tls_accepted": self.eap_accepted,
            "eap_tls_rejected": self.eap_rejected,
            "latency_ms": self.latency_ms(),
        }
        if with_pumps:
            data["pump_results"] = [o.as_dict() for o in self.outcomes]
        return data


@dataclass(frozen=True)
class NegativeControl:
    name: str
    description: str
    identity: str
    accepted: bool
    reason: str

    @property
    def passed(self) -> bool:
        return not self.accepted


@dataclass
class Report:
    """A fleet or lab run. `ok` is the verdict: everything enrolled and accepted, every
    negative control rejected."""

    groups: list[Summary]
    negative_controls: list[NegativeControl] = field(default_factory=list)
    eap_checked: bool = True
    seconds: float = 0.0
    context: dict[str, object] = field(default_factory=dict)

    @property
    def all_outcomes(self) -> list[PumpOutcome]:
        return [o for g in self.groups for o in g.outcomes]

    @property
    def ok(self) -> bool:
        total = Summary("all", self.all_outcomes)
        pumps_ok = total.failed == 0 and len(total.outcomes) > 0
        eap_ok = not self.eap_checked or total.eap_accepted == len(total.outcomes)
        controls_ok = all(c.passed for c in self.negative_controls)
        return pumps_ok and eap_ok and controls_ok

    def as_dict(self) -> dict[str, object]:
        total = Summary("all", self.all_outcomes)
        data = total.as_dict(with_pumps=False)
        data.update(
            {
                "ok": self.ok,
                "negative_controls_rejected": sum(c.passed for c in self.negative_controls),
                "negative_controls_total": len(self.negative_controls),
                "negative_controls": [
                    {
                        "name": c.name,
                        "description": c.description,
                        "identity": c.identity,
                        "accepted": c.accepted,
                        "reason": c.reason,
                    }
                    for c in self.negative_controls
                ],
                "duration_s": round(self.seconds, 2),
                "by_approach": {g.name: g.as_dict(with_pumps=False) for g in self.groups},
                "pump_results": [o.as_dict() for o in self.all_outcomes],
                **self.context,
            }
        )
        return data

    def write_json(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")

    def render(self) -> str:
        """The table people read at the end of `iqe-sim lab` / `iqe-sim fleet`."""
        header: tuple[str, ...] = ("approach", "pumps", "enrolled", "failed", "EAP-TLS ok")
        header += ("rejected", "p50 ms", "p95 ms", "p99 ms")
        rows: list[tuple[str, ...]] = [header]
        groups = [*self.groups]
        if len(groups) > 1:
            groups.append(Summary("total", self.all_outcomes))
        for g in groups:
            lat = g.latency_ms()
            eap = (str(g.eap_accepted), str(g.eap_rejected)) if self.eap_checked else ("-", "-")
            rows.append(
                (
                    g.name,
                    str(len(g.outcomes)),
                    str(g.enrolled),
                    str(g.failed),
                    *eap,
                    *(
                        f"{lat[k]:.1f}" if lat[k] is not None else "-"
                        for k in ("p50", "p95", "p99")
                    ),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = [
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        failures = Counter(
            (o.error.branch.value, o.error.message, o.error.fix)
            for o in self.all_outcomes
            if o.error is not None
        )
        if failures:
            lines.append("")
            lines.append("failed enrollments by branch of the troubleshooting tree:")
            for (branch, message, fix), count in failures.most_common():
                lines.append(f"  {count:4d} x [{branch}] {message}")
                lines.append(f"         fix: {fix}")
        rejected = [o for o in self.all_outcomes if o.eap is not None and not o.eap.accepted]
        if rejected:
            lines.append("")
            lines.append("pumps rejected by RADIUS:")
            lines.extend(f"  {o.serial}: {o.eap.reason}" for o in rejected if o.eap)
        if self.negative_controls:
            lines.append("")
            lines.append("negative controls (each must be rejected):")
            for c in self.negative_controls:
                verdict = "rejected, as it must be" if c.passed else "ACCEPTED — this is a hole"
                lines.append(f"  {c.name}: {c.description}: {verdict} ({c.reason or '-'})")
        lines.append("")
        verdict = "PASS" if self.ok else "FAIL"
        total = Summary("all", self.all_outcomes)
        detail = f"{total.enrolled}/{len(total.outcomes)} pumps enrolled"
        if self.eap_checked:
            detail += f", {total.eap_accepted}/{len(total.outcomes)} accepted by RADIUS (EAP-TLS)"
        if self.negative_controls:
            rejected_controls = sum(c.passed for c in self.negative_controls)
            detail += (
                f", {rejected_controls}/{len(self.negative_controls)} negative controls rejected"
            )
        lines.append(f"result: {verdict}: {detail} in {self.seconds:.1f} s")
        return "\n".join(lines)
