"""The mutation score's bookkeeping: what counts as caught, equivalent or survived."""

from __future__ import annotations

import tests.mutation_score as score

EQUIVALENT = "stream.events.x_encode_record__mutmut_7"


def _run(monkeypatch, capsys, statuses: dict[str, str], shown: set[str]) -> tuple[int, str]:
    monkeypatch.setattr(score, "results", lambda: statuses)
    monkeypatch.setattr(score, "shows_change", lambda mutant, change: mutant in shown)
    code = score.main()
    return code, capsys.readouterr().out


def test_an_equivalent_still_showing_its_line_leaves_the_denominator(monkeypatch, capsys):
    statuses = {EQUIVALENT: "survived", **{f"stream.events.x_f__mutmut_{i}": "killed" for i in range(9)}}
    code, out = _run(monkeypatch, capsys, statuses, shown={EQUIVALENT})
    assert code == 0
    assert "stream.events                  10       9          1        0  100.0%" in out


def test_an_equivalent_whose_name_now_changes_another_line_is_a_survivor(monkeypatch, capsys):
    statuses = {EQUIVALENT: "survived", **{f"stream.events.x_f__mutmut_{i}": "killed" for i in range(9)}}
    code, out = _run(monkeypatch, capsys, statuses, shown=set())
    assert code == 0  # 9 of 10 caught: 90%
    assert "stream.events                  10       9          0        1   90.0%" in out
    assert f"{EQUIVALENT}: survived (listed as equivalent, but it changes another line now)" in out


def test_below_ninety_percent_in_any_module_fails(monkeypatch, capsys):
    statuses = {"stream.drift.x_f__mutmut_1": "killed", "stream.drift.x_f__mutmut_2": "no tests"}
    code, out = _run(monkeypatch, capsys, statuses, shown=set())
    assert code == 1
    assert "below 90%: stream.drift" in out
