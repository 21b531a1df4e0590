"""``semper bench all --quick``: one JSON document with every bench's figures and the machine.

Completeness, never timings: every section that can run without pcscd is there with every figure its
own bench reports, the figures are numbers that make sense (positive, verified, refused where a
refusal is the point), what was skipped says why, and the document names the machine and commit.
(It lives with the fuzzers because it belongs to the same part of issue 8.) It runs as its own
process: the benches provision SoftHSM2 tokens, which re-initialises the PKCS#11 module and would
end the logins of this test session's tokens.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _semper(*args: str, home: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semper.client.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, check=False, env={**os.environ, "SEMPER_HOME": str(home)})


def _stats(x: Any) -> None:
    assert isinstance(x, dict), x
    for k in ("n", "median_us", "p95_us", "mean_us", "min_us"):
        assert isinstance(x[k], (int, float)) and x[k] > 0, (k, x)
    assert x["min_us"] <= x["median_us"] <= x["p95_us"]


def test_bench_all_quick_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "semper.bench.json"
    r = _semper("bench", "all", "--quick", "--no-pcscd", "--output", str(out), home=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    assert json.loads(out.read_text()) == doc
    assert doc["format"] == 1 and doc["quick"] is True and doc["no_pcscd"] is True
    assert doc["command"] == "semper bench all --quick --no-pcscd"
    assert doc["errors"] == {}
    m = doc["machine"]
    assert m["cpus"] >= 1 and m["python"].count(".") == 2 and m["platform"] and m["git_commit"]
    s = doc["sections"]
    assert set(s) == {"apdu", "sign", "exchange", "clearing"}
    # apdu without pcscd: the in-process half, and it says the rest was skipped
    _stats(s["apdu"]["in_process"])
    _stats(s["apdu"]["raw_cryptography_sign"])
    assert "pcscd" in doc["skipped"]["apdu"]
    # sign: raw and SoftHSM2, each verified, with ratios
    for name in ("raw_cryptography", "softhsm_pkcs11"):
        _stats(s["sign"][name])
        assert s["sign"][name]["verified"] is True and s["sign"][name]["signatures_per_s"] > 0
    assert s["sign"]["ratios_to_raw"]["softhsm_pkcs11"]["median_over_raw"] > 0
    assert "card_piv_9a_pcscd" not in s["sign"]
    # exchange: every protocol, fault-free and (where there is a third party) resolved
    for protocol, messages in (("gen-ver", 5), ("rev-rev", 5), ("plain", 4)):
        entry = s["exchange"]["protocols"][protocol]
        ff = entry["fault_free"]
        assert ff["messages"] == messages and ff["ttp_requests"] == 0 and ff["signatures"] > 0
        assert ff["latency"]["median_ms"] > 0 and ff["round_trips"] >= 2
        if protocol == "plain":
            assert entry["resolved"] is None
        else:
            assert entry["resolved"]["ttp_requests"] == 1 and "resolution_ms" in entry["resolved"]
    # clearing: a whole batch cleared, the duplicate refused, the ledger audited clean
    c = s["clearing"]
    assert c["proofs"] == doc["sizes"]["clearing"]["count"] and c["cleared_per_s"] > 0 and c["raw_verify_per_s"] > 0
    assert c["duplicate_batch_refused"] is True and c["audit_clean_after"] is True
    # the summary: every headline figure of what ran is there
    summary = doc["summary"]
    for key in ("apdu_in_process_median_us", "raw_p256_sign_median_us", "softhsm_sign_median_us",
                "gen_ver_fault_free_median_ms", "gen_ver_resolved_ms", "rev_rev_fault_free_median_ms",
                "plain_fault_free_median_ms", "clearing_proofs_per_s", "clearing_raw_verify_per_s"):
        assert isinstance(summary[key], (int, float)) and summary[key] > 0, key
    assert summary["apdu_pcscd_median_us"] is None                 # not measured, and not invented
    for name in ("apdu", "sign", "exchange", "clearing"):
        assert doc["commands"][name].startswith(f"semper bench {name}")
    assert set(doc["elapsed_s"]) >= {"sign", "exchange", "clearing"}


def test_bench_all_refuses_an_unknown_bench(tmp_path: Path) -> None:
    r = _semper("bench", "all", "--quick", "--only", "nosuch", home=tmp_path, timeout=60)
    assert r.returncode == 2 and "no bench called nosuch" in r.stderr
