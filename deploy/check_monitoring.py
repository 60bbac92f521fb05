"""Offline checks of the monitoring config that promtool alone cannot do.

``promql``: every PromQL expression of the Grafana dashboards, the Prometheus rules and the
prometheus-adapter rules must compile (``promtool check rules`` on a generated rule file, one
recording rule per expression, Grafana and adapter template variables replaced by concrete
values first), and every ``moerec_*`` metric it names must be one the service exports
(``src/moerec/serving/metrics.py``) or a recording rule defines.

``config``: ``promtool check config`` on the Prometheus config. Some distribution builds of
Prometheus (Debian's among them) leave Kubernetes service discovery out, so they cannot parse
``kubernetes_sd_configs``; with such a promtool the Kubernetes discovery blocks are checked
here for shape and the rest of the config (relabelling, rule files, alerting) by promtool on
a copy where each is replaced by an empty file discovery.

    python deploy/check_monitoring.py promql
    python deploy/check_monitoring.py config deploy/prometheus/prometheus.yml
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"
ADAPTER_VALUES = ROOT / "deploy" / "prometheus-adapter" / "values.yaml"
SERVICE_METRICS = ROOT / "src" / "moerec" / "serving" / "metrics.py"

# Grafana's built-in and this repository's dashboard variables, as PromQL can read them.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "6h",
    "namespace": "moe-system",
}
# prometheus-adapter's metricsQuery template fields.
ADAPTER_TEMPLATES = {
    "<<.Series>>": "moerec_http_requests_total",
    "<<.LabelMatchers>>": 'namespace="moe-system",pod=~"moerec-api-a|moerec-api-b"',
    "<<.GroupBy>>": "pod",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_METRIC = re.compile(r"(?<![\w:.])[a-zA-Z_:][\w:]*")
_DECLARED = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"(moerec_\w+)\"")
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KUBERNETES_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}


@dataclass(frozen=True)
class Expression:
    source: str  # where it was found, for the error message
    promql: str


class CheckError(Exception):
    """A finding the author must fix."""


# --------------------------------------------------------------------------- promql


def dashboard_expressions(path: Path) -> Iterator[Expression]:
    dashboard = json.loads(path.read_text(encoding="utf-8"))

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))

    for panel in panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                where = f"{path.name}: panel {panel.get('title')!r} query {target.get('refId')}"
                yield Expression(where, grafana_to_promql(target["expr"], where))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else query
        if variable.get("type") == "query" and isinstance(text, str):
            label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", text.strip())
            if label_values:  # Grafana's helper; its first argument is PromQL
                where = f"{path.name}: variable {variable.get('name')!r}"
                yield Expression(where, grafana_to_promql(label_values.group(1), where))


def grafana_to_promql(expr: str, where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in GRAFANA_VARIABLES:
            raise CheckError(f"{where}: unknown variable ${name}; add it to GRAFANA_VARIABLES")
        return GRAFANA_VARIABLES[name]

    return _VARIABLE.sub(value, expr)


def rule_expressions(path: Path) -> Iterator[Expression]:
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("record") or rule.get("alert")
            yield Expression(f"{path.name}: {name}", str(rule["expr"]))


def adapter_expressions(path: Path) -> Iterator[Expression]:
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for index, rule in enumerate(values.get("rules", {}).get("custom", [])):
        for key in ("seriesQuery", "metricsQuery"):
            text = str(rule[key])
            for template, value in ADAPTER_TEMPLATES.items():
                text = text.replace(template, value)
            if "<<" in text:
                raise CheckError(f"{path.name}: rule {index} {key}: unknown template in {text!r}")
            yield Expression(f"{path.name}: rule {index} {key}", text)


def exported_metrics(source: Path) -> set[str]:
    """Every series name the service's metrics module can expose."""
    names: set[str] = set()
    for kind, name in _DECLARED.findall(source.read_text(encoding="utf-8")):
        if kind == "Histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif kind == "Summary":
            names.update({name, f"{name}_sum", f"{name}_count"})
        else:
            names.add(name)
    if not names:
        raise CheckError(f"{source}: no moerec_* metric declarations found")
    return names


def recorded_names(rule_files: list[Path]) -> set[str]:
    names: set[str] = set()
    for path in rule_files:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for group in document.get("groups", []):
            names.update(rule["record"] for rule in group.get("rules", []) if "record" in rule)
    return names


def unknown_metrics(expression: Expression, known: set[str]) -> list[str]:
    """Names in ``expression`` that look like moerec series but nothing defines."""
    code = _STRING.sub('""', expression.promql)
    found = []
    for token in _METRIC.findall(code):
        ours = token.startswith("moerec_") or ":moerec" in token
        if ours and token not in _PROMQL_WORDS and token not in known:
            found.append(token)
    return found


def compile_with_promtool(promtool: str, expressions: list[Expression]) -> None:
    rules = [
        {"record": f"check:expression_{index}", "expr": expression.promql}
        for index, expression in enumerate(expressions)
    ]
    with tempfile.TemporaryDirectory(prefix="promql-check-") as folder:
        path = Path(folder) / "expressions.yml"
        path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
        result = subprocess.run(  # noqa: S603 - a fixed tool on a file we wrote
            [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
        )
    if result.returncode != 0:
        legend = "\n".join(
            f"  check:expression_{index} = {expression.source}"
            for index, expression in enumerate(expressions)
        )
        raise CheckError(
            f"promtool rejected an expression:\n{result.stdout}{result.stderr}{legend}"
        )


def check_promql(promtool: str) -> int:
    rule_files = sorted(RULES.glob("*.yml"))
    expressions = [
        *(e for path in sorted(DASHBOARDS.glob("*.json")) for e in dashboard_expressions(path)),
        *(e for path in rule_files for e in rule_expressions(path)),
        *adapter_expressions(ADAPTER_VALUES),
    ]
    known = exported_metrics(SERVICE_METRICS) | recorded_names(rule_files)
    problems = [
        f"{expression.source}: {name} is neither exported by the service nor recorded"
        for expression in expressions
        for name in unknown_metrics(expression, known)
    ]
    if problems:
        raise CheckError("unknown metrics:\n  " + "\n  ".join(problems))
    compile_with_promtool(promtool, expressions)
    print(f"{len(expressions)} PromQL expressions compile; every moerec metric they name exists")
    return 0


# --------------------------------------------------------------------------- config


def promtool_check_config(promtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - a fixed tool on a given file
        [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
    )


def check_kubernetes_sd(job: str, configs: list[dict[str, Any]]) -> None:
    for config in configs:
        if config.get("role") not in _KUBERNETES_ROLES:
            raise CheckError(f"job {job}: kubernetes_sd_configs role {config.get('role')!r}")
        unknown = set(config) - {"role", "namespaces", "selectors", "api_server", "attach_metadata"}
        if unknown:
            raise CheckError(f"job {job}: unknown kubernetes_sd_configs keys {sorted(unknown)}")
        names = config.get("namespaces", {}).get("names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CheckError(f"job {job}: kubernetes_sd_configs namespaces.names must list names")


def check_config(promtool: str, path: Path) -> int:
    result = promtool_check_config(promtool, path)
    if result.returncode == 0:
        print(result.stdout, end="")
        return 0
    if "field kubernetes_sd_configs not found" not in result.stdout + result.stderr:
        print(result.stdout + result.stderr, end="", file=sys.stderr)
        return 1
    print("note: this promtool was built without Kubernetes discovery; checking that part here")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory(prefix="prometheus-check-") as folder:
        no_targets = Path(folder) / "kubernetes-targets.json"
        no_targets.write_text("[]\n")
        for job in config.get("scrape_configs", []):
            if "kubernetes_sd_configs" in job:
                check_kubernetes_sd(job["job_name"], job.pop("kubernetes_sd_configs"))
                job["file_sd_configs"] = [{"files": [str(no_targets)]}]
        copy = Path(folder) / path.name
        copy.write_text(yaml.safe_dump(config, sort_keys=False))
        for rule_file in config.get("rule_files", []):  # rule globs are relative to the config
            for match in path.parent.glob(rule_file):
                target = copy.parent / match.relative_to(path.parent)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(match, target)
        result = promtool_check_config(promtool, copy)
    print(result.stdout + result.stderr, end="")
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--promtool", default="promtool", help="the promtool executable")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("promql", help="compile every PromQL expression; check metric names")
    config = commands.add_parser("config", help="promtool check config, Kubernetes SD aware")
    config.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    promtool = shutil.which(args.promtool)
    if promtool is None:
        print(f"error: {args.promtool} not found (apt-get install prometheus)", file=sys.stderr)
        return 2
    try:
        if args.command == "promql":
            return check_promql(promtool)
        return check_config(promtool, args.path)
    except CheckError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
