"""The recipe's report stage: report.md and a self-contained report.html from the whole run folder.
Its `results` inputs make it run after the eval stages; the report itself reads every stage's files."""
from dataclasses import dataclass, field

from posttrain.stage import Context, Report, Results, Stage, register


@dataclass
class ReportConfig:
    results: list[Results] = field(metadata={"help": "the eval stages' results (e.g. ${stages.eval.output.results})"})
    reference: str | None = field(default=None, metadata={
        "help": "YAML/JSON of published numbers in percent: {name: Tülu 3 8B, scores: {gsm8k_8shot: 87.6}}"})


@register
class ReportStage(Stage):
    kind = "report"
    Config = ReportConfig
    outputs = {"report": Report}
    description = "Tülu-style report: scores by stage with CIs, curves, data, provenance"

    def check(self, cfg: ReportConfig) -> list[tuple[str, str]]:
        return [] if cfg.results else [("results", "name at least one eval stage's results")]

    def run(self, cfg: ReportConfig, ctx: Context) -> dict:
        from posttrain.eval.report import build_report

        html = build_report(ctx.run_dir, ctx.output("report"), reference=cfg.reference)
        ctx.info(f"report: {html}")
        return {"report_bytes": html.stat().st_size}
