"""The rules, offline: promtool accepts them and their unit tests pass;
every alert has a severity, a summary and a runbook entry, and is tested
firing (deploy/monitoring/rules.test.yaml)."""

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = ROOT / "tools" / "prometheus" / "usr" / "bin" / "promtool"
MONITORING = ROOT / "deploy" / "monitoring"


def alerts() -> list:
    groups = yaml.safe_load((MONITORING / "rules.yaml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_checks_the_rules_and_their_unit_tests_pass():
    for command in (["check", "rules", "rules.yaml"], ["test", "rules", "rules.test.yaml"]):
        done = subprocess.run([str(PROMTOOL), *command], cwd=MONITORING, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_severity_a_summary_a_runbook_entry_and_a_firing_test():
    operations = (ROOT / "docs" / "OPERATIONS.md").read_text()
    # GitHub's anchors: a heading, lower case, spaces to dashes, punctuation dropped.
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", operations, re.M)}
    tests = yaml.safe_load((MONITORING / "rules.test.yaml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    for alert in alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"page", "ticket"}, name
        assert alert["annotations"]["summary"], name
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in anchors, f"{name}: docs/OPERATIONS.md has no heading for #{anchor}"
        assert name in fired, f"{name} is never tested firing"
    # Not firing where it must not: stated as an empty expectation, or by
    # a firing test whose other input series stay quiet.
    assert {"AgoraAvailabilityBudgetBurn", "AgoraLatencyBudgetBurn", "AgoraServiceDown",
            "AgoraFallbackServed"} <= quiet
