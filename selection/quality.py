"""What the kept SFT data is: per skill (a row's `skill` column) and per source (teacher), how many responses
were kept and how many of them pass the verifier the row names (its `verifier` column with its
`ground_truth`), so a teacher that is often wrong, or a skill the mixture starves, shows in the report.
Rows without a verifier are counted, not verified."""
from collections import Counter

VERIFY_FIELDS_DROPPED = ("candidates", "prompt", "messages")  # what a verifier does not read


class KeptQuality:
    def __init__(self):
        self.kept_by = {"skills": Counter(), "sources": Counter()}
        self.pending: list[tuple[str, str, str, dict]] = []  # (skill, source, response, verifier row)

    def add(self, row: dict, candidate: dict) -> None:
        skill, source = str(row.get("skill", "(none)")), str(candidate.get("source", "(none)"))
        self.kept_by["skills"][skill] += 1
        self.kept_by["sources"][source] += 1
        if row.get("verifier"):
            fields = {k: v for k, v in row.items() if k not in VERIFY_FIELDS_DROPPED}
            self.pending.append((skill, source, candidate["response"], fields))

    def summary(self, log=lambda message: None) -> dict:
        """{"skills": {skill: {kept, verified}}, "sources": {source: {kept, verified}}, "verify_failed": n};
        verified is None where no kept row of it names a verifier."""
        from posttrain.rewards import VerifierFailure, score_rows

        verified = {"skills": Counter(), "sources": Counter()}
        checked = {"skills": set(), "sources": set()}
        failed = 0
        if self.pending:
            log(f"verifying {len(self.pending)} kept responses with their rows' verifiers")
            try:
                verdicts = score_rows([p[2] for p in self.pending], [p[3] for p in self.pending])
            except VerifierFailure as e:  # most checks crashed: say so rather than report a share of nothing
                log(f"kept responses not verified: {e}")
                verdicts = []
            for (skill, source, _, _), verdict in zip(self.pending, verdicts):
                failed += bool(verdict.failure)
                for axis, name in (("skills", skill), ("sources", source)):
                    checked[axis].add(name)
                    verified[axis][name] += verdict.score >= 1.0
        return {**{axis: {name: {"kept": n, "verified": verified[axis][name] if name in checked[axis] else None}
                          for name, n in sorted(self.kept_by[axis].items())} for axis in ("skills", "sources")},
                "verify_failed": failed}
