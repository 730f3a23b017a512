"""The recipe's report stage: report.md and a self-contained report.html. It reads only its inputs: the
eval stages' results and the select stages' summaries it names, plus the manifests and training curves of
the stages upstream of them (eval/report_inputs.py), so any change upstream re-runs it."""
from dataclasses import dataclass, field

from posttrain.stage import Context, File, Report, Results, Stage, Summary, register


@dataclass
class ReportConfig:
    results: list[Results] = field(metadata={"help": "the eval stages' results (e.g. ${stages.eval.output.results})"})
    selection: list[Summary] = field(default_factory=list, metadata={
        "may_be_empty": True, "help": "select stages' summaries for the data section (${stages.select.output.summary})"})
    reference: File | None = field(default=None, metadata={
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
        from posttrain.eval.report_inputs import inputs_of_stage

        html = build_report(ctx.run_dir, ctx.output("report"), reference=cfg.reference, inputs=inputs_of_stage(cfg, ctx))
        ctx.info(f"report: {html}")
        return {"report_bytes": html.stat().st_size}
